"""The router on Azure ML's inference server (``azureml-inference-server-http``, a Flask app).

The server serves ``/score`` (calling score.py's ``run()``) and its probes. :func:`mount_routes`,
called from ``init()``, adds the router's other routes (OpenAI API, ``/metrics``) to the server's
own blueprint while the server is still setting it up: ``init()`` runs inside the blueprint's
registration, before its rules reach the app, so the added rules are registered with the server's
own ones and get its request ids, access log and error handling. The same happens locally and on
Azure ML, wherever score.py runs under the inference server.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Optional

from .replies import HttpReply
from .routes import PROBES, HttpRequest, Router

__all__ = ["mount_routes", "request_from_flask", "to_response"]

logger = logging.getLogger(__name__)

#: The inference server's module holding the blueprint it is registering.
_SERVER_ROUTES_MODULE = "azureml_inference_server_http.server.routes"


def mount_routes(router: Router) -> bool:
    """Add the router's routes to the inference server being set up; False (logged) when score.py
    does not run inside the server's set-up (a plain import, a test), where only ``run()`` serves."""
    blueprint = getattr(sys.modules.get(_SERVER_ROUTES_MODULE), "main_blueprint", None)
    if blueprint is None or getattr(blueprint, "_got_registered_once", False):
        logger.warning(
            "score.py is not being loaded by the inference server's set-up, so only /score is served "
            "(the OpenAI routes and /metrics need azureml-inference-server-http to load score.py)."
        )
        return False
    own = {"/score"}

    def answer(**_: Any) -> Any:
        from flask import request

        return to_response(router.handle(request_from_flask(request)))

    def gate() -> Optional[Any]:
        """The API key on the server's own routes (``/swagger.json``); the probe stays open."""
        from flask import request

        if request.path in PROBES or router.serves(request.path):
            return None
        refused = router.refusal(request_from_flask(request))
        return to_response(refused) if refused is not None else None

    for path in router.mounted_paths():
        if path in own:
            continue  # the server's own /score route calls run(), which hands it to the router
        rule = path.replace("{id}", "<path:model_id>")
        endpoint = "mii_azure" + "".join(char if char.isalnum() else "_" for char in path)  # Flask refuses dots
        blueprint.add_url_rule(rule, endpoint=endpoint, view_func=answer, methods=["GET", "POST"])
    blueprint.before_request(gate)
    logger.info("Serving %s beside /score.", ", ".join(path for path in router.mounted_paths() if path not in own))
    return True


def request_from_flask(request: Any, *, path: Optional[str] = None) -> HttpRequest:
    """The router's view of a Flask request (the body is read only when a route asks for it);
    ``path`` overrides the request's (``run()`` answers ``/score`` whatever the server routed)."""
    return HttpRequest(
        method=request.method,
        path=path or request.path,
        headers=dict(request.headers),
        read_body=request.stream.read,
        content_length=request.content_length,
    )


def to_response(reply: HttpReply) -> Any:
    """The inference server's response for a reply: JSON, raw content, or a stream sent as it comes
    (the WSGI server closes the stream, so the generation, when the client goes away)."""
    from azureml_inference_server_http.api.aml_response import AMLResponse

    if reply.stream is not None:
        return AMLResponse(reply.stream, reply.status, reply.headers)
    if reply.content is not None:
        return AMLResponse(reply.content, reply.status, reply.headers)
    return AMLResponse(reply.body, reply.status, reply.headers, json_str=True)
