"""The desk's health and metrics endpoints (docs/operations.md "Health", "Metrics"): ``/healthz``, ``/readyz``
and ``/metrics``, answered by the server's :class:`server.metrics.ServerMetrics`.

No login: a load balancer, systemd or Prometheus asks them, not an operator. They reveal no path, name, person
or version: ``/readyz`` names its checks and whether each passes, ``/metrics`` carries door and device ids,
reason codes and counts. ``/metrics`` asks for a bearer token when ``DOORKEEP_METRICS_TOKEN`` is set (a
Prometheus ``authorization`` block sends it). Handlers are plain functions, run on the thread pool: the
readiness check writes one row to the store.
"""

from __future__ import annotations

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from server.metrics import CONTENT_TYPE, ServerMetrics
from server.web.access import public
from server.web.routes import Routes

#: not API (no /api/v1 prefix, not in the OpenAPI document): the conventional paths monitoring tools expect
route = Routes(include_in_schema=False, dependencies=[Depends(public())])


def install(app: FastAPI) -> None:
    route.install(app)


def _metrics(request: Request) -> ServerMetrics:
    metrics = request.app.state.desk.server.metrics
    assert metrics is not None  # create_app gives every server one
    return metrics


@route("/healthz", "GET")
def healthz() -> JSONResponse:
    """The process answers (liveness): nothing else is checked, so a broker outage never restarts the desk."""
    return JSONResponse({"status": "ok"})


@route("/readyz", "GET")
def readyz(request: Request) -> JSONResponse:
    """200 when every check passes, else 503; the body names each check and whether it passed."""
    ready = _metrics(request).readiness()
    return JSONResponse(ready.body(), status_code=200 if ready.ready else 503)


@route("/metrics", "GET")
def metrics(request: Request) -> Response:
    """Every metric in the Prometheus text format."""
    found = _metrics(request)
    if not found.authorized(request.headers.get("authorization")):
        return JSONResponse({"error": "a bearer token is required (the one in DOORKEEP_METRICS_TOKEN)",
                             "detail": None}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
    return Response(found.exposition(), media_type=CONTENT_TYPE)
