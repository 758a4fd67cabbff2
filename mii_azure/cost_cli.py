"""The ``mii-azure cost`` command's arguments and the report they ask for (printing stays in cli.py)."""

from __future__ import annotations

import argparse
from typing import Any, Optional

from pydantic import ValidationError

from .cost import estimate_cost
from .cost_report import CostReport
from .errors import ConfigError
from .workload import Workload

_OPTIONS = {
    "prompt_tokens": "--prompt-tokens",
    "new_tokens": "--new-tokens",
    "requests_per_second": "--rps",
    "latency_slo_ms": "--slo-ms",
    "steps": "--steps",
    "image_size": "--image-size",
}

__all__ = ["add_cost_arguments", "report_from_args", "render"]


def add_cost_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``mii-azure cost``."""
    parser.add_argument("model", help="local folder, Hugging Face hub id (cached or well-known, e.g. bigscience/bloom) or azureml:name:version")
    parser.add_argument("--prompt-tokens", type=int, default=512, help="tokens per prompt (default 512)")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens generated per request (default 128)")
    parser.add_argument("--rps", type=float, default=1.0, help="requests (images) per second to serve (default 1)")
    parser.add_argument("--slo-ms", type=float, help="latency target: ms per generated token (per request or image for other tasks)")
    parser.add_argument("--steps", type=int, default=50, help="denoising steps per image (text-to-image, default 50)")
    parser.add_argument("--image-size", type=int, help="image side in pixels (text-to-image; default: the model's)")
    parser.add_argument("--skus", nargs="+", help="SKUs to compare (names, aliases or unique prefixes; default: all on the managed endpoint list)")
    parser.add_argument("--prices", help="price sheet: CSV instance_type,usd_per_hour[,region] or JSON")
    parser.add_argument("--region", help="Azure region of the prices (default eastus, the catalog's; others need --prices)")
    parser.add_argument("--discount", type=float, default=0.0, help="fraction off every price, e.g. 0.3 for a reserved instance")
    parser.add_argument("--discount-label", help="what the discount is, e.g. '1-year reserved'")
    parser.add_argument("--task", help="task override")
    parser.add_argument("--config", help="local config.json or folder for an azureml: reference")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--csv", metavar="FILE", help="also write the table as CSV")
    parser.add_argument("--plot", metavar="FILE", help="also write a PNG chart of cost against latency (needs matplotlib)")


def report_from_args(args: argparse.Namespace) -> CostReport:
    """The report ``mii-azure cost`` shows for parsed ``args``; writes --csv and --plot files if asked."""
    try:
        workload = Workload(
            prompt_tokens=args.prompt_tokens,
            new_tokens=args.new_tokens,
            requests_per_second=args.rps,
            latency_slo_ms=args.slo_ms,
            steps=args.steps,
            image_size=args.image_size,
        )
    except ValidationError as exc:
        problems = "; ".join(f"{_OPTIONS.get(str(error['loc'][0]), error['loc'][0])}: {error['msg']}" for error in exc.errors())
        raise ConfigError(f"Invalid workload: {problems}.") from None
    skus: Optional[list[str]] = [name for value in args.skus for name in value.split(",") if name] if args.skus else None
    report = estimate_cost(
        args.model,
        workload,
        skus=skus,
        task=args.task,
        region=args.region,
        prices=args.prices,
        discount=args.discount,
        discount_label=args.discount_label,
        config=args.config,
    )
    if args.csv:
        report.to_csv(args.csv)
    if args.plot:
        report.plot(args.plot)
    return report


def render(report: CostReport, args: Any) -> str:
    """The text ``mii-azure cost`` prints: JSON with --json, else the table."""
    return report.to_json() if getattr(args, "json", False) else str(report)
