"""The HTTP transport under :class:`~mii_azure.deployment.Deployment`: one POST, nothing else.

``post`` returns the whole answer; ``post_stream`` returns as soon as the status and headers are in,
with a :class:`StreamedResponse` whose body is read line by line as it arrives (server-sent events).

A transport sends bytes and returns bytes; it knows nothing of the scoring contract, retries or the
SDK's error types (the handle translates, once). What it does promise is to say *how far* a failed
request got, because that decides whether the handle may send it again:

* :class:`ConnectError`: no connection could be opened, so nothing was sent.
* :class:`ConnectionLostError`: the connection was closed or reset before any byte of an answer.
* :class:`ReadTimeoutError`: the request was sent and no complete answer came in time; the server may
  still be working on it.
* :class:`CertificateVerifyError`: the server's TLS certificate is not trusted; nothing was sent.
* :class:`TransportError`: anything else (a reply cut off half-way, a TLS protocol failure).

:class:`PooledTransport`, the default, keeps HTTP/1.1 keep-alive connections per (scheme, host,
port) on the standard library's :mod:`http.client`, and is safe to share between threads. Its HTTPS
trust is the system's certificate store plus the bundles named by ``SSL_CERT_FILE`` and
``REQUESTS_CA_BUNDLE`` (files or folders), read when the first HTTPS connection is opened.
"""

from __future__ import annotations

import http.client
import os
import select
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Protocol

from .errors import ConfigError

__all__ = [
    "HttpResponse",
    "HttpTransport",
    "StreamedResponse",
    "PooledTransport",
    "UrllibTransport",
    "TransportError",
    "ConnectError",
    "ConnectionLostError",
    "ReadTimeoutError",
    "CertificateVerifyError",
    "CA_BUNDLE_ENV_VARS",
    "default_ssl_context",
]

CA_BUNDLE_ENV_VARS = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")
"""Environment variables naming extra trusted CA certificates (a PEM file or a hashed folder)."""


@dataclass(frozen=True)
class HttpResponse:
    """What a transport returns: status, body bytes, headers (look names up with :meth:`header`)."""

    status: int
    body: bytes
    headers: Mapping[str, str]

    def header(self, name: str) -> Optional[str]:
        """The value of header ``name``, whatever the case of its name; None when absent."""
        return _find_header(self.headers, name)


def _find_header(headers: Mapping[str, str], name: str) -> Optional[str]:
    value = headers.get(name)
    if value is not None:
        return value
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


class StreamedResponse:
    """An answer whose body is read as it arrives: ``status`` and ``headers`` at once, then the body
    line by line (:meth:`iter_lines`) or whole (:meth:`read`).

    Close it when done with it, or use it as a context manager: a body read to its end gives a
    pooled connection back; closing it before the end closes the connection, which tells the server
    the client went away. Reading raises :class:`ReadTimeoutError` when nothing new arrives within
    ``timeout_s``, and :class:`TransportError` when the answer is cut off.
    """

    def __init__(
        self,
        status: int,
        headers: Mapping[str, str],
        body: "http.client.HTTPResponse | urllib.error.HTTPError",
        *,
        url: str,
        timeout_s: float,
        release: Callable[[bool], None],
    ) -> None:
        self.status = status
        self.headers = headers
        self.url = url
        self.timeout_s = timeout_s
        self._body = body
        self._release: Optional[Callable[[bool], None]] = release

    def header(self, name: str) -> Optional[str]:
        """The value of header ``name``, whatever the case of its name; None when absent."""
        return _find_header(self.headers, name)

    def iter_lines(self) -> Iterator[bytes]:
        """The body's lines as they arrive, without their line endings; the body is closed at its end."""
        while True:
            line = self._read(self._body.readline)
            if not line:
                self.close()
                return
            yield line.rstrip(b"\r\n")

    def read(self) -> bytes:
        """The rest of the body; the response is closed after it."""
        try:
            return self._read(self._body.read)
        finally:
            self.close()

    def to_response(self) -> HttpResponse:
        """The whole answer (the rest of its body read now) as an :class:`HttpResponse`."""
        return HttpResponse(self.status, self.read(), self.headers)

    def _read(self, read: Callable[[], bytes]) -> bytes:
        try:
            return read()
        except TimeoutError as exc:
            self.close()
            raise ReadTimeoutError(
                f"Nothing new arrived from {self.url} within {self.timeout_s:g} s.", url=self.url, timeout_s=self.timeout_s
            ) from exc
        except (OSError, http.client.HTTPException, ValueError) as exc:
            self.close()
            raise TransportError(f"The answer from {self.url} was cut off ({type(exc).__name__}: {exc}).", url=self.url) from exc

    def close(self) -> None:
        """Stop reading; the connection is reused only if the whole body was read."""
        release, self._release = self._release, None
        if release is not None:
            isclosed = getattr(self._body, "isclosed", None)
            finished = bool(isclosed()) if isclosed is not None else False
            if not finished:
                self._body.close()
            release(finished)

    def __enter__(self) -> "StreamedResponse":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"StreamedResponse(status={self.status}, url={self.url!r})"


class HttpTransport(Protocol):
    """Sends one HTTP POST; the seam tests and targets replace.

    Implementations raise an :class:`OSError` when no answer came; the subclasses of
    :class:`TransportError` say how far the request got (only requests known not to have been run
    are retried by the handle).
    """

    def post(self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> HttpResponse:
        """POST ``body`` to ``url`` and return the answer, whatever its status."""

    # Optional: ``post_stream(url, body, headers, timeout_s) -> StreamedResponse``, the same POST
    # returning once the status and headers are in; ``Deployment.stream`` needs it.


# --- how far a failed request got -----------------------------------------------------------------


class TransportError(OSError):
    """No HTTP answer came back. ``url`` is where the request went (never its headers)."""

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(message)
        self.url = url


class ConnectError(TransportError):
    """No connection could be opened (refused, unreachable, name unknown, connect timeout): nothing was sent."""


class ConnectionLostError(TransportError):
    """The connection was closed or reset before any byte of an answer arrived."""


class ReadTimeoutError(TransportError, TimeoutError):
    """The request was sent but no complete answer came within the timeout."""

    def __init__(self, message: str, *, url: str, timeout_s: float) -> None:
        super().__init__(message, url=url)
        self.timeout_s = timeout_s


class CertificateVerifyError(TransportError):
    """The server's TLS certificate could not be verified against the trusted CAs: nothing was sent."""


# --- TLS trust ------------------------------------------------------------------------------------


def default_ssl_context() -> ssl.SSLContext:
    """A verifying client context: the system's CA store plus ``SSL_CERT_FILE``/``REQUESTS_CA_BUNDLE``.

    OpenSSL's own default paths already follow ``SSL_CERT_FILE``, but then *instead of* the system
    store; the compiled-in system locations are loaded explicitly so that both are trusted.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    system = ssl.get_default_verify_paths()
    if system.openssl_cafile and os.path.isfile(system.openssl_cafile):
        context.load_verify_locations(cafile=system.openssl_cafile)
    if system.openssl_capath and os.path.isdir(system.openssl_capath):
        context.load_verify_locations(capath=system.openssl_capath)
    for variable in CA_BUNDLE_ENV_VARS:
        location = os.environ.get(variable)
        if not location:
            continue
        try:
            if os.path.isdir(location):
                context.load_verify_locations(capath=location)
            else:
                context.load_verify_locations(cafile=location)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"{variable}={location!r} names no readable PEM file or certificate folder ({exc}). Point it "
                "at the CA bundle to trust, or unset it to use the system's certificates only.",
                variable=variable,
                location=location,
            ) from exc
    return context


# --- the pooled keep-alive transport --------------------------------------------------------------

_PoolKey = tuple[str, str, int]
# Signs that a connection died under us: the peer closed or reset it (on a kept-alive connection, an
# idle timeout on the server's side races with our next request), or TLS saw the end of the stream.
_CONNECTION_GONE = (ConnectionError, http.client.RemoteDisconnected, ssl.SSLEOFError, ssl.SSLZeroReturnError)


class PooledTransport:
    """HTTP/1.1 keep-alive connections, pooled per (scheme, host, port); thread-safe.

    Each request takes an idle connection (or opens one), uses it alone, and gives it back once the
    whole answer has been read, unless the server said ``Connection: close``. At most
    ``max_idle_per_host`` idle connections are kept per host, none longer than ``idle_timeout_s``;
    a kept connection the server has since closed is noticed before use and replaced. If a *reused*
    connection turns out to be dead when the request is written or before any answer arrives (the
    server's keep-alive timeout raced with the request), the request is sent once more on a fresh
    connection: the server closed that connection while it was idle, so it never read the request.
    """

    def __init__(
        self,
        *,
        max_idle_per_host: int = 64,
        idle_timeout_s: float = 60.0,
        ssl_context: Optional[ssl.SSLContext] = None,
    ) -> None:
        if max_idle_per_host < 0 or idle_timeout_s < 0:
            raise ConfigError(
                "max_idle_per_host and idle_timeout_s cannot be negative.",
                max_idle_per_host=max_idle_per_host,
                idle_timeout_s=idle_timeout_s,
            )
        self.max_idle_per_host = max_idle_per_host
        self.idle_timeout_s = idle_timeout_s
        self._ssl_context = ssl_context
        self._lock = threading.Lock()
        self._idle: dict[_PoolKey, list[tuple[http.client.HTTPConnection, float]]] = {}
        # Idle sockets are closed when the transport is collected, not left to the garbage collector.
        self._finalizer = weakref.finalize(self, _close_idle, self._idle, self._lock)

    def __repr__(self) -> str:
        with self._lock:
            idle = sum(len(connections) for connections in self._idle.values())
        return f"PooledTransport(idle_connections={idle}, max_idle_per_host={self.max_idle_per_host})"

    def post(self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> HttpResponse:
        """POST ``body`` to ``url`` over a pooled connection and return the whole answer."""
        key, connection, response = self._open(url, body, headers, timeout_s)
        try:
            data = response.read()
        except TimeoutError as exc:
            connection.close()
            raise ReadTimeoutError(
                f"The answer from {url} did not finish within {timeout_s:g} s.", url=url, timeout_s=timeout_s
            ) from exc
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise TransportError(f"The answer from {url} was cut off ({type(exc).__name__}: {exc}).", url=url) from exc
        except BaseException:
            connection.close()
            raise
        answer = HttpResponse(response.status, data, _headers(response))
        self._release(key, connection, response, finished=True)
        return answer

    def post_stream(self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> StreamedResponse:
        """POST ``body`` to ``url`` over a pooled connection; return once the status and headers are in.

        ``timeout_s`` bounds connecting, the wait for the headers, and then each wait for more of the body.
        """
        key, connection, response = self._open(url, body, headers, timeout_s)
        return StreamedResponse(
            response.status,
            _headers(response),
            response,
            url=url,
            timeout_s=timeout_s,
            release=lambda finished: self._release(key, connection, response, finished=finished),
        )

    def close(self) -> None:
        """Close every idle connection (connections in use close when their request is done)."""
        _close_idle(self._idle, self._lock)

    # --- internals -------------------------------------------------------------------------------
    def _checkout(self, key: _PoolKey, timeout_s: float, url: str) -> tuple[http.client.HTTPConnection, bool]:
        """An idle connection to ``key`` that is still open (reused: True), or a new one."""
        now = time.monotonic()
        while True:
            with self._lock:
                idle = self._idle.get(key)
                if not idle:
                    break
                connection, since = idle.pop()  # the most recently used: the least likely to be closed
            if now - since <= self.idle_timeout_s and _still_open(connection):
                connection.timeout = timeout_s
                if connection.sock is not None:
                    connection.sock.settimeout(timeout_s)
                return connection, True
            connection.close()
        return self._connect(key, timeout_s, url), False

    def _connect(self, key: _PoolKey, timeout_s: float, url: str) -> http.client.HTTPConnection:
        scheme, host, port = key
        connection: http.client.HTTPConnection
        if scheme == "https":
            connection = http.client.HTTPSConnection(host, port, timeout=timeout_s, context=self._context())
        else:
            connection = http.client.HTTPConnection(host, port, timeout=timeout_s)
        try:
            connection.connect()
        except ssl.SSLCertVerificationError as exc:
            connection.close()
            raise CertificateVerifyError(
                f"The TLS certificate of {host}:{port} could not be verified ({exc.verify_message}).", url=url
            ) from exc
        except ssl.SSLError as exc:
            connection.close()
            raise TransportError(f"The TLS handshake with {host}:{port} failed ({exc}).", url=url) from exc
        except OSError as exc:  # refused, unreachable, unknown name, connect timeout
            connection.close()
            raise ConnectError(f"Cannot connect to {host}:{port} ({exc}).", url=url) from exc
        return connection

    def _context(self) -> ssl.SSLContext:
        with self._lock:
            if self._ssl_context is None:
                self._ssl_context = default_ssl_context()
            return self._ssl_context

    def _open(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float
    ) -> tuple[_PoolKey, http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send the request on a pooled connection (once more on a fresh one if a reused one was
        found dead) and wait for the status and headers of the answer."""
        key, target = _split(url)
        connection, reused = self._checkout(key, timeout_s, url)
        try:
            return key, connection, self._send(connection, target, body, headers, timeout_s, url, reused=reused)
        except _StaleConnection:
            connection = self._connect(key, timeout_s, url)
            return key, connection, self._send(connection, target, body, headers, timeout_s, url, reused=False)

    def _send(
        self,
        connection: http.client.HTTPConnection,
        target: str,
        body: bytes,
        headers: Mapping[str, str],
        timeout_s: float,
        url: str,
        *,
        reused: bool,
    ) -> http.client.HTTPResponse:
        """Send the request on ``connection`` and wait for the answer's status and headers."""
        try:
            connection.request("POST", target, body=body, headers=dict(headers))
            return connection.getresponse()
        except TimeoutError as exc:
            connection.close()
            raise ReadTimeoutError(f"No answer from {url} within {timeout_s:g} s.", url=url, timeout_s=timeout_s) from exc
        except _CONNECTION_GONE as exc:
            connection.close()
            if reused:
                raise _StaleConnection(str(exc)) from exc
            raise ConnectionLostError(
                f"{url} closed the connection before answering ({type(exc).__name__}: {exc}).", url=url
            ) from exc
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise TransportError(f"No valid answer from {url} ({type(exc).__name__}: {exc}).", url=url) from exc
        except BaseException:
            connection.close()
            raise

    def _release(
        self, key: _PoolKey, connection: http.client.HTTPConnection, response: http.client.HTTPResponse, *, finished: bool
    ) -> None:
        """Pool ``connection`` again if its answer was read to the end and the server keeps it open."""
        if not finished or response.will_close or connection.sock is None:
            connection.close()
        else:
            self._checkin(key, connection)

    def _checkin(self, key: _PoolKey, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            keep = len(idle) < self.max_idle_per_host
            if keep:
                idle.append((connection, time.monotonic()))
        if not keep:
            connection.close()


class _StaleConnection(Exception):
    """A reused keep-alive connection was found dead before any answer: send again on a fresh one."""


def _split(url: str) -> tuple[_PoolKey, str]:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{url!r} is not an http:// or https:// URL.", url=url)
    port = parts.port or (443 if scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return (scheme, parts.hostname, port), target


def _headers(response: http.client.HTTPResponse) -> dict[str, str]:
    """The answer's headers; a repeated header's values joined with ', ' as RFC 9110 allows."""
    headers: dict[str, str] = {}
    lower_to_name: dict[str, str] = {}
    for name, value in response.getheaders():
        existing = lower_to_name.get(name.lower())
        if existing is None:
            lower_to_name[name.lower()] = name
            headers[name] = value
        else:
            headers[existing] = f"{headers[existing]}, {value}"
    return headers


def _still_open(connection: http.client.HTTPConnection) -> bool:
    """Whether an idle kept-alive connection is still usable: an idle socket that is readable has
    either been closed by the server (end of stream) or holds bytes nobody asked for; either way it
    is dropped."""
    sock = connection.sock
    if sock is None:
        return False
    try:
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(sock, select.POLLIN | select.POLLPRI)
            return not poller.poll(0)
        readable, _, _ = select.select([sock], [], [], 0)
        return not readable
    except (OSError, ValueError):
        return False


def _close_idle(idle: dict[_PoolKey, list[tuple[http.client.HTTPConnection, float]]], lock: threading.Lock) -> None:
    with lock:
        connections = [connection for entries in idle.values() for connection, _ in entries]
        idle.clear()
    for connection in connections:
        connection.close()


# --- the plain standard-library transport (one connection per request) ---------------------------


class UrllibTransport:
    """A transport on :mod:`urllib.request`: a new connection per request, no pooling.

    Kept for compatibility; :class:`PooledTransport` is the default.
    """

    def post(self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> HttpResponse:
        """POST ``body`` to ``url`` and return the answer, whatever its status."""
        request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return HttpResponse(response.status, response.read(), dict(response.headers))
        except urllib.error.HTTPError as error:
            return HttpResponse(error.code, error.read(), dict(error.headers))

    def post_stream(self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> StreamedResponse:
        """POST ``body`` to ``url``; return once the status and headers are in, the body to read as it arrives."""
        request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
        try:
            response = urllib.request.urlopen(request, timeout=timeout_s)
        except urllib.error.HTTPError as error:
            response = error
        return StreamedResponse(
            response.status,
            dict(response.headers),
            response,
            url=url,
            timeout_s=timeout_s,
            release=lambda finished: response.close(),
        )
