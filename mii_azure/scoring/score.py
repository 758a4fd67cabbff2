"""Azure ML scoring script of mii_azure: ``init()`` loads the model once, ``run()`` answers ``/score``.

The same file serves on Azure ML managed online endpoints, under ``azmlinfsrv`` and in the local
harness. It stays thin: everything it does lives in ``mii_azure.runtime``. When a mii_azure package
ships a snapshot of the runtime beside this script, that snapshot is the one imported.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.isfile(os.path.join(_HERE, "mii_azure", "__init__.py")):
    # The package's own snapshot comes first: azmlinfsrv puts its working directory (which may hold
    # another mii_azure) at the front of sys.path and this folder only after it.
    sys.path[:] = [_HERE] + [entry for entry in sys.path if os.path.abspath(entry or ".") != _HERE]

from azureml_inference_server_http.api.aml_request import rawhttp  # noqa: E402

from mii_azure.config import API_KEY_ENV  # noqa: E402
from mii_azure.runtime.inference_server import mount_routes, request_from_flask, to_response  # noqa: E402
from mii_azure.runtime.routes import Router  # noqa: E402
from mii_azure.runtime.service import ScoringService, configure_logging, not_ready_reply  # noqa: E402

_service = None
_router = None


def init():
    """Load the model under AZUREML_MODEL_DIR (settings from MII_AZURE_* variables); from a package,
    verify it first. Serve the OpenAI routes and /metrics beside /score (with MII_AZURE_API_KEY, every
    route but the probe needs it), and the gRPC front when MII_AZURE_GRPC_PORT asks for it. With
    several workers (WORKER_COUNT), each is one model copy on its own GPUs; it says so once it serves."""
    global _service, _router
    configure_logging()
    package_dir = _HERE if os.path.isfile(os.path.join(_HERE, "mii_package.json")) else None
    _service = ScoringService.from_environment(package_dir=package_dir)
    _router = Router.from_environment(_service)
    mount_routes(_router)
    _service.serve_grpc_if_configured(api_key=os.environ.get(API_KEY_ENV) or None)
    _service.mark_ready()


@rawhttp
def run(request):
    """Answer one /score request with the JSON contract of DESIGN.md section 3; a ``"stream": true``
    request with server-sent events (section 3a), sent by the inference server event by event."""
    reply = not_ready_reply() if _router is None else _router.handle(request_from_flask(request, path="/score"))
    return to_response(reply)
