"""Fixtures of the Azure tests: loopback fakes of Azure, and the real ``azure.ai.ml.MLClient`` against them.

What runs (started once per session, state reset for every test):

- :mod:`fake_arm`: an HTTPS fake of the Azure Resource Manager for one workspace;
- :mod:`azurite`: the real Azurite blob emulator (``scripts/install.sh`` installs it into ``.node/``);
- :mod:`front`: an Azure-like scoring front per endpoint, before real inference servers running what
  the tests uploaded. The deployment's *environment is not built* (no Docker here): its server runs
  in this test process's Python environment, with the uploaded code and model.

How MLClient reaches them (azure-ai-ml 1.35.2): a custom cloud::

    MLClient(credential, subscription_id, resource_group, workspace_name,
             cloud="MiiAzureFake<port>",
             cloud_metadata={"resource_manager": "https://127.0.0.1:<arm port>/",
                             "storage_endpoint": "core.miiazure.test:<azurite port>",
                             "aml_resource_id": "https://ml.azure.com/", ...},
             enable_telemetry=False, show_progress=False)

(``fake.cloud_kwargs`` holds every keyword after the workspace triple.) ``AZUREML_DEV_URL_MFE``
would move only the Resource Manager; the custom cloud moves the blob storage too. The SDK builds
blob URLs as ``https://devstoreaccount1.blob.core.miiazure.test:<port>`` (azure-storage-blob wants
``.blob.core.`` in an account-key URL's host) and Azurite takes the account name from the host's
first label.

While an Azure test runs (``azure_fake``, or ``fake.patched_environment()`` in a wider-scoped
fixture), this process: resolves host names under ``miiazure.test`` to 127.0.0.1 and refuses to
resolve or connect to anything that is not loopback (the attempt is recorded and fails the test);
trusts only the test CA (``REQUESTS_CA_BUNDLE``, ``SSL_CERT_FILE``); uses no proxy; and has
``AZUREML_CURRENT_CLOUD`` set to the fake cloud (azure-ai-ml reads the storage endpoint of "the
current cloud" during uploads). All of it is undone after the test.

Every test under ``tests/azure`` is marked ``azure`` automatically.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pytest

if str(Path(__file__).resolve().parent) not in sys.path:  # pytest's default import mode put it there already
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from azurite import Azurite, AzuriteError  # noqa: E402
from certs import TEST_DOMAIN, LoopbackPki, make_test_pki  # noqa: E402
from fake_arm import FakeArm, FakeArmState, FakeCredential  # noqa: E402
from front import EndpointFront, ScoringFront  # noqa: E402

_HERE = Path(__file__).resolve().parent

#: Credential-related variables cleared so that azure-identity sees only what a fixture sets.
IDENTITY_VARIABLES = (
    "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_TENANT_ID", "AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_CLIENT_CERTIFICATE_PASSWORD", "AZURE_CLIENT_SEND_CERTIFICATE_CHAIN", "AZURE_USERNAME", "AZURE_PASSWORD",
    "AZURE_FEDERATED_TOKEN_FILE", "AZURE_AUTHORITY_HOST", "AZURE_TOKEN_CREDENTIALS", "AZURE_POD_IDENTITY_AUTHORITY_HOST",
    "IDENTITY_ENDPOINT", "IDENTITY_HEADER", "IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT", "MSI_ENDPOINT", "MSI_SECRET",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test of this folder ``azure``."""
    for item in items:
        if _HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.azure)


@dataclass
class AzureFake:
    """Handle on the running fakes, given to tests by the ``azure_fake`` fixture."""

    arm: FakeArm
    azurite: Azurite
    front: ScoringFront
    pki: LoopbackPki
    credential: FakeCredential
    ml_client: Any
    cloud_name: str
    cloud_metadata: dict[str, str]
    #: Non-loopback resolutions or connections this process attempted during Azure tests.
    blocked: list[str] = field(default_factory=list)

    @property
    def state(self) -> FakeArmState:
        """The fake's state: recorded requests, assets, endpoints, fault injection."""
        return self.arm.state

    @property
    def subscription_id(self) -> str:
        """The fake workspace's subscription."""
        return self.state.subscription_id

    @property
    def resource_group(self) -> str:
        """The fake workspace's resource group."""
        return self.state.resource_group

    @property
    def workspace_name(self) -> str:
        """The fake workspace's name."""
        return self.state.workspace_name

    @property
    def location(self) -> str:
        """The fake workspace's region (``eastus``)."""
        return self.state.location

    @property
    def tenant_id(self) -> str:
        """The tenant in the tokens the fakes issue."""
        return self.state.tenant_id

    @property
    def datastore_container(self) -> str:
        """The blob container of the ``workspaceblobstore`` datastore."""
        return self.state.blob_container

    @property
    def cloud_kwargs(self) -> dict[str, Any]:
        """The keyword arguments that point an MLClient at the fake (cloud, metadata, no telemetry)."""
        return {
            "cloud": self.cloud_name,
            "cloud_metadata": dict(self.cloud_metadata),
            "enable_telemetry": False,
            "show_progress": False,
        }

    def make_ml_client(self, credential: Any = None, **overrides: Any) -> Any:
        """Another real MLClient for the fake workspace (``credential`` defaults to the fake one)."""
        from azure.ai.ml import MLClient

        arguments: dict[str, Any] = {
            "subscription_id": self.subscription_id,
            "resource_group_name": self.resource_group,
            "workspace_name": self.workspace_name,
            **self.cloud_kwargs,
            **overrides,
        }
        return MLClient(credential or self.credential, **arguments)

    def config_json(self, directory: Path) -> Path:
        """Write ``config.json`` (Azure ML's workspace config) into ``directory`` for ``MLClient.from_config``.

        ``MLClient.from_config(credential, path=..., **fake.cloud_kwargs)`` then reaches the fake.
        """
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "config.json"
        path.write_text(json.dumps({
            "subscription_id": self.subscription_id,
            "resource_group": self.resource_group,
            "workspace_name": self.workspace_name,
        }, indent=2), encoding="utf-8")
        return path

    def blob_names(self, container: Optional[str] = None, prefix: Optional[str] = None) -> list[str]:
        """Blob names in ``container`` of Azurite (default: the workspace's datastore container)."""
        return self.azurite.blob_names(container or self.datastore_container, prefix)

    def containers(self) -> list[str]:
        """Every container in Azurite (code uploads get a container each)."""
        return sorted(c.name for c in self.azurite.service_client().list_containers())

    def endpoint_front(self, name: str) -> Optional[EndpointFront]:
        """The scoring front of endpoint ``name`` (its request log, its port)."""
        return self.front.get(name)

    def managed_identity_env(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Make ``DefaultAzureCredential()`` resolve to ManagedIdentityCredential against the fake.

        Sets App Service style ``IDENTITY_ENDPOINT`` (the fake's ``/msi/token``) and ``IDENTITY_HEADER``
        and clears every other credential variable, so azure-identity never probes the IMDS address.
        """
        for name in IDENTITY_VARIABLES:
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("IDENTITY_ENDPOINT", self.arm.msi_endpoint)
        monkeypatch.setenv("IDENTITY_HEADER", self.state.identity_header)

    def reset(self) -> None:
        """Fresh fake state: no assets, endpoints, faults or recorded requests; servers stopped."""
        self.arm.reset()
        self.credential.scopes.clear()
        self.blocked.clear()

    @contextlib.contextmanager
    def patched_environment(self) -> Iterator["AzureFake"]:
        """Loopback-only name resolution and connections, the test CA, no proxy, the fake cloud current."""
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(socket, "getaddrinfo", _loopback_getaddrinfo(socket.getaddrinfo, self.blocked))
            patch.setattr(socket.socket, "connect", _loopback_connect(socket.socket.connect, self.blocked))
            patch.setattr(socket.socket, "connect_ex", _loopback_connect(socket.socket.connect_ex, self.blocked))
            for name in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE"):
                patch.setenv(name, str(self.pki.ca_path))
            loopback = f"127.0.0.1,localhost,.{TEST_DOMAIN}"
            for name in ("NO_PROXY", "no_proxy"):
                patch.setenv(name, loopback)
            for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
                patch.delenv(name, raising=False)
            patch.setenv("AZUREML_CURRENT_CLOUD", self.cloud_name)
            yield self


# ------------------------------------------------------------------------------------------ loopback guard


def _is_test_host(name: str) -> bool:
    return name == TEST_DOMAIN or name.endswith("." + TEST_DOMAIN)


def _is_loopback(host: str) -> bool:
    if host in ("localhost", "") or _is_test_host(host):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _loopback_getaddrinfo(original: Any, blocked: list[str]) -> Any:
    """getaddrinfo that maps the test domain to 127.0.0.1 and refuses every other non-loopback name."""

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if isinstance(name, str) and _is_test_host(name):
            return original("127.0.0.1", *args, **kwargs)
        if name is None or (isinstance(name, str) and _is_loopback(name)):
            return original(host, *args, **kwargs)
        blocked.append(f"resolve {name!r}")
        raise socket.gaierror(socket.EAI_NONAME, f"{name!r}: the Azure tests resolve loopback names only")

    return getaddrinfo


def _loopback_connect(original: Any, blocked: list[str]) -> Any:
    """socket.connect (or connect_ex) that refuses any address that is not loopback."""

    def connect(sock: socket.socket, address: Any) -> Any:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple):
            host = str(address[0])
            if not _is_loopback(host):
                blocked.append(f"connect {host}:{address[1]}")
                raise ConnectionRefusedError(f"{host}: the Azure tests connect to loopback addresses only")
        return original(sock, address)

    return connect


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def azure_pki(tmp_path_factory: pytest.TempPathFactory) -> LoopbackPki:
    """The test CA and the server certificate (127.0.0.1 and ``*.blob.core.miiazure.test``)."""
    return make_test_pki(tmp_path_factory.mktemp("azure-pki"))


@pytest.fixture(scope="session")
def azurite_server(tmp_path_factory: pytest.TempPathFactory, azure_pki: LoopbackPki) -> Iterator[Azurite]:
    """The real Azurite blob service on 127.0.0.1 (HTTPS with the test certificate)."""
    try:
        server = Azurite(tmp_path_factory.mktemp("azurite"), azure_pki).start()
    except AzuriteError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def azure_fake_session(tmp_path_factory: pytest.TempPathFactory, azure_pki: LoopbackPki,
                       azurite_server: Azurite) -> Iterator[AzureFake]:
    """The fakes and a real MLClient, once per session. Tests use ``azure_fake`` (clean state, patched
    environment); a module- or session-scoped fixture that calls Azure wraps its work in
    ``fake.patched_environment()``."""
    from azure.ai.ml import MLClient

    front = ScoringFront(azure_pki)
    arm = FakeArm(root=tmp_path_factory.mktemp("fake-arm"), pki=azure_pki, azurite=azurite_server,
                  front=front).start()
    cloud_name = f"MiiAzureFake{arm.port}"
    cloud_metadata = {
        "azure_portal": f"{arm.base_url}/portal/",
        "resource_manager": f"{arm.base_url}/",
        "active_directory": f"{arm.base_url}/aad/",
        "aml_resource_id": "https://ml.azure.com/",
        "storage_endpoint": arm.storage_endpoint,
        "registry_discovery_endpoint": f"{arm.base_url}/",
    }
    credential = FakeCredential(arm.state.tenant_id)
    try:
        with pytest.MonkeyPatch.context() as patch:
            # MLClient writes AZUREML_CURRENT_CLOUD: this puts the original value back at once.
            patch.setenv("AZUREML_CURRENT_CLOUD", cloud_name)
            ml_client = MLClient(
                credential,
                subscription_id=arm.state.subscription_id,
                resource_group_name=arm.state.resource_group,
                workspace_name=arm.state.workspace_name,
                cloud=cloud_name,
                cloud_metadata=cloud_metadata,
                enable_telemetry=False,
                show_progress=False,
            )
        yield AzureFake(arm=arm, azurite=azurite_server, front=front, pki=azure_pki, credential=credential,
                        ml_client=ml_client, cloud_name=cloud_name, cloud_metadata=cloud_metadata)
    finally:
        arm.stop()


@pytest.fixture
def azure_fake(azure_fake_session: AzureFake) -> Iterator[AzureFake]:
    """The fakes with a fresh state for this test, and this process's environment patched for them
    (loopback only, the test CA, the fake cloud current). Fails the test if anything tried to reach a
    non-loopback address."""
    fake = azure_fake_session
    fake.reset()
    with fake.patched_environment():
        yield fake
    blocked = list(fake.blocked)
    fake.reset()
    if blocked:
        pytest.fail(f"The test tried to reach non-loopback addresses: {blocked}", pytrace=False)


@pytest.fixture
def managed_identity(azure_fake: AzureFake, monkeypatch: pytest.MonkeyPatch) -> AzureFake:
    """``azure_fake`` with the environment set so that ``DefaultAzureCredential()`` is a managed identity
    whose token endpoint is the fake (no IMDS probe, no other credential variable)."""
    azure_fake.managed_identity_env(monkeypatch)
    return azure_fake


@pytest.fixture(scope="session")
def azure_gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random GPT-2 folder (built by tests/model_factory.py) to register and serve."""
    import model_factory

    return model_factory.build_gpt2(tmp_path_factory.mktemp("azure-models") / f"tiny-gpt2-{uuid.uuid4().hex[:6]}")


@pytest.fixture(scope="session")
def azure_package(tmp_path_factory: pytest.TempPathFactory, azure_gpt2_dir: Path) -> Any:
    """``mii_azure.package(azure_gpt2_dir)``: score.py, the runtime snapshot, conda.yml, the model link."""
    import mii_azure

    return mii_azure.package(azure_gpt2_dir, output=tmp_path_factory.mktemp("azure-package") / "pkg", name="tiny-gpt2")
