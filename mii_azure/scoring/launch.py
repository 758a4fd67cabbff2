"""Run the real azureml-inference-server-http for score.py, bound to loopback by default.

``azmlinfsrv`` always binds every interface. This launcher runs the very same server (its own
argument handling, environment and gunicorn application) with one change: the address it binds,
127.0.0.1 unless asked otherwise. ``--worker_count`` workers each load one model copy (the plan's
replicas; each worker claims its own GPUs, see mii_azure.runtime.replicas); worker threads let
concurrent requests reach a copy's batcher together.

Each start also gets a fresh, empty folder for the workers' metrics files (``PROMETHEUS_MULTIPROC_DIR``,
see mii_azure.runtime.metrics), so that ``/metrics`` sums every worker's numbers and nothing of an
earlier server; a folder already named in the environment is replaced, as it may hold such numbers.
The folder is removed when the server stops.

It is a standalone script on purpose: it imports nothing of mii_azure, so the score.py it serves
imports the mii_azure runtime it ships with (a package's snapshot, or the installed one)::

    python launch.py --entry_script score.py --model_dir ./my-model --port 5001

The same launcher is the serving image's command on Azure ML, started there with only
``--host 0.0.0.0 --port 5001``: what is not given comes from the variables Azure ML and the deployment
set, as the inference server itself reads them. The entry script is ``AZUREML_ENTRY_SCRIPT`` under
``AML_APP_ROOT``; the model folder ``AZUREML_MODEL_DIR`` (none for a model fetched from the hub at
start-up); the worker count ``WORKER_COUNT`` (1 without it); the threads those ``GUNICORN_CMD_ARGS``
already name (8 without them).
"""

import argparse
import os
import re
import shutil
import sys
import tempfile

DEFAULT_THREADS = 8
#: prometheus-client's multiprocess folder, read by the workers (mii_azure.runtime.metrics).
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def main(argv=None):
    """Parse the arguments and run the server in this process until it is stopped."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--entry_script", help="The scoring script to serve (default: $AZUREML_ENTRY_SCRIPT under $AML_APP_ROOT)."
    )
    parser.add_argument("--model_dir", help="Model folder (becomes AZUREML_MODEL_DIR; default: $AZUREML_MODEL_DIR).")
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--host", default="127.0.0.1", help="Address to bind (default: loopback only).")
    parser.add_argument(
        "--threads",
        type=int,
        help=f"Request threads of each worker, sharing its model copy (default: as GUNICORN_CMD_ARGS says, else {DEFAULT_THREADS}).",
    )
    parser.add_argument(
        "--worker_count", type=int, help="Worker processes: one per model copy (default: $WORKER_COUNT, else 1)."
    )
    args = parser.parse_args(argv)
    entry_script = args.entry_script or _entry_script_from_environment()
    if not entry_script:
        parser.error(
            "no scoring script: pass --entry_script, or set AZUREML_ENTRY_SCRIPT (and AML_APP_ROOT, the folder "
            "it is in) as Azure ML does"
        )

    from azureml_inference_server_http import amlserver

    os.environ["GUNICORN_CMD_ARGS"] = _gunicorn_arguments(os.environ.get("GUNICORN_CMD_ARGS", ""), args.threads)
    amlserver.DEFAULT_HOST = args.host
    sys.argv = ["azmlinfsrv", "--entry_script", os.path.abspath(entry_script), "--port", str(args.port)]
    model_dir = args.model_dir or os.environ.get("AZUREML_MODEL_DIR")
    if model_dir:
        sys.argv += ["--model_dir", os.path.abspath(model_dir)]
    if args.worker_count is not None:
        sys.argv += ["--worker_count", str(args.worker_count)]
    metrics_dir = tempfile.mkdtemp(prefix="mii-azure-metrics-")
    os.environ[METRICS_DIR_ENV] = metrics_dir
    try:
        amlserver.run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _entry_script_from_environment():
    """``AZUREML_ENTRY_SCRIPT`` under ``AML_APP_ROOT`` (an absolute entry script stands alone), or None."""
    script = os.environ.get("AZUREML_ENTRY_SCRIPT")
    if not script:
        return None
    return os.path.join(os.environ.get("AML_APP_ROOT") or os.getcwd(), script)


def _gunicorn_arguments(extra, threads):
    """``GUNICORN_CMD_ARGS`` for the server: ``extra`` with the worker threads (``threads`` when given,
    else those ``extra`` names, else the default) and without a control socket under ``$HOME``."""
    if threads is not None or not re.search(r"(^|\s)--threads[ =]\d+", extra):
        extra = f"{extra} --threads {threads if threads is not None else DEFAULT_THREADS}"
    if "--no-control-socket" not in extra:
        extra = f"{extra} --no-control-socket"
    return extra.strip()


if __name__ == "__main__":
    main()
