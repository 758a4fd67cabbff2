"""A throw-away certificate authority, one server certificate, and the HTTPS server the loopback
fakes of Azure share.

The fake Resource Manager, the scoring front and Azurite all serve HTTPS with the same server
certificate. It is valid for ``127.0.0.1``, ``localhost`` and the test storage host names
(``*.blob.core.<TEST_DOMAIN>``), so the real storage SDK, which insists on ``.blob.core.`` in the
host name of an account-key URL, can talk to Azurite. The test process trusts only the CA file
(``REQUESTS_CA_BUNDLE`` / ``SSL_CERT_FILE``), so no TLS connection to anything else can succeed.

:class:`LoopbackHttpsServer` is the threaded, bounded HTTPS server of the fake Resource Manager and
of the scoring front: it binds 127.0.0.1 only, does each TLS handshake in the connection's own
thread, and refuses connections beyond ``max_threads`` instead of growing without bound.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import socket
import ssl
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["TEST_DOMAIN", "LoopbackPki", "LoopbackHttpsServer", "make_test_pki"]

logger = logging.getLogger(__name__)

#: The made-up DNS domain of the test storage account; ``.test`` is reserved for testing (RFC 6761).
#: Host names under it resolve to 127.0.0.1 only inside the test process (see conftest.py).
TEST_DOMAIN = "miiazure.test"


@dataclass(frozen=True)
class LoopbackPki:
    """Paths of the PEM files: the CA certificate to trust, and the server's certificate and key."""

    ca_path: Path
    cert_path: Path
    key_path: Path
    hosts: tuple[str, ...]

    def server_context(self) -> ssl.SSLContext:
        """A server-side TLS context with the server certificate."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(self.cert_path), str(self.key_path))
        return context

    def client_context(self) -> ssl.SSLContext:
        """A client-side TLS context that trusts only the test CA."""
        return ssl.create_default_context(cafile=str(self.ca_path))


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


def make_test_pki(directory: Path, extra_hosts: Sequence[str] = ()) -> LoopbackPki:
    """Create ``ca.pem``, ``server.pem`` and ``server-key.pem`` in ``directory`` (valid for one day)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("mii_azure test CA"))
        .issuer_name(_name("mii_azure test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    hosts = ("localhost", f"*.blob.core.{TEST_DOMAIN}", f"*.{TEST_DOMAIN}", *extra_hosts)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), *(x509.DNSName(host) for host in hosts)]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    pki = LoopbackPki(
        ca_path=directory / "ca.pem",
        cert_path=directory / "server.pem",
        key_path=directory / "server-key.pem",
        hosts=("127.0.0.1", *hosts),
    )
    pki.ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pki.cert_path.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(pki.key_path, server_key)
    return pki


class LoopbackHttpsServer(ThreadingHTTPServer):
    """A threaded HTTPS server on 127.0.0.1 (a free port unless ``port`` is given).

    At most ``max_threads`` connections are served at once; a connection beyond that is closed at
    once. Handler threads are daemons and idle keep-alive connections end after the handler's
    ``timeout``, so nothing outlives :meth:`stop` for long.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        handler: type[BaseHTTPRequestHandler],
        pki: LoopbackPki,
        *,
        port: int = 0,
        max_threads: int = 64,
        name: str = "https",
    ) -> None:
        super().__init__(("127.0.0.1", port), handler)
        self.tls = pki.server_context()
        self.name = name
        self._slots = threading.BoundedSemaphore(max_threads)
        self._thread: Optional[threading.Thread] = None

    @property
    def port(self) -> int:
        """The port the server listens on."""
        return int(self.server_address[1])

    @property
    def base_url(self) -> str:
        """``https://127.0.0.1:<port>``."""
        return f"https://127.0.0.1:{self.port}"

    def process_request(self, request: socket.socket, client_address: tuple[str, int]) -> None:  # type: ignore[override]
        """Serve the connection in its own thread, or close it when every slot is taken."""
        if not self._slots.acquire(blocking=False):
            logger.warning("%s: too many connections, closing one from %s", self.name, client_address)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: socket.socket, client_address: tuple[str, int]) -> None:  # type: ignore[override]
        """Do the TLS handshake in this connection's thread, then serve it."""
        try:
            request.settimeout(30)
            try:
                tls_request = self.tls.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                logger.debug("%s: TLS handshake with %s failed: %s", self.name, client_address, exc)
                self.shutdown_request(request)
                return
            super().process_request_thread(tls_request, client_address)  # type: ignore[arg-type]
        finally:
            self._slots.release()

    def start(self) -> "LoopbackHttpsServer":
        """Serve in a background daemon thread."""
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.1}, name=f"{self.name}-{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self.server_close()
