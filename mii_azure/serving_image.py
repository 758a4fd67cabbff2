"""The serving image's Docker build context: a ``Dockerfile`` and a pinned ``requirements.txt``.

A package's ``environment/`` folder is the build context of the image Azure ML builds for the
deployment. The image runs the package's own launcher (``launch.py``, the one the local harness
runs): the Azure ML environment carries an ``inference_config`` (:func:`inference_config`), so
Azure ML runs the image's command instead of starting its prebuilt inference server itself, and its
endpoint forwards every path to the container's port (``/score``, ``/v1/...``, ``/metrics``), not
only ``/score``. The command (:data:`ENTRYPOINT`) starts the launcher from the deployment's code
(mounted under ``/var/azureml-app``; ``AML_APP_ROOT`` is the folder holding the scoring script,
``AZUREML_ENTRY_SCRIPT`` its name) with ``--host 0.0.0.0 --port 5001``; the launcher takes the entry
script, the model folder (``AZUREML_MODEL_DIR``), the worker count (``WORKER_COUNT``) and the worker
threads (``GUNICORN_CMD_ARGS``) from the variables Azure ML and the deployment set. The liveness and
readiness probes ask the inference server's ``GET /``, which answers only once ``init()`` returned.

GPU images
    torch 2.13.0's Linux wheel on PyPI is a CUDA 13.0 build, and DeepSpeed refuses to build its ops
    with an nvcc whose CUDA version differs from torch's. No Azure ML base image ships CUDA 13 (the
    newest is CUDA 12.6), and an NVIDIA CUDA devel image brings neither conda nor Python 3.11 nor
    Azure ML's inference assets, and a second copy of libraries torch already installs. So the
    image starts from Azure ML's own Ubuntu 22.04 base image and takes the CUDA 13.0 compiler from
    PyPI: ``cuda-toolkit[nvcc,cccl,profiler]==13.0.3`` is the very release torch 2.13.0 pins its
    CUDA libraries to (its wheel requires ``cuda-toolkit[cublas,cudart,...]==13.0.3``), so nvcc, the
    runtime and profiler headers and the cuBLAS/cuRAND headers DeepSpeed's ``transformer_inference``
    op needs all land in one tree, ``site-packages/nvidia/cu13``, which becomes ``CUDA_HOME``. The
    wheels ship only versioned libraries, so the Dockerfile adds the two unversioned links the op's
    link step asks for (``-lcudart``, ``-lcurand``). The NVIDIA driver is the host's (CUDA 13 needs
    R580 or newer); nothing in the image can change that.

    DeepSpeed (source only) is then installed with ``DS_BUILD_OPS=0`` plus
    ``DS_BUILD_TRANSFORMER_INFERENCE=1`` and ``DS_BUILD_SPATIAL_INFERENCE=1`` (diffusion),
    ``--no-build-isolation`` (its setup.py imports the installed torch), ``DS_ACCELERATOR=cuda``
    (there is no GPU at image build, and DeepSpeed would otherwise pick its CPU accelerator and build
    nothing) and ``TORCH_CUDA_ARCH_LIST`` set to the size's compute capability, so start-up compiles
    nothing. DeepSpeed skips a requested op that it finds incompatible without failing, so the last
    step loads both ops and fails the build if either is missing.
    ``scripts/build_serving_image_ops.sh`` follows these steps in a venv (no Docker, no GPU needed).

    CUDA 13 compiles for compute capability 7.5 (Turing) and newer only: a V100 (7.0) is refused,
    it needs torch's CUDA 12 build.

CPU images
    The same base image and Python, torch's CPU build from PyTorch's own package index (installed
    first, without dependencies, so every other package, torch's own dependencies included, comes
    from PyPI at the pinned versions), and no DeepSpeed.

The pins are those the test suite runs (``environments/constraints-dev.txt``; tests check they
agree), for every package the image installs except the CUDA wheels torch pins itself and
``setuptools`` (which ``pip freeze`` does not record).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable, Literal, Optional

from pydantic import BaseModel, ConfigDict

from .errors import ConfigError

__all__ = [
    "ImageSpec",
    "ServingImageError",
    "UnsupportedComputeCapabilityError",
    "write_build_context",
    "image_spec",
    "requirements_for",
    "DOCKERFILE",
    "REQUIREMENTS_FILE",
    "BASE_IMAGE",
    "PYTHON_VERSION",
    "TORCH_VERSION",
    "DEEPSPEED_VERSION",
    "CUDA_VERSION",
    "CUDA_TOOLKIT_REQUIREMENT",
    "CUDA_HOME",
    "PYPI_INDEX_URL",
    "TORCH_CPU_INDEX_URL",
    "CUDA_ARCHITECTURES",
    "PREBUILT_OPS",
    "SERVING_PORT",
    "PROBE_PATH",
    "SCORING_PATH",
    "ENTRYPOINT",
    "inference_config",
    "SERVING_PINS",
    "GPU_PINS",
    "GPU_ONLY_PINS",
]

DOCKERFILE = "Dockerfile"
REQUIREMENTS_FILE = "requirements.txt"

#: Azure ML's Ubuntu 22.04 base image (conda, Azure ML's inference assets; the package's CPU image).
BASE_IMAGE = "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest"
PYTHON_VERSION = "3.11"
TORCH_VERSION = "2.13.0"
DEEPSPEED_VERSION = "0.19.8"
#: The CUDA release of torch 2.13.0's PyPI wheel, and of the compiler the GPU image installs.
CUDA_VERSION = "13.0"
#: nvcc, the CUDA C++ core libraries and the profiler API header (``cuda_profiler_api.h``, which
#: DeepSpeed's inference kernels include), at the cuda-toolkit release torch 2.13.0 itself requires.
CUDA_TOOLKIT_REQUIREMENT = "cuda-toolkit[nvcc,cccl,profiler]==13.0.3"
PYPI_INDEX_URL = "https://pypi.org/simple"
TORCH_CPU_INDEX_URL = "https://download.pytorch.org/whl/cpu"

#: Where the image's Python environment lives; its bin/ is first on PATH.
ENV_PREFIX = "/opt/mii-azure"
SITE_PACKAGES = f"{ENV_PREFIX}/lib/python{PYTHON_VERSION}/site-packages"
#: The CUDA 13 tree the nvidia-* wheels install into: nvcc, headers and libraries.
CUDA_HOME = f"{SITE_PACKAGES}/nvidia/cu13"

#: The port the launcher listens on in the container (the inference server's own default), and the
#: one every route of the environment's ``inference_config`` names.
SERVING_PORT = 5001
#: The inference server's liveness route: it answers 200 only once the scoring script's init() returned.
PROBE_PATH = "/"
#: The scoring route: ``/`` makes the endpoint's scoring URI its root, and the endpoint forwards every
#: path as it is (``/score``, ``/v1/completions``, ...) to the container.
SCORING_PATH = "/"
#: The image's command: the package's launcher, from the deployment's code folder, reachable by the
#: endpoint's front. Azure ML sets ``AML_APP_ROOT`` and ``AZUREML_ENTRY_SCRIPT``; the launcher reads
#: the rest (entry script, model folder, workers, threads) from the environment.
ENTRYPOINT: tuple[str, ...] = (
    "/bin/sh",
    "-c",
    'cd "${AML_APP_ROOT:?is not set: Azure ML sets it to the folder of the scoring script}" '
    f'&& exec {ENV_PREFIX}/bin/python '
    '"$(dirname "${AZUREML_ENTRY_SCRIPT:?is not set: Azure ML sets it to the scoring script}")/launch.py" '
    f"--host 0.0.0.0 --port {SERVING_PORT}",
)


def inference_config() -> dict[str, dict[str, object]]:
    """The Azure ML environment's ``inference_config``: liveness, readiness and scoring routes on the
    launcher's port (:data:`SERVING_PORT`); probes on the inference server's ``GET /``, scoring on ``/``."""
    return {
        "liveness_route": {"port": SERVING_PORT, "path": PROBE_PATH},
        "readiness_route": {"port": SERVING_PORT, "path": PROBE_PATH},
        "scoring_route": {"port": SERVING_PORT, "path": SCORING_PATH},
    }

#: The GPU targets CUDA 13.0's nvcc compiles for (``nvcc --list-gpu-arch``, nvcc 13.0.88).
CUDA_ARCHITECTURES: tuple[str, ...] = (
    "7.5", "8.0", "8.6", "8.7", "8.8", "8.9", "9.0", "10.0", "10.3", "11.0", "12.0", "12.1",
)  # fmt: skip
#: The lowest compute capability CUDA 13 builds for (it dropped Maxwell, Pascal and Volta).
MIN_CUDA13_CAPABILITY = "7.5"

#: DeepSpeed ops built at image build: op name -> (the setup.py variable that builds it, its module).
PREBUILT_OPS: dict[str, tuple[str, str]] = {
    "transformer_inference": (
        "DS_BUILD_TRANSFORMER_INFERENCE",
        "deepspeed.ops.transformer.inference.transformer_inference_op",
    ),
    "spatial_inference": ("DS_BUILD_SPATIAL_INFERENCE", "deepspeed.ops.spatial.spatial_inference_op"),
}

#: What score.py and the mii_azure runtime import, and everything that pulls in, as tested
#: (environments/constraints-dev.txt). torch's own version is :data:`TORCH_VERSION`.
SERVING_PINS: dict[str, str] = {
    # what the runtime imports
    "torch": TORCH_VERSION,
    "transformers": "5.24.0",
    "tokenizers": "0.23.3",
    "safetensors": "0.8.0",
    "accelerate": "1.15.0",
    "diffusers": "0.42.1",
    "huggingface-hub": "2.4.0",
    "pydantic": "2.12.5",
    "pyyaml": "6.0.4",
    "azureml-inference-server-http": "1.5.1",
    "opentelemetry-api": "1.33.0",
    "opentelemetry-sdk": "1.33.0",
    "grpcio": "1.85.3",
    "protobuf": "7.36.2",
    "prometheus-client": "0.26.0",
    "numpy": "2.4.6",
    "packaging": "26.4",
    "psutil": "7.2.2",
    "tqdm": "4.70.1",
    # what those pull in
    "annotated-doc": "0.0.7",
    "annotated-types": "0.8.0",
    "anyio": "4.16.0",
    "azure-core": "1.41.0",
    "azure-identity": "1.27.0",
    "azure-monitor-opentelemetry-exporter": "1.0.0b40",
    "blinker": "1.9.0",
    "certifi": "2026.10.19.post1",
    "cffi": "2.1.1",
    "charset-normalizer": "3.5.3",
    "click": "8.5.1",
    "cryptography": "50.0.2",
    "deprecated": "1.3.1",
    "filelock": "4.3.1",
    "fixedint": "0.1.6",
    "flask": "3.1.3",
    "flask-cors": "6.0.5",
    "fsspec": "2026.9.0",
    "gunicorn": "27.0.1",
    "h11": "0.16.0",
    "hf-xet": "1.8.0",
    "httpcore2": "2.16.2",
    "httpx2": "2.16.2",
    "idna": "3.20",
    "importlib-metadata": "8.6.1",
    "inference-schema": "1.8",
    "isodate": "0.7.2",
    "itsdangerous": "2.2.0",
    "jinja2": "3.1.6",
    "markdown-it-py": "4.3.0",
    "markupsafe": "3.0.4",
    "mdurl": "0.1.2",
    "mpmath": "1.3.0",
    "msal": "1.39.0",
    "msal-extensions": "1.3.1",
    "msrest": "0.7.1",
    "networkx": "3.6.1",
    "oauthlib": "4.0.1",
    "opentelemetry-semantic-conventions": "0.54b0",
    "pillow": "13.0.0",
    "pycparser": "3.12",
    "pydantic-core": "2.41.5",
    "pydantic-settings": "2.16.3",
    "pygments": "2.21.0",
    "pyjwt": "2.15.1",
    "python-dateutil": "4.0.0",
    "python-dotenv": "1.2.4",
    "pytz": "2026.6",
    "regex": "2026.11.19",
    "requests": "2.34.2",
    "requests-oauthlib": "2.0.0",
    "rich": "15.0.0",
    "shellingham": "1.5.4",
    "sympy": "1.14.0",
    "truststore": "0.10.5",
    "typer": "0.29.2",
    "typing-extensions": "4.16.0",
    "typing-inspection": "0.4.5",
    "tzdata": "2026.6",
    "urllib3": "2.8.0",
    "werkzeug": "3.1.9",
    "wrapt": "1.16.0",
    "zipp": "4.1.2",
}

#: DeepSpeed's own requirements (beyond those above), installed before it is built, as tested.
GPU_PINS: dict[str, str] = {
    "deepspeed": DEEPSPEED_VERSION,
    "einops": "0.8.2",
    "hjson": "3.1.0",
    "msgpack": "1.2.4",
    "ninja": "1.13.2",
    "py-cpuinfo": "9.0.0",
}

#: GPU-image packages the (CPU-only) test environment cannot pin: those torch's CUDA wheel requires
#: with a range rather than an exact version, as they resolved for the CUDA wheel on 2026-12-01,
#: and nvidia-ml-py, which DeepSpeed requires when built for CUDA (the R580 driver branch's bindings,
#: the branch of CUDA 13.0).
GPU_ONLY_PINS: dict[str, str] = {
    "cuda-bindings": "13.5.0",
    "cuda-pathfinder": "1.9.1",
    "nvidia-nvjitlink": "13.5.37",
    "nvidia-ml-py": "13.580.126",
}

_CAPABILITY = re.compile(r"^(\d+)\.(\d+)$")


class ServingImageError(ConfigError):
    """The serving image cannot be written as asked (an unknown or missing GPU architecture)."""


class UnsupportedComputeCapabilityError(ServingImageError):
    """The GPUs' compute capability is one CUDA 13 cannot compile for (a V100 is 7.0).

    ``compute_capability`` is the refused capability, ``cuda_version`` the image's CUDA release,
    ``min_compute_capability`` the lowest that release builds for.
    """


class ImageSpec(BaseModel):
    """What a written build context builds.

    ``torch_requirement`` and ``torch_index_url`` say which torch build and from where; for a GPU
    image, ``cuda_version`` is the CUDA release of torch and of the image's nvcc, ``cuda_arch_list``
    the compute capabilities DeepSpeed's ``prebuilt_ops`` are compiled for (``torch_cuda_arch_list``
    as ``TORCH_CUDA_ARCH_LIST`` spells them), ``cuda_home`` the CUDA tree in the image and
    ``build_env`` the DeepSpeed build variables. ``requirements`` are the lines of requirements.txt.
    ``entrypoint`` is the image's command (the package's launcher) and ``port`` the one it listens on.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["gpu", "cpu"]
    base_image: str
    python_version: str
    torch_requirement: str
    torch_index_url: str
    cuda_version: Optional[str] = None
    cuda_arch_list: tuple[str, ...] = ()
    torch_cuda_arch_list: Optional[str] = None
    cuda_home: Optional[str] = None
    deepspeed_version: Optional[str] = None
    prebuilt_ops: tuple[str, ...] = ()
    build_env: dict[str, str] = {}
    dockerfile: str = DOCKERFILE
    requirements_file: str = REQUIREMENTS_FILE
    requirements: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ENTRYPOINT
    port: int = SERVING_PORT

    @property
    def gpu(self) -> bool:
        """Whether this is a GPU (CUDA) image."""
        return self.kind == "gpu"


def write_build_context(folder: Path, *, gpu: bool, cuda_arch_list: Iterable[str] = ()) -> ImageSpec:
    """Write ``Dockerfile`` and ``requirements.txt`` into ``folder`` (created if missing; the two
    files are replaced) and return what they build.

    ``cuda_arch_list`` holds the compute capabilities of the GPUs the image serves on (``["8.0"]``
    for an A100 size: :attr:`mii_azure.skus.Sku.compute_capability`); DeepSpeed's ops are compiled
    for exactly those. A GPU image needs at least one; a CPU image takes none. A capability CUDA 13
    cannot build for (a V100's 7.0) raises :class:`UnsupportedComputeCapabilityError`; a malformed
    or unknown one :class:`ServingImageError`.
    """
    spec = image_spec(gpu=gpu, cuda_arch_list=cuda_arch_list)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / REQUIREMENTS_FILE).write_text(_requirements_text(spec), encoding="utf-8")
    (folder / DOCKERFILE).write_text(_dockerfile_text(spec), encoding="utf-8")
    return spec


def image_spec(*, gpu: bool, cuda_arch_list: Iterable[str] = ()) -> ImageSpec:
    """The :class:`ImageSpec` :func:`write_build_context` would write, without writing anything."""
    arches = _check_arch_list(list(cuda_arch_list), gpu=gpu)
    if not gpu:
        torch_requirement = f"torch=={TORCH_VERSION}+cpu"
        return ImageSpec(
            kind="cpu",
            base_image=BASE_IMAGE,
            python_version=PYTHON_VERSION,
            torch_requirement=torch_requirement,
            torch_index_url=TORCH_CPU_INDEX_URL,
            requirements=tuple(requirements_for(gpu=False)),
        )
    arch_text = ";".join(arches)
    build_env = {"DS_BUILD_OPS": "0"}
    build_env.update({variable: "1" for variable, _ in PREBUILT_OPS.values()})
    build_env["DS_ENABLE_NINJA"] = "1"
    return ImageSpec(
        kind="gpu",
        base_image=BASE_IMAGE,
        python_version=PYTHON_VERSION,
        torch_requirement=f"torch=={TORCH_VERSION}",
        torch_index_url=PYPI_INDEX_URL,
        cuda_version=CUDA_VERSION,
        cuda_arch_list=tuple(arches),
        torch_cuda_arch_list=arch_text,
        cuda_home=CUDA_HOME,
        deepspeed_version=DEEPSPEED_VERSION,
        prebuilt_ops=tuple(PREBUILT_OPS),
        build_env=build_env,
        requirements=tuple(requirements_for(gpu=True)),
    )


def requirements_for(*, gpu: bool) -> list[str]:
    """The lines of the image's requirements.txt: every pin, DeepSpeed excepted (the Dockerfile
    builds it from source in a later step). CPU images pin torch's ``+cpu`` build."""
    lines = []
    for name, version in sorted(SERVING_PINS.items()):
        if name == "torch" and not gpu:
            version = f"{version}+cpu"
        lines.append(f"{name}=={version}")
    if gpu:
        lines.extend(f"{name}=={version}" for name, version in sorted(GPU_PINS.items()) if name != "deepspeed")
        lines.extend(f"{name}=={version}" for name, version in sorted(GPU_ONLY_PINS.items()))
        lines.append(CUDA_TOOLKIT_REQUIREMENT)
    return lines


def _check_arch_list(arches: list[str], *, gpu: bool) -> list[str]:
    """The distinct capabilities of ``arches`` in ascending order, or the ConfigError why not."""
    if not gpu:
        if arches:
            raise ServingImageError(
                f"A CPU image has no CUDA, so it takes no GPU architectures (got {', '.join(map(str, arches))}); "
                "pass gpu=True for a GPU size.",
                cuda_arch_list=arches,
            )
        return []
    if not arches:
        raise ServingImageError(
            "A GPU image needs the compute capability of the size's GPUs (cuda_arch_list=['8.0'] for an A100, from "
            "mii_azure.skus.get_sku(name).compute_capability): DeepSpeed's ops are compiled for it at image build.",
            cuda_arch_list=arches,
        )
    parsed: dict[tuple[int, int], str] = {}
    for arch in arches:
        match = _CAPABILITY.match(str(arch).strip())
        if not match:
            raise ServingImageError(
                f"GPU architecture {arch!r} is not a compute capability such as '8.0' (A100) or '9.0' (H100).",
                compute_capability=arch,
            )
        key = (int(match[1]), int(match[2]))
        text = f"{key[0]}.{key[1]}"
        if key < _as_tuple(MIN_CUDA13_CAPABILITY):
            raise UnsupportedComputeCapabilityError(
                f"CUDA {CUDA_VERSION} cannot build for sm_{key[0]}{key[1]} (compute capability {text}"
                f"{', V100' if text == '7.0' else ''}): CUDA 13 compiles for compute capability "
                f"{MIN_CUDA13_CAPABILITY} and newer only, and torch {TORCH_VERSION}'s PyPI wheel is a CUDA 13 build. "
                "A V100 size needs a CUDA 12 torch (with a CUDA 12 toolkit to build DeepSpeed's ops); choose a T4, "
                "A10, A100 or H100 size for this image.",
                compute_capability=text,
                cuda_version=CUDA_VERSION,
                min_compute_capability=MIN_CUDA13_CAPABILITY,
            )
        if text not in CUDA_ARCHITECTURES:
            raise ServingImageError(
                f"Compute capability {text} is not one CUDA {CUDA_VERSION} builds for; it builds for "
                f"{', '.join(CUDA_ARCHITECTURES)}.",
                compute_capability=text,
                cuda_version=CUDA_VERSION,
            )
        parsed[key] = text
    return [parsed[key] for key in sorted(parsed)]


def _as_tuple(capability: str) -> tuple[int, int]:
    major, minor = capability.split(".")
    return int(major), int(minor)


def _requirements_text(spec: ImageSpec) -> str:
    if spec.gpu:
        header = [
            "# mii_azure serving image (GPU): what score.py needs, pinned to the versions the test suite runs.",
            f"# torch {TORCH_VERSION} from PyPI is its CUDA {CUDA_VERSION} build; {CUDA_TOOLKIT_REQUIREMENT}",
            "# adds nvcc at the same CUDA release. DeepSpeed is not listed: the Dockerfile builds it from",
            f"# source (deepspeed=={DEEPSPEED_VERSION}) in its next step, with its inference ops compiled in.",
        ]
    else:
        header = [
            "# mii_azure serving image (CPU): what score.py needs, pinned to the versions the test suite runs.",
            f"# {spec.torch_requirement} comes from {TORCH_CPU_INDEX_URL}: the Dockerfile installs it first,",
            "# without dependencies; everything else, torch's dependencies included, comes from PyPI.",
        ]
    return "\n".join(header + list(spec.requirements)) + "\n"


def _dockerfile_text(spec: ImageSpec) -> str:
    common_head = [
        f"# mii_azure serving image ({spec.kind.upper()}), written by mii_azure.serving_image: rebuild the package",
        "# rather than editing it. It runs the package's launcher (launch.py) with the deployment's score.py.",
        f"FROM {spec.base_image}",
        "",
        "USER root",
        "ENV DEBIAN_FRONTEND=noninteractive",
    ]
    python_env = [
        f"# Python {PYTHON_VERSION} in its own prefix (conda-forge only), first on PATH: python, pip and azmlinfsrv.",
        f"RUN conda create -y -p {ENV_PREFIX} --override-channels -c conda-forge python={PYTHON_VERSION} pip \\",
        "    && conda clean -afy",
        f"ENV PATH={ENV_PREFIX}/bin:$PATH \\",
        "    PIP_NO_CACHE_DIR=1 \\",
        "    PIP_DISABLE_PIP_VERSION_CHECK=1",
        "",
        f"COPY {REQUIREMENTS_FILE} {ENV_PREFIX}/{REQUIREMENTS_FILE}",
    ]
    if not spec.gpu:
        lines = common_head + [""] + python_env + [
            f"RUN pip install --no-deps --index-url {TORCH_CPU_INDEX_URL} {spec.torch_requirement} \\",
            f"    && pip install -r {ENV_PREFIX}/{REQUIREMENTS_FILE}",
            "",
            "# Fail the build unless the CPU torch and the inference server are in place.",
            'RUN python -c "import torch, azureml_inference_server_http; '
            "raise SystemExit(0 if torch.version.cuda is None else 'torch is a CUDA build')\" \\",
            "    && command -v azmlinfsrv",
            "",
        ] + _command_lines(spec)
        return "\n".join(lines)

    op_modules = ", ".join(repr(module) for _, module in PREBUILT_OPS.values())
    op_names = ", ".join(repr(name) for name in PREBUILT_OPS)
    build_vars = " ".join(f"{key}={value}" for key, value in spec.build_env.items())
    check = (
        "import importlib, sys, deepspeed.git_version_info as v; "
        f"missing = [op for op in ({op_names},) if not v.installed_ops.get(op)]; "
        "missing and sys.exit('DeepSpeed ops not built: %s' % missing); "
        f"[importlib.import_module(m) for m in ({op_modules},)]; "
        "print('DeepSpeed', v.version, 'ops built for', v.torch_info)"
    )
    lines = common_head + [
        "# A C++ compiler for DeepSpeed's ops (nvcc hands host code to it).",
        "RUN apt-get update && apt-get install -y --no-install-recommends build-essential \\",
        "    && rm -rf /var/lib/apt/lists/*",
        "",
    ] + python_env + [
        f"RUN pip install -r {ENV_PREFIX}/{REQUIREMENTS_FILE}",
        "",
        f"# DeepSpeed's inference ops, compiled now for compute capability {spec.torch_cuda_arch_list} so that",
        f"# start-up compiles nothing. nvcc is CUDA {CUDA_VERSION}'s, from the cuda-toolkit wheels (the release",
        "# torch pins); there is no GPU here, so DeepSpeed is told CUDA is the accelerator.",
        f"ENV CUDA_HOME={spec.cuda_home} \\",
        "    DS_ACCELERATOR=cuda \\",
        f'    TORCH_CUDA_ARCH_LIST="{spec.torch_cuda_arch_list}"',
        'RUN ln -sf libcudart.so.13 "$CUDA_HOME/lib/libcudart.so" \\',
        '    && ln -sf libcurand.so.10 "$CUDA_HOME/lib/libcurand.so" \\',
        f"    && {build_vars} \\",
        f"       pip install --no-build-isolation deepspeed=={spec.deepspeed_version}",
        "",
        "# Fail the build unless both ops were built and load, and the inference server is on PATH.",
        f'RUN python -c "{check}" \\',
        "    && command -v azmlinfsrv",
        "",
    ] + _command_lines(spec)
    return "\n".join(lines)


def _command_lines(spec: ImageSpec) -> list[str]:
    """The image's command: the package's launcher on :data:`SERVING_PORT`, reachable from outside."""
    return [
        "# The package's launcher (launch.py, the one the local harness runs), from the deployment's code",
        "# folder, bound to every interface so that the endpoint's front reaches it. The environment's",
        f"# inference_config points the probes at GET / and the scoring route at / on port {spec.port}.",
        f"EXPOSE {spec.port}",
        f"ENTRYPOINT {json.dumps(list(spec.entrypoint))}",
        "",
    ]
