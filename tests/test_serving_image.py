"""The serving image's Docker build context (mii_azure.serving_image).

Unit tests read the written Dockerfile and requirements.txt. The ``network`` tests ask PyPI whether
the pinned requirements resolve for the image's platform (Linux x86_64, CPython 3.11); the GPU
image's DeepSpeed build itself is followed by scripts/build_serving_image_ops.sh.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import warnings
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from pydantic import ValidationError

from mii_azure.errors import ConfigError
from mii_azure.serving_image import (
    BASE_IMAGE,
    CUDA_HOME,
    CUDA_TOOLKIT_REQUIREMENT,
    DEEPSPEED_VERSION,
    ENTRYPOINT,
    GPU_ONLY_PINS,
    SERVING_PORT,
    TORCH_CPU_INDEX_URL,
    ImageSpec,
    ServingImageError,
    UnsupportedComputeCapabilityError,
    image_spec,
    inference_config,
    write_build_context,
)
from mii_azure.skus import catalog

ROOT = Path(__file__).resolve().parents[1]


def _requirement_lines(folder: Path) -> list[str]:
    return [
        line.strip()
        for line in (folder / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


def _pins(lines: list[str]) -> dict[str, str]:
    pins = {}
    for line in lines:
        requirement = Requirement(line)
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", line
        pins[_normalize(requirement.name)] = specifier.version
    return pins


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _python_checks(dockerfile: str) -> list[str]:
    return re.findall(r'^RUN python -c "(.*)" \\$', dockerfile, flags=re.MULTILINE)


# ---------------------------------------------------------------------------------------------- GPU


def test_gpu_dockerfile_builds_deepspeed_inference_ops_for_the_size(tmp_path):
    spec = write_build_context(tmp_path, gpu=True, cuda_arch_list=["8.0"])
    dockerfile = (tmp_path / "Dockerfile").read_text()

    assert dockerfile.splitlines()[2] == f"FROM {BASE_IMAGE}"
    assert "python=3.11" in dockerfile
    assert "RUN pip install -r /opt/mii-azure/requirements.txt" in dockerfile
    assert f"CUDA_HOME={CUDA_HOME}" in dockerfile
    assert 'TORCH_CUDA_ARCH_LIST="8.0"' in dockerfile
    assert "DS_ACCELERATOR=cuda" in dockerfile
    build = next(line for line in dockerfile.splitlines() if "DS_BUILD_OPS=" in line)
    assert set(build.split()) >= {"DS_BUILD_OPS=0", "DS_BUILD_TRANSFORMER_INFERENCE=1", "DS_BUILD_SPATIAL_INFERENCE=1"}
    assert f"pip install --no-build-isolation deepspeed=={DEEPSPEED_VERSION}" in dockerfile
    # the links the op's -lcudart / -lcurand need, in the CUDA tree the wheels install
    assert 'ln -sf libcudart.so.13 "$CUDA_HOME/lib/libcudart.so"' in dockerfile
    assert 'ln -sf libcurand.so.10 "$CUDA_HOME/lib/libcurand.so"' in dockerfile
    assert "command -v azmlinfsrv\n" in dockerfile
    # steps in order: requirements (torch, nvcc) before DeepSpeed's build, the check last
    order = [dockerfile.index(text) for text in ("pip install -r", "--no-build-isolation deepspeed", "RUN python -c")]
    assert order == sorted(order)

    assert spec.kind == "gpu" and spec.gpu
    assert spec.cuda_version == "13.0"
    assert spec.torch_requirement == "torch==2.13.0"
    assert spec.torch_index_url == "https://pypi.org/simple"
    assert spec.prebuilt_ops == ("transformer_inference", "spatial_inference")
    assert spec.deepspeed_version == DEEPSPEED_VERSION


def test_gpu_build_end_check_is_valid_python_that_loads_both_ops(tmp_path):
    write_build_context(tmp_path, gpu=True, cuda_arch_list=["9.0"])
    (check,) = _python_checks((tmp_path / "Dockerfile").read_text())
    compile(check, "<Dockerfile check>", "exec")
    assert "deepspeed.ops.transformer.inference.transformer_inference_op" in check
    assert "deepspeed.ops.spatial.spatial_inference_op" in check
    assert "installed_ops" in check and "sys.exit" in check
    assert '"' not in check  # it sits inside the shell's double quotes


def test_gpu_requirements_pin_cuda_torch_and_its_nvcc_but_not_deepspeed(tmp_path):
    write_build_context(tmp_path, gpu=True, cuda_arch_list=["8.0"])
    lines = _requirement_lines(tmp_path)
    assert "torch==2.13.0" in lines
    assert CUDA_TOOLKIT_REQUIREMENT in lines
    # nvcc, CUDA C++ core libraries, cuda_profiler_api.h (the inference kernels include it)
    assert Requirement(CUDA_TOOLKIT_REQUIREMENT).extras >= {"nvcc", "cccl", "profiler"}
    pins = _pins(lines)
    assert "deepspeed" not in pins, "DeepSpeed is built by the Dockerfile's own step"
    for name in ("ninja", "hjson", "msgpack", "py-cpuinfo", "einops", "nvidia-ml-py"):
        assert name in pins, name
    for name in ("azureml-inference-server-http", "transformers", "diffusers", "grpcio", "protobuf", "pydantic"):
        assert name in pins, name
    assert len(pins) == len(lines), "every line is an exact pin of a distinct package"


def test_arch_list_is_deduplicated_and_sorted(tmp_path):
    spec = write_build_context(tmp_path, gpu=True, cuda_arch_list=["9.0", "8.0", "9.0", " 8.6 "])
    assert spec.cuda_arch_list == ("8.0", "8.6", "9.0")
    assert spec.torch_cuda_arch_list == "8.0;8.6;9.0"
    assert 'TORCH_CUDA_ARCH_LIST="8.0;8.6;9.0"' in (tmp_path / "Dockerfile").read_text()


@pytest.mark.parametrize("arch", ["7.5", "8.0", "8.6", "9.0", "10.0", "12.0"])
def test_cuda_13_architectures_are_accepted(arch):
    assert image_spec(gpu=True, cuda_arch_list=[arch]).cuda_arch_list == (arch,)


def test_v100_is_refused_with_the_reason_and_no_files(tmp_path):
    folder = tmp_path / "environment"
    with pytest.raises(UnsupportedComputeCapabilityError) as caught:
        write_build_context(folder, gpu=True, cuda_arch_list=["8.0", "7.0"])
    error = caught.value
    assert isinstance(error, ConfigError)
    assert "CUDA 13" in error.message and "sm_70" in error.message
    assert "V100" in error.message and "CUDA 12 torch" in error.message
    assert error.compute_capability == "7.0"
    assert error.min_compute_capability == "7.5"
    assert error.cuda_version == "13.0"
    assert not folder.exists(), "nothing is written for a refused size"


@pytest.mark.parametrize("arch", ["6.1", "5.2"])
def test_older_gpus_are_refused_too(arch):
    with pytest.raises(UnsupportedComputeCapabilityError, match=f"sm_{arch.replace('.', '')}"):
        image_spec(gpu=True, cuda_arch_list=[arch])


@pytest.mark.parametrize("arch", ["sm_80", "8", "eight", "", "8.0+PTX"])
def test_malformed_architectures_are_refused(arch):
    with pytest.raises(ServingImageError, match="is not a compute capability") as caught:
        image_spec(gpu=True, cuda_arch_list=[arch])
    assert caught.value.compute_capability == arch


def test_unknown_architecture_is_refused():
    with pytest.raises(ServingImageError, match="not one CUDA 13.0 builds for"):
        image_spec(gpu=True, cuda_arch_list=["9.5"])


def test_gpu_image_needs_an_architecture_and_cpu_image_takes_none():
    with pytest.raises(ServingImageError, match="needs the compute capability"):
        image_spec(gpu=True, cuda_arch_list=[])
    with pytest.raises(ServingImageError, match="CPU image has no CUDA"):
        image_spec(gpu=False, cuda_arch_list=["8.0"])


def test_every_catalog_gpu_size_gets_an_image_or_a_reason():
    """What package() meets: each Azure size's compute capability (V100 sizes are refused)."""
    seen = set()
    for sku in catalog():
        capability = sku.compute_capability
        seen.add(capability)
        if capability == "7.0":
            with pytest.raises(UnsupportedComputeCapabilityError):
                image_spec(gpu=True, cuda_arch_list=[capability])
        else:
            assert image_spec(gpu=True, cuda_arch_list=[capability]).torch_cuda_arch_list == capability
    assert {"8.0", "9.0"} <= seen


def test_spec_is_frozen():
    spec = image_spec(gpu=True, cuda_arch_list=["8.0"])
    with pytest.raises(ValidationError):
        spec.kind = "cpu"
    assert ImageSpec.model_validate_json(spec.model_dump_json()) == spec


# ---------------------------------------------------------------------------------------------- CPU


def test_cpu_image_takes_torch_from_pytorch_cpu_index_and_no_deepspeed(tmp_path):
    spec = write_build_context(tmp_path, gpu=False)
    dockerfile = (tmp_path / "Dockerfile").read_text()
    lines = _requirement_lines(tmp_path)

    assert spec.kind == "cpu" and not spec.gpu
    assert spec.torch_index_url == TORCH_CPU_INDEX_URL == "https://download.pytorch.org/whl/cpu"
    assert spec.cuda_version is None and spec.cuda_arch_list == () and spec.prebuilt_ops == ()
    assert f"FROM {BASE_IMAGE}" in dockerfile
    assert f"pip install --no-deps --index-url {TORCH_CPU_INDEX_URL} torch==2.13.0+cpu" in dockerfile
    assert "pip install -r /opt/mii-azure/requirements.txt" in dockerfile
    for absent in ("deepspeed", "DS_BUILD", "CUDA_HOME", "TORCH_CUDA_ARCH_LIST", "nvcc"):
        assert absent not in dockerfile, absent
    assert "torch==2.13.0+cpu" in lines
    pins = _pins(lines)
    for absent in ("deepspeed", "ninja", "cuda-toolkit", *GPU_ONLY_PINS):
        assert absent not in pins, absent
    (check,) = _python_checks(dockerfile)
    compile(check, "<Dockerfile check>", "exec")
    assert "command -v azmlinfsrv\n" in dockerfile


def test_rewriting_replaces_the_files(tmp_path):
    write_build_context(tmp_path, gpu=True, cuda_arch_list=["8.0"])
    write_build_context(tmp_path, gpu=False)
    assert "deepspeed" not in (tmp_path / "Dockerfile").read_text()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["Dockerfile", "requirements.txt"]


# ------------------------------------------------------------------------- the image's command


@pytest.mark.parametrize("gpu", [False, True])
def test_the_image_runs_the_package_launcher_on_the_port_its_routes_name(tmp_path, gpu):
    spec = write_build_context(tmp_path, gpu=gpu, cuda_arch_list=["8.0"] if gpu else [])
    dockerfile = (tmp_path / "Dockerfile").read_text()
    (entrypoint,) = [line for line in dockerfile.splitlines() if line.startswith("ENTRYPOINT ")]
    assert json.loads(entrypoint[len("ENTRYPOINT "):]) == list(spec.entrypoint) == list(ENTRYPOINT)
    assert dockerfile.rstrip().endswith(entrypoint), "nothing after the command overrides it"
    assert f"EXPOSE {SERVING_PORT}" in dockerfile and spec.port == SERVING_PORT == 5001
    assert not re.search(r"^CMD ", dockerfile, flags=re.MULTILINE), "the base image's CMD is reset by ENTRYPOINT"
    assert f"--host 0.0.0.0 --port {SERVING_PORT}" in spec.entrypoint[-1], "reachable by the endpoint's front"
    routes = inference_config()
    assert {route["port"] for route in routes.values()} == {SERVING_PORT}
    assert (routes["liveness_route"]["path"], routes["readiness_route"]["path"]) == ("/", "/"), "GET / answers once init() returned"
    assert routes["scoring_route"]["path"] == "/", "the endpoint forwards every path to the container"


def _run_image_command(tmp_path: Path, **variables: str) -> subprocess.CompletedProcess:
    """The image's command under /bin/sh with this interpreter as the image's Python; launch.py is a stub
    that prints its arguments and working directory."""
    command = [part.replace("/opt/mii-azure/bin/python", sys.executable) for part in ENTRYPOINT]
    env = {"PATH": "/usr/bin:/bin", **variables}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)


def test_the_image_command_starts_the_launcher_beside_the_entry_script(tmp_path):
    code = tmp_path / "var" / "azureml-app" / "my-package"
    code.mkdir(parents=True)
    (code / "launch.py").write_text("import json, os, sys\nprint(json.dumps({'argv': sys.argv[1:], 'cwd': os.getcwd()}))\n")
    # Azure ML: AML_APP_ROOT is the folder of the scoring script, AZUREML_ENTRY_SCRIPT its name.
    started = _run_image_command(tmp_path, AML_APP_ROOT=str(code), AZUREML_ENTRY_SCRIPT="score.py")
    assert started.returncode == 0, started.stderr
    assert json.loads(started.stdout) == {"argv": ["--host", "0.0.0.0", "--port", "5001"], "cwd": str(code)}
    # An entry script named from the app root (or absolutely) finds the same launcher.
    parent = _run_image_command(tmp_path, AML_APP_ROOT=str(code.parent), AZUREML_ENTRY_SCRIPT="my-package/score.py")
    assert parent.returncode == 0 and json.loads(parent.stdout)["argv"][-1] == "5001", parent.stderr


def test_the_image_command_names_the_missing_variable(tmp_path):
    missing = _run_image_command(tmp_path, AZUREML_ENTRY_SCRIPT="score.py")
    assert missing.returncode != 0 and "AML_APP_ROOT" in missing.stderr and "Azure ML sets it" in missing.stderr


# ------------------------------------------------------------------------------ network (PyPI)

# glibc 2.35 (Ubuntu 22.04) runs every manylinux wheel up to 2.35; pip takes a --platform literally,
# so each accepted tag is named (torch's CUDA wheels are tagged manylinux_2_17 to manylinux_2_28).
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(35, 16, -1)] + [
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
]


def _resolve(requirements: Path, tmp_path: Path, *extra: str, timeout: float = 240) -> dict:
    """pip's dry-run report of installing ``requirements`` on the image's platform, from PyPI alone
    (``--isolated``: none of this machine's pip settings or local wheels)."""
    report = tmp_path / "report.json"
    command = [sys.executable, "-m", "pip", "--isolated", "install", "--dry-run", "--ignore-installed",
               "--quiet", "--report", str(report), "--python-version", "3.11", "--only-binary=:all:",
               "--target", str(tmp_path / "target")]  # fmt: skip
    for platform in PLATFORMS:
        command += ["--platform", platform]
    command += [*extra, "-r", str(requirements)]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, (
        f"pip could not resolve {requirements.name} for Linux x86_64 CPython 3.11 (after {elapsed:.0f} s):\n"
        f"{result.stderr[-3000:]}"
    )
    return {_normalize(item["metadata"]["name"]): item for item in json.loads(report.read_text())["install"]}


def _exact_pins_of(requires_dist: list[str]) -> dict[str, SpecifierSet]:
    """The packages ``requires_dist`` pins to one release (``==X`` or ``==X.*``)."""
    pins = {}
    for text in requires_dist:
        requirement = Requirement(text)
        specifiers = list(requirement.specifier)
        if len(specifiers) == 1 and specifiers[0].operator == "==":
            pins[_normalize(requirement.name)] = requirement.specifier
    return pins


@pytest.mark.network
def test_gpu_image_requirements_resolve_for_linux_x86_64(tmp_path):
    context = tmp_path / "context"
    write_build_context(context, gpu=True, cuda_arch_list=["8.0", "9.0"])
    installed = _resolve(context / "requirements.txt", tmp_path)

    torch = installed["torch"]
    assert torch["metadata"]["version"] == "2.13.0", "PyPI's torch, not a +cpu build"
    torch_pins = _exact_pins_of(torch["metadata"].get("requires_dist", []))
    # torch's CUDA 13 build: its CUDA libraries ...
    for name in ("nvidia-cudnn-cu13", "nvidia-nccl-cu13", "nvidia-cublas", "nvidia-cuda-runtime", "nvidia-curand"):
        assert name in installed, f"{name} missing: torch 2.13.0 from PyPI is not the CUDA 13 build it was"
    # ... and the compiler the image adds is the very cuda-toolkit release torch pins: CUDA 13.0's nvcc
    assert torch_pins["cuda-toolkit"] == Requirement(CUDA_TOOLKIT_REQUIREMENT).specifier
    compiler = ("nvidia-cuda-nvcc", "nvidia-cuda-runtime", "nvidia-cuda-cccl", "nvidia-nvvm", "nvidia-cuda-profiler-api")
    for name in compiler:
        assert Version(installed[name]["metadata"]["version"]).release[:2] == (13, 0), name

    # the lock is complete: each package is pinned here, pinned exactly by torch or cuda-toolkit, or setuptools
    ours = _pins(_requirement_lines(context))
    pinned_by_cuda = torch_pins | _exact_pins_of(installed["cuda-toolkit"]["metadata"].get("requires_dist", []))
    for name, item in installed.items():
        version = Version(item["metadata"]["version"])
        if name in ours:
            assert version == Version(ours[name]), f"{name}: pinned {ours[name]}, resolved {version}"
        elif name in pinned_by_cuda:
            assert version in pinned_by_cuda[name], f"{name}: {version}, pinned {pinned_by_cuda[name]}"
        else:
            assert name == "setuptools", f"{name} {version} is installed but not pinned"
    assert set(ours) <= set(installed), f"pinned but not needed: {sorted(set(ours) - set(installed))}"


@pytest.mark.network
def test_deepspeed_source_release_is_on_pypi(tmp_path):
    """DeepSpeed ships no wheel; its sdist is what the Dockerfile builds."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--isolated", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
         "--dest", str(tmp_path), f"deepspeed=={DEEPSPEED_VERSION}"],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert [path.name for path in tmp_path.iterdir()] == [f"deepspeed-{DEEPSPEED_VERSION}.tar.gz"]


# What torch 2.13.0+cpu's wheel requires (its metadata, as installed on the development machine).
_TORCH_CPU_REQUIRES = [
    "filelock",
    "typing-extensions>=4.10.0",
    "setuptools>=77.0.3",
    "sympy>=1.13.3",
    "networkx>=2.5.1",
    "jinja2",
    "fsspec>=0.8.5",
]


def _pytorch_index_reachable() -> bool:
    try:
        socket.create_connection(("download.pytorch.org", 443), timeout=10).close()
    except OSError:
        return False
    return True


def _torch_cpu_stand_in(folder: Path) -> None:
    """A wheel named like PyTorch's torch 2.13.0+cpu with its metadata and no code, so that pip
    resolves everything else from PyPI exactly as it would around the real wheel."""
    try:
        requires = metadata.requires("torch") if metadata.version("torch") == "2.13.0+cpu" else None
    except metadata.PackageNotFoundError:
        requires = None
    requires = [line for line in (requires or _TORCH_CPU_REQUIRES) if "extra ==" not in line]
    info = "torch-2.13.0+cpu.dist-info"
    body = "Metadata-Version: 2.1\nName: torch\nVersion: 2.13.0+cpu\nRequires-Python: >=3.10\n"
    body += "".join(f"Requires-Dist: {line}\n" for line in requires)
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl", "w") as wheel:
        wheel.writestr(f"{info}/METADATA", body)
        tag = "cp311-cp311-manylinux_2_28_x86_64"
        wheel.writestr(f"{info}/WHEEL", f"Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: {tag}\n")
        wheel.writestr(f"{info}/RECORD", "")


@pytest.mark.network
def test_cpu_image_requirements_resolve_for_linux_x86_64(tmp_path):
    context = tmp_path / "context"
    write_build_context(context, gpu=False)
    if _pytorch_index_reachable():
        installed = _resolve(context / "requirements.txt", tmp_path, "--extra-index-url", TORCH_CPU_INDEX_URL)
    else:
        warnings.warn(
            "download.pytorch.org cannot be reached from here: the CPU image's requirements were resolved "
            "from PyPI around a stand-in for torch 2.13.0+cpu (its metadata, no code); torch itself was not fetched.",
            stacklevel=1,
        )
        _torch_cpu_stand_in(tmp_path / "stand-in")
        installed = _resolve(context / "requirements.txt", tmp_path, "--find-links", str(tmp_path / "stand-in"))

    assert installed["torch"]["metadata"]["version"] == "2.13.0+cpu"
    cuda = sorted(name for name in installed if name.startswith(("nvidia-", "cuda-", "triton")))
    assert not cuda, f"the CPU image pulls CUDA packages: {cuda}"
    ours = _pins(_requirement_lines(context))
    for name, item in installed.items():
        version = Version(item["metadata"]["version"])
        pinned = ours.get(name)
        assert name == "setuptools" or (pinned and version == Version(pinned)), f"{name} {version}: pinned {pinned}"
    assert set(ours) <= set(installed), f"pinned but not needed: {sorted(set(ours) - set(installed))}"
