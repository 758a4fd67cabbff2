"""The notebooks run top to bottom (their code cells, in order, in one namespace)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.serving, pytest.mark.harness]

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def run_notebook(path: Path) -> tuple[dict, str]:
    """Execute the code cells of ``path``; the resulting namespace and everything printed."""
    namespace: dict = {"__name__": "__main__"}
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] == "code":
                exec(compile("".join(cell["source"]), path.name, "exec"), namespace)
    return namespace, output.getvalue()


def test_every_notebook_has_a_test():
    tested = {"01-deploy-locally.ipynb", "02-deploy-to-azureml.ipynb"}
    assert {path.name for path in NOTEBOOKS.glob("*.ipynb")} == tested


def test_deploy_locally(monkeypatch, tmp_path):
    import mii_azure

    monkeypatch.chdir(tmp_path)
    namespace, printed = run_notebook(NOTEBOOKS / "01-deploy-locally.ipynb")
    assert "feature-extraction minilm" in printed and "why:" in printed
    assert "400 Unknown parameter 'max_new_tokens'" in printed
    assert namespace["similarity"][1] > namespace["similarity"][2]
    assert "minilm" not in [deployment.name for deployment in mii_azure.list_deployments()], "the notebook deletes it"


@pytest.mark.azure  # needs azure-ai-ml, which the oldest-stack serving run does not install
def test_deploy_to_azureml_dry_run(monkeypatch, tmp_path):
    """The Azure notebook runs without a workspace: the dry run writes YAML that azure-ai-ml reads back."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MII_AZURE_HOME", str(tmp_path / "home"))
    namespace, printed = run_notebook(NOTEBOOKS / "02-deploy-to-azureml.ipynb")
    run = namespace["run"]
    assert run.package.path == (tmp_path / "minilm-package").resolve()
    assert namespace["deployment"].instance_type == run.spec.instance_type == "Standard_NC4as_T4_v3"
    assert namespace["endpoint"].name == "minilm-search"
    assert "az ml online-deployment create -f" in printed and "--all-traffic" in printed
    assert "strict=True" in printed and "SkuNotAvailableError" in printed
    assert "hf_not_a_real_token" not in printed, "a literal secret is refused without being echoed"
