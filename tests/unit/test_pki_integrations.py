"""Certificates for integrations (Home Assistant, Node-RED, a SOC collector), the ACL lines generated for them,
and the certificate inventory `doorkeep pki list`, the desk and the expiry watch read.

The broker knows a client only by its certificate's CN, so these tests pin what a mistake would open: an
integration named like a device would be that device; an ACL line that matched a device's command, policy,
decision or request topic would let Home Assistant open doors. The ACL is checked with an MQTT topic matcher
here and against a real Mosquitto in tests/e2e/test_integration_acl.py.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from doorkeep.cli import main
from doorkeep.pki import (
    LEAF_DAYS,
    Integration,
    PkiError,
    broker_acl,
    certificate_inventory,
    init_ca,
    integration_topic,
    issue,
    live_integrations,
    load_index,
    pki_dir,
    revoke,
)
from tests.unit.test_config import DEVICE, make_site

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)
BASE = "doorkeep/v1/t"


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    d = tmp_path / "site" / "pki"
    init_ca(d, "t", now=NOW)
    return d


def cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def matches(topic_filter: str, topic: str) -> bool:
    """MQTT topic-filter matching (``+`` one level, ``#`` the rest), as the broker applies ACL lines."""
    f, t = topic_filter.split("/"), topic.split("/")
    for i, part in enumerate(f):
        if part == "#":
            return True
        if i >= len(t) or (part != "+" and part != t[i]):
            return False
    return len(f) == len(t)


def rights(acl: str, user: str) -> list[tuple[str, str]]:
    """(access, filter) of the ``topic`` lines in ``user``'s block, and of every ``pattern`` with %u filled in."""
    out, current = [], None
    for line in acl.splitlines():
        if line.startswith("user "):
            current = line.split()[1]
        elif line.startswith("pattern "):
            _, access, topic = line.split()
            out.append((access, topic.replace("%u", user)))
        elif line.startswith("topic ") and current == user:
            _, access, topic = line.split()
            out.append((access, topic))
    return out


def allowed(acl: str, user: str, topic: str, want: str) -> bool:
    """Whether ``user`` may ``want`` (read or write) ``topic``: a matching deny wins (as Mosquitto does)."""
    lines = rights(acl, user)
    if any(a == "deny" and matches(f, topic) for a, f in lines):
        return False
    return any(matches(f, topic) and a in (want, "readwrite") for a, f in lines)


DEVICE_TOPICS = [f"{BASE}/pi-a/cmd", f"{BASE}/pi-a/cmd/result", f"{BASE}/pi-a/policy",
                 f"{BASE}/pi-a/door/lobby_in/decision", f"{BASE}/pi-a/door/lobby_in/request",
                 f"{BASE}/pi-a/door/lobby_in/snapshot/ev-1"]


# ------------------------------------------------------------------ issuing


def test_integration_certificate_is_a_client_certificate_whose_ou_and_index_row_say_integration(pki: Path) -> None:
    crt, key = issue(pki, "home-assistant", now=NOW, role="integration")
    c = cert(crt)
    assert c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "home-assistant"
    assert c.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "integration"
    assert list(c.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:doorkeep:t:integration:home-assistant"]
    assert c.not_valid_after_utc == NOW + timedelta(days=LEAF_DAYS)
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    issue(pki, "soc", now=NOW, role="integration", read_only=True)
    ou = cert(pki / "soc.crt").subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value
    assert ou == "integration read-only"
    rows = {r.name: r for r in load_index(pki)}
    assert (rows["home-assistant"].role, rows["home-assistant"].read_only) == ("integration", False)
    assert (rows["soc"].role, rows["soc"].read_only) == ("integration", True)
    assert live_integrations(pki) == [Integration("home-assistant", False), Integration("soc", True)]


def test_device_rows_of_the_index_keep_their_old_shape(pki: Path) -> None:
    issue(pki, "pi-a", now=NOW)
    [row] = json.loads((pki / "index.json").read_text())["issued"]
    assert set(row) == {"name", "serial", "role", "not_after", "revoked"}  # no read_only key outside integrations
    assert load_index(pki)[0].read_only is False


@pytest.mark.parametrize("name,why", [("pi-a", "device id"), ("server", "reserved"), ("broker", "reserved"),
                                      ("operator", "reserved"), ("ca", "reserved"), ("ha/x", "not a valid"),
                                      ("ha+", "not a valid"), ("#", "not a valid"), ("x" * 65, "not a valid"),
                                      ("", "not a valid")])
def test_integration_name_that_the_broker_could_confuse_with_another_identity_is_refused(pki: Path, name: str,
                                                                                         why: str) -> None:
    with pytest.raises(PkiError, match=why):
        issue(pki, name, now=NOW, role="integration", devices=["pi-a", "pi-b"])
    assert load_index(pki) == [] and sorted(p.name for p in pki.glob("*.crt")) == ["ca.crt"]


def test_read_only_and_roles_by_hand_are_for_integrations_only(pki: Path) -> None:
    with pytest.raises(PkiError, match="--read-only applies to integrations only"):
        issue(pki, "pi-a", now=NOW, read_only=True)
    with pytest.raises(PkiError, match="not given by hand"):
        issue(pki, "pi-a", now=NOW, role="server")
    with pytest.raises(PkiError, match="--host applies to the broker"):
        issue(pki, "home-assistant", now=NOW, role="integration", hosts=("ha.lan",))


def test_an_integration_with_a_live_certificate_is_not_issued_again_and_a_revoked_one_leaves_the_list(pki: Path) -> None:
    issue(pki, "home-assistant", now=NOW, role="integration")
    with pytest.raises(PkiError, match="already has certificate"):
        issue(pki, "home-assistant", now=NOW, role="integration", read_only=True)
    revoke(pki, "home-assistant", now=NOW)
    assert live_integrations(pki) == []
    issue(pki, "home-assistant", now=NOW, role="integration", read_only=True)
    assert live_integrations(pki) == [Integration("home-assistant", True)]
    revoked = [r for r in load_index(pki) if r.revoked]
    assert len(revoked) == 1 and (revoked[0].role, revoked[0].read_only) == ("integration", False)


# ------------------------------------------------------------------ the ACL


def test_integration_reads_events_state_and_availability_and_writes_only_its_own_request_topic() -> None:
    acl = broker_acl("t", integrations=[Integration("home-assistant", False), Integration("soc", True)])
    block = acl[acl.index("user home-assistant"):].split("\n\n")[0].splitlines()
    assert block == ["user home-assistant",
                     f"topic deny {BASE}/home-assistant/#",
                     f"topic read {BASE}/+/door/+/event",
                     f"topic read {BASE}/+/state",
                     f"topic read {BASE}/+/availability",
                     f"topic write {BASE}/server/integration/home-assistant/request",
                     f"topic read {BASE}/server/integration/home-assistant/response"]
    assert integration_topic("t", "home-assistant", "request") == f"{BASE}/server/integration/home-assistant/request"
    for user in ("home-assistant", "soc"):
        for topic in (f"{BASE}/pi-a/door/lobby_in/event", f"{BASE}/pi-a/state", f"{BASE}/pi-a/availability",
                      f"{BASE}/server/availability"):
            assert allowed(acl, user, topic, "read"), (user, topic)
        for topic in DEVICE_TOPICS:
            assert not allowed(acl, user, topic, "read") and not allowed(acl, user, topic, "write"), (user, topic)
        for topic in (f"{BASE}/pi-a/door/lobby_in/event", f"{BASE}/pi-a/state", f"{BASE}/pi-a/availability",
                      f"{BASE}/server/availability", f"{BASE}/{user}/door/x/request", f"{BASE}/{user}/state"):
            assert not allowed(acl, user, topic, "write"), (user, topic)  # the device pattern's subtree is denied
    assert allowed(acl, "home-assistant", integration_topic("t", "home-assistant", "request"), "write")
    assert not allowed(acl, "home-assistant", integration_topic("t", "soc", "request"), "write")
    assert not allowed(acl, "home-assistant", integration_topic("t", "soc", "response"), "read")
    assert not allowed(acl, "soc", integration_topic("t", "soc", "request"), "write")  # read-only
    assert not any(line.startswith("topic write") or line.startswith("topic readwrite")
                   for line in acl[acl.index("user soc"):].split("\n\n")[0].splitlines())


def test_without_integrations_the_acl_is_unchanged_and_a_device_keeps_its_subtree() -> None:
    plain = broker_acl("t")
    assert broker_acl("t", integrations=[]) == plain and "integration" not in plain
    acl = broker_acl("t", integrations=[Integration("home-assistant", False)])
    assert acl.startswith(plain.rstrip("\n"))
    assert allowed(acl, "pi-a", f"{BASE}/pi-a/door/lobby_in/request", "write")
    assert not allowed(acl, "pi-a", integration_topic("t", "home-assistant", "request"), "write")
    assert allowed(acl, "server", integration_topic("t", "home-assistant", "request"), "read")


def test_campus_acl_gives_integrations_every_site_and_refuses_names_that_collide() -> None:
    acl = broker_acl({"demo": ["pi-lobby"], "hq": ["pi-entrance"]}, integrations=[Integration("soc", True)])
    for site in ("demo", "hq"):
        assert allowed(acl, "soc", f"doorkeep/v1/{site}/pi-lobby/door/x/event", "read")
        assert not allowed(acl, "soc", f"doorkeep/v1/{site}/pi-lobby/cmd", "read")
    with pytest.raises(PkiError, match="device id"):
        broker_acl({"demo": ["pi-lobby"]}, integrations=[Integration("pi-lobby", True)])
    with pytest.raises(PkiError, match="listed twice"):
        broker_acl("t", integrations=[Integration("soc", True), Integration("soc", False)])
    with pytest.raises(PkiError, match="observer"):
        broker_acl("t", observers=["soc"], integrations=[Integration("soc", True)])
    with pytest.raises(PkiError, match="reserved"):
        broker_acl("t", integrations=[Integration("operator", True)])


# ------------------------------------------------------------------ commands


def test_cli_issues_an_integration_and_the_regenerated_acl_lists_it(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    site = make_site(tmp_path / "s")
    assert main(["pki", "init", "--site", str(site)]) == 0
    for name in ("pi-a", "server", "broker"):
        assert main(["pki", "issue", name, "--site", str(site)]) == 0
    capsys.readouterr()
    assert main(["pki", "issue", "home-assistant", "--site", str(site)]) == 1
    assert "--role integration" in capsys.readouterr().err
    assert main(["pki", "issue", "pi-a", "--role", "integration", "--site", str(site)]) == 1
    assert "is a device id" in capsys.readouterr().err
    assert main(["pki", "issue", "soc", "--read-only", "--site", str(site)]) == 1
    assert "--read-only applies to integrations only" in capsys.readouterr().err
    assert main(["pki", "issue", "home-assistant", "--role", "integration", "--site", str(site)]) == 0
    assert main(["pki", "issue", "soc", "--role", "integration", "--read-only", "--site", str(site)]) == 0
    out = capsys.readouterr().out
    assert "doorkeep broker config" in out and "read-only" in out
    assert main(["broker", "config", "--site", str(site)]) == 0
    acl = (site / "broker" / "acl").read_text()
    assert acl == broker_acl("t", integrations=[Integration("home-assistant", False), Integration("soc", True)])
    assert main(["pki", "revoke", "home-assistant", "--site", str(site)]) == 0
    assert main(["broker", "config", "--site", str(site)]) == 0
    assert "user home-assistant" not in (site / "broker" / "acl").read_text()


def test_broker_config_refuses_an_integration_whose_name_has_become_a_device_id(tmp_path: Path,
                                                                                capsys: pytest.CaptureFixture[str]) -> None:
    site = make_site(tmp_path / "s")
    assert main(["pki", "init", "--site", str(site)]) == 0
    assert main(["pki", "issue", "broker", "--site", str(site)]) == 0
    assert main(["pki", "issue", "pi-b", "--role", "integration", "--site", str(site)]) == 0
    (site / "devices" / "pi-a.toml").unlink()
    (site / "devices" / "pi-b.toml").write_text(DEVICE.replace('"pi-a"', '"pi-b"'))  # the device renamed
    capsys.readouterr()
    assert main(["broker", "config", "--site", str(site)]) == 1
    assert "'pi-b' is a device id" in capsys.readouterr().err
    assert not (site / "broker" / "acl").exists()


# ------------------------------------------------------------------ inventory and `pki list`


def test_inventory_lists_every_certificate_file_with_role_and_expiry_ca_first(pki: Path) -> None:
    issue(pki, "pi-a", now=NOW)
    issue(pki, "server", now=NOW + timedelta(days=100))
    issue(pki, "broker", now=NOW)
    issue(pki, "soc", now=NOW, role="integration", read_only=True)
    issue(pki, "ha", now=NOW, role="integration")
    issue(pki, "pi-b", now=NOW)
    revoke(pki, "pi-b", now=NOW)  # moved to revoked/: not listed
    (pki / "junk.crt").write_text("not a certificate")
    found = certificate_inventory(pki)
    assert [(c.name, c.role, c.read_only) for c in found] == [
        ("ca", "ca", False), ("broker", "broker", False), ("server", "server", False), ("pi-a", "device", False),
        ("ha", "integration", False), ("soc", "integration", True), ("junk", "unknown", False)]
    by = {c.name: c for c in found}
    assert by["server"].not_after == NOW + timedelta(days=100 + LEAF_DAYS)
    assert by["junk"].error == "not a PEM certificate" and by["junk"].status(NOW) == "unreadable"
    pi = by["pi-a"]
    end = NOW + timedelta(days=LEAF_DAYS)
    assert pi.status(end - timedelta(days=31)) == "ok"
    assert pi.status(end - timedelta(days=30)) == "expiring"
    assert pi.status(end) == "expired" and pi.days_left(end + timedelta(days=2)) == -2
    assert certificate_inventory(pki.parent / "nowhere") == []


def test_pki_list_prints_each_certificate_with_its_expiry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = make_site(tmp_path / "s")
    assert main(["pki", "list", "--site", str(site)]) == 1
    assert "doorkeep pki init" in capsys.readouterr().err
    assert main(["pki", "init", "--site", str(site)]) == 0
    assert main(["pki", "issue", "soc", "--role", "integration", "--read-only", "--site", str(site)]) == 0
    issue(pki_dir(site), "pi-a", now=datetime.now(timezone.utc) - timedelta(days=LEAF_DAYS - 10))
    capsys.readouterr()
    assert main(["pki", "list", "--site", str(site)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "ROLE", "ACCESS", "SERIAL", "EXPIRES", "(UTC)", "DAYS", "LEFT", "STATUS"]
    rows = {line.split()[0]: line.split() for line in lines[1:4]}
    assert rows["ca"][1] == "ca" and rows["ca"][-1] == "ok"
    assert rows["pi-a"][1:2] == ["device"] and rows["pi-a"][-2:] == ["10", "expiring"]
    assert rows["soc"][1:3] == ["integration", "read-only"] and rows["soc"][-1] == "ok"


def test_broker_config_checks_site_toml_integrations_against_their_certificates(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.unit.test_config import SITE
    site = make_site(tmp_path / "s", site=SITE + '\n[integrations.soc]\nunlock_doors = ["lobby_in"]\n'
                                              '[integrations.later]\n')
    assert main(["pki", "init", "--site", str(site)]) == 0
    assert main(["pki", "issue", "broker", "--site", str(site)]) == 0
    assert main(["pki", "issue", "soc", "--role", "integration", "--read-only", "--site", str(site)]) == 0
    capsys.readouterr()
    # A read-only certificate may publish no request: unlock_doors would promise what the broker refuses.
    assert main(["broker", "config", "--site", str(site)]) == 1
    err = capsys.readouterr().err
    assert "[integrations.soc] unlock_doors is set, but integration 'soc' is read-only" in err
    assert not (site / "broker" / "acl").exists()
    assert main(["pki", "revoke", "soc", "--site", str(site)]) == 0
    assert main(["pki", "issue", "soc", "--role", "integration", "--site", str(site)]) == 0
    capsys.readouterr()
    assert main(["broker", "config", "--site", str(site)]) == 0
    err = capsys.readouterr().err
    # No certificate yet is a warning only; soc, now able to ask, is not warned about.
    assert "[integrations.later] has no live certificate yet" in err and "integrations.soc" not in err
    # An entry named after a device would give that device's identity the request API.
    (site / "site.toml").write_text(SITE + "\n[integrations.pi-a]\n")
    assert main(["broker", "config", "--site", str(site)]) == 1
    assert "'pi-a' is a device id" in capsys.readouterr().err
