#!/usr/bin/env bash
# Measure DeepSpeed-FastGen on the GPU machine, as ONE command of at most ~5 minutes.
#
# Prepared here by scripts/fastgen_prepare.sh (.fastgen/, ~16 MB; its DeepSpeed build takes ~50 min,
# start it early), run there as:
#
#     run(command="bash scripts/fastgen_check.sh", carry=[".fastgen"], timeout_s=330)
#
# NOT RUN YET: neither this script nor benchmarks/gpu_fastgen.py has run on a GPU.
#
# The machine (H100/H200, /work/.library/device/KINDS.md) has python3 3.12, torch 2.11 (cu130) and
# transformers but no DeepSpeed, pydantic or hjson, and no network. .fastgen/ brings deepspeed 0.19.8
# with FastGen's four ops built ahead of time for sm_90, deepspeed-kernels' libraries (tar.xz), pydantic,
# hjson and deepspeed-mii; they go to /tmp/site (--no-deps: the machine's torch stays), and
# deepspeed-kernels' folder goes on LD_LIBRARY_PATH (cutlass_ops and ragged_device_ops link its
# libdeepspeedft.so and libblockedflash.so).
#
# Phases (TOTAL_S=300 caps the whole script, leaving 30 s of the 330 s command limit; the machine's
# start, a minute or more, comes on top, so a rerun still fits the session's 15 device minutes):
#   phase 0  setup       60 s  install .fastgen/ into /tmp/site, unpack dskernels, print the GPU,
#                              driver, nvcc, torch, deepspeed, dskernels, mii versions (expected ~20 s)
#   phase 1  llama-1b    rest  benchmarks/gpu_fastgen.py --runs 3 (the investigation's ~1.2B shape):
#                              HF eager fp16 generate vs FastGen at batch 1/8/32/64 (expected 1.5-2 min,
#                              an estimate: it never ran)
#   phase 2  llama-2-7b  rest  the same for a Llama-2-7B shape, only when >= 150 s are left
# Each benchmark gets --budget-s (what is left, less a margin) so it stops itself and writes what it
# measured rather than be killed; `timeout` backs that up.
#
# Comes back in $OUT: fastgen_check.log (everything printed), gpu_fastgen.json (phase 1; copy it to
# benchmarks/results/gpu_fastgen.json) and gpu_fastgen_llama-2-7b.json (phase 2, where it ran).
# Exit status: that of phase 1.
set -uo pipefail

START=$(date +%s)
TOTAL_S=${FASTGEN_CHECK_TOTAL_S:-300}
SETUP_S=60
SEVEN_B_MIN_S=150

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-/tmp/mii_fastgen_out}"
SITE="${FASTGEN_SITE:-/tmp/site}"
PY="${PYTHON:-python3}"
export OUT
mkdir -p "$OUT"

elapsed() { echo $(( $(date +%s) - START )); }
left() { echo $(( START + TOTAL_S - $(date +%s) )); }
phase() { echo; echo "=== [$(elapsed) s] $*"; }

main() {
declare -A STATUS
STATUS[phase1]="not run"
STATUS[phase2]="not run"

# ------------------------------------------------------------------ phase 0: setup (60 s)
phase "phase 0: setup"
if ! compgen -G ".fastgen/deepspeed-*.whl" >/dev/null || ! compgen -G ".fastgen/dskernels-*.tar.xz" >/dev/null; then
    echo "error: no .fastgen/: run scripts/fastgen_prepare.sh where PyPI is reachable (~50 min) and carry .fastgen"
    return 1
fi
timeout "$SETUP_S" "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .fastgen/*.whl || { echo "error: pip install of .fastgen/*.whl failed"; return 1; }
timeout "$SETUP_S" "$PY" -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" \
    .fastgen/dskernels-*.tar.xz "$SITE" || { echo "error: unpacking dskernels failed"; return 1; }
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
export LD_LIBRARY_PATH="$SITE/dskernels${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export DS_ACCELERATOR=cuda PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -2
echo "nvcc: $(nvcc --version 2>&1 | tail -1)   nproc: $(nproc)   disk /tmp: $(df -h /tmp | awk 'NR == 2 {print $4}') free"
echo "PYTHONPATH=$PYTHONPATH LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
timeout "$SETUP_S" "$PY" - <<'EOF' || echo "warning: the version report failed (the benchmark reports its own failure)"
import importlib, importlib.metadata as md, os, sys
print("python", sys.version.split()[0], sys.executable)
for name in ("torch", "transformers", "safetensors", "typing_extensions", "pydantic", "pydantic_core", "hjson",
             "deepspeed", "dskernels", "mii", "zmq", "ujson"):
    try:
        module = importlib.import_module(name)
        version = getattr(module, "__version__", None) or md.version(name.replace("_", "-"))
        print(f"{name:18s} {str(version):22s} {os.path.dirname(module.__file__)}")
    except Exception as exc:  # noqa: BLE001
        print(f"{name:18s} FAILED ({type(exc).__name__}: {exc})")
import torch
print("cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF

# ------------------------------------------------------------------ phase 1: llama-1b
budget=$(( $(left) - 15 ))
phase "phase 1: benchmarks/gpu_fastgen.py --runs 3 (llama-1b; budget ${budget} s)"
if (( budget < 60 )); then
    echo "error: only ${budget} s left after setup"
    return 1
fi
timeout -k 10 "$(( budget + 10 ))" "$PY" benchmarks/gpu_fastgen.py --runs 3 --budget-s "$budget" \
    --output "$OUT/gpu_fastgen.json"
code=$?
case $code in
    0) STATUS[phase1]="ok" ;;
    2) STATUS[phase1]="NO GPU (exit 2)" ;;
    3) STATUS[phase1]="FAILED: FastGen's logits disagree with the baseline's (exit 3)" ;;
    4) STATUS[phase1]="STOPPED: budget ran out (exit 4; partial results)" ;;
    124|137) STATUS[phase1]="KILLED by timeout (exit $code; partial results in the JSON, if any)" ;;
    *) STATUS[phase1]="FAILED (exit $code)" ;;
esac
PHASE1_CODE=$code

# ------------------------------------------------------------------ phase 2: llama-2-7b, if time is left
if [[ $PHASE1_CODE == 0 ]] && (( $(left) >= SEVEN_B_MIN_S )); then
    budget=$(( $(left) - 15 ))
    phase "phase 2: benchmarks/gpu_fastgen.py --runs 3 --shape llama-2-7b (budget ${budget} s)"
    timeout -k 10 "$(( budget + 10 ))" "$PY" benchmarks/gpu_fastgen.py --runs 3 --shape llama-2-7b \
        --budget-s "$budget" --output "$OUT/gpu_fastgen_llama-2-7b.json"
    code=$?
    STATUS[phase2]="exit $code$( [[ $code == 0 ]] && echo ' (ok)')"
else
    STATUS[phase2]="skipped ($(left) s left; needs ${SEVEN_B_MIN_S} s and phase 1 ok)"
fi

# ------------------------------------------------------------------ summary
phase "summary ($(elapsed) s)"
echo "phase 1 (llama-1b):   ${STATUS[phase1]}"
echo "phase 2 (llama-2-7b): ${STATUS[phase2]}"
for json in "$OUT"/gpu_fastgen*.json; do
    [[ -f "$json" ]] || continue
    "$PY" - "$json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
print(f"--- {sys.argv[1]}: status {d.get('status')}")
base, fast = d.get("baseline_hf_eager_fp16", {}), d.get("fastgen", {})
for key in sorted((k for k in base if k.startswith("batch")), key=lambda k: int(k[5:])):
    b, f = base[key], fast.get(key, {})
    line = f"  {key:8s} HF eager {b['tokens_per_s']:9.0f} tok/s {b['decode_ms_per_step']:7.2f} ms/step"
    if f:
        line += f" | FastGen {f['tokens_per_s']:9.0f} tok/s {f['decode_ms_per_step']:7.2f} ms/step"
        line += f" | x{f['tokens_per_s'] / b['tokens_per_s']:.2f} throughput"
    print(line)
if "correctness" in d:
    c = d["correctness"]
    print(f"  correctness: cosine min {c['logits_cosine_min']:.5f}, max abs diff {c['logits_max_abs_diff']:.4g}, "
          f"greedy agreement {c['greedy_agreement']:.2f}, passed {c['passed']}")
if "error" in fast:
    print("  FastGen error at", fast["error"]["stage"], ":", fast["error"]["error"][:1500])
EOF
done
ls -la "$OUT"
return "$PHASE1_CODE"
}

main 2>&1 | tee "$OUT/fastgen_check.log"
exit "${PIPESTATUS[0]}"
