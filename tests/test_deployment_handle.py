"""The Deployment handle's HTTP side against a scripted HTTP(S) server on 127.0.0.1.

The server answers like an Azure ML managed online endpoint's front (424 with the container's status in
a header, 408, 429, 404, 401) or like the local harness, from a script; the handle must map each answer
to the SDK's error, retry only what was not run, reuse keep-alive connections, and never show a key.
"""

from __future__ import annotations

import datetime
import email.utils
import http.server
import json
import logging
import socket
import ssl
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

import mii_azure
from mii_azure import errors, http_transport
from mii_azure.deployment import MODEL_DEPLOYMENT_HEADER, Deployment, Retries
from mii_azure.errors import (
    AuthenticationError,
    BadRequestError,
    ConfigError,
    EndpointNotFoundError,
    MiiAzureError,
    PayloadTooLargeError,
    RequestTimeoutError,
    ScoringError,
    ServiceUnavailableError,
    TooManyRequestsError,
)
from mii_azure.http_transport import ConnectError, ConnectionLostError, HttpResponse, PooledTransport

KEY = "sk-Zq81x-SECRET-7f3b2c9d"


# --- a scripted server ---------------------------------------------------------------------------


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # a JSON value, bytes, or None for the echo answer
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    close: bool = False  # close the socket after answering, without saying so (a keep-alive timeout)


@dataclass
class Seen:
    headers: dict[str, str]
    body: Any
    path: str = ""


class ScriptedServer:
    """Threaded HTTP/1.1 keep-alive server: answers the next scripted Reply, or echoes the query."""

    def __init__(self, tls: Optional[ssl.SSLContext] = None) -> None:
        self.script: deque[Reply] = deque()
        self.seen: list[Seen] = []
        self.connections = 0
        self._lock = threading.Lock()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with owner._lock:
                    owner.connections += 1

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with owner._lock:
                    owner.seen.append(Seen({key.lower(): value for key, value in self.headers.items()}, body, self.path))
                    reply = owner.script.popleft() if owner.script else Reply()
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                payload = reply.body
                if payload is None:
                    payload = {"responses": [body.get("query")], "task": "echo", "model": "scripted"}
                if callable(payload):
                    payload = payload(self.headers)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response_only(reply.status)
                if "Date" not in reply.headers:
                    self.send_header("Date", self.date_time_string())
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()
                if reply.close:
                    self.close_connection = True

        class Server(http.server.ThreadingHTTPServer):
            request_queue_size = 128  # 32 clients connecting at once are all accepted at once

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}/score"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def answer(self, *replies: Reply) -> "ScriptedServer":
        self.script.extend(replies)
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    running = ScriptedServer()
    yield running
    running.stop()


class FakeTime:
    """sleep() advances clock(); the waits are recorded instead of slept."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


class Backend:
    def logs(self, name: str, lines: int) -> str:
        return ""

    def delete(self, name: str) -> None:
        pass


def azure_handle(url: str, fake: FakeTime, **options: Any) -> Deployment:
    """A handle as the Azure target builds one: endpoint and deployment names, a key provider."""
    retry_options = {key: options.pop(key) for key in ("max_retries", "budget_s") if key in options}
    options.setdefault("auth", lambda: {"Authorization": f"Bearer {KEY}"})
    return Deployment(
        "gpt2-prod",
        target="azure",
        scoring_uri=url,
        backend=Backend(),
        endpoint="gpt2-endpoint",
        deployment="blue",
        retries=Retries(sleep=fake.sleep, clock=fake.clock, jitter=lambda: 0.0, **retry_options),
        **options,
    )


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def front(status: int, reason: str = "model error") -> dict[str, str]:
    """The headers an Azure front puts on a 424 relaying the container's ``status``."""
    return {"ms-azureml-model-error-statuscode": str(status), "ms-azureml-model-error-reason": reason}


# --- the Azure front's statuses ------------------------------------------------------------------


@pytest.mark.parametrize(
    "status, error_type, code",
    [
        (400, BadRequestError, "bad_request"),
        (413, PayloadTooLargeError, "payload_too_large"),
        (500, ScoringError, "internal_error"),
        (504, RequestTimeoutError, "timeout"),
    ],
)
def test_a_424_is_the_containers_status_with_its_message(server, fake_time, status, error_type, code):
    server.answer(Reply(424, error_body(code, f"the container says {status}"), front(status)))
    with pytest.raises(error_type) as raised:
        azure_handle(server.url, fake_time).query("hello")
    error = raised.value
    assert type(error) is error_type
    assert error.message == f"the container says {status}"
    assert (error.status_code, error.front_status_code, error.reason) == (status, 424, "model error")
    assert (error.endpoint, error.azure_deployment, error.deployment, error.tries) == ("gpt2-endpoint", "blue", "gpt2-prod", 1)
    assert len(server.seen) == 1 and fake_time.sleeps == []


def test_the_same_status_is_the_same_error_locally_and_behind_the_front(server, fake_time):
    body = error_body("bad_request", "Unknown parameter 'max_tokens'")
    server.answer(Reply(400, body), Reply(424, body, front(400)))
    local = Deployment("gpt2", target="local", scoring_uri=server.url, backend=Backend())
    errors = []
    for handle in (local, azure_handle(server.url, fake_time)):
        with pytest.raises(BadRequestError) as raised:
            handle.query("x", max_tokens=4)
        errors.append(raised.value)
    assert [(error.status_code, error.message) for error in errors] == [(400, "Unknown parameter 'max_tokens'")] * 2


def test_a_424_without_a_status_header_is_a_scoring_error(server, fake_time):
    server.answer(Reply(424, b"upstream failed", {"ms-azureml-model-error-reason": "model_error"}))
    with pytest.raises(ScoringError, match="failed without a status") as raised:
        azure_handle(server.url, fake_time).query("x")
    assert "upstream failed" in raised.value.message and raised.value.status_code == 424


def test_a_containers_503_behind_the_front_is_retried(server, fake_time):
    server.answer(Reply(424, error_body("unavailable", "queue full"), {**front(503), "Retry-After": "3"}))
    answer = azure_handle(server.url, fake_time).query("hello")
    assert answer["responses"] == ["hello"]
    assert fake_time.sleeps == [3.0] and len(server.seen) == 2


def test_408_is_the_fronts_own_request_timeout_and_not_retried(server, fake_time):
    server.answer(Reply(408, {"message": "Request timed out"}))
    with pytest.raises(RequestTimeoutError) as raised:
        azure_handle(server.url, fake_time).query("x")
    error = raised.value
    assert (error.status_code, error.limit_s, error.tries) == (408, 180, 1)
    assert "own request timeout" in error.message and "180 s" in error.message and "request_timeout_ms" in error.message
    assert len(server.seen) == 1


def test_429_honours_retry_after_then_succeeds(server, fake_time):
    server.answer(Reply(429, {"message": "Too many requests"}, {"Retry-After": "2"}))
    assert azure_handle(server.url, fake_time).query("hi")["responses"] == ["hi"]
    assert fake_time.sleeps == [2.0] and len(server.seen) == 2


def test_429_until_retries_run_out_is_too_many_requests(server, fake_time, caplog):
    server.answer(*[Reply(429, {"message": "Too many requests"})] * 10)
    caplog.set_level(logging.INFO, logger="mii_azure")
    with pytest.raises(TooManyRequestsError) as raised:
        azure_handle(server.url, fake_time).query("x")
    error = raised.value
    assert isinstance(error, ServiceUnavailableError) and error.status == 429 and error.code == "too_many_requests"
    assert (error.status_code, error.tries) == (429, 4)
    # Backoff 0.5 s doubling, "equal jitter" at its low end (jitter() == 0): half of each ceiling.
    assert fake_time.sleeps == [0.25, 0.5, 1.0]
    assert error.retry_after == 2.0  # the wait the next retry would have taken
    assert "max_concurrent_requests_per_instance x instance_count" in error.message
    assert "Tried 4 times over 1.8 s" in error.message and "'gpt2-endpoint'" in error.message
    assert len(server.seen) == 4
    retries = [record for record in caplog.records if "retry" in record.getMessage()]
    assert [record.levelno for record in retries] == [logging.INFO] * 3
    assert "HTTP 429; the request was not run, retry 1 of 3 in 0.25 s" in retries[0].getMessage()


def test_retry_after_as_an_http_date_is_read_against_the_servers_date(server, fake_time):
    now = datetime.datetime(2026, 3, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)
    later = now + datetime.timedelta(seconds=7)
    headers = {"Date": email.utils.format_datetime(now, usegmt=True), "Retry-After": email.utils.format_datetime(later, usegmt=True)}
    server.answer(Reply(503, error_body("unavailable", "loading"), headers))
    azure_handle(server.url, fake_time).query("x")
    assert fake_time.sleeps == [7.0]


def test_a_retry_after_past_the_budget_ends_the_retries_at_once(server, fake_time):
    server.answer(Reply(503, error_body("unavailable", "The model is still loading; retry in a few seconds."), {"Retry-After": "120"}))
    with pytest.raises(ServiceUnavailableError) as raised:
        azure_handle(server.url, fake_time).query("x")
    assert (raised.value.retry_after, raised.value.tries, raised.value.status_code) == (120.0, 1, 503)
    assert fake_time.sleeps == [] and len(server.seen) == 1


def test_the_budget_bounds_the_total_time(server, fake_time):
    server.answer(*[Reply(503, error_body("unavailable", "busy"), {"Retry-After": "4"})] * 10)
    with pytest.raises(ServiceUnavailableError) as raised:
        azure_handle(server.url, fake_time, max_retries=10, budget_s=10).query("x")
    assert fake_time.sleeps == [4.0, 4.0] and raised.value.tries == 3
    assert "Tried 3 times over 8.0 s" in raised.value.message


def test_retries_can_be_switched_off(server):
    server.answer(Reply(503, error_body("unavailable", "busy"), {"Retry-After": "1"}))
    handle = Deployment("d", target="local", scoring_uri=server.url, backend=Backend(), retries=0)
    with pytest.raises(ServiceUnavailableError) as raised:
        handle.query("x")
    assert raised.value.tries == 1 and raised.value.retry_after == 1.0 and len(server.seen) == 1
    assert handle.retries.max_retries == 0
    with pytest.raises(ConfigError):
        Retries(max_retries=-1)
    with pytest.raises(ConfigError):
        Deployment("d", target="local", scoring_uri=server.url, backend=Backend(), retries="twice")  # type: ignore[arg-type]


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_key_is_an_authentication_error_and_not_retried(server, fake_time, status):
    server.answer(Reply(status, {"message": "Unauthorized"}))
    with pytest.raises(AuthenticationError) as raised:
        azure_handle(server.url, fake_time).query("x")
    error = raised.value
    assert error.status_code == status and error.tries == 1 and len(server.seen) == 1
    assert "refused the key or token sent" in error.message and "mii_azure.get_deployment('gpt2-prod')" in error.message
    server.answer(Reply(401, {"message": "Unauthorized"}))
    with pytest.raises(AuthenticationError, match="none was sent"):
        azure_handle(server.url, fake_time, auth=None).query("x")


def test_a_404_from_the_front_names_the_endpoint_and_deployment(server, fake_time):
    server.answer(Reply(404, {"message": "No valid deployments to route to."}))
    with pytest.raises(EndpointNotFoundError) as raised:
        azure_handle(server.url, fake_time).query("x")
    error = raised.value
    assert "Endpoint 'gpt2-endpoint' has no deployment 'blue'" in error.message
    assert "No valid deployments to route to." in error.message
    assert (error.endpoint, error.azure_deployment, error.scoring_uri, error.status_code) == ("gpt2-endpoint", "blue", server.url, 404)


@pytest.mark.parametrize(
    "status, error_type",
    [(400, BadRequestError), (413, PayloadTooLargeError), (504, RequestTimeoutError), (500, ScoringError), (503, ServiceUnavailableError)],
)
def test_the_local_statuses_keep_their_mapping(server, status, error_type):
    server.answer(*[Reply(status, error_body("x", f"status {status}"), {"Retry-After": "0"})] * 4)
    handle = Deployment("local-one", target="local", scoring_uri=server.url, backend=Backend())
    with pytest.raises(error_type) as raised:
        handle.query("x")
    assert raised.value.status_code == status and raised.value.deployment == "local-one"
    assert raised.value.message.startswith(f"status {status}")
    assert not hasattr(raised.value, "endpoint")


# --- what was not run is retried, what may have run is not ---------------------------------------


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_refused_connection_is_retried_then_unavailable(fake_time, caplog):
    caplog.set_level(logging.INFO, logger="mii_azure")
    handle = azure_handle(f"http://127.0.0.1:{_closed_port()}/score", fake_time)
    with pytest.raises(ServiceUnavailableError) as raised:
        handle.query("x")
    error = raised.value
    assert error.tries == 4 and fake_time.sleeps == [0.25, 0.5, 1.0]
    assert "cannot be reached" in error.message and isinstance(error.__cause__, ConnectError)
    assert "the connection could not be opened" in caplog.text


class FlakyTransport:
    """Fails the first calls as scripted, then answers 200 (the transport seam)."""

    def __init__(self, *failures: OSError) -> None:
        self.failures = list(failures)
        self.calls = 0

    def post(self, url, body, headers, timeout_s):
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return HttpResponse(200, json.dumps({"responses": ["ok"]}).encode(), {})


def test_a_connection_lost_before_any_answer_is_retried(fake_time):
    transport = FlakyTransport(ConnectionLostError("reset", url="http://x/score"), ConnectionRefusedError(111, "refused"))
    handle = azure_handle("http://127.0.0.1:9/score", fake_time, transport=transport)
    assert handle.query("x")["responses"] == ["ok"]
    assert transport.calls == 3 and fake_time.sleeps == [0.25, 0.5]


def test_a_read_timeout_after_sending_is_not_retried(server, fake_time):
    server.answer(Reply(delay_s=1.5))
    handle = azure_handle(server.url, fake_time, timeout_s=0.3)
    with pytest.raises(RequestTimeoutError) as raised:
        handle.query("x")
    assert raised.value.timeout_s == 0.3 and raised.value.tries == 1
    assert "not retried" in raised.value.message
    time.sleep(1.4)  # let the slow reply finish before counting
    assert len(server.seen) == 1 and fake_time.sleeps == []


def test_another_transport_failure_is_not_retried(fake_time):
    transport = FlakyTransport(OSError("something odd"))
    with pytest.raises(ServiceUnavailableError, match="something odd"):
        azure_handle("http://127.0.0.1:9/score", fake_time, transport=transport).query("x")
    assert transport.calls == 1


# --- connections ---------------------------------------------------------------------------------


def test_sequential_queries_reuse_one_keep_alive_connection(server):
    handle = Deployment("d", target="local", scoring_uri=server.url, backend=Backend())
    for index in range(6):
        assert handle.query(f"q{index}")["responses"] == [f"q{index}"]
    assert server.connections == 1 and len(server.seen) == 6


def test_a_connection_the_server_closed_is_replaced(server):
    server.answer(Reply(close=True), Reply(headers={"Connection": "close"}))
    handle = Deployment("d", target="local", scoring_uri=server.url, backend=Backend())
    assert [handle.query(f"q{index}")["responses"] for index in range(4)] == [["q0"], ["q1"], ["q2"], ["q3"]]
    assert server.connections == 3


def test_a_kept_connection_found_dead_when_used_is_sent_again_on_a_new_one(server, monkeypatch):
    """The race of a server's keep-alive timeout with the next request: the first check passes, the
    socket is closed under it; the transport sends once more on a fresh connection, which the handle
    does not count as a retry."""
    server.answer(Reply(close=True))
    handle = Deployment("d", target="local", scoring_uri=server.url, backend=Backend(), retries=0)
    assert handle.query("first")["responses"] == ["first"]
    time.sleep(0.2)
    monkeypatch.setattr(http_transport, "_still_open", lambda connection: True)
    assert handle.query("second")["responses"] == ["second"]
    assert server.connections == 2 and len(server.seen) == 2


def test_32_concurrent_queries_each_get_their_own_answer(server):
    handle = Deployment("d", target="local", scoring_uri=server.url, backend=Backend())
    server.answer(*[Reply(delay_s=0.05)] * 64)
    with ThreadPoolExecutor(max_workers=32) as pool:
        answers = list(pool.map(lambda index: handle.query(f"query {index}")["responses"], range(96)))
    assert answers == [[f"query {index}"] for index in range(96)]
    assert server.connections <= 32 + 1
    handle.close()


def test_the_auth_provider_is_called_per_request_and_the_deployment_header_sent(server, fake_time):
    tokens = iter(f"token-{index}" for index in range(1, 10))
    calls = []

    def auth() -> dict[str, str]:
        calls.append(1)
        return {"Authorization": f"Bearer {next(tokens)}"}

    server.answer(Reply(429, {"message": "Too many requests"}, {"Retry-After": "1"}))
    handle = azure_handle(server.url, fake_time, auth=auth)
    handle.query("a")
    handle.query("b")
    assert len(calls) == 3
    assert [seen.headers["authorization"] for seen in server.seen] == ["Bearer token-1", "Bearer token-2", "Bearer token-3"]
    assert {seen.headers[MODEL_DEPLOYMENT_HEADER] for seen in server.seen} == {"blue"}
    assert {seen.headers["content-type"] for seen in server.seen} == {"application/json"}


# --- secrets -------------------------------------------------------------------------------------


def _echo_the_key(headers) -> dict[str, Any]:
    """A misbehaving server that repeats the credential it got in its error message."""
    return error_body("bad_request", f"bad request from {headers.get('Authorization')}")


def test_the_key_is_never_in_reprs_errors_or_logs(server, fake_time, caplog):
    caplog.set_level(logging.DEBUG)
    handle = azure_handle(server.url, fake_time)
    static = Deployment(
        "s",
        target="azure",
        scoring_uri=server.url,
        backend=Backend(),
        headers={"Authorization": f"Bearer {KEY}"},
        retries=Retries(sleep=fake_time.sleep, clock=fake_time.clock),
    )
    raised: list[BaseException] = []
    scripts = [
        [Reply(424, _echo_the_key, front(400))],
        [Reply(401, _echo_the_key)],
        [Reply(404, _echo_the_key)],
        [Reply(408, _echo_the_key)],
        [Reply(429, _echo_the_key, {"Retry-After": "1"})] * 4,
        [Reply(503, _echo_the_key, {"Retry-After": "1"})] * 4,
        [Reply(424, _echo_the_key, {"ms-azureml-model-error-statuscode": "500"})],
    ]
    for script in scripts:
        for target in (handle, static):
            server.answer(*script)
            with pytest.raises(MiiAzureError) as error:
                target.query("x")
            raised.append(error.value)
    with pytest.raises(ServiceUnavailableError) as error:
        azure_handle(f"http://127.0.0.1:{_closed_port()}/score", fake_time).query("x")
    raised.append(error.value)
    assert any(seen.headers.get("authorization") == f"Bearer {KEY}" for seen in server.seen)  # it was sent
    assert any("***" in str(error) for error in raised)  # and scrubbed where the server echoed it
    shown = [repr(handle), str(handle), repr(static), repr(vars(handle)), repr(vars(static)), caplog.text]
    shown += [str(error) for error in raised] + [repr(error.facts) for error in raised]
    shown += [repr(error) for error in raised]
    for text in shown:
        assert KEY not in text


def test_repr_names_the_endpoint_and_deployment(fake_time):
    handle = azure_handle("https://gpt2-endpoint.westeurope.inference.ml.azure.com/score", fake_time)
    assert repr(handle) == (
        "Deployment(name='gpt2-prod', target='azure', "
        "scoring_uri='https://gpt2-endpoint.westeurope.inference.ml.azure.com/score', "
        "endpoint='gpt2-endpoint', deployment='blue')"
    )


def test_an_endpoint_root_as_scoring_uri_is_queried_at_its_score_route(server, fake_time):
    """Azure ML reports the endpoint's root as the scoring URI of a deployment whose scoring route is /."""
    root = server.url[: -len("score")]
    handle = azure_handle(root, fake_time)
    assert handle.scoring_uri == server.url and handle.query("hi")["responses"] == ["hi"]
    assert server.seen[-1].path == "/score"
    assert handle.openai_base_url == root + "v1"


@pytest.mark.parametrize(
    "uri, base",
    [
        ("https://chat.westeurope.inference.ml.azure.com/", "https://chat.westeurope.inference.ml.azure.com/v1"),
        ("https://chat.westeurope.inference.ml.azure.com/score", "https://chat.westeurope.inference.ml.azure.com/v1"),
        ("http://127.0.0.1:5001/score", "http://127.0.0.1:5001/v1"),
    ],
)
def test_the_openai_base_url_is_v1_beside_score(uri, base, fake_time):
    assert azure_handle(uri, fake_time).openai_base_url == base


# --- HTTPS ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> dict[str, Path]:
    """A self-signed CA and a server certificate for 127.0.0.1 signed by it, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    import ipaddress

    folder = tmp_path_factory.mktemp("tls")
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mii-azure test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = {"ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


@pytest.fixture
def tls_server(certificates) -> Iterator[ScriptedServer]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificates["cert"], certificates["key"])
    running = ScriptedServer(tls=context)
    yield running
    running.stop()


@pytest.mark.parametrize("variable", ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"])
def test_https_trusts_the_ca_named_by_the_environment_and_keeps_alive(tls_server, certificates, fake_time, monkeypatch, variable):
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, str(certificates["ca"]))
    tls_server.answer(Reply(424, error_body("bad_request", "no such field"), front(400)))
    handle = azure_handle(tls_server.url, fake_time)
    with pytest.raises(BadRequestError, match="no such field"):
        handle.query("x")
    assert [handle.query(f"q{index}")["responses"] for index in range(3)] == [["q0"], ["q1"], ["q2"]]
    assert tls_server.connections == 1
    assert tls_server.seen[0].headers["authorization"] == f"Bearer {KEY}"


def test_https_refuses_an_untrusted_certificate_without_retrying(tls_server, fake_time, monkeypatch):
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="SSL_CERT_FILE") as raised:
        azure_handle(tls_server.url, fake_time).query("x")
    assert "not trusted" in raised.value.message and raised.value.tries == 1
    assert fake_time.sleeps == [] and tls_server.seen == []


def test_a_missing_ca_bundle_is_a_config_error(tls_server, tmp_path, fake_time, monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "nope.pem"))
    with pytest.raises(ConfigError, match="REQUESTS_CA_BUNDLE"):
        azure_handle(tls_server.url, fake_time).query("x")


def test_the_pool_closes_its_idle_connections(server):
    transport = PooledTransport()
    handle = Deployment("d", target="local", scoring_uri=server.url, backend=Backend(), transport=transport)
    handle.query("x")
    assert "idle_connections=1" in repr(transport)
    handle.close()
    assert "idle_connections=0" in repr(transport)
    handle.query("y")
    assert server.connections == 2


def test_new_errors_are_public():
    for name in ("TooManyRequestsError", "AuthenticationError", "EndpointNotFoundError"):
        assert name in mii_azure.__all__ and issubclass(getattr(mii_azure, name), mii_azure.RequestError)
    assert issubclass(mii_azure.EndpointNotFoundError, errors.DeploymentNotFoundError)
