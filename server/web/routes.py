"""One collector for a module's routes, added to the app by ``install``.

Each desk module declares its endpoints with ``@route(path, method, ...)`` at import time and adds them
in its ``install(app)``. The routes go straight onto the app (not through an APIRouter), because
FastAPI 0.165's ``include_router`` no longer lists them in ``app.routes``, and
:func:`server.web.access.check_routes` must see every route to refuse one without a role.
"""

from __future__ import annotations

from typing import Any, Callable

from fastapi import FastAPI

Endpoint = Callable[..., Any]


class Routes:
    """``route = Routes()``, then ``@route("/path", "GET", ...)`` on each endpoint, then ``route.install(app)``."""

    def __init__(self, prefix: str = "", **defaults: Any) -> None:
        """``prefix`` goes before every path; ``defaults`` are add_api_route options for every route."""
        self.prefix = prefix
        self.defaults = defaults
        self.items: list[tuple[str, Endpoint, dict[str, Any]]] = []

    def __call__(self, path: str, method: str, **options: Any) -> Callable[[Endpoint], Endpoint]:
        def add(endpoint: Endpoint) -> Endpoint:
            self.items.append((path, endpoint, {"methods": [method], **self.defaults, **options}))
            return endpoint
        return add

    def install(self, app: FastAPI) -> None:
        for path, endpoint, options in self.items:
            app.add_api_route(self.prefix + path, endpoint, **options)
