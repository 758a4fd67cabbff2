"""Run the real ``azureml-inference-server-http`` on loopback, serving mii_azure's scoring script.

``azmlinfsrv`` always binds every interface. This launcher runs the very same server (its own
argument handling, environment and gunicorn application) with one change: the address it binds,
127.0.0.1 unless asked otherwise. Worker threads let concurrent requests reach the one model copy
of the process together::

    python -m mii_azure.runtime.http_server --model_dir ./my-model --port 5001
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional

__all__ = ["entry_script_path", "serve", "main", "LOOPBACK"]

LOOPBACK = "127.0.0.1"


def entry_script_path() -> Path:
    """The scoring script that ships with this copy of mii_azure."""
    return Path(__file__).resolve().parents[1] / "scoring" / "score.py"


def serve(
    model_dir: str,
    *,
    port: int,
    host: str = LOOPBACK,
    entry_script: Optional[str] = None,
    threads: int = 8,
) -> None:
    """Run the inference server in this process until it is stopped (blocks)."""
    from azureml_inference_server_http import amlserver

    extra = os.environ.get("GUNICORN_CMD_ARGS", "")
    os.environ["GUNICORN_CMD_ARGS"] = f"{extra} --threads {threads} --no-control-socket".strip()
    amlserver.DEFAULT_HOST = host
    sys.argv = [
        "azmlinfsrv",
        "--entry_script",
        str(entry_script or entry_script_path()),
        "--model_dir",
        str(model_dir),
        "--port",
        str(port),
        "--worker_count",
        "1",
    ]
    amlserver.run()


def main(argv: Optional[list[str]] = None) -> None:
    """Command-line entry point (``python -m mii_azure.runtime.http_server``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", required=True, help="Model folder (becomes AZUREML_MODEL_DIR).")
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--host", default=LOOPBACK, help="Address to bind (default: loopback only).")
    parser.add_argument("--entry_script", default=None, help="Scoring script (default: mii_azure's own).")
    parser.add_argument("--threads", type=int, default=8, help="Request threads sharing the model.")
    args = parser.parse_args(argv)
    serve(args.model_dir, port=args.port, host=args.host, entry_script=args.entry_script, threads=args.threads)


if __name__ == "__main__":
    main()
