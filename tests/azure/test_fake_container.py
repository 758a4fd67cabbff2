"""How the fake adapts a custom container's command (fake_container.py): only the image's Python and the
published port change, and a command or routes it cannot adapt fail with what was expected."""

from __future__ import annotations

import json
import sys

import pytest
from fake_container import ContainerRoutes, FakeContainerError, image_command

from mii_azure.serving_image import ENTRYPOINT, ENV_PREFIX, write_build_context

pytestmark = pytest.mark.azure


def _environment(**routes: dict) -> dict:
    return {"properties": {"inferenceConfig": {f"{name}Route": route for name, route in routes.items()}}}


def test_the_packages_own_command_is_run_with_this_python_on_a_loopback_port(tmp_path):
    write_build_context(tmp_path, gpu=False)
    command = image_command((tmp_path / "Dockerfile").read_text(), python_prefix=ENV_PREFIX, container_port=5001,
                            host_port=40123)
    expected = ENTRYPOINT[-1].replace(f"{ENV_PREFIX}/bin/python", sys.executable)
    assert command == [*ENTRYPOINT[:-1], expected.replace("--host 0.0.0.0 --port 5001", "--host 127.0.0.1 --port 40123")]


def test_a_command_without_the_expected_parts_is_refused():
    with pytest.raises(FakeContainerError, match="no ENTRYPOINT"):
        image_command("FROM x\nCMD python serve.py\n", python_prefix=ENV_PREFIX, container_port=5001, host_port=1)
    other_port = f"ENTRYPOINT {json.dumps(['/bin/sh', '-c', f'{ENV_PREFIX}/bin/python x.py --host 0.0.0.0 --port 8000'])}"
    with pytest.raises(FakeContainerError, match="--port 5001"):
        image_command(other_port, python_prefix=ENV_PREFIX, container_port=5001, host_port=1)


def test_routes_are_read_from_the_environment_and_must_share_one_port():
    assert ContainerRoutes.from_environment({"properties": {}}) is None
    routes = ContainerRoutes.from_environment(_environment(
        liveness={"port": 5001, "path": "/"}, readiness={"port": 5001, "path": "/ready"}, scoring={"port": 5001, "path": "/"}
    ))
    assert routes == ContainerRoutes(5001, "/", "/ready", "/")
    with pytest.raises(FakeContainerError, match=r"\[5001, 8000\]"):
        ContainerRoutes.from_environment(_environment(
            liveness={"port": 5001, "path": "/"}, readiness={"port": 5001, "path": "/"}, scoring={"port": 8000, "path": "/"}
        ))
    with pytest.raises(FakeContainerError, match="scoring"):
        ContainerRoutes.from_environment(_environment(liveness={"port": 5001, "path": "/"}, readiness={"port": 5001, "path": "/"}))
