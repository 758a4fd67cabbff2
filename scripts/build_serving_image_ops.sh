#!/usr/bin/env bash
# Follow the GPU serving image's Dockerfile (mii_azure.serving_image) in a venv on this machine, without
# Docker and without a GPU: install its pinned requirements (torch's CUDA 13 build and CUDA 13.0's nvcc
# from PyPI), build DeepSpeed with its inference ops for the given GPU architectures, then check that
# the built libraries hold code for each architecture and that DeepSpeed loads the prebuilt ops.
#
#   scripts/build_serving_image_ops.sh [ARCH ...]        (default: 8.0 9.0)
#
# Environment: VENV (default .venv-gpu-image), PYTHON (default python3.11), PROJECT_PYTHON (the
# project's venv, default .venv/bin/python: it writes the build context), CUDA_HOME_FROM=image (the
# Dockerfile's nvcc, from the cuda-toolkit wheels in the venv; the default) or a CUDA folder such as
# /usr/local/cuda to compile with that one instead. Several GB of wheels; 20+ minutes on 2 cores.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${VENV:-$ROOT/.venv-gpu-image}
PYTHON=${PYTHON:-python3.11}
PROJECT_PYTHON=${PROJECT_PYTHON:-$ROOT/.venv/bin/python}
CUDA_HOME_FROM=${CUDA_HOME_FROM:-image}
ARCHES=("$@")
[ ${#ARCHES[@]} -gt 0 ] || ARCHES=(8.0 9.0)

START=$(date +%s)
step_start=$START
step() {  # step NAME: print the time the previous step took, then announce NAME
    local now
    now=$(date +%s)
    echo "[build-ops] +$((now - step_start)) s (total $((now - START)) s)"
    step_start=$now
    echo "[build-ops] === $1"
}

# pip as a fresh image sees it: PyPI only, none of this machine's pip settings or local wheels.
pip_clean() { env -u PIP_FIND_LINKS -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null "$VENV/bin/python" -m pip "$@"; }

step "write the GPU build context for ${ARCHES[*]}"
CONTEXT=$(mktemp -d /tmp/mii-gpu-image.XXXXXX)
"$PROJECT_PYTHON" - "$CONTEXT" "${ARCHES[@]}" <<'EOF'
import sys
from pathlib import Path

from mii_azure.serving_image import write_build_context

spec = write_build_context(Path(sys.argv[1]), gpu=True, cuda_arch_list=sys.argv[2:])
(Path(sys.argv[1]) / "spec.json").write_text(spec.model_dump_json(indent=2))
EOF
spec() { "$PROJECT_PYTHON" -c "import json,sys; s=json.load(open('$CONTEXT/spec.json')); print($1)"; }
TORCH_CUDA_ARCH_LIST=$(spec "s['torch_cuda_arch_list']")
DEEPSPEED=$(spec "s['deepspeed_version']")
BUILD_ENV=$(spec "' '.join(f'{k}={v}' for k, v in s['build_env'].items())")
OPS=$(spec "' '.join(s['prebuilt_ops'])")
echo "context: $CONTEXT; TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST; $BUILD_ENV; deepspeed $DEEPSPEED; ops: $OPS"

step "fresh venv ($PYTHON) at $VENV (Dockerfile: conda create python=3.11 pip)"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" --version
pip_clean install -q pip==26.3

step "pip install -r requirements.txt (Dockerfile: RUN pip install -r requirements.txt)"
pip_clean install -r "$CONTEXT/requirements.txt" 2>&1 | tail -3
SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
"$VENV/bin/python" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'cuda available:', torch.cuda.is_available())"

if [ "$CUDA_HOME_FROM" = image ]; then
    export CUDA_HOME=$SITE/nvidia/cu13
else
    export CUDA_HOME=$CUDA_HOME_FROM
fi
step "CUDA_HOME=$CUDA_HOME; unversioned links for the op's link step (Dockerfile: RUN ln -sf ...)"
"$CUDA_HOME/bin/nvcc" --version | tail -2
[ -x /usr/local/cuda/bin/nvcc ] && echo "(this machine's /usr/local/cuda: $(/usr/local/cuda/bin/nvcc --version | tail -1))"
ln -sf libcudart.so.13 "$CUDA_HOME/lib/libcudart.so"
ln -sf libcurand.so.10 "$CUDA_HOME/lib/libcurand.so"
ls -l "$CUDA_HOME/lib/libcudart.so" "$CUDA_HOME/lib/libcurand.so"
for header in cuda_runtime.h cuda_profiler_api.h cublas_v2.h curand_kernel.h cusparse.h cusolverDn.h cccl/cub/cub.cuh; do
    [ -f "$CUDA_HOME/include/$header" ] || { echo "missing $CUDA_HOME/include/$header" >&2; exit 1; }
done

step "build DeepSpeed $DEEPSPEED with its ops for $TORCH_CUDA_ARCH_LIST (Dockerfile: RUN ... pip install --no-build-isolation deepspeed)"
export DS_ACCELERATOR=cuda TORCH_CUDA_ARCH_LIST MAX_JOBS=${MAX_JOBS:-2}
BUILD_LOG=$CONTEXT/deepspeed-build.log
# shellcheck disable=SC2086  # BUILD_ENV is KEY=VALUE words
if ! env $BUILD_ENV nice -n 10 "$VENV/bin/python" -m pip --isolated install --no-cache-dir --no-build-isolation -v \
        "deepspeed==$DEEPSPEED" >"$BUILD_LOG" 2>&1; then
    tail -60 "$BUILD_LOG"
    echo "[build-ops] FAILED: DeepSpeed build (log: $BUILD_LOG)" >&2
    exit 1
fi
grep -E "DS_BUILD_OPS=|Install Ops=|Successfully installed" "$BUILD_LOG" | cut -c1-400

step "the Dockerfile's own check (RUN python -c ...)"
CHECK=$(sed -n 's/^RUN python -c "\(.*\)" \\$/\1/p' "$CONTEXT/Dockerfile")
[ -n "$CHECK" ] || { echo "no check found in the Dockerfile" >&2; exit 1; }
"$VENV/bin/python" -c "$CHECK"
PATH=$VENV/bin:$PATH command -v azmlinfsrv

step "cuobjdump --list-elf on the built ops (nvidia-cuda-cuobjdump from PyPI, outside the venv)"
TOOLS=$CONTEXT/tools
env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null "$VENV/bin/python" -m pip install -q --target "$TOOLS" nvidia-cuda-cuobjdump
CUOBJDUMP=$(find "$TOOLS" -name cuobjdump -type f | head -1)
chmod +x "$CUOBJDUMP"
status=0
for op in $OPS; do
    so=$(find "$SITE/deepspeed/ops" -name "${op}_op*.so" | head -1)
    if [ -z "$so" ]; then echo "[build-ops] FAILED: no ${op}_op*.so under $SITE/deepspeed/ops" >&2; status=1; continue; fi
    echo "$op: $so ($(du -h "$so" | cut -f1))"
    elves=$("$CUOBJDUMP" --list-elf "$so")
    for arch in "${ARCHES[@]}"; do
        sm=sm_${arch/./}
        count=$(grep -c "\.${sm}\.cubin" <<<"$elves" || true)
        echo "[build-ops] $op $sm: $count cubins"
        [ "$count" -gt 0 ] || status=1
    done
    "$CUOBJDUMP" --list-elf "$so" | sed -n '1,3p'
done

step "DeepSpeed's own view without a GPU: is_compatible() and load() of the prebuilt ops"
"$VENV/bin/python" - <<'EOF'
import torch
from deepspeed.ops.op_builder import InferenceBuilder, SpatialInferenceBuilder

for builder in (InferenceBuilder(), SpatialInferenceBuilder()):
    module = builder.load()
    print(f"[build-ops] {builder.name}: is_compatible()={builder.is_compatible()}, load() -> {module.__name__} from {module.__file__}")
print("[build-ops] torch.cuda.is_available():", torch.cuda.is_available(), "(no GPU here: nothing was run on one)")
EOF

step "sizes"
# one du each: du counts a folder once, so folders inside the venv would not show after it
for folder in "$VENV" "$SITE/nvidia" "$SITE/torch" "$SITE/triton" "$SITE/deepspeed" "$CUDA_HOME/bin" "$CUDA_HOME/nvvm"; do
    [ -d "$folder" ] && du -sh "$folder"
done
now=$(date +%s)
echo "[build-ops] +$((now - step_start)) s"
if [ $status -eq 0 ]; then
    echo "[build-ops] OK: ops $OPS built for ${ARCHES[*]} in $((now - START)) s"
else
    echo "[build-ops] FAILED: some op lacks code for an architecture (see above)" >&2
fi
exit $status
