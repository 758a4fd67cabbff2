#!/usr/bin/env bash
# Prepare the wheels that the GPU check (scripts/gpu_check.sh) installs on the device machine.
#
# Run HERE (the development machine, which reaches PyPI), before a session that has a GPU machine:
#
#     bash scripts/gpu_prepare.sh
#
# The GPU machine has python3 3.12 with torch 2.11 (cu130), transformers, accelerate, safetensors,
# tokenizers, numpy, pytest, ninja, psutil, py-cpuinfo, msgpack, einops, tqdm, packaging, pyyaml,
# huggingface-hub, filelock, requests, regex, pillow, zipp, triton and nvcc, but no DeepSpeed, no pydantic,
# no hjson, no diffusers, no importlib-metadata (see /work/.library/device/KINDS.md), and no network.
# This script puts exactly the missing ones into .whl/ (ignored by git, carried with
# `carry=[".whl"]`), at the versions of this repository's .venv, built or downloaded for CPython 3.12
# on x86-64 manylinux. gpu_check.sh installs them there with --no-deps, so nothing replaces its torch.
#
# Then it checks, here, that the package set is complete: it imports what the GPU tests and the GPU
# benchmark import, under .venv's Python, with every third-party distribution that the GPU machine
# lacks and .whl/ does not bring blocked (scripts/gpu_prepare.sh --check-only repeats just that).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="$ROOT/.venv/bin/python"
WHL="$ROOT/.whl"
LIMIT_MIB=50

if [[ ! -x "$PY" ]]; then
    echo "error: $PY not found; run scripts/install.sh first (the versions are taken from .venv)." >&2
    exit 1
fi

version_of() { "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }

# What the GPU machine lacks, by distribution name (the versions come from .venv):
#  - deepspeed: the engine's GPU path; sdist-only on PyPI, so built here (pure Python with DS_BUILD_OPS=0,
#    its CUDA ops are compiled on first use there, by nvcc).
#  - hjson: needed by deepspeed.
#  - pydantic, pydantic-core, annotated-types, typing-inspection, typing-extensions: mii_azure's
#    configuration and plans, and DeepSpeed's config (typing-extensions is there, but pydantic-core
#    needs >= 4.14.1, so a known one travels).
#  - diffusers, importlib-metadata: the text-to-image test (diffusers imports importlib_metadata).
PURE=(hjson pydantic annotated-types typing-inspection typing-extensions diffusers importlib-metadata)
BINARY=(pydantic-core)

check_imports() {
    # Simulate the GPU machine's package set under .venv's Python: a throw-away site folder holds
    # links to those of .venv's packages that the machine's image has (KINDS.md) or .whl/ brings,
    # and Python runs with -S (no site-packages of its own), so anything else is simply absent.
    # (.venv's versions, not the machine's: this checks that nothing is missing, not versions.)
    local modules site status=0
    modules="$(for w in "$WHL"/*.whl; do unzip -Z1 "$w"; done | awk -F/ '{print $1}' \
        | sed -E 's/\.py$//' | grep -v -E '\.(dist-info|data)$' | sort -u | tr '\n' ' ')"
    site="$(mktemp -d)"
    echo "== import check (the GPU machine's packages + .whl/: ${modules})"
    MII_GPU_WHEEL_MODULES="$modules" MII_GPU_SITE="$site" "$PY" - <<'PYLINK'
import os, sysconfig

# Top-level import names of the packages the GPU machine's image holds (KINDS.md, "Python packages
# already there"; as imported: PIL for pillow, cpuinfo for py-cpuinfo, yaml for pyyaml...).
IMAGE = set("""
absl accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated_doc anyio attr attrs botorch build certifi
charset_normalizer chex click cloudpickle cmake colorama contourpy coverage cuda cupy cupy_backends cupyx cycler
cython Cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fontTools formulaic frozenlist fsspec
gpytorch grpc h11 h5py hf_xet httpcore httpx huggingface_hub humanize hypothesis idna imageio iniconfig interface_meta
jax jaxlib jax_plugins jaxtyping jinja2 joblib kiwisolver lazy_loader lightning lightning_utilities linear_operator
lineax llvmlite lxml markdown markdown_it markupsafe matplotlib mdurl mesonbuild ml_dtypes mpi4py mpmath msgpack
multidict multipledispatch mypy_extensions nanobind narwhals networkx ninja numba numba_cuda numpy numpyro nvidia
pynvml onnx onnx_ir onnxruntime onnxscript cv2 optax opt_einsum opt_einsum_fx optimistix orbax packaging pandas
pathspec patsy peft PIL pip pluggy portalocker prometheus_client propcache google pyarrow pybind11 cpuinfo pygments
pyparsing pyproject_hooks pyre_extensions pytest _pytest py pytest_benchmark pytest_cov pytest_mock pytest_timeout
xdist dateutil pytorch_lightning yaml _yaml regex requests rich sacrebleu scikit_build_core skimage sklearn scipy
seaborn sentencepiece sentence_transformers setuptools _distutils_hack pkg_resources shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard_data_server tensorstore threadpoolctl tifffile
tiktoken timm tokenizers toolz torch torchgen functorch torchaudio torchdiffeq torch_geometric torchmetrics
torchvision tqdm transformers treescope triton typer typing_inspect urllib3 uvloop wadler_lindig werkzeug wheel
wrapt xarray xxhash yarl zipp psutil safetensors mpl_toolkits pylab isympy
""".split())
# .venv's huggingface_hub 2.x talks HTTP through httpx2; the machine's 1.33 uses httpx, which it has.
IMAGE |= {"httpx2", "httpcore2", "truststore"}
allowed = IMAGE | set(os.environ["MII_GPU_WHEEL_MODULES"].split())
site = os.environ["MII_GPU_SITE"]
packages = sysconfig.get_paths()["purelib"]
linked, left_out = 0, set()
for entry in sorted(os.listdir(packages)):
    top = entry.split(".")[0]
    if entry.endswith(".pth") or entry == "__pycache__":
        continue
    if entry.endswith(".dist-info"):
        # Metadata of every distribution stays: version look-ups of present packages need theirs.
        os.symlink(os.path.join(packages, entry), os.path.join(site, entry))
    elif top in allowed:
        os.symlink(os.path.join(packages, entry), os.path.join(site, entry))
        linked += 1
    else:
        left_out.add(top)
print(f"   {linked} of .venv's packages linked; absent as there: {' '.join(sorted(left_out))}")
PYLINK
    # In a Python that sees only that folder: what the engine's GPU path, the GPU tests and the GPU
    # benchmark import.
    env -i PATH="$PATH" HOME="$HOME" DS_ACCELERATOR=cpu PYTHONPATH="$site:$ROOT:$ROOT/tests" \
        "$PY" -S - <<'PYCHECK' || status=$?
import glob, importlib, runpy, sys

targets = [
    "pydantic", "pydantic_core", "hjson",
    "mii_azure", "mii_azure.runtime.engine", "mii_azure.runtime.optimize", "mii_azure.runtime.zero_inference",
    "mii_azure.runtime.service", "mii_azure.targets.server_process", "mii_azure.skus",
    "mii_azure.tasks.generation", "mii_azure.tasks.fill_mask", "mii_azure.tasks.classification",
    "mii_azure.tasks.feature_extraction", "mii_azure.tasks.text_to_image",
    "model_factory",
    "deepspeed", "deepspeed.inference.engine", "deepspeed.module_inject", "deepspeed.model_implementations",
    "deepspeed.model_implementations.transformers.ds_transformer", "deepspeed.ops.transformer.inference",
    "deepspeed.ops.op_builder", "deepspeed.runtime.zero", "transformers.integrations.deepspeed",
    "diffusers", "diffusers.pipelines.stable_diffusion",
]
# The GPU test modules themselves (importing them checks their imports; they skip without CUDA).
sys.path.insert(0, "tests/gpu")
targets += [path.split("/")[-1][:-3] for path in sorted(glob.glob("tests/gpu/*.py"))]
failed = []
for name in targets:
    try:
        importlib.import_module(name)
    except BaseException as exc:  # noqa: BLE001 - report every failure, a pytest skip included
        failed.append(f"{name}: {type(exc).__name__}: {exc}")
import contextlib, io
benchmarks = sorted(glob.glob("benchmarks/gpu_*.py"))
for script in benchmarks:
    try:
        sys.argv = [script, "--help"]
        with contextlib.redirect_stdout(io.StringIO()):
            runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        if exc.code not in (0, None):
            failed.append(f"{script} --help exited {exc.code}")
    except BaseException as exc:  # noqa: BLE001
        failed.append(f"{script}: {type(exc).__name__}: {exc}")
if failed:
    print("IMPORT CHECK FAILED:")
    print("\n".join("  " + line for line in failed))
    sys.exit(1)
print(f"import check passed: {len(targets)} modules, and --help of {' '.join(benchmarks)}")
PYCHECK
    rm -rf "$site"
    return $status
}

if [[ "${1:-}" == "--check-only" ]]; then
    check_imports
    exit 0
fi

grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo '/.whl/' >> .git/info/exclude; }
rm -rf "$WHL"
mkdir -p "$WHL"

PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
specs=()
for name in "${PURE[@]}" "${BINARY[@]}"; do
    specs+=("$name==$(version_of "$name")")
done
echo "== downloading for CPython 3.12 / manylinux x86-64: ${specs[*]}"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d "$WHL" "${specs[@]}"

DS_VERSION="$(version_of deepspeed)"
echo "== building deepspeed==$DS_VERSION (DS_BUILD_OPS=0: pure Python, CUDA ops compile on first use)"
BUILD="$(mktemp -d)"
trap 'rm -rf "$BUILD"' EXIT
# --no-build-isolation: DeepSpeed's setup.py imports torch, which .venv has.
# --no-cache-dir: a wheel cached by an earlier build with other DS_BUILD_* settings is not reused.
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation --no-binary deepspeed --no-cache-dir \
    -w "$BUILD" "deepspeed==$DS_VERSION" >"$BUILD/build.log" 2>&1 || { tail -40 "$BUILD/build.log"; exit 1; }
cp "$BUILD"/deepspeed-*.whl "$WHL"/
# It must be pure Python (py3-none-any) and carry the sources of the ops that kernel injection compiles.
for wheel in "$WHL"/deepspeed-*.whl; do
    [[ "$wheel" == *-py3-none-any.whl ]] || { echo "error: $wheel is not a pure-Python wheel" >&2; exit 1; }
    listing="$(unzip -Z1 "$wheel")"
    for needed in deepspeed/ops/op_builder/transformer_inference.py deepspeed/ops/op_builder/spatial_inference.py \
                  deepspeed/ops/csrc/transformer/inference/csrc/pt_binding.cpp \
                  deepspeed/ops/csrc/spatial/csrc/pt_binding.cpp; do
        grep -qxF "$needed" <<<"$listing" || { echo "error: $wheel lacks $needed" >&2; exit 1; }
    done
done

# One version of each distribution, or pip refuses the whole install there.
dupes="$(ls "$WHL" | sed -E 's/-[0-9].*//' | tr 'A-Z-' 'a-z_' | sort | uniq -d)"
[[ -z "$dupes" ]] || { echo "error: several versions of: $dupes" >&2; exit 1; }

echo "== wheels in .whl/"
ls -l "$WHL" | awk 'NR > 1 {printf "  %8.1f KiB  %s\n", $5 / 1024, $9}'
size_kib="$(du -sk "$WHL" | cut -f1)"
echo "== total: $((size_kib / 1024)) MiB (${size_kib} KiB); limit ${LIMIT_MIB} MiB (the tree and carried paths travel within 64 MiB)"
if (( size_kib > LIMIT_MIB * 1024 )); then
    echo "error: the wheels exceed ${LIMIT_MIB} MiB" >&2
    exit 1
fi
tree_kib="$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- 2>/dev/null | tail -1 | awk '{print int($1 / 1024)}')"
echo "== what travels: the working tree ${tree_kib} KiB + .whl/ ${size_kib} KiB (limit 64 MiB)"
if (( tree_kib + size_kib > 60 * 1024 )); then
    echo "error: the working tree and .whl/ come close to the 64 MiB a device call carries" >&2
    exit 1
fi
check_imports
echo "== ready: run(command=\"bash scripts/gpu_check.sh\", carry=[\".whl\"], timeout_s=580)"
