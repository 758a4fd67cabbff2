"""Provisioning of the fake's online deployments: it really runs what was uploaded.

For a deployment PUT the :class:`Provisioner` downloads the deployment's code version and model
version from Azurite into a folder laid out like Azure's
(``<root>/azureml-models/<model>/<version>/<registered folder>/...``; ``AZUREML_MODEL_DIR`` is
``<root>/azureml-models/<model>/<version>``), starts the real inference server
(:class:`mii_azure.targets.server_process.InferenceServerProcess`) on it with the deployment's
environment variables, and puts it behind the endpoint's front once it is ready. The deployment's
environment is **not** built (no Docker here): the server runs in the test's own Python
environment. A server that exits or is not ready in time fails the deployment with its last
exception line (``getLogs`` shows its log).

An environment with an ``inferenceConfig`` is a custom container: then the image's own command (its
Dockerfile's ``ENTRYPOINT``) runs instead, with only the image's Python and its published port
adapted (:mod:`fake_container`), readiness is its readiness route, and once it is ready the
endpoint's scoring URI becomes its scoring route (``https://127.0.0.1:<port>/`` for ``/``), as
Azure ML documents.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Optional
from urllib.parse import unquote, urlsplit

from azurite import Azurite
from fake_arm_state import DeploymentRecord, FakeArmState, iso_duration_ms
from fake_container import ContainerProcess, ContainerRoutes, FakeContainerError, image_command
from front import FrontDeployment, ScoringFront

__all__ = ["Provisioner"]

logger = logging.getLogger(__name__)

_DATASTORE_PATH = re.compile(r"datastores/(?P<store>[^/]+)/paths/(?P<path>.+)$", re.I)


class Provisioner:
    """Turns an accepted deployment into a running inference server behind the endpoint's front."""

    def __init__(self, state: FakeArmState, azurite: Azurite, front: ScoringFront) -> None:
        self.state = state
        self.azurite = azurite
        self.front = front

    def start(self, record: DeploymentRecord, generation: int, failure: Optional[str]) -> None:
        """Provision ``record`` in a background thread (``failure``: fail it with this message instead)."""
        threading.Thread(target=self._provision, args=(record, generation, failure),
                         name=f"provision-{record.endpoint}-{record.name}", daemon=True).start()

    def front_deployment(self, record: DeploymentRecord) -> FrontDeployment:
        """The front's view of a running deployment: its server and request settings."""
        properties = record.resource["properties"]
        settings = properties.get("requestSettings") or {}
        return FrontDeployment(
            name=record.name,
            base_url=record.server.base_url,
            request_timeout_ms=iso_duration_ms(settings.get("requestTimeout"), 5000),
            max_concurrent_requests_per_instance=int(settings.get("maxConcurrentRequestsPerInstance") or 1),
            instance_count=int((record.resource.get("sku") or {}).get("capacity") or 1),
        )

    def _provision(self, record: DeploymentRecord, generation: int, failure: Optional[str]) -> None:
        """Download code and model from Azurite, start the inference server, wait until it is ready."""
        try:
            self._provision_steps(record, generation, failure)
        except Exception as exc:  # noqa: BLE001 - any failure becomes the deployment's provisioning error
            logger.exception("provisioning %s/%s failed", record.endpoint, record.name)
            self._fail(record, generation, "ResourceNotReady", f"Provisioning failed: {exc}")

    def _current(self, record: DeploymentRecord, generation: int) -> bool:
        with self.state.lock:
            return record.generation == generation and not record.deleted

    def _fail(self, record: DeploymentRecord, generation: int, code: str, message: str) -> None:
        with self.state.lock:
            if record.generation != generation or record.deleted:
                return
            record.state = "Failed"
            record.error = {"code": code, "message": message}
            record.vcpus_in_use = 0

    def _provision_steps(self, record: DeploymentRecord, generation: int, failure: Optional[str]) -> None:
        root = self.state.root / "deployments" / f"{record.endpoint}-{record.name}-{generation}-{uuid.uuid4().hex[:6]}"
        root.mkdir(parents=True)
        with self.state.lock:
            record.root, record.log_path, record.storage_log = root, root / "inference-server.log", []
        if failure is not None:
            record.log_path.write_text(f"Injected failure: {failure}\n", encoding="utf-8")
            time.sleep(0.05)
            self._fail(record, generation, "ResourceNotReady", failure)
            return
        properties = record.resource["properties"]
        code_dir, scoring_script = self._download_code(record, properties, root)
        model_dir = self._download_model(record, properties, root)
        if not self._current(record, generation):
            return
        variables = {str(k): str(v) for k, v in (properties.get("environmentVariables") or {}).items()}
        environment = {**variables, "AML_APP_ROOT": str(code_dir), "AZUREML_ENTRY_SCRIPT": scoring_script}
        # The server must import what was uploaded, as in the Azure image, not what this venv or the
        # test's working directory hold (an editable mii_azure; the repository's own mii_azure/).
        # gunicorn inserts its working directory at sys.path[0] unless it is on sys.path already, so
        # the working directory goes on PYTHONPATH *after* the uploaded code.
        environment["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(code_dir), os.getcwd(), os.environ.get("PYTHONPATH")])
        )
        if model_dir is not None:
            environment["AZUREML_MODEL_DIR"] = str(model_dir)
        from mii_azure.errors import ModelLoadError

        server = self._server(record, properties, code_dir / scoring_script, model_dir or root, environment, variables)
        with self.state.lock:
            # Started under the lock: a delete either sees this server (and stops it) or came first.
            if not self._current(record, generation):
                return
            previous_server, record.server = record.server, server
            server.start()
        if previous_server is not None:
            previous_server.stop(timeout_s=10)
        try:
            server.wait_ready(timeout_s=self.state.ready_timeout_s)
        except ModelLoadError:
            cause = server.failure_cause() or "the server exited or did not answer its liveness route"
            self._fail(record, generation, "ResourceNotReady",
                       f"User container has crashed or terminated: {cause}. Please see troubleshooting guide, "
                       "available here: https://aka.ms/oe-tsg#error-resourcenotready")
            server.stop(timeout_s=10)
            return
        with self.state.lock:
            if record.generation != generation or record.deleted:
                server.stop(timeout_s=10)
                return
            record.state = "Succeeded"
            front = self.front.get(record.endpoint)
            routes = getattr(server, "routes", None)
            endpoint = self.state.endpoints.get(record.endpoint.lower())
            if routes is not None and endpoint is not None and front is not None:
                # Azure ML: a deployment of a custom container sets the endpoint's scoring URI to its scoring route.
                endpoint.scoring_path = routes.scoring_path
                endpoint.resource["properties"]["scoringUri"] = front.uri(routes.scoring_path)
            if front is not None:
                front.set_deployment(self.front_deployment(record))

    def _environment(self, properties: dict[str, Any]) -> Optional[dict[str, Any]]:
        """The deployment's environment version resource (None for one outside the workspace)."""
        reference = str(properties.get("environmentId") or "")
        if not re.search(r"/environments/[^/]+/versions/[^/]+$", reference, re.I):
            return None  # a registry or curated environment: nothing of it is known to the fake
        return self._resolve_asset("environments", reference)

    def _server(self, record: DeploymentRecord, properties: dict[str, Any], entry_script: Path, model_dir: Path,
                environment: dict[str, str], variables: dict[str, str]) -> Any:
        """What runs the deployment: with an ``inferenceConfig``, the image's own command on the container
        port's published loopback port (:mod:`fake_container`); without, Azure ML's inference server for
        the scoring script, as the local launcher runs it."""
        from mii_azure.runtime.ports import free_port
        from mii_azure.serving_image import ENV_PREFIX
        from mii_azure.targets.server_process import InferenceServerProcess

        workers = int(variables.get("WORKER_COUNT", "1") or 1)
        environment_resource = self._environment(properties)
        routes = ContainerRoutes.from_environment(environment_resource) if environment_resource else None
        if routes is None:
            return InferenceServerProcess(
                model_dir,
                log_path=record.log_path,
                entry_script=entry_script,
                environment=environment,
                threads=_gunicorn_threads(variables.get("GUNICORN_CMD_ARGS", "")),
                workers=workers,
            )
        port = free_port()
        command = image_command(self._dockerfile(record, environment_resource), python_prefix=ENV_PREFIX,
                                container_port=routes.port, host_port=port)
        record.storage_log.append(f"Container port {routes.port} published on 127.0.0.1:{port}")
        return ContainerProcess(model_dir, log_path=record.log_path, port=port, entry_script=entry_script,
                                environment=environment, workers=workers, command=command, routes=routes)

    def _dockerfile(self, record: DeploymentRecord, environment: dict[str, Any]) -> str:
        """The Dockerfile of the environment's build context, from storage."""
        build = (environment.get("properties") or {}).get("build") or {}
        if not build.get("contextUri"):
            raise FakeContainerError("the environment has an inferenceConfig but no build context: the fake reads "
                                     "the image's command from its Dockerfile")
        container, prefix = self._blob_location(build["contextUri"])
        name = f"{prefix.strip('/')}/{build.get('dockerfilePath') or 'Dockerfile'}".lstrip("/")
        destination = record.root / "image" / "Dockerfile"
        if not self.azurite.download_blob(container, name, destination):
            raise FakeContainerError(f"no Dockerfile in storage at {container}/{name}")
        return destination.read_text(encoding="utf-8")

    def _resolve_asset(self, kind: str, reference: str) -> dict[str, Any]:
        match = re.search(rf"/{kind}/(?P<name>[^/]+)/versions/(?P<version>[^/]+)$", reference or "", re.I)
        if not match:
            raise ValueError(f"cannot resolve {kind} reference {reference!r} (the fake knows only workspace assets)")
        with self.state.lock:
            resource = self.state.versions[kind].get(match["name"], {}).get(match["version"])
        if resource is None:
            raise ValueError(f"{kind} {match['name']}:{match['version']} does not exist in the workspace")
        return resource

    def _blob_location(self, uri: str) -> tuple[str, str]:
        """(container, prefix) of an ``azureml://.../datastores/<d>/paths/<p>`` or blob https URL."""
        match = _DATASTORE_PATH.search(uri)
        if match:
            if match["store"].lower() != "workspaceblobstore":
                raise ValueError(f"datastore {match['store']!r} is not known to the fake")
            return self.state.blob_container, match["path"].strip("/")
        parts = urlsplit(uri)
        if parts.scheme in ("https", "http"):
            segments = unquote(parts.path).strip("/").split("/", 1)
            return segments[0], segments[1] if len(segments) > 1 else ""
        raise ValueError(f"cannot locate {uri!r} in storage")

    def _download(self, record: DeploymentRecord, uri: str, destination: Path) -> list[Path]:
        """Download the folder at ``uri`` into the folder ``destination`` or, when ``uri`` names one
        blob (a model registered from a single file), that blob to the file ``destination``."""
        container, prefix = self._blob_location(uri)
        record.storage_log.append(f"Downloading {container}/{prefix} to {destination}")
        files = self.azurite.download_prefix(container, prefix, destination)
        if not files and prefix and self.azurite.download_blob(container, prefix, destination):
            files = [destination]
        record.storage_log.append(f"Downloaded {len(files)} files from {container}/{prefix}")
        if not files:
            raise ValueError(f"nothing found in storage at {uri}")
        return files

    def _download_code(self, record: DeploymentRecord, properties: dict[str, Any], root: Path) -> tuple[Path, str]:
        configuration = properties.get("codeConfiguration") or {}
        if not configuration.get("codeId"):
            raise ValueError("the deployment has no codeConfiguration.codeId (the fake serves only scoring scripts)")
        code = self._resolve_asset("codes", configuration["codeId"])
        code_dir = root / "code"
        self._download(record, code["properties"]["codeUri"], code_dir)
        script = str(configuration.get("scoringScript") or "score.py")
        if not (code_dir / script).is_file():
            raise ValueError(f"the scoring script {script!r} is not in the uploaded code")
        return code_dir, script

    def _download_model(self, record: DeploymentRecord, properties: dict[str, Any], root: Path) -> Optional[Path]:
        reference = properties.get("model")
        if not reference:
            return None
        model = self._resolve_asset("models", reference)
        model_dir = root / "azureml-models" / model["id"].split("/")[-3] / model["name"]
        uri = model["properties"]["modelUri"]
        registered = self._blob_location(uri)[1].rstrip("/").rsplit("/", 1)[-1]
        self._download(record, uri, model_dir / registered)
        return model_dir


def _gunicorn_threads(arguments: str) -> int:
    match = re.search(r"--threads[ =](\d+)", arguments)
    return int(match.group(1)) if match else 8
