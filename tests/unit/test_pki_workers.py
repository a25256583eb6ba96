"""Certificates for server workers (``worker-NAME``), the ACL lines generated for them, and how a worker finds its own.

Each worker's request connection needs a certificate of its own: the broker binds one connection per certificate
(``use_username_as_clientid``), and ``server`` is the leader's. What a mistake would open: a worker block that
matched a device's events, policy or commands would let a stolen worker certificate forge them; a device named
``worker-…`` would be taken for a worker. The ACL is checked with an MQTT topic matcher here and against a real
Mosquitto in tests/e2e/test_worker_acl.py.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from doorkeep.cli import main
from doorkeep.config import BrokerConfig, check
from doorkeep.errors import ConfigError
from doorkeep.pki import (
    WORKER,
    WORKER_PREFIX,
    PkiError,
    broker_acl,
    certificate_inventory,
    init_ca,
    issue,
    live_workers,
    load_index,
    pki_dir,
    revoke,
    role_of,
    worker_identity,
)
from server.workers import WorkerError, check_worker_name, worker_broker
from tests.unit.test_config import DEVICE, make_site, only
from tests.unit.test_pki_integrations import allowed, rights

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=timezone.utc)
BASE = "doorkeep/v1/t"

#: A worker's whole block in one site's ACL: its own subtree denied (the device pattern would give the CN one), the
#: requests to read, the decisions to write, the heartbeats to read.
WORKER_LINES = [f"topic deny {BASE}/worker-a/#", f"topic read {BASE}/+/door/+/request",
                f"topic write {BASE}/+/door/+/decision", f"topic read {BASE}/+/state"]
#: What a worker must never touch, whichever way.
NEVER = [f"{BASE}/pi-a/door/lobby_in/event", f"{BASE}/pi-a/policy", f"{BASE}/pi-a/cmd", f"{BASE}/pi-a/cmd/result",
         f"{BASE}/pi-a/door/lobby_in/snapshot/ev-1", f"{BASE}/pi-a/availability",
         f"{BASE}/server/integration/home-assistant/request"]


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    d = tmp_path / "site" / "pki"
    init_ca(d, "t", now=NOW)
    return d


def block(acl: str, user: str) -> list[str]:
    """The lines of ``user``'s block (up to the blank line that ends it), the ``user`` line first."""
    return acl[acl.index(f"\nuser {user}\n") + 1:].split("\n\n")[0].splitlines()


# ------------------------------------------------------------------ issuing


def test_cli_issues_a_worker_certificate_whose_role_in_the_index_inventory_and_pki_list_is_worker(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = make_site(tmp_path / "s")
    assert main(["pki", "init", "--site", str(site)]) == 0
    for name in ("server", "broker", "pi-a"):
        assert main(["pki", "issue", name, "--site", str(site)]) == 0
    capsys.readouterr()
    assert main(["pki", "issue", "worker-a", "--site", str(site)]) == 0
    out = capsys.readouterr().out
    assert "beside the server's certificate" in out and "doorkeep broker config" in out and "to the Pi" not in out
    assert main(["pki", "issue", "nobody", "--site", str(site)]) == 1  # still only known names, and the fix says how
    assert "`worker-NAME` for a server worker" in capsys.readouterr().err
    pki = pki_dir(site)
    rows = {r.name: r.role for r in load_index(pki)}
    assert rows == {"server": "server", "broker": "broker", "pi-a": "device", "worker-a": WORKER}
    assert json.loads((pki / "index.json").read_text())["issued"][-1]["role"] == "worker"
    assert [(c.name, c.role) for c in certificate_inventory(pki)] == [
        ("ca", "ca"), ("broker", "broker"), ("server", "server"), ("worker-a", "worker"), ("pi-a", "device")]
    assert main(["pki", "list", "--site", str(site)]) == 0
    listed = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:6]}
    assert listed["worker-a"][1] == "worker" and listed["worker-a"][-1] == "ok"
    assert main(["broker", "config", "--site", str(site)]) == 0
    assert (site / "broker" / "acl").read_text() == broker_acl("t", workers=["worker-a"])


def test_the_name_gives_the_worker_role_and_worker_identity_adds_the_prefix() -> None:
    assert WORKER_PREFIX == "worker-" and worker_identity("a") == "worker-a"
    assert [role_of(n) for n in ("worker-a", "worker-b_2", "server", "pi-worker-a", "workers")] == [
        "worker", "worker", "server", "device", "device"]


def test_live_workers_lists_the_live_worker_certificates_only_and_a_revoked_one_leaves(pki: Path) -> None:
    for name in ("worker-b", "server", "pi-a", "worker-a"):
        issue(pki, name, now=NOW)
    issue(pki, "soc", now=NOW, role="integration", read_only=True)
    assert live_workers(pki) == ["worker-a", "worker-b"]
    revoke(pki, "worker-a", now=NOW)
    assert live_workers(pki) == ["worker-b"]
    assert "user worker-a" not in broker_acl("t", workers=live_workers(pki))
    issue(pki, "worker-a", now=NOW)  # its replacement
    assert live_workers(pki) == ["worker-a", "worker-b"]


# ------------------------------------------------------------------ the ACL


def test_single_site_acl_gives_a_worker_the_requests_the_decisions_and_the_heartbeats_and_nothing_else() -> None:
    acl = broker_acl("t", workers=["worker-a"])
    assert block(acl, "worker-a") == ["user worker-a", *WORKER_LINES]
    assert acl.count("worker-a") == 2  # its user and deny lines: no other block names it
    assert allowed(acl, "worker-a", f"{BASE}/pi-a/door/lobby_in/request", "read")
    assert allowed(acl, "worker-a", f"{BASE}/pi-a/door/lobby_in/decision", "write")
    assert allowed(acl, "worker-a", f"{BASE}/pi-a/state", "read")
    for topic in (f"{BASE}/pi-a/door/lobby_in/request", f"{BASE}/pi-a/state"):
        assert not allowed(acl, "worker-a", topic, "write"), topic  # it never speaks for a device
    assert not allowed(acl, "worker-a", f"{BASE}/pi-a/door/lobby_in/decision", "read")
    for topic in NEVER:
        assert not allowed(acl, "worker-a", topic, "read") and not allowed(acl, "worker-a", topic, "write"), topic
    for topic in (f"{BASE}/worker-a/door/x/request", f"{BASE}/worker-a/state", f"{BASE}/worker-a/availability"):
        # the device pattern's subtree for the CN is denied: a worker is no device
        assert not allowed(acl, "worker-a", topic, "write") and not allowed(acl, "worker-a", topic, "read"), topic
    # The pattern lines every CN gets: the server's availability only, which the worker does not need either.
    assert [r for r in rights(acl, "worker-a") if r not in [tuple(line.split()[1:]) for line in WORKER_LINES]] == [
        ("readwrite", f"{BASE}/worker-a/#"), ("read", f"{BASE}/server/availability")]
    assert acl.startswith(broker_acl("t").rstrip("\n"))  # the rest of the ACL is unchanged


def test_campus_acl_gives_each_worker_every_site_without_the_device_pattern() -> None:
    acl = broker_acl({"demo": ["pi-lobby"], "hq": ["pi-entrance"]}, workers=["worker-b", "worker-a"])
    for w in ("worker-a", "worker-b"):
        assert block(acl, w) == [f"user {w}", *(line for site in ("demo", "hq") for line in (
            f"topic read doorkeep/v1/{site}/+/door/+/request", f"topic write doorkeep/v1/{site}/+/door/+/decision",
            f"topic read doorkeep/v1/{site}/+/state"))]
        assert not any(line.startswith("pattern") for line in acl.splitlines())
        for site, device in (("demo", "pi-lobby"), ("hq", "pi-entrance")):
            base = f"doorkeep/v1/{site}/{device}"
            assert allowed(acl, w, f"{base}/door/d/request", "read") and allowed(acl, w, f"{base}/state", "read")
            assert allowed(acl, w, f"{base}/door/d/decision", "write")
            for leaf in ("door/d/event", "policy", "cmd", "cmd/result", "availability", "door/d/snapshot/ev-1"):
                assert not allowed(acl, w, f"{base}/{leaf}", "read") and not allowed(acl, w, f"{base}/{leaf}", "write")
    assert acl.index("user worker-a") < acl.index("user worker-b")


@pytest.mark.parametrize("name", ["a", "server", "pi-a", "workera", "Worker-a", "worker-a/b", "worker-#", ""])
def test_acl_refuses_a_worker_certificate_not_named_worker_name(name: str) -> None:
    with pytest.raises(PkiError, match=r"not named worker-NAME \(fix: `doorkeep pki issue worker-NAME`\)"):
        broker_acl("t", workers=[name])
    with pytest.raises(PkiError, match="worker-NAME"):
        broker_acl({"demo": ["pi-lobby"]}, workers=[name])


def test_campus_acl_refuses_a_device_named_like_a_worker() -> None:
    with pytest.raises(PkiError, match="'worker-x' is reserved"):
        broker_acl({"demo": ["pi-lobby", "worker-x"]})


def test_a_device_file_whose_device_id_starts_with_worker_is_refused_with_the_fix(tmp_path: Path) -> None:
    site = make_site(tmp_path / "s", devices={"worker-x": DEVICE.replace('"pi-a"', '"worker-x"')})
    err = only(check(site / "devices" / "worker-x.toml"), "device")
    assert "'worker-x': names starting with 'worker-' are the server workers'" in err.problem
    assert err.fix == 'name the device after where it is, e.g. device = "pi-lobby"'
    assert not [e for e in check(make_site(tmp_path / "ok", devices={"pi-worker": DEVICE.replace(
        '"pi-a"', '"pi-worker"')}) / "devices" / "pi-worker.toml") if e.key == "device"]


# ------------------------------------------------------------------ the worker's own connection


def test_worker_broker_takes_the_workers_certificate_beside_the_servers(pki: Path) -> None:
    for name in ("server", "worker-a"):
        issue(pki, name, now=NOW)
    server = BrokerConfig("mqtts://broker.lan:8883", keepalive=15, ca_file=pki / "ca.crt",
                          cert_file=pki / "server.crt", key_file=pki / "server.key")
    mine = worker_broker(server, "a")
    assert (mine.cert_file, mine.key_file) == (pki / "worker-a.crt", pki / "worker-a.key")
    assert (mine.url, mine.keepalive, mine.ca_file) == (server.url, 15, pki / "ca.crt")
    assert server.cert_file == pki / "server.crt"  # the leader keeps `server`


def test_worker_broker_leaves_a_plain_broker_as_it_is() -> None:
    plain = BrokerConfig("mqtt://127.0.0.1:1883", allow_plain=True)
    assert worker_broker(plain, "a") is plain


def test_worker_broker_without_the_workers_files_names_the_command_that_issues_them(pki: Path) -> None:
    issue(pki, "server", now=NOW)
    server = BrokerConfig("mqtts://127.0.0.1:8883", ca_file=pki / "ca.crt", cert_file=pki / "server.crt",
                          key_file=pki / "server.key")
    with pytest.raises(WorkerError, match=r"worker-b\.crt: worker b has no certificate .*`doorkeep pki issue worker-b "):
        worker_broker(server, "b")
    issue(pki, "worker-b", now=NOW)
    (pki / "worker-b.key").unlink()  # a certificate without its key is no use either
    with pytest.raises(WorkerError, match="doorkeep pki issue worker-b"):
        worker_broker(server, "b")


@pytest.mark.parametrize("name", ["a/b", "x" * 33, "", "a b", "#", "+"])
def test_a_bad_worker_name_is_refused_with_the_fix(name: str) -> None:
    with pytest.raises(ConfigError, match=r"a worker's name is 1-32 letters.*\(fix: --worker a, --worker b"):
        check_worker_name(name)


def test_a_worker_name_up_to_32_characters_is_kept() -> None:
    assert check_worker_name("a") == "a" and check_worker_name("x" * 32) == "x" * 32
    assert check_worker_name("hall-2_b") == "hall-2_b"


@pytest.mark.parametrize("name", ["worker-", "worker-" + "x" * 33])
def test_a_worker_certificate_needs_a_name_a_worker_can_take(pki: Path, name: str) -> None:
    """`doorkeep server --worker NAME` takes 1-32 characters: a certificate no worker could use is refused."""
    with pytest.raises(PkiError, match="worker-NAME"):
        issue(pki, name, now=NOW)
    issue(pki, "worker-" + "x" * 32, now=NOW)


@pytest.mark.parametrize("role", ["integration", "bridge"])
def test_no_integration_or_bridge_may_take_a_workers_name(pki: Path, role: str) -> None:
    """worker_broker would pick such a certificate for worker x, which would then never get a request."""
    with pytest.raises(PkiError, match="server worker"):
        issue(pki, "worker-x", now=NOW, role=role, devices=["pi-a"], bridged=["pi-a"] if role == "bridge" else ())
