#!/usr/bin/env bash
# Prepare .fastgen/: what the GPU machine needs to run DeepSpeed-FastGen (deepspeed.inference.v2,
# DeepSpeed's continuous-batching engine) for benchmarks/gpu_fastgen.py through scripts/fastgen_check.sh.
#
#   *** The DeepSpeed build takes ~50 minutes on this 2-core machine (3032 s measured). ***
#   *** Start it early, in the background, and do other work meanwhile:                 ***
#
#       nohup bash scripts/fastgen_prepare.sh > /tmp/fastgen_prepare.log 2>&1 &
#
# Re-running is cheap: every step whose output exists is skipped (a build that was interrupted resumes:
# ninja keeps the objects already compiled in $FASTGEN_WORK/build-ds/build). To redo a step, delete
# its output (the file in .fastgen/, or $FASTGEN_WORK/...).
#
# Why a build, and what travels (found by the investigation in /tmp/fastgen-check, 2026-12):
#  - The GPU machine (nvidia-h200, /work/.library/device/KINDS.md) has python3 3.12, torch 2.11.0+cu130,
#    transformers 5.17, nvcc 13.0, but no network, no DeepSpeed, no pydantic, no hjson. FastGen needs
#    four CUDA ops: inference_core_ops, cutlass_ops, ragged_device_ops, ragged_ops. JIT-compiling them
#    there would take far longer than a device call, so they are built AHEAD OF TIME here: deepspeed
#    0.19.8 from its sdist with DS_BUILD_{INFERENCE_CORE,CUTLASS,RAGGED_DEVICE,RAGGED}_OPS=1, for sm_90
#    only (TORCH_CUDA_ARCH_LIST=9.0, H100/H200), against PyPI's torch==2.11.0 (the CUDA 13.0 build, the
#    same as the machine's) in a Python 3.12 venv (pyenv's 3.12 here: the repo's .venv is 3.11),
#    with /usr/local/cuda's nvcc 13.0, nice -n 10, MAX_JOBS=2, DS_NVCC_THREADS=1.
#  - cutlass_ops and ragged_device_ops link against libdeepspeedft.so / libblockedflash.so from
#    deepspeed-kernels. Only its release 0.0.1.dev1698255861 carries sm_90 code (checked below with
#    cuobjdump; the two earlier ones have sm_80/sm_86 only). Its libraries link the CUDA runtime
#    (11.8) statically and need no libtorch (readelf: libc, libstdc++, libdl, librt, libpthread only).
#    On the machine they must be on LD_LIBRARY_PATH (<site>/dskernels): the built .so files' RUNPATH
#    names this machine's build venv, which is not there.
#  - Size (a device call carries 64 MiB with the working tree): the built deepspeed wheel is 39.8 MB,
#    4.8 MB after `strip --strip-debug` of its four .so files (repacked with `wheel unpack/pack`);
#    deepspeed-kernels' libraries are 190 MB, 7.6 MB as `tar | xz -9e`.
#  - Also: pydantic 2.14.4 (+ pydantic-core, annotated-types, typing-inspection) and hjson for
#    deepspeed, and deepspeed-mii 0.3.3 + pyzmq + ujson (MII's pipeline is FastGen's serving front
#    end; `import mii` worked here with these plus grpcio and protobuf, which the machine has; the
#    benchmark does not use it). All --no-deps, for
#    CPython 3.12 / manylinux x86-64, as in /work/.library/device/README.md.
#
# Environment:
#   FASTGEN_WORK=/tmp/fastgen-build   where the venv (~5 GB), sources and build live (not the repo)
#   FASTGEN_REUSE=DIR                 reuse DIR/venv312 and DIR/build-ds/dist/<wheel> from an earlier
#                                     build (e.g. /tmp/fastgen-check) instead of creating the venv and
#                                     building; every other step (downloads, strip, repack, xz, checks)
#                                     still runs
#   FASTGEN_PYTHON=/path/python3.12   the Python 3.12 to make the venv with (default: pyenv's 3.12.x)
#
# Result: .fastgen/ (git-ignored through .git/info/exclude, ~16 MB), carried to the machine as
#   run(command="bash scripts/fastgen_check.sh", carry=[".fastgen"], timeout_s=330)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DEST="$ROOT/.fastgen"
WORK="${FASTGEN_WORK:-/tmp/fastgen-build}"
REUSE="${FASTGEN_REUSE:-}"
LIMIT_MB=40

DS_VERSION=0.19.8
TORCH_VERSION=2.11.0
DSK_VERSION=0.0.1.dev1698255861
DS_WHEEL="deepspeed-${DS_VERSION}-cp312-cp312-linux_x86_64.whl"
DSK_TAR="dskernels-${DSK_VERSION}.tar.xz"
# The wheels that travel beside the two built artifacts (versions as in the investigated carry).
WHEELS=(pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 hjson==3.1.0
        deepspeed-mii==0.3.3 pyzmq==27.3.0 ujson==6.1.0)
# What the build venv gets besides torch: deepspeed's setup.py needs torch, the op builders import
# dskernels (its library_path() is linked against), the rest are deepspeed's install_requires (for
# the import check at the end) and transformers as on the machine.
VENV_PACKAGES=("torch==$TORCH_VERSION" "deepspeed-kernels==$DSK_VERSION" ninja packaging numpy psutil py-cpuinfo
               hjson pydantic msgpack einops tqdm wheel==0.48.0 transformers==5.17.0 pyzmq ujson)
SO_FILES=(deepspeed/inference/v2/kernelsinference_core_ops.cpython-312-x86_64-linux-gnu.so
          deepspeed/inference/v2/ragged_ops.cpython-312-x86_64-linux-gnu.so
          deepspeed/inference/v2/kernels/cutlass_ops/cutlass_ops.cpython-312-x86_64-linux-gnu.so
          deepspeed/inference/v2/kernels/ragged_ops/ragged_device_ops.cpython-312-x86_64-linux-gnu.so)
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)

T0=$(date +%s)
T_STEP=$T0
step() { local now; now=$(date +%s); echo; echo "=== [$((now - T0)) s] $*"; T_STEP=$now; }
done_in() { echo "    ... $* ($(( $(date +%s) - T_STEP )) s)"; }
die() { echo "error: $*" >&2; exit 1; }

echo "fastgen_prepare: .fastgen/ <- $WORK${REUSE:+ (reusing venv and built wheel from $REUSE)}"
echo "NOTE: building DeepSpeed's FastGen ops takes ~50 min here; run this early, in the background:"
echo "      nohup bash scripts/fastgen_prepare.sh > /tmp/fastgen_prepare.log 2>&1 &"

EXCLUDE="$(git rev-parse --git-path info/exclude)"
mkdir -p "$(dirname "$EXCLUDE")" "$DEST" "$WORK"
grep -qxF '/.fastgen/' "$EXCLUDE" 2>/dev/null || echo '/.fastgen/' >> "$EXCLUDE"

# ---------------------------------------------------------------- 1. Python 3.12 and the build venv
if [[ -n "$REUSE" ]]; then
    VENV="$REUSE/venv312"
    BUILT="$REUSE/build-ds/dist/$DS_WHEEL"
    [[ -x "$VENV/bin/python" ]] || die "FASTGEN_REUSE: no $VENV/bin/python"
    [[ -f "$BUILT" ]] || die "FASTGEN_REUSE: no $BUILT"
    step "1. venv: reused $VENV (not created)"
else
    VENV="$WORK/venv312"
    BUILT="$WORK/build-ds/dist/$DS_WHEEL"
    step "1. Python 3.12 venv with torch==$TORCH_VERSION (PyPI: the CUDA 13.0 build) in $VENV"
    if [[ -f "$VENV/.fastgen-ready" ]]; then
        echo "    exists: skipped"
    else
        PY312="${FASTGEN_PYTHON:-}"
        if [[ -z "$PY312" ]]; then
            # pyenv's interpreter directly (the pyenv shim `python3.12` resolves only when 3.12 is
            # the selected pyenv version, and the global one here is 3.11).
            for candidate in "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"/versions/3.12*/bin/python3.12 \
                             "$(command -v python3.12 || true)"; do
                if [[ -x "$candidate" ]] && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then
                    PY312="$candidate"; break
                fi
            done
        fi
        [[ -n "$PY312" ]] || die "no Python 3.12 found (pyenv install 3.12, or set FASTGEN_PYTHON)"
        echo "    python: $PY312 ($("$PY312" --version))"
        rm -rf "$VENV"
        "$PY312" -m venv "$VENV"
        # ~6 GB of downloads (torch and its nvidia-* CUDA 13 wheels, whose nvidia/cu13/include holds the
        # CUDA runtime headers the build uses).
        "$VENV/bin/python" -m pip install -q "${VENV_PACKAGES[@]}" > "$WORK/venv_install.log" 2>&1 \
            || { tail -30 "$WORK/venv_install.log"; die "venv install failed (log: $WORK/venv_install.log)"; }
        touch "$VENV/.fastgen-ready"
        done_in "created"
    fi
fi
VPY="$VENV/bin/python"
SITE="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
"$VPY" - "$TORCH_VERSION" "$DSK_VERSION" <<'EOF' || die "the venv is not the expected one"
import importlib.metadata as m, sys
torch_v, dsk_v = sys.argv[1:]
assert sys.version_info[:2] == (3, 12), sys.version
assert m.version("torch") == torch_v, m.version("torch")
assert m.version("deepspeed-kernels") == dsk_v, m.version("deepspeed-kernels")
import torch
assert torch.version.cuda and torch.version.cuda.startswith("13."), torch.version.cuda
print(f"    venv: Python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), deepspeed-kernels {dsk_v}")
EOF

# ---------------------------------------------------------------- 2. deepspeed's sdist
step "2. deepspeed==$DS_VERSION sdist"
SDIST="$WORK/src/deepspeed-$DS_VERSION.tar.gz"
if [[ -f "$SDIST" ]]; then
    echo "    exists: skipped"
else
    mkdir -p "$WORK/src"
    # --no-build-isolation: pip prepares the sdist's metadata, and deepspeed's setup.py imports torch.
    "$VPY" -m pip download -q --no-deps --no-binary :all: --no-build-isolation -d "$WORK/src" "deepspeed==$DS_VERSION" \
        > "$WORK/sdist.log" 2>&1 || { tail -20 "$WORK/sdist.log"; die "sdist download failed"; }
    done_in "downloaded"
fi
echo "    sha256 $(sha256sum "$SDIST" | cut -c1-16)...  $(stat -c %s "$SDIST") bytes"
if [[ -n "$REUSE" && -f "$REUSE/src/deepspeed-$DS_VERSION.tar.gz" ]]; then
    cmp -s "$SDIST" "$REUSE/src/deepspeed-$DS_VERSION.tar.gz" && echo "    identical to the one $REUSE built from" \
        || die "the sdist differs from $REUSE/src/deepspeed-$DS_VERSION.tar.gz"
fi

# ---------------------------------------------------------------- 3. the AOT build (~50 min)
step "3. build deepspeed with the four FastGen ops for sm_90 (~50 min here)"
if [[ -f "$BUILT" ]]; then
    echo "    exists: skipped (${REUSE:+reused }$BUILT)"
else
    if [[ ! -f "$WORK/build-ds/setup.py" ]]; then
        rm -rf "$WORK/build-ds" && mkdir -p "$WORK/build-ds"
        tar -xzf "$SDIST" -C "$WORK/build-ds" --strip-components=1
    fi
    echo "    log: $WORK/build.log (started $(date '+%H:%M'); expect ~50 min)"
    (
        cd "$WORK/build-ds"
        export PATH="$VENV/bin:$PATH"
        export CUDA_HOME=/usr/local/cuda DS_ACCELERATOR=cuda DS_BUILD_OPS=0 DS_BUILD_INFERENCE_CORE_OPS=1 \
               DS_BUILD_RAGGED_DEVICE_OPS=1 DS_BUILD_RAGGED_OPS=1 DS_BUILD_CUTLASS_OPS=1 TORCH_CUDA_ARCH_LIST=9.0 \
               MAX_JOBS=2 DS_NVCC_THREADS=1 DS_ENABLE_NINJA=1
        export CPATH="$SITE/nvidia/cu13/include" LIBRARY_PATH="$SITE/nvidia/cu13/lib"
        nice -n 10 "$VPY" setup.py bdist_wheel > "$WORK/build.log" 2>&1
    ) || { tail -40 "$WORK/build.log"; die "the build failed (log: $WORK/build.log)"; }
    [[ -f "$BUILT" ]] || die "the build made no $BUILT"
    done_in "built"
fi
echo "    $BUILT: $(stat -c %s "$BUILT") bytes"
listing="$(unzip -Z1 "$BUILT")"
for so in "${SO_FILES[@]}"; do
    grep -qxF "$so" <<<"$listing" || die "$BUILT lacks $so"
done
unzip -p "$BUILT" deepspeed/git_version_info_installed.py | "$VPY" -c '
import sys
info = {}
exec(sys.stdin.read(), info)
ops = {name for name, on in info["installed_ops"].items() if on}
want = {"inference_core_ops", "cutlass_ops", "ragged_device_ops", "ragged_ops"}
assert ops == want, ops
assert info["torch_info"]["cuda_version"].startswith("13."), info["torch_info"]
print("    installed_ops:", sorted(ops), " torch_info:", info["torch_info"])
' || die "the built wheel does not have exactly the four FastGen ops"

# ---------------------------------------------------------------- 4. strip and repack
step "4. strip --strip-debug the wheel's .so files and repack it into .fastgen/"
if [[ -f "$DEST/$DS_WHEEL" ]]; then
    echo "    exists: skipped"
else
    rm -rf "$WORK/repack" && mkdir -p "$WORK/repack/out"
    "$VPY" -m wheel unpack -d "$WORK/repack" "$BUILT" >/dev/null
    for so in "${SO_FILES[@]}"; do
        f="$WORK/repack/deepspeed-$DS_VERSION/$so"
        before=$(stat -c %s "$f")
        strip --strip-debug "$f"
        printf '    %-88s %10d -> %9d bytes\n' "$so" "$before" "$(stat -c %s "$f")"
    done
    # wheel pack rewrites RECORD with the stripped files' hashes and sizes.
    "$VPY" -m wheel pack -d "$WORK/repack/out" "$WORK/repack/deepspeed-$DS_VERSION" >/dev/null
    cp "$WORK/repack/out/$DS_WHEEL" "$DEST/"
    done_in "repacked"
fi
echo "    .fastgen/$DS_WHEEL: $(stat -c %s "$DEST/$DS_WHEEL") bytes"

# ---------------------------------------------------------------- 5. deepspeed-kernels
step "5. deepspeed-kernels==$DSK_VERSION: download, check for sm_90 code, tar | xz -9e into .fastgen/"
if [[ -f "$DEST/$DSK_TAR" ]]; then
    echo "    exists: skipped"
else
    mkdir -p "$WORK/dl"
    "$VPY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${PLATFORMS[@]}" -d "$WORK/dl" "deepspeed-kernels==$DSK_VERSION"
    dsk_whl="$(ls "$WORK"/dl/deepspeed_kernels-"$DSK_VERSION"-*.whl)"
    echo "    $(basename "$dsk_whl"): $(stat -c %s "$dsk_whl") bytes"
    rm -rf "$WORK/k" && mkdir -p "$WORK/k"
    unzip -q "$dsk_whl" -d "$WORK/k"
    # The release must hold sm_90 cubins (the other releases stop at sm_86). cuobjdump comes from
    # NVIDIA's wheel: this machine's /usr/local/cuda has no cuobjdump.
    cuobjdump="$(command -v cuobjdump || true)"
    if [[ -z "$cuobjdump" ]]; then
        mkdir -p "$WORK/tools"
        "$VPY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            "${PLATFORMS[@]}" -d "$WORK/tools" nvidia-cuda-cuobjdump==13.2.86
        rm -rf "$WORK/tools/x" && unzip -q "$WORK"/tools/nvidia_cuda_cuobjdump-*.whl -d "$WORK/tools/x"
        cuobjdump="$(find "$WORK/tools/x" -name cuobjdump -type f | head -1)"
        chmod +x "$cuobjdump"
    fi
    for lib in libdeepspeedft.so libblockedflash.so; do
        archs="$("$cuobjdump" --list-elf "$WORK/k/dskernels/$lib" | sed -E 's/.*\.(sm_[0-9a-z]+)\..*/\1/' | sort | uniq -c | tr -s ' \n' ' ')"
        echo "    $lib cubins: $archs"
        grep -q sm_90 <<<"$archs" || die "$lib has no sm_90 code"
    done
    # One xz block, -9e: 190 MB -> 7.6 MB (~65 s here). Unstripped (stripping them saves little).
    (cd "$WORK/k" && tar -cf - dskernels "deepspeed_kernels-$DSK_VERSION.dist-info") \
        | nice -n 10 xz -9e -T1 > "$DEST/$DSK_TAR.part"
    mv "$DEST/$DSK_TAR.part" "$DEST/$DSK_TAR"
    done_in "compressed"
fi
echo "    .fastgen/$DSK_TAR: $(stat -c %s "$DEST/$DSK_TAR") bytes ($(xz -l --robot "$DEST/$DSK_TAR" | awk '$1 == "totals" {print $5}') unpacked)"

# ---------------------------------------------------------------- 6. the other wheels
step "6. wheels for CPython 3.12 / manylinux x86-64: ${WHEELS[*]}"
missing=()
for spec in "${WHEELS[@]}"; do
    name="${spec%%==*}"; version="${spec##*==}"
    compgen -G "$DEST/${name//-/_}-${version}-*.whl" >/dev/null || missing+=("$spec")
done
if (( ${#missing[@]} == 0 )); then
    echo "    all present: skipped"
else
    "$VPY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${PLATFORMS[@]}" -d "$DEST" "${missing[@]}"
    done_in "downloaded ${missing[*]}"
fi

# ---------------------------------------------------------------- 7. checks
step "7. checks: contents, sizes, and an import check under the venv's Python (no GPU here)"
expected=("$DS_WHEEL" "$DSK_TAR")
for spec in "${WHEELS[@]}"; do
    name="${spec%%==*}"; version="${spec##*==}"
    f="$(cd "$DEST" && ls ${name//-/_}-${version}-*.whl 2>/dev/null || true)"
    [[ -n "$f" && "$(wc -l <<<"$f")" == 1 ]] || die "expected one ${name}-${version} wheel in .fastgen/, found: ${f:-none}"
    expected+=("$f")
done
unexpected="$(comm -13 <(printf '%s\n' "${expected[@]}" | sort) <(ls "$DEST" | sort))"
[[ -z "$unexpected" ]] || die "unexpected files in .fastgen/ (remove them): $unexpected"
dupes="$(ls "$DEST" | grep '\.whl$' | sed -E 's/-[0-9].*//' | tr 'A-Z-' 'a-z_' | sort | uniq -d)"
[[ -z "$dupes" ]] || die "several versions of: $dupes"
ls -l "$DEST" | awk 'NR > 1 {printf "    %10d  %s\n", $5, $9}'
total_b="$(du -cb "$DEST"/* | tail -1 | cut -f1)"
echo "    total: $((total_b / 1000000)) MB ($total_b bytes); limit ${LIMIT_MB} MB"
(( total_b <= LIMIT_MB * 1000000 )) || die ".fastgen/ exceeds ${LIMIT_MB} MB"
tree_b="$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)"
echo "    what travels: the working tree $((tree_b / 1024)) KiB + .fastgen/ $((total_b / 1024)) KiB (limit 64 MiB)"
(( tree_b + total_b <= 60 * 1024 * 1024 )) || die "the working tree and .fastgen/ come close to the 64 MiB a device call carries"

# Install as the machine does (pip --target, --no-deps), then import the FastGen engine and load the
# four ops' extension modules (they load without a GPU: libcuda is opened lazily), and run the
# benchmark's --help. The venv's packages stand in for the machine's.
CHECK="$WORK/site-check"
rm -rf "$CHECK"
"$VPY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$CHECK" "$DEST"/*.whl
"$VPY" -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" "$DEST/$DSK_TAR" "$CHECK"
env PYTHONPATH="$CHECK" LD_LIBRARY_PATH="$CHECK/dskernels${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    "$VPY" - "$CHECK" <<'EOF' 2>&1 | grep -v -E "real_accelerator|Setting accelerator" || die "import check failed"
import importlib, sys
site = sys.argv[1]
import deepspeed, dskernels, pydantic, hjson
assert deepspeed.__file__.startswith(site), deepspeed.__file__
assert dskernels.library_path().startswith(site), dskernels.library_path()
from deepspeed.inference import build_hf_engine, RaggedInferenceEngineConfig  # noqa: F401
for module in ("deepspeed.inference.v2.kernelsinference_core_ops", "deepspeed.inference.v2.ragged_ops",
               "deepspeed.inference.v2.kernels.cutlass_ops.cutlass_ops",
               "deepspeed.inference.v2.kernels.ragged_ops.ragged_device_ops"):
    importlib.import_module(module)
import mii  # noqa: F401
# The built .so files' RUNPATH names the build venv's dskernels folder, which the GPU machine lacks:
# there LD_LIBRARY_PATH must find them. It comes before RUNPATH, so here too they must map from site.
maps = open("/proc/self/maps").read()
for lib in ("libdeepspeedft.so", "libblockedflash.so"):
    paths = {line.split()[-1] for line in maps.splitlines() if line.endswith(lib)}
    assert paths == {f"{site}/dskernels/{lib}"}, (lib, paths)
print(f"    import check passed: deepspeed {deepspeed.__version__}, dskernels {dskernels.__version__}, "
      f"pydantic {pydantic.VERSION}, mii, the four FastGen op modules load")
EOF
env PYTHONPATH="$CHECK" LD_LIBRARY_PATH="$CHECK/dskernels" "$VPY" benchmarks/gpu_fastgen.py --help >/dev/null \
    || die "benchmarks/gpu_fastgen.py --help failed"
echo "    benchmarks/gpu_fastgen.py --help: ok"
rm -rf "$CHECK"

step "ready ($(( $(date +%s) - T0 )) s in all). On a session lent the GPU machine:"
echo '    run(command="bash scripts/fastgen_check.sh", carry=[".fastgen"], timeout_s=330)'
