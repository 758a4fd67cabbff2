"""The notebooks run top to bottom in a real Jupyter kernel (nbclient), as a user runs them.

Each test executes a notebook in memory (outputs are never written back), then one extra cell the
test adds prints the values it checks as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import pytest

pytestmark = [pytest.mark.serving, pytest.mark.harness]

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
_FACTS = "__facts__:"


def run_notebook(path: Path, cwd: Path, facts: Optional[str] = None, timeout_s: int = 600) -> tuple[str, Any]:
    """Execute ``path`` in a fresh kernel in ``cwd``; everything its cells printed, and the JSON that the
    ``facts`` expression (evaluated in the notebook's namespace afterwards) gave."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.reads(path.read_text(), as_version=4)
    if facts is not None:
        notebook.cells.append(nbformat.v4.new_code_cell(f"import json as _json\nprint({_FACTS!r} + _json.dumps({facts}))"))
    NotebookClient(notebook, timeout=timeout_s, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    printed = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                printed.append(output["text"])
            elif output.get("output_type") in ("execute_result", "display_data"):
                printed.append(output.get("data", {}).get("text/plain", ""))
    text = "".join(printed)
    values = None
    if facts is not None:
        line = next(line for line in text.splitlines() if line.startswith(_FACTS))
        values = json.loads(line[len(_FACTS) :])
    return text, values


def test_every_notebook_has_a_test():
    tested = {"01-deploy-locally.ipynb", "02-deploy-to-azureml.ipynb", "03-compare-sku-costs.ipynb",
              "04-batch-scoring-and-pipelines.ipynb"}
    assert {path.name for path in NOTEBOOKS.glob("*.ipynb")} == tested


def test_deploy_locally(tmp_path):
    import mii_azure

    printed, facts = run_notebook(NOTEBOOKS / "01-deploy-locally.ipynb", tmp_path, facts="similarity")
    assert "feature-extraction minilm" in printed and "why:" in printed
    assert "400 Unknown parameter 'max_new_tokens'" in printed
    assert facts[1] > facts[2]
    assert "minilm" not in [deployment.name for deployment in mii_azure.list_deployments()], "the notebook deletes it"


@pytest.mark.azure  # needs azure-ai-ml, which the oldest-stack serving run does not install
def test_deploy_to_azureml_dry_run(tmp_path, monkeypatch):
    """The Azure notebook runs without a workspace: the dry run writes YAML that azure-ai-ml reads back."""
    monkeypatch.setenv("MII_AZURE_HOME", str(tmp_path / "home"))  # the kernel inherits the environment
    facts = (
        '{"package": str(run.package.path), "instance_type": deployment.instance_type, '
        '"spec_instance_type": run.spec.instance_type, "endpoint": endpoint.name}'
    )
    printed, values = run_notebook(NOTEBOOKS / "02-deploy-to-azureml.ipynb", tmp_path, facts=facts)
    assert Path(values["package"]) == (tmp_path / "minilm-package").resolve()
    assert values["instance_type"] == values["spec_instance_type"] == "Standard_NC4as_T4_v3"
    assert values["endpoint"] == "minilm-search"
    assert "az ml online-deployment create -f" in printed and "--all-traffic" in printed
    assert "strict=True" in printed and "SkuNotAvailableError" in printed
    assert "hf_not_a_real_token" not in printed, "a literal secret is refused without being echoed"


def test_compare_sku_costs_with_its_chart(tmp_path):
    facts = '{"best": best.instance_type, "meets": best.status, "rows": len(frame), "chart": str(chart), "small": len(small.estimates)}'
    printed, values = run_notebook(NOTEBOOKS / "03-compare-sku-costs.ipynb", tmp_path, facts=facts)
    assert values["meets"] == "ok" and values["best"] in printed
    assert values["rows"] >= 8 and values["small"] >= 4
    chart = Path(values["chart"])
    chart = chart if chart.is_absolute() else tmp_path / chart  # written in the notebook's folder
    assert chart.parent == tmp_path and chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.azure  # needs azure-ai-ml, which the oldest-stack serving run does not install
def test_batch_scoring_and_the_pipeline_step(tmp_path, monkeypatch):
    """Batch scoring here, then the pipeline component and the pipeline built and read back without a workspace."""
    monkeypatch.setenv("MII_AZURE_HOME", str(tmp_path / "home"))  # the kernel inherits the environment
    facts = (
        '{"answered": summary.answered, "errors": summary.errors, "skipped": again.skipped, "lines": len(records), '
        '"type": component.type, "steps": list(loaded.jobs), "nodes": parallel.resources.instance_count, '
        '"model": component.tags["mii_azure_model"]}'
    )
    printed, values = run_notebook(NOTEBOOKS / "04-batch-scoring-and-pipelines.ipynb", tmp_path, facts=facts)
    assert (values["answered"], values["errors"], values["skipped"], values["lines"]) == (3, 1, 4, 4)
    assert "3 error: bad_request" in printed and "384 dimensions" in printed
    assert values["type"] == "pipeline" and values["nodes"] == 4
    assert sorted(values["steps"]) == ["mii_batch_order", "mii_batch_score_parallel", "mii_batch_split"]
    assert values["model"].startswith("azureml:minilm-batch:")
    assert (tmp_path / "nightly.yml").is_file() and "default_compute: azureml:t4-cluster" in printed
