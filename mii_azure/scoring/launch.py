"""Run the real azureml-inference-server-http for score.py, bound to loopback by default.

``azmlinfsrv`` always binds every interface. This launcher runs the very same server (its own
argument handling, environment and gunicorn application) with one change: the address it binds,
127.0.0.1 unless asked otherwise. ``--worker_count`` workers each load one model copy (the plan's
replicas; each worker claims its own GPUs, see mii_azure.runtime.replicas); worker threads let
concurrent requests reach a copy's batcher together.

It is a standalone script on purpose: it imports nothing of mii_azure, so the score.py it serves
imports the mii_azure runtime it ships with (a package's snapshot, or the installed one)::

    python launch.py --entry_script score.py --model_dir ./my-model --port 5001
"""

import argparse
import os
import sys


def main(argv=None):
    """Parse the arguments and run the server in this process until it is stopped."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entry_script", required=True, help="The scoring script to serve.")
    parser.add_argument("--model_dir", required=True, help="Model folder (becomes AZUREML_MODEL_DIR).")
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--host", default="127.0.0.1", help="Address to bind (default: loopback only).")
    parser.add_argument("--threads", type=int, default=8, help="Request threads of each worker, sharing its model copy.")
    parser.add_argument("--worker_count", type=int, default=1, help="Worker processes: one per model copy.")
    args = parser.parse_args(argv)

    from azureml_inference_server_http import amlserver

    extra = os.environ.get("GUNICORN_CMD_ARGS", "")
    os.environ["GUNICORN_CMD_ARGS"] = f"{extra} --threads {args.threads} --no-control-socket".strip()
    amlserver.DEFAULT_HOST = args.host
    sys.argv = [
        "azmlinfsrv",
        "--entry_script",
        os.path.abspath(args.entry_script),
        "--model_dir",
        os.path.abspath(args.model_dir),
        "--port",
        str(args.port),
        "--worker_count",
        str(args.worker_count),
    ]
    amlserver.run()


if __name__ == "__main__":
    main()
