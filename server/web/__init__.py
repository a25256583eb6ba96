"""The security desk: an HTTP API under ``/api/v1`` and server-rendered pages (docs/desk.md).

``create_app`` (re-exported lazily, so ``doorkeep user add`` and other tools that only need the
operator accounts do not import FastAPI) builds the ASGI app around a running ``server.app.Server``.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from server.web.app import create_app

        return create_app
    raise AttributeError(name)
