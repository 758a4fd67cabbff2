"""Packages (DESIGN section 5): manifest, hashes, links not copies, moves, Azure ML specs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import time
from pathlib import Path

import pytest

from mii_azure.cli import main
from mii_azure.errors import ConfigError
from mii_azure.packaging import MANIFEST_FILE, Package, PackageError, package

FACTORY_MODELS = ("gpt2", "bert_fill_mask", "stable_diffusion")


@pytest.fixture(scope="module")
def gpt2_package(model_dirs, tmp_path_factory) -> Package:
    return package(model_dirs["gpt2"], output=tmp_path_factory.mktemp("pkg") / "gpt2")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_manifest_describes_the_deployment(gpt2_package, model_dirs):
    manifest = json.loads((gpt2_package.path / MANIFEST_FILE).read_text())
    assert manifest["schema_version"] == 1
    assert manifest["name"] == "gpt2" and manifest["task"] == "text-generation"
    assert manifest["model"]["source"] == "local"
    assert manifest["model"]["linked_from"] == str(Path(model_dirs["gpt2"]).resolve())
    assert manifest["plan"]["task"] == "text-generation" and manifest["plan"]["reasons"]["dtype"]
    assert manifest["settings"]["deployment_name"] == "gpt2"
    for name in ("torch", "transformers", "azureml-inference-server-http", "pydantic"):
        assert manifest["versions"][name]
    assert manifest["image"].startswith("mcr.microsoft.com/azureml/")
    assert (gpt2_package.path / manifest["conda_file"]).is_file()


def test_every_code_file_is_hashed(gpt2_package):
    files = gpt2_package.manifest.files
    assert {"score.py", "launch.py", "mii_azure/__init__.py", "mii_azure/runtime/service.py"} <= set(files)
    code = [p for p in gpt2_package.path.rglob("*.py") if "model" not in p.relative_to(gpt2_package.path).parts[:1]]
    assert {p.relative_to(gpt2_package.path).as_posix() for p in code} <= set(files)
    for relative, digest in files.items():
        assert _sha256(gpt2_package.path / relative) == digest
    assert not any("__pycache__" in relative for relative in files) and "mii_azure/cli.py" not in files
    gpt2_package.verify()


def test_the_snapshot_is_the_serving_code(gpt2_package):
    import mii_azure

    source = Path(mii_azure.__file__).resolve().parent
    for relative in ("runtime/service.py", "tasks/generation.py", "scoring/score.py"):
        assert _sha256(source / relative) == gpt2_package.manifest.files[f"mii_azure/{relative}"]
    assert _sha256(source / "scoring" / "score.py") == gpt2_package.manifest.files["score.py"]


def test_weights_are_linked_not_copied(gpt2_package, model_dirs):
    link = gpt2_package.path / "model"
    assert link.is_symlink() and link.resolve() == Path(model_dirs["gpt2"]).resolve()
    assert ".amlignore" in os.listdir(gpt2_package.path)
    # Anchored to the package root: "azureml/" alone would also drop the runtime's targets/azureml/.
    assert {"/model", "/azureml/"} <= set((gpt2_package.path / ".amlignore").read_text().split())


def test_a_multi_gb_model_packages_as_fast_as_a_tiny_one(model_dirs, tmp_path):
    big = tmp_path / "big-model"
    shutil.copytree(model_dirs["gpt2"], big)
    (big / "model.safetensors").unlink()
    size = 3 * 2**30  # a 3 GiB sparse weights file with a valid safetensors header
    header = json.dumps({"w": {"dtype": "F32", "shape": [size // 4], "data_offsets": [0, size]}}).encode()
    with (big / "model.safetensors").open("wb") as handle:
        handle.write(struct.pack("<Q", len(header)) + header)
        handle.truncate(8 + len(header) + size)
    started = time.perf_counter()
    tiny = package(model_dirs["gpt2"], output=tmp_path / "tiny-pkg", name="tiny")
    tiny_s = time.perf_counter() - started
    started = time.perf_counter()
    large = package(big, output=tmp_path / "big-pkg", name="big")
    big_s = time.perf_counter() - started
    assert large.manifest.plan.parameter_count == size // 4
    assert big_s < 2 * tiny_s + 1.0, (tiny_s, big_s)
    package_bytes = sum(p.stat().st_size for p in large.path.rglob("*") if p.is_file() and not p.is_symlink() and "model" not in p.parts)
    assert package_bytes < 20 * 2**20
    assert tiny.manifest.files.keys() == large.manifest.files.keys()


def test_a_modified_code_file_is_refused(gpt2_package, tmp_path):
    copy = Path(shutil.copytree(gpt2_package.path, tmp_path / "copy", symlinks=True))
    target = copy / "mii_azure" / "runtime" / "service.py"
    target.write_text(target.read_text() + "\n# edited by hand\n")
    with pytest.raises(PackageError) as raised:
        Package.load(copy).verify()
    assert raised.value.modified == ["mii_azure/runtime/service.py"]
    assert "mii_azure/runtime/service.py" in raised.value.message and "Rebuild" in raised.value.message
    (copy / "launch.py").unlink()
    with pytest.raises(PackageError) as raised:
        Package.load(copy).verify()
    assert raised.value.missing == ["launch.py"]


def test_a_moved_package_still_verifies_and_finds_its_model(gpt2_package, model_dirs, tmp_path):
    moved = Path(shutil.copytree(gpt2_package.path, tmp_path / "elsewhere" / "deep" / "gpt2", symlinks=True))
    bundle = Package.load(moved)
    bundle.verify()
    assert bundle.model_dir is not None and bundle.model_dir.resolve() == Path(model_dirs["gpt2"]).resolve()


def test_schema_and_manifest_problems_are_clear(gpt2_package, tmp_path):
    copy = Path(shutil.copytree(gpt2_package.path, tmp_path / "copy", symlinks=True))
    data = json.loads((copy / MANIFEST_FILE).read_text())
    data["schema_version"] = 99
    (copy / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(PackageError, match="schema version 99"):
        Package.load(copy)
    with pytest.raises(PackageError, match="no mii_package.json"):
        Package.load(tmp_path)


def test_output_folders_are_not_clobbered(model_dirs, tmp_path):
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="already exists"):
        package(model_dirs["gpt2"], output=occupied)
    with pytest.raises(ConfigError, match="is not a mii_azure package"):
        package(model_dirs["gpt2"], output=occupied, overwrite=True)
    assert (occupied / "notes.txt").read_text() == "mine"
    first = package(model_dirs["gpt2"], output=tmp_path / "pkg")
    again = package(model_dirs["gpt2"], output=tmp_path / "pkg", overwrite=True)
    assert again.path == first.path and again.manifest.created_at >= first.manifest.created_at


def test_invalid_names_are_refused(model_dirs, tmp_path):
    for name in ("UPPER", "a", "-dash", "has_underscore", "x" * 40):
        with pytest.raises(ConfigError, match="not valid"):
            package(model_dirs["gpt2"], output=tmp_path / "n", name=name)


@pytest.mark.parametrize("name", FACTORY_MODELS)
def test_azure_ml_specs_load_with_azure_ai_ml(model_dirs, tmp_path, name):
    from azure.ai.ml import load_online_deployment, load_online_endpoint

    bundle = package(model_dirs[name], output=tmp_path / name)
    endpoint = load_online_endpoint(source=bundle.path / "azureml" / "endpoint.yml")
    deployment = load_online_deployment(source=bundle.path / "azureml" / "deployment.yml")
    assert endpoint.name == bundle.name and endpoint.auth_mode == "key"
    assert deployment.endpoint_name == bundle.name
    assert deployment.code_configuration.scoring_script == "score.py"
    specs = bundle.path / "azureml"  # relative paths in the YAML are relative to its folder, as `az ml` reads them
    assert (specs / deployment.code_configuration.code).resolve() == bundle.path.resolve()
    assert (specs / deployment.model.path).resolve() == (bundle.path / "model").resolve()
    build = deployment.environment.build  # the serving image's Docker build context
    assert (specs / build.path).resolve() == (bundle.path / "environment").resolve()
    assert (bundle.path / "environment" / build.dockerfile_path).is_file()
    assert (bundle.path / "environment" / "requirements.txt").is_file()
    assert deployment.environment_variables["MII_AZURE_TASK"] == bundle.manifest.task
    assert deployment.environment_variables["WORKER_COUNT"] == str(bundle.plan.replicas)
    assert deployment.request_settings.request_timeout_ms <= 180_000


def test_an_8_gpu_package_runs_one_server_worker_per_model_copy(model_dirs, tmp_path):
    from azure.ai.ml import load_online_deployment

    from mii_azure.packaging import worker_threads

    bundle = package(model_dirs["gpt2"], output=tmp_path / "nd96", sku="ND96amsr")
    plan = bundle.plan
    assert (plan.tensor_parallel, plan.replicas) == (1, 8)
    deployment = load_online_deployment(source=bundle.path / "azureml" / "deployment.yml")
    assert deployment.instance_type == "Standard_ND96amsr_A100_v4"
    assert deployment.environment_variables["WORKER_COUNT"] == "8"
    # Each worker's request threads feed its copy's batcher, as in the local harness.
    assert deployment.environment_variables["GUNICORN_CMD_ARGS"] == f"--threads {worker_threads(plan)}"
    assert deployment.request_settings.max_concurrent_requests_per_instance == 8 * plan.max_batch_size
    one_copy = package(model_dirs["gpt2"], output=tmp_path / "nd96-one", sku="ND96amsr", replicas=1)
    assert load_online_deployment(source=one_copy.path / "azureml" / "deployment.yml").environment_variables["WORKER_COUNT"] == "1"


def test_package_planned_for_an_azure_sku(model_dirs, tmp_path):
    bundle = package(model_dirs["gpt2"], output=tmp_path / "gpu", sku="NC24ads")
    assert bundle.plan.hardware.name == "Standard_NC24ads_A100_v4" and bundle.plan.kernel_inject
    spec = (bundle.path / "azureml" / "deployment.yml").read_text()
    assert "instance_type: Standard_NC24ads_A100_v4" in spec
    assert "deepspeed" in (bundle.path / bundle.manifest.conda_file).read_text()


def test_azureml_reference_is_recorded_without_a_link(model_dirs, tmp_path):
    from mii_azure.models import resolve_model

    facts = resolve_model("azureml:tiny-gpt2:3", config=model_dirs["gpt2"])
    bundle = package(facts, output=tmp_path / "aml", name="tiny-gpt2")
    assert bundle.model_dir is None and bundle.manifest.model.source.value == "azureml"
    assert "model: azureml:tiny-gpt2:3" in (bundle.path / "azureml" / "deployment.yml").read_text()


def test_cli_package(model_dirs, tmp_path, capsys):
    assert main(["package", str(model_dirs["bert_fill_mask"]), "-o", str(tmp_path / "cli-pkg"), "--name", "filler"]) == 0
    out = capsys.readouterr().out
    assert "Package 'filler' (fill-mask)" in out and "az ml online-deployment create -f" in out
    Package.load(tmp_path / "cli-pkg").verify()
    assert main(["package", str(model_dirs["bert_fill_mask"]), "-o", str(tmp_path / "cli-pkg")]) == 1
    assert "already exists" in capsys.readouterr().err
