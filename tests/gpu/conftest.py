"""Fixtures of the GPU tests: tiny kernel-friendly models, engines loaded as in a fresh serving
process, DeepSpeed's CUDA ops built once, a shared report of what was applied, and a guard that
retires a pytest-xdist worker whose CUDA context a failed kernel has poisoned.

Every test module here is marked ``gpu`` and skipped, with the reason, where torch sees no CUDA device.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Optional

import pytest
import torch

import gpu_support

CUDA = gpu_support.CUDA
#: Built DeepSpeed ops: the status file scripts/gpu_check.sh writes after building them up front.
OPS_STATUS_ENV = "MII_GPU_DS_OPS_STATUS"


def pytest_configure(config: pytest.Config) -> None:
    # One report file for the controller and every xdist worker (they inherit the environment).
    if not os.environ.get("MII_GPU_REPORT") and not os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["MII_GPU_REPORT"] = str(Path(tempfile.mkdtemp(prefix="mii-gpu-report-")) / "gpu_report.jsonl")


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    path = os.environ.get("MII_GPU_REPORT")
    if not path or not Path(path).is_file() or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    entries = gpu_support.Report(Path(path)).entries()
    if not entries:
        return
    terminalreporter.section("what the GPU path applied (tests/gpu report)")
    for entry in entries:
        terminalreporter.write_line(json.dumps(entry, default=str)[:600])
    terminalreporter.write_line(f"(full report: {path})")


@pytest.fixture(scope="session")
def report(tmp_path_factory: pytest.TempPathFactory) -> gpu_support.Report:
    return gpu_support.Report(gpu_support.report_path(tmp_path_factory.getbasetemp()))


@pytest.fixture(autouse=True)
def cuda_context_guard(request: pytest.FixtureRequest, report: gpu_support.Report) -> Iterator[None]:
    """After each test, make sure the CUDA context still works. An illegal memory access in a kernel
    poisons it for the rest of the process; under pytest-xdist the worker then exits so that a fresh
    one runs the remaining tests (this test is reported as crashed), instead of every later test failing."""
    yield
    if not CUDA:
        return
    try:
        torch.cuda.synchronize()
    except Exception as exc:  # noqa: BLE001 - any CUDA error here is sticky
        report.add(request.node.nodeid, cuda_context="poisoned", error=f"{type(exc).__name__}: {exc}"[:1000])
        if os.environ.get("PYTEST_XDIST_WORKER"):
            os._exit(70)
        raise


# --------------------------------------------------------------------------- models


@pytest.fixture(scope="session")
def gpu_models(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``gpu_models(name)``: the folder of a tiny model (a key of DECODERS or ENCODERS, or
    "stable_diffusion"), built on first use."""
    root = tmp_path_factory.mktemp("gpu-models")
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            if name in gpu_support.DECODERS:
                built[name] = gpu_support.build_decoder(name, root / name)
            elif name in gpu_support.ENCODERS:
                built[name] = gpu_support.build_encoder(name, root / name)
            elif name == "stable_diffusion":
                built[name] = gpu_support.build_stable_diffusion(root / name)
            else:
                raise KeyError(name)
        return built[name]

    return get


# --------------------------------------------------------------------------- DeepSpeed ops


def _ensure_op(builder_name: str) -> tuple[bool, Optional[str]]:
    """Build (or load the build of) one DeepSpeed CUDA op once per process. If it cannot be built,
    later loads fail at once with the same error instead of re-running the compiler for every model
    (the engine then records its kernel-injection fallback, which the tests check)."""
    from deepspeed.ops import op_builder

    builder_class = getattr(op_builder, builder_name)
    known = _status_from_script(builder_class().name)
    error: Optional[str] = None
    if known is not None and not known.get("ok") and known.get("error"):
        error = f"not built by scripts/gpu_check.sh: {known['error']}"
    else:
        started = time.perf_counter()
        try:
            builder_class().load(verbose=False)
            return True, None
        except Exception as exc:  # noqa: BLE001 - a compiler or loader error of any kind
            error = f"{type(exc).__name__}: {exc} (after {time.perf_counter() - started:.0f} s)"

    def fail_fast(self: Any, verbose: bool = True) -> Any:
        raise RuntimeError(f"DeepSpeed op {builder_name} cannot be built here: {error}")

    builder_class.load = fail_fast
    return False, error


def _status_from_script(op_name: str) -> Optional[dict[str, Any]]:
    path = os.environ.get(OPS_STATUS_ENV)
    if not path or not Path(path).is_file():
        return None
    return json.loads(Path(path).read_text()).get(op_name)


@pytest.fixture(scope="session")
def inference_op(report: gpu_support.Report) -> tuple[bool, Optional[str]]:
    """(built, error) of DeepSpeed's transformer_inference op, which kernel injection needs."""
    result = _ensure_op("InferenceBuilder")
    report.add("deepspeed-op transformer_inference", built=result[0], error=result[1])
    return result


@pytest.fixture(scope="session")
def spatial_op(report: gpu_support.Report) -> tuple[bool, Optional[str]]:
    """(built, error) of DeepSpeed's spatial_inference op (diffusers kernel injection)."""
    result = _ensure_op("SpatialInferenceBuilder")
    report.add("deepspeed-op spatial_inference", built=result[0], error=result[1])
    return result


# --------------------------------------------------------------------------- engines


@pytest.fixture
def engines() -> Iterator[Callable[..., Any]]:
    """``engines(model_dir, **overrides)``: ``Engine.load`` with those PlanOverrides, as the first
    model of a fresh serving process; every engine is closed and its memory freed after the test."""
    from mii_azure.planner import PlanOverrides
    from mii_azure.runtime.engine import Engine

    loaded: list[Any] = []

    def load(model_dir: Path, settings: Any = None, **overrides: Any) -> Any:
        gpu_support.reset_deepspeed_process_state()
        engine = Engine.load(model_dir, settings=settings, overrides=PlanOverrides(**overrides))
        loaded.append(engine)
        return engine

    yield load
    for engine in loaded:
        engine.close()
    loaded.clear()
    gpu_support.free_cuda()
    gpu_support.reset_deepspeed_process_state()
