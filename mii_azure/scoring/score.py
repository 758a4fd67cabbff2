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
from azureml_inference_server_http.api.aml_response import AMLResponse  # noqa: E402

from mii_azure.runtime.service import ScoringService, configure_logging, not_ready_reply  # noqa: E402

_service = None


def init():
    """Load the model under AZUREML_MODEL_DIR (settings from MII_AZURE_* variables); from a package,
    verify it first. Start the gRPC front too when MII_AZURE_GRPC_PORT asks for it. With several
    workers (WORKER_COUNT), each is one model copy on its own GPUs; it says so once it serves."""
    global _service
    configure_logging()
    package_dir = _HERE if os.path.isfile(os.path.join(_HERE, "mii_package.json")) else None
    _service = ScoringService.from_environment(package_dir=package_dir)
    _service.serve_grpc_if_configured()
    _service.mark_ready()


@rawhttp
def run(request):
    """Answer one /score request with the JSON contract of DESIGN.md section 3; a ``"stream": true``
    request with server-sent events (section 3a), sent by the inference server event by event."""
    if _service is None:
        reply = not_ready_reply()
    else:
        reply = _service.handle_http(request.method, request.stream.read, request.content_length)
    if reply.stream is not None:
        # An iterable body is streamed: the WSGI server writes each event as it comes, and closes the
        # body (so the generation) when the client goes away. The body was read above, in run().
        return AMLResponse(reply.stream, reply.status, reply.headers)
    return AMLResponse(reply.body, reply.status, reply.headers, json_str=True)
