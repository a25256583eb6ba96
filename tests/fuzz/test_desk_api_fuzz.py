"""A fuzz run of the security desk's API from its own OpenAPI document (schemathesis + hypothesis).

For every operation the desk documents under ``/api/v1``, schemathesis generates requests from the schema:
valid ones (positive mode) and ones that break it (negative mode: wrong types, missing fields, hostile
strings), and this test sends them to the ASGI app in-process, as an admin by bearer token or (about a
third of the examples) by a cookie session with its CSRF token. Every answer must:

- never be a 5xx, except the door commands' documented 502 (unlock, timed override, its release) when the
  door's edge refuses the command;
- be JSON ``{"error": message, ...}`` when it is an error;
- conform to the documented status codes, content type and response schema (schemathesis' checks);
- publish no command, except an unlock (or a timed override, or its release) of exactly the door named in
  that request and lockdown commands from a lockdown request: a fuzzed request never unlocks a door by any
  other route.

Real parts: a real ``Server`` on the demo site with a real SQLite store (bus not started: commands go to
a recording publish hook that answers like an edge, ``ok`` or ``rejected`` by turns), real argon2id hashes
(cheap parameters). The profile comes from tests/fuzz/conftest.py: ``short`` in ``make test`` (about half a
minute), ``long`` in ``make fuzz``. Not fuzzed: ``GET /api/v1/events/stream``, an endless server-sent
event stream (tests/unit/test_desk_live.py drives it).
"""

from __future__ import annotations

import json
import secrets
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is in the dev extra: pip install -e '.[dev]'")

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's TestClient prefers httpx2; httpx works the same here
    from fastapi.testclient import TestClient

from doorkeep.clock import FakeClock
from doorkeep.config import BrokerConfig, load_site_dir
from doorkeep.contract import CommandResult
from doorkeep.envelope import SnapshotKeys
from server.app import Server, bootstrap
from server.web.app import create_app
from tests.fuzz.conftest import PROFILE, fuzz
from tests.unit.test_desk_api import CountingHasher

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "doorkeep" / "sites" / "demo"
ADMIN, ADMIN_PASSWORD = "fuzz-admin", "fuzz admin correct horse"
SESSION_ADMIN, SESSION_PASSWORD = "fuzz-session", "fuzz session battery staple"
NOT_FUZZED = {("GET", "/api/v1/events/stream")}
#: Examples per operation and mode: 30 in the short profile (about 20 s in all), 250 in the long one (a few minutes).
SCALE = 0.25 if PROFILE == "short" else 0.1
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


class RecordingEdges:
    """The publish hook: records every signed command and answers like the edge, ``ok`` and ``rejected`` by turns."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.sent: list[dict[str, Any]] = []
        server.commands.publish = self.publish

    def publish(self, topic: str, payload: bytes) -> None:
        body = json.loads(json.loads(payload)["signed"])
        self.sent.append(body)
        status = "ok" if len(self.sent) % 2 else "rejected"
        self.server.commands.on_result(body["device"], CommandResult(transaction=body["transaction"], status=status,
                                                                     error=None if status == "ok" else "replayed"))


class Desk:
    """The app under fuzz with its two ways in: a bearer token and a cookie session (with its CSRF token)."""

    def __init__(self, tmp: Path) -> None:
        self.clock = clock = FakeClock()
        self.server = bootstrap(load_site_dir(DEMO), tmp / "data", BrokerConfig("mqtt://127.0.0.1:9"),
                                key=secrets.token_bytes(32), signing_key=Ed25519PrivateKey.generate(),
                                snapshot_keys=SnapshotKeys.generate(), clock=clock)
        self.edges = RecordingEdges(self.server)
        self.app = create_app(self.server, clock=clock, hasher=CountingHasher())
        ops = self.app.state.desk.operators
        ops.add(ADMIN, "admin", ADMIN_PASSWORD, actor="test")
        ops.add(SESSION_ADMIN, "admin", SESSION_PASSWORD, actor="test")
        self.token = ops.issue_token(ADMIN, "fuzz", actor="test")[0]
        self.bearer = TestClient(self.app, raise_server_exceptions=False, follow_redirects=False)
        self.session = TestClient(self.app, raise_server_exceptions=False, follow_redirects=False)
        self.csrf = ""
        self.answers: Counter[tuple[str, int]] = Counter()  # (bearer|session, status class): the coverage
        self.login()
        self.schema = schemathesis.openapi.from_dict(self.app.openapi())

    def login(self) -> None:
        """(Re)open the cookie session: a fuzzed ``DELETE /api/v1/session`` may have closed it.

        Fuzzed failed logins throttle this client's address: wait out the ``Retry-After`` on the fake clock.
        """
        r = self.session.post("/api/v1/session", json={"name": SESSION_ADMIN, "password": SESSION_PASSWORD})
        if r.status_code == 429:
            self.clock.advance(float(r.headers.get("retry-after", 900)) + 1)
            r = self.session.post("/api/v1/session", json={"name": SESSION_ADMIN, "password": SESSION_PASSWORD})
        assert r.status_code == 200, r.text
        self.csrf = r.json()["csrf_token"]

    def send(self, case: Any, via_session: bool) -> Any:
        kwargs = case.as_transport_kwargs()
        headers = {k: v for k, v in (kwargs.pop("headers", None) or {}).items()
                   if k.lower() not in ("authorization", "cookie", "x-csrf-token")}
        client = self.session if via_session else self.bearer
        if via_session:
            headers["X-CSRF-Token"] = self.csrf
        else:
            headers["Authorization"] = f"Bearer {self.token}"
        kwargs.pop("base_url", None)
        url = kwargs.pop("url", None) or kwargs.pop("path")
        method = kwargs.pop("method")
        allowed = {k: v for k, v in kwargs.items() if k in ("params", "json", "data", "content", "files", "cookies")}
        if isinstance(allowed.get("data"), (bytes, str)):
            allowed["content"] = allowed.pop("data")
        cookies = allowed.pop("cookies", None)
        if cookies:
            # a fuzzed cookie is sent, but never instead of the session's own
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items() if k != "doorkeep_session")
            if via_session:
                sid = self.session.cookies.get("doorkeep_session")
                headers["Cookie"] += f"; doorkeep_session={sid}"
        r = client.request(method, url, headers=headers, **allowed)
        self.answers[("session" if via_session else "bearer", r.status_code // 100)] += 1
        return r


@pytest.fixture(scope="module")
def desk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Desk]:
    d = Desk(tmp_path_factory.mktemp("desk-fuzz"))
    yield d
    d.server.store.close()


def operations(desk: Desk) -> list[Any]:
    out = []
    for result in desk.schema.get_all_operations():
        op = result.ok()
        if (op.method.upper(), op.path) not in NOT_FUZZED:
            out.append(op)
    return out


def test_the_fuzzer_sees_every_documented_operation(desk: Desk) -> None:
    """The document lists every API route (so the fuzz reaches them all), each with its error answers."""
    doc = desk.app.openapi()
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    routes = {(m, r.path) for r in desk.app.routes if getattr(r, "include_in_schema", False)
              and r.path.startswith("/api/v1") for m in getattr(r, "methods", ())}
    assert routes == documented and len(documented) > 30
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert {"401", "403", "404", "422"} <= set(op["responses"]), (method, path)
    assert "502" in doc["paths"]["/api/v1/doors/{door_id}/unlock"]["post"]["responses"]
    assert len(operations(desk)) == len(documented) - len(NOT_FUZZED)


def _with_door(case: Any, door: str) -> Any:
    case.path_parameters = {**(case.path_parameters or {}), "door_id": door}
    return case


def _cases(desk: Desk, op: Any, mode: GenerationMode) -> st.SearchStrategy[Any]:
    """The operation's generated requests; for ``door_id`` operations half name a real door (random ids never do)."""
    cases = op.as_strategy(generation_mode=mode)
    if "{door_id}" not in op.path:
        return cases
    doors = sorted(desk.server.site.doors)
    return st.one_of(cases, st.tuples(cases, st.sampled_from(doors)).map(lambda t: _with_door(*t)))


#: the operations that command one door (and the actions each may send): the only ones allowed a 502
DOOR_COMMANDS = {"/api/v1/doors/{door_id}/unlock": ("unlock",),
                 "/api/v1/doors/{door_id}/override": ("unlock", "lock"),
                 "/api/v1/doors/{door_id}/override/release": ("release",)}


def _fuzz_operation(desk: Desk, op: Any, mode: GenerationMode) -> None:
    @fuzz(scale=SCALE)
    @given(case=_cases(desk, op, mode), via_session=st.booleans() if mode is GenerationMode.POSITIVE
           else st.sampled_from([False, False, True]))
    def run(case: Any, via_session: bool) -> None:
        before = len(desk.edges.sent)
        r = desk.send(case, via_session)
        where = f"{case.method} {case.formatted_path} -> {r.status_code}: {r.text[:300]}"
        unlock = op.path in DOOR_COMMANDS
        if r.status_code >= 500:
            assert unlock and r.status_code == 502 and r.json()["detail"]["status"] == "rejected", where
        if r.status_code >= 400:
            body = r.json()
            assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], where
        if r.status_code != 502 or not unlock:
            case.validate_response(r, checks=CHECKS)
        sent = desk.edges.sent[before:]
        if unlock:
            assert all(c["action"] in DOOR_COMMANDS[op.path] and c["args"]["door"] == case.path_parameters["door_id"]
                       and set(c["args"]) <= {"door", "until"} for c in sent), (where, sent)
            assert len(sent) <= 1 and (r.status_code in (200, 502)) == bool(sent), (where, sent)
        elif op.path == "/api/v1/lockdown":
            assert all(c["action"] == "lockdown" for c in sent), (where, sent)
        else:
            assert sent == [], (where, sent)
        if via_session and op.path == "/api/v1/session" and case.method == "DELETE":
            desk.login()

    try:
        run()
    except Unsatisfiable:
        # nothing to break: an operation without parameters or body has no invalid request
        assert mode is GenerationMode.NEGATIVE and not op.body and not op.query and not op.path_parameters, op.label
        return


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_fuzz_every_api_operation(desk: Desk, mode: GenerationMode) -> None:
    """Every operation, valid and invalid requests: no 5xx, JSON errors, documented answers, no stray command."""
    for op in operations(desk):
        _fuzz_operation(desk, op, mode)
    # the fuzzer reached the door: at least one unlock went out, so the no-stray-command check had teeth
    if mode is GenerationMode.POSITIVE:
        assert any(c["action"] == "unlock" for c in desk.edges.sent)
        # both ways in got through (the session's CSRF token works) and were refused where they should be
        assert desk.answers[("session", 2)] > 0 and desk.answers[("bearer", 2)] > 0, desk.answers
    assert desk.answers[("bearer", 4)] > 0, desk.answers
