"""GPU benchmark: DeepSpeed-FastGen (``deepspeed.inference.v2``) against Hugging Face eager fp16.

NOT RUN YET: this script has never run on a GPU. It was written from the unrun probe of an
investigation (/tmp/fastgen-check/carry/fastgen_probe.py, 2026-12) and checked only on a CPU machine
(imports, argument parsing, the exit without a GPU). Its first device run is its first test.

On one H100/H200 (the ops are built for sm_90 only), for a Llama-shaped model built from a config
with random weights (no hub) and saved as a local safetensors checkpoint (FastGen loads from disk),
greedy generation of 64 tokens after random 32-token prompts, at batch 1, 8, 32 and 64:

* ``baseline_hf_eager_fp16``: transformers' eager fp16 ``generate`` (the baseline of
  benchmarks/gpu_engine.py);
* ``fastgen``: ``deepspeed.inference.build_hf_engine`` on the same checkpoint (ragged batching, a
  blocked KV cache, DeepSpeed's ahead-of-time-built inference_core/cutlass/ragged ops and
  deepspeed-kernels), driven the way a server drives it: ``put`` of the prompts (in chunks of at most
  ``max_ragged_batch_size`` tokens), then one ``put`` per generated token for all sequences, the
  argmax on the GPU and the tokens back to the host at every step.

Per batch: end-to-end tokens/s (batch x 64 / the time from the prompts to the 64th token) and decode
ms per step (after the prompt pass), each the median of ``--runs`` repetitions after one warm-up, and
the ratios FastGen / baseline. Both run in the same process on the same weights, the baseline first
(FastGen reserves all but 1 GB of the GPU's free memory for its KV cache). Before the timings, a
correctness check: FastGen's logits at the prompts' last position against the baseline's (cosine
similarity, max abs difference) and the greedy agreement over 16 tokens; a cosine under 0.99 marks
the run FAILED (exit 3) and no ratios are given.

It fails loudly rather than estimate: it exits non-zero with a message without a CUDA GPU, on a GPU
other than sm_90, when one of the four ops is not installed ahead of time or does not load (no JIT
fallback: compiling them takes far longer than a device call), when FastGen fails, or when
``--budget-s`` runs out. The results JSON is written after every stage (``status`` says how far it
got), so a run killed by a timeout still leaves what it measured.

Needs the packages of .fastgen/ (scripts/fastgen_prepare.sh) and LD_LIBRARY_PATH holding
deepspeed-kernels' folder; scripts/fastgen_check.sh sets that up on the device machine and runs:

    python benchmarks/gpu_fastgen.py --runs 3 --output $OUT/gpu_fastgen.json

Expected (not measured) ~1.5-2 min for llama-1b on an H200, ~3 min for --shape llama-2-7b (13.5 GB
saved to disk and loaded back). Results go to ``benchmarks/results/gpu_fastgen.json`` by default.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

SHAPES = {
    # The investigation's probe shape (~1.2B parameters; TinyLlama-like width, MHA).
    "llama-1b": {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 16, "num_attention_heads": 16,
                 "num_key_value_heads": 16, "vocab_size": 32000, "max_position_embeddings": 4096},
    "llama-2-7b": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
                   "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096},
}
PROMPT_TOKENS = 32
NEW_TOKENS = 64
BATCHES = (1, 8, 32, 64)
CHECK_PROMPTS = 4
CHECK_TOKENS = 16
MIN_COSINE = 0.99
# deepspeed's op name -> its builder class (deepspeed.ops.op_builder), the four FastGen needs.
FASTGEN_OPS = {
    "inference_core_ops": "InferenceCoreBuilder",
    "cutlass_ops": "InferenceCutlassBuilder",
    "ragged_device_ops": "RaggedOpsBuilder",
    "ragged_ops": "RaggedUtilsBuilder",
}


class Failure(Exception):
    """A stage failed; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class Report:
    """The results JSON, rewritten after every stage."""

    def __init__(self, path: Path, started: float) -> None:
        self.path = path
        self.started = started
        self.data: dict = {"benchmark": "gpu_fastgen", "status": "started", "date": time.strftime("%Y-%m-%d")}

    def write(self, status: str | None = None) -> None:
        if status is not None:
            self.data["status"] = status
        self.data["wall_s"] = round(time.perf_counter() - self.started, 1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".part")
        partial.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        partial.replace(self.path)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def check_deadline(deadline: float | None, what: str) -> None:
    if deadline is not None and time.perf_counter() > deadline:
        raise Failure(f"--budget-s ran out before {what}", code=4)


def finite_positive(values: list[float], what: str) -> None:
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise Failure(f"{what}: measured values are not finite and positive: {values}")


def driver_version() -> str:
    try:
        import pynvml

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # noqa: BLE001 - fall back to nvidia-smi
        try:
            return subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                  capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
        except Exception as exc:  # noqa: BLE001
            return f"unknown ({type(exc).__name__}: {exc})"


def environment() -> dict:
    """Versions of everything that decides the numbers (deepspeed and dskernels imported here)."""
    import transformers

    import deepspeed
    from deepspeed.git_version_info import installed_ops, torch_info

    info = {
        "gpu": torch.cuda.get_device_name(0),
        "compute_capability": "%d.%d" % torch.cuda.get_device_capability(0),
        "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
        "driver": driver_version(),
        "cuda_runtime_of_torch": torch.version.cuda,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "deepspeed": deepspeed.__version__,
        "deepspeed_file": deepspeed.__file__,
        "deepspeed_installed_ops": sorted(name for name, on in installed_ops.items() if on),
        "deepspeed_built_with": torch_info,
        "python": sys.version.split()[0],
        "LD_LIBRARY_PATH": os.environ.get("LD_LIBRARY_PATH", ""),
    }
    try:
        import dskernels

        info["dskernels"] = getattr(dskernels, "__version__", "?")
        info["dskernels_library_path"] = dskernels.library_path()
    except Exception as exc:  # noqa: BLE001 - the op check below fails with the details
        info["dskernels"] = f"MISSING ({type(exc).__name__}: {exc})"
    return info


def load_ops() -> dict:
    """Load the four FastGen ops as FastGen will, failing (not JIT-compiling) when one is not AOT-built."""
    from deepspeed.git_version_info import installed_ops
    from deepspeed.ops import op_builder

    results = {}
    for name, builder_name in FASTGEN_OPS.items():
        if not installed_ops.get(name):
            raise Failure(f"DeepSpeed op {name} is not installed ahead of time (installed_ops: "
                          f"{sorted(k for k, v in installed_ops.items() if v)}); loading it would JIT-compile it. "
                          "Install the deepspeed wheel from .fastgen/ (scripts/fastgen_prepare.sh).")
        started = time.perf_counter()
        try:
            getattr(op_builder, builder_name)().load(verbose=False)
        except Exception as exc:  # noqa: BLE001
            hint = ""
            if "libdeepspeedft" in str(exc) or "libblockedflash" in str(exc):
                hint = " (deepspeed-kernels' folder <site>/dskernels must be on LD_LIBRARY_PATH)"
            raise Failure(f"DeepSpeed op {name} ({builder_name}) does not load: {type(exc).__name__}: {exc}{hint}") from exc
        results[name] = {"loaded": True, "seconds": round(time.perf_counter() - started, 2)}
    return results


def single_process_group_env() -> None:
    """FastGen calls deepspeed.init_distributed(); with these set it does not go looking for MPI."""
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(probe.getsockname()[1])
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_WORLD_SIZE", "1"),
                       ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)


def build_checkpoint(shape: dict, path: Path, device: str = "cuda"):
    """A random-weight fp16 Llama on ``device``, saved to ``path`` (safetensors); returns the model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**shape, dtype="float16")
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.float16).eval()
    model.save_pretrained(path)
    return model


def prompts(batch: int, vocab: int, seed: int) -> torch.Tensor:
    """Random prompts on the host (the same ones for both engines)."""
    return torch.randint(0, vocab, (batch, PROMPT_TOKENS), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ the baseline: HF eager fp16 generate
def hf_generate(model, input_ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
    with torch.inference_mode():
        return model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=new_tokens,
                              min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)


def hf_timed(model, input_ids: torch.Tensor, new_tokens: int) -> float:
    sync()
    started = time.perf_counter()
    hf_generate(model, input_ids, new_tokens)
    sync()
    return time.perf_counter() - started


def hf_reference(model, check: torch.Tensor) -> dict:
    """Last-position logits and greedy tokens of the check prompts, on the host."""
    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(check.to(device)).logits[:, -1].float().cpu()
    tokens = hf_generate(model, check.to(device), CHECK_TOKENS)[:, PROMPT_TOKENS:].cpu()
    return {"logits": logits, "tokens": tokens}


def measure_hf(model, vocab: int, batch: int, runs: int) -> dict:
    device = next(model.parameters()).device
    input_ids = prompts(batch, vocab, seed=batch).to(device)
    hf_timed(model, input_ids, 4)  # warm-up
    end_to_end, decode = [], []
    for _ in range(runs):
        prefill = hf_timed(model, input_ids, 1)
        full = hf_timed(model, input_ids, NEW_TOKENS)
        end_to_end.append(batch * NEW_TOKENS / full)
        decode.append(1000 * (full - prefill) / (NEW_TOKENS - 1))
    finite_positive(end_to_end + decode, f"HF eager batch {batch}")
    return summary(end_to_end, decode, runs)


def summary(end_to_end: list[float], decode: list[float], runs: int) -> dict:
    return {
        "tokens_per_s": statistics.median(end_to_end),
        "decode_ms_per_step": statistics.median(decode),
        "runs": runs,
        "tokens_per_s_each_run": [round(v, 1) for v in end_to_end],
        "decode_ms_per_step_each_run": [round(v, 3) for v in decode],
    }


# ------------------------------------------------------------------ FastGen
class FastGenDriver:
    """Greedy generation through ``InferenceEngineV2.put``, as a serving loop does it."""

    def __init__(self, engine, max_tokens_per_put: int, max_sequences_per_put: int) -> None:
        self.engine = engine
        self.max_tokens = max_tokens_per_put
        self.max_sequences = max_sequences_per_put
        self.next_uid = 0

    def new_uids(self, count: int) -> list[int]:
        uids = list(range(self.next_uid, self.next_uid + count))
        self.next_uid += count
        return uids

    def prefill(self, uids: list[int], rows: list[torch.Tensor]) -> torch.Tensor:
        """Logits at each prompt's last token, the prompts put in chunks that fit one ragged batch."""
        per_put = max(1, min(self.max_sequences, self.max_tokens // max(len(row) for row in rows)))
        pieces = []
        for start in range(0, len(uids), per_put):
            pieces.append(self.engine.put(uids[start:start + per_put], rows[start:start + per_put]))
        return torch.cat(pieces) if len(pieces) > 1 else pieces[0]

    def generate(self, batch_prompts: torch.Tensor, new_tokens: int) -> tuple[torch.Tensor, float, float]:
        """Greedy tokens [batch, new_tokens] and (seconds to the first token, seconds in all)."""
        uids = self.new_uids(len(batch_prompts))
        rows = [row.clone() for row in batch_prompts]
        try:
            sync()
            started = time.perf_counter()
            logits = self.prefill(uids, rows)
            next_tokens = logits.argmax(dim=-1).cpu()
            first = time.perf_counter() - started
            generated = [next_tokens]
            for _ in range(new_tokens - 1):
                logits = self.engine.put(uids, [token.view(1) for token in next_tokens])
                next_tokens = logits.argmax(dim=-1).cpu()
                generated.append(next_tokens)
            sync()
            total = time.perf_counter() - started
        finally:
            for uid in uids:
                self.engine.flush(uid)
        return torch.stack(generated, dim=1), first, total

    def check_logits(self, check: torch.Tensor) -> torch.Tensor:
        uids = self.new_uids(len(check))
        try:
            return self.prefill(uids, [row.clone() for row in check]).float().cpu()
        finally:
            for uid in uids:
                self.engine.flush(uid)


def measure_fastgen(driver: FastGenDriver, vocab: int, batch: int, runs: int) -> dict:
    batch_prompts = prompts(batch, vocab, seed=batch)
    driver.generate(batch_prompts, 4)  # warm-up
    end_to_end, decode = [], []
    for _ in range(runs):
        _, first, total = driver.generate(batch_prompts, NEW_TOKENS)
        end_to_end.append(batch * NEW_TOKENS / total)
        decode.append(1000 * (total - first) / (NEW_TOKENS - 1))
    finite_positive(end_to_end + decode, f"FastGen batch {batch}")
    return summary(end_to_end, decode, runs)


def compare(reference: dict, logits: torch.Tensor, tokens: torch.Tensor) -> dict:
    cosine = torch.nn.functional.cosine_similarity(logits, reference["logits"], dim=-1)
    same = (tokens == reference["tokens"]).int().cumprod(dim=-1)
    return {
        "logits_cosine_min": float(cosine.min()),
        "logits_cosine_each": [round(float(c), 6) for c in cosine],
        "logits_max_abs_diff": float((logits - reference["logits"]).abs().max()),
        "logits_abs_max_reference": float(reference["logits"].abs().max()),
        # Share of the 16 greedy tokens equal to the baseline's up to the first difference (random
        # weights give near-ties, so this can be low with correct kernels; the cosine decides).
        "greedy_agreement": float(same.float().mean()),
        "min_cosine_required": MIN_COSINE,
        "passed": bool(float(cosine.min()) >= MIN_COSINE),
    }


# ------------------------------------------------------------------ main
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="timed repetitions per batch (median reported)")
    parser.add_argument("--shape", default="llama-1b", choices=list(SHAPES), help="the random-weight Llama shape")
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    parser.add_argument("--output", "--out", dest="output", type=Path,
                        default=ROOT / "benchmarks" / "results" / "gpu_fastgen.json")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="where the random checkpoint is saved (default: a temporary folder, removed after)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="stop with exit 4 (results so far written) when this many seconds have passed")
    args = parser.parse_args(argv)
    if args.runs < 1 or any(b < 1 for b in args.batches):
        parser.error("--runs and --batches must be positive")
    return args


def run(args: argparse.Namespace, report: Report) -> None:
    deadline = report.started + args.budget_s if args.budget_s else None
    shape = SHAPES[args.shape]
    vocab = shape["vocab_size"]
    data = report.data
    data["workload"] = {"shape": args.shape, "model_config": shape, "dtype": "float16", "weights": "random (seed 0)",
                        "prompt_tokens": PROMPT_TOKENS, "new_tokens": NEW_TOKENS, "batches": args.batches,
                        "runs": args.runs, "decoding": "greedy", "warmup_runs_per_batch": 1}

    data["environment"] = environment()
    report.write("environment read")
    if torch.cuda.get_device_capability(0) != (9, 0):
        raise Failure(f"the ops in .fastgen/ are built for sm_90 (H100/H200) only; this GPU is "
                      f"{data['environment']['gpu']} (sm_{data['environment']['compute_capability'].replace('.', '')})")
    data["ops"] = load_ops()
    report.write("ops loaded")

    scratch = Path(tempfile.mkdtemp(prefix="mii_fastgen_")) if args.model_dir is None else args.model_dir
    try:
        started = time.perf_counter()
        model = build_checkpoint(shape, scratch)
        parameters = sum(p.numel() for p in model.parameters())
        data["parameters"] = parameters
        data["checkpoint"] = {"path": str(scratch), "seconds_to_build_and_save": round(time.perf_counter() - started, 1),
                              "bytes": sum(f.stat().st_size for f in scratch.iterdir())}
        check = prompts(CHECK_PROMPTS, vocab, seed=12345)
        reference = hf_reference(model, check)
        baseline = data["baseline_hf_eager_fp16"] = {}
        for batch in args.batches:
            check_deadline(deadline, f"the baseline at batch {batch}")
            baseline[f"batch{batch}"] = measure_hf(model, vocab, batch, args.runs)
            print(f"baseline batch {batch}: {baseline[f'batch{batch}']['tokens_per_s']:.0f} tokens/s, "
                  f"{baseline[f'batch{batch}']['decode_ms_per_step']:.2f} ms/step", flush=True)
            report.write(f"incomplete: baseline batch {batch} done")
        baseline["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        del model
        gc.collect()
        torch.cuda.empty_cache()

        check_deadline(deadline, "building the FastGen engine")
        single_process_group_env()
        from deepspeed.inference import RaggedInferenceEngineConfig, build_hf_engine

        config = RaggedInferenceEngineConfig()  # DeepSpeed's defaults, as MII's pipeline uses them
        started = time.perf_counter()
        stage = "build_hf_engine"
        fastgen = data["fastgen"] = {"engine_config": json.loads(config.model_dump_json())}
        try:
            engine = build_hf_engine(str(scratch), config)
            fastgen["engine_build_s"] = round(time.perf_counter() - started, 1)
            fastgen["memory_reserved_gib_after_build"] = round(torch.cuda.memory_reserved() / 2**30, 2)
            print(f"FastGen engine built in {fastgen['engine_build_s']} s", flush=True)
            report.write("incomplete: FastGen engine built")
            manager = config.state_manager
            driver = FastGenDriver(engine, manager.max_ragged_batch_size, manager.max_ragged_sequence_count)

            stage = "correctness check"
            logits = driver.check_logits(check)
            tokens, _, _ = driver.generate(check, CHECK_TOKENS)
            data["correctness"] = compare(reference, logits, tokens)
            print("correctness:", json.dumps({k: v for k, v in data["correctness"].items() if k != "logits_cosine_each"}), flush=True)
            report.write("incomplete: correctness checked")

            for batch in args.batches:
                check_deadline(deadline, f"FastGen at batch {batch}")
                stage = f"FastGen batch {batch}"
                fastgen[f"batch{batch}"] = measure_fastgen(driver, vocab, batch, args.runs)
                print(f"FastGen batch {batch}: {fastgen[f'batch{batch}']['tokens_per_s']:.0f} tokens/s, "
                      f"{fastgen[f'batch{batch}']['decode_ms_per_step']:.2f} ms/step", flush=True)
                report.write(f"incomplete: FastGen batch {batch} done")
        except Failure:
            raise
        except Exception as exc:  # noqa: BLE001 - record where and why, then fail
            fastgen["error"] = {"stage": stage, "error": f"{type(exc).__name__}: {exc}",
                                "traceback": traceback.format_exc()[-4000:]}
            raise Failure(f"FastGen failed at {stage}: {type(exc).__name__}: {exc}") from exc
    finally:
        if args.model_dir is None:
            shutil.rmtree(scratch, ignore_errors=True)

    if not data["correctness"]["passed"]:
        raise Failure(f"FastGen's logits disagree with the baseline's (min cosine "
                      f"{data['correctness']['logits_cosine_min']:.4f} < {MIN_COSINE}): its timings are in "
                      "the JSON, but no ratios are given", code=3)
    data["speedups"] = {
        f"batch{batch}": {
            "throughput_fastgen_vs_hf": fastgen[f"batch{batch}"]["tokens_per_s"] / baseline[f"batch{batch}"]["tokens_per_s"],
            "decode_step_fastgen_vs_hf": baseline[f"batch{batch}"]["decode_ms_per_step"] / fastgen[f"batch{batch}"]["decode_ms_per_step"],
        }
        for batch in args.batches
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_fastgen: this benchmark needs a CUDA GPU (torch.cuda.is_available() is False); on the "
              "device machine run `bash scripts/fastgen_check.sh` (see its header).", file=sys.stderr)
        return 2
    report = Report(args.output, time.perf_counter())
    try:
        run(args, report)
    except Failure as failure:
        report.write(f"FAILED: {failure}")
        print(f"gpu_fastgen FAILED: {failure}\n(results so far: {args.output})", file=sys.stderr, flush=True)
        return failure.code
    except BaseException as exc:  # noqa: BLE001 - e.g. CUDA errors outside FastGen, KeyboardInterrupt
        report.data["error"] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]}
        report.write(f"FAILED: {type(exc).__name__}: {exc}")
        print(f"gpu_fastgen FAILED: {type(exc).__name__}: {exc}\n(results so far: {args.output})", file=sys.stderr, flush=True)
        raise
    report.write("ok")
    for batch, ratio in report.data["speedups"].items():
        print(f"{batch}: FastGen / HF eager throughput x{ratio['throughput_fastgen_vs_hf']:.2f}, "
              f"decode step x{ratio['decode_step_fastgen_vs_hf']:.2f}", flush=True)
    print(json.dumps(report.data, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
