"""The desk's Certificates page and API (server/web/certificates.py): every certificate of SITE/pki with its
expiry, for admins and auditors; an admin runs the expiry check now. A real server bootstrapped on a copy of
the demo site with its own CA (doorkeep.pki), a real store, FakeClock, TestClient."""

from __future__ import annotations

import re
import secrets
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI
from fastapi.testclient import TestClient

from doorkeep.clock import FakeClock
from doorkeep.config import BrokerConfig, load_site_dir
from doorkeep.envelope import SnapshotKeys
from doorkeep.pki import LEAF_DAYS, init_ca, issue, pki_dir
from server.app import Server, bootstrap
from server.certificates import CERTIFICATE_EXPIRING
from server.web.app import create_app
from tests.unit.test_desk_api import DEMO, PASSWORDS, ROLES, CountingHasher, bearer, form_login

NOW = datetime.fromtimestamp(FakeClock().wall(), tz=timezone.utc)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def server(tmp_path: Path, clock: FakeClock) -> Iterator[Server]:
    """The demo site with a CA: pi-lobby's certificate 12 days from expiry, the rest years away."""
    site = tmp_path / "demo"
    shutil.copytree(DEMO, site)
    pki = pki_dir(site)
    init_ca(pki, "demo", now=NOW - timedelta(days=LEAF_DAYS))
    issue(pki, "pi-lobby", now=NOW - timedelta(days=LEAF_DAYS - 12))
    for name in ("broker", "server", "pi-floor7"):
        issue(pki, name, now=NOW)
    issue(pki, "home-assistant", now=NOW, role="integration", read_only=True)
    srv = bootstrap(load_site_dir(site), tmp_path / "data", BrokerConfig("mqtt://127.0.0.1:9"),
                    key=secrets.token_bytes(32), signing_key=Ed25519PrivateKey.generate(),
                    snapshot_keys=SnapshotKeys.generate(), clock=clock)
    yield srv
    srv.store.close()


@pytest.fixture
def app(server: Server, clock: FakeClock) -> FastAPI:
    app = create_app(server, clock=clock, hasher=CountingHasher())
    for name, role in ROLES.items():
        app.state.desk.operators.add(name, role, PASSWORDS[name], actor="test")
    return app


@pytest.fixture
def client(app: FastAPI) -> TestClient:
    return TestClient(app, raise_server_exceptions=False, follow_redirects=False)


def token(app: FastAPI, name: str) -> dict[str, str]:
    return bearer(app.state.desk.operators.issue_token(name, "tests", actor="test")[0])


def test_admins_and_auditors_see_every_certificate_with_its_expiry_and_the_desk_role_does_not(
        app: FastAPI, client: TestClient) -> None:
    r = client.get("/api/v1/site/certificates", headers=token(app, "aud"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["warn_days"] == 30
    rows = {c["name"]: c for c in body["certificates"]}
    assert [c["name"] for c in body["certificates"]] == ["ca", "broker", "server", "pi-floor7", "pi-lobby",
                                                        "home-assistant"]
    assert (rows["pi-lobby"]["status"], rows["pi-lobby"]["days_left"]) == ("expiring", 12.0)
    assert rows["pi-lobby"]["not_after"] == (NOW + timedelta(days=12)).timestamp()
    assert (rows["home-assistant"]["role"], rows["home-assistant"]["read_only"]) == ("integration", True)
    assert rows["ca"]["status"] == "ok" and rows["ca"]["read_only"] is None
    assert "doorkeep pki revoke pi-lobby" in rows["pi-lobby"]["fix"]
    assert client.get("/api/v1/site/certificates", headers=token(app, "dex")).status_code == 403
    assert client.get("/api/v1/site/certificates").status_code == 401


def test_the_page_lists_the_certificates_and_the_site_page_links_to_it(client: TestClient) -> None:
    assert form_login(client, "aud", PASSWORDS["aud"]).status_code == 303
    assert 'href="/site/certificates"' in client.get("/site").text
    page = client.get("/site/certificates")
    assert page.status_code == 200
    row = re.search(r'<tr id="certificate-pi-lobby">(.*?)</tr>', page.text, re.S)
    assert row and "expiring" in row.group(1) and ">12<" in row.group(1)
    assert "integration (read-only)" in page.text
    assert "Check expiry now" not in page.text  # an auditor reads, an admin checks


def test_an_admin_runs_the_check_now_and_the_expiring_certificate_raises_its_alarm(
        app: FastAPI, client: TestClient, server: Server) -> None:
    assert client.post("/api/v1/site/certificates/check", headers=token(app, "aud")).status_code == 403
    assert server.store.open_alarms(type=CERTIFICATE_EXPIRING) == []
    r = client.post("/api/v1/site/certificates/check", headers=token(app, "ada"))
    assert r.status_code == 200 and len(r.json()["certificates"]) == 6
    [alarm] = server.store.open_alarms(type=CERTIFICATE_EXPIRING)
    assert (alarm["device"], alarm["detail"]["certificate"], alarm["state"]) == ("pi-lobby", "pi-lobby", "active")
    assert form_login(client, "ada", PASSWORDS["ada"]).status_code == 303
    page = client.get("/site/certificates")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert csrf and "Check expiry now" in page.text
    done = client.post("/site/certificates/check", data={"csrf_token": csrf.group(1)})
    assert done.status_code == 303 and done.headers["location"] == "/site/certificates?done=checked"
    assert client.post("/site/certificates/check", data={}).status_code == 403  # no CSRF token


def test_the_server_watches_its_sites_pki_directory(server: Server) -> None:
    assert server.certificates is not None and server.certificates.pki == pki_dir(server.directory.bundle.dir)
