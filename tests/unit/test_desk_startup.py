"""The desk's start-up message about operators: said when the desk starts serving with nobody able to log in,
never when the operator was added between building the app and serving it (what `doorkeep demo` does: a new
operator following the README saw "the desk has no operator yet" right above the demo admin's password).

Real parts: a real ``Server`` on the demo site with its SQLite store, the app's real lifespan (TestClient).
"""

from __future__ import annotations

import logging
import warnings

import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's TestClient prefers httpx2; httpx works the same here
    from fastapi.testclient import TestClient

from server.app import Server
from server.web.app import create_app
from tests.unit.test_desk_api import CountingHasher, clock, server  # noqa: F401 - fixtures, used by name

NO_OPERATOR = "the desk has no operator yet"


def test_no_operator_warning_is_given_at_start_only_when_there_is_none(server: Server,  # noqa: F811
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="doorkeep.server.desk")
    app = create_app(server, hasher=CountingHasher())
    assert NO_OPERATOR not in caplog.text  # building the app says nothing yet
    with TestClient(app) as client:
        assert client.get("/login").status_code == 200
    assert NO_OPERATOR in caplog.text and "doorkeep user add NAME --role admin" in caplog.text

    caplog.clear()
    app = create_app(server, hasher=CountingHasher())
    app.state.desk.operators.add("demo", "admin", "demo password long enough", actor="demo")  # as the demo does
    with TestClient(app) as client:
        assert client.post("/api/v1/session", json={"name": "demo", "password": "demo password long enough"}
                           ).status_code == 200
    assert NO_OPERATOR not in caplog.text
