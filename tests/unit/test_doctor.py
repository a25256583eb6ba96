"""``doorkeep doctor``: a clean bill for the shipped production configuration, and every planted weakness found.

The site is the shipped ``hq`` site (mutual TLS, production device files) made real in a temporary
directory the way an installer does it: ``doorkeep pki init``/``issue``, ``doorkeep broker config``, the
keys, and a server store that has run. Each weakness is then planted on a copy, one per test, through the
files an attacker or a careless installer would leave.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from doorkeep.cli import main
from doorkeep.config import load_site_dir
from doorkeep.contract import EventMsg
from doorkeep.pki import LEAF_DAYS, init_ca, issue
from server.doctor import HIGH, MEDIUM, diagnose
from server.store import Store
from tests.pg import pg_url  # noqa: F401  (a fixture)

SITES = Path(__file__).resolve().parents[2] / "firmware-config" / "sites"
NOW = datetime.now(timezone.utc)


@pytest.fixture()
def site(tmp_path: Path) -> Path:
    """The hq site as an installer leaves it: CA, certificates, broker configuration, keys, a server store."""
    old = os.umask(0o022)  # what a careless shell has; the doorkeep command itself sets 0077
    try:
        d = tmp_path / "hq"
        shutil.copytree(SITES / "hq", d)
        pki = d / "pki"
        init_ca(pki, "hq", now=NOW)
        for name in ["server", "broker", *sorted(p.stem for p in (d / "devices").glob("*.toml"))]:
            issue(pki, name, now=NOW)
        assert main(["broker", "config", "--site", str(d), "--persistence", str(tmp_path / "mosq")]) == 0
        (d / "keys").mkdir(mode=0o700)
        assert main(["key", "init", str(d / "keys" / "credential.key")]) == 0
        assert main(["key", "init-signing", str(d / "keys" / "policy-signing.key")]) == 0
        Store(tmp_path / "data").close()
    finally:
        os.umask(old)
    return d


def findings(site: Path, data: Path | None = None, **kw):  # type: ignore[no-untyped-def]
    return diagnose(load_site_dir(site), data_dir=data, broker_config=site / "broker" / "mosquitto.conf", **kw)


def checks(found, severity: str = HIGH) -> set[str]:  # type: ignore[no-untyped-def]
    return {f.check for f in found if f.severity == severity}


def test_doctor_gives_the_shipped_production_configuration_a_clean_bill(site: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    data = site.parent / "data"
    assert findings(site, data) == []
    assert main(["doctor", "--site", str(site), "--data", str(data)]) == 0
    assert "clean bill" in capsys.readouterr().out


def test_doctor_reports_plain_mqtt_in_a_device_file(site: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    dev = site / "devices" / "pi-wing.toml"
    text = "\n".join(line for line in dev.read_text().splitlines()
                     if not line.startswith(("ca_file", "cert_file", "key_file")))
    dev.write_text(text.replace('url = "mqtts://broker.example.internal:8883"',
                                'url = "mqtt://broker.example.internal:1883"\nallow_plain_mqtt = true'))
    found = findings(site)
    assert [f.where for f in found if f.check == "plain_mqtt"] == [str(dev)]
    assert main(["doctor", "--site", str(site)]) == 1
    out = capsys.readouterr().out
    assert "plain_mqtt" in out and "fix:" in out


def test_doctor_reports_osdp_readers_in_clear_or_on_the_default_key(tmp_path: Path) -> None:
    d = tmp_path / "readers"
    shutil.copytree(SITES / "readers", d)
    dev = d / "devices" / "pi-gate.toml"
    dev.write_text(dev.read_text().replace(', scbk_file = "keys/gate_out.scbk"', ", secure_channel = false"))
    found = diagnose(load_site_dir(d), broker_config=None)
    by_check = {(f.check, f.where.rsplit(" ", 1)[-1]) for f in found if f.severity == HIGH}
    assert ("osdp_no_secure_channel", "doors.gate_out.reader") in by_check
    assert ("osdp_default_key", "doors.gate_in.reader") in by_check
    # once the key is installed (0600) the reader is no longer reported; open to others, the key file is
    (d / "devices" / "keys").mkdir()
    key = d / "devices" / "keys" / "gate_in.scbk"
    key.write_text("00" * 16)
    key.chmod(0o600)
    assert "osdp_default_key" not in checks(diagnose(load_site_dir(d)))
    key.chmod(0o644)
    assert [f.where for f in diagnose(load_site_dir(d)) if f.check == "file_permissions"] == [str(key)]


@pytest.mark.parametrize("line, check", [
    ("use_username_as_clientid true", "broker_client_id_binding"),
    ("message_size_limit", "broker_message_size"),
    ("require_certificate true", "broker_client_certificates"),
    ("crlfile", "broker_crl"),
    ("acl_file", "broker_acl"),
])
def test_doctor_reports_a_broker_configuration_missing_a_protection(site: Path, line: str, check: str) -> None:
    conf = site / "broker" / "mosquitto.conf"
    text = conf.read_text()
    assert line in text, f"the generated configuration should carry {line!r}"
    conf.write_text("\n".join(x for x in text.splitlines() if not x.strip().startswith(line)) + "\n")
    assert check in checks(findings(site))


def test_doctor_reports_anonymous_access_and_a_plain_listener(site: Path) -> None:
    conf = site / "broker" / "mosquitto.conf"
    conf.write_text(conf.read_text().replace("allow_anonymous false", "allow_anonymous true") + "\nlistener 1883\n")
    assert {"broker_anonymous", "plain_mqtt"} <= checks(findings(site))


def test_doctor_reports_keys_and_server_data_open_to_others(site: Path) -> None:
    data = site.parent / "data"
    (site / "keys" / "credential.key").chmod(0o644)
    (site / "pki" / "server.key").chmod(0o640)
    data.chmod(0o755)
    (data / "doorkeep.db").chmod(0o644)
    where = {f.where for f in findings(site, data) if f.check == "file_permissions"}
    assert {str(site / "keys" / "credential.key"), str(site / "pki" / "server.key"), str(data),
            str(data / "doorkeep.db")} <= where


def test_doctor_reports_certificates_close_to_expiry(site: Path) -> None:
    pki = site / "pki"
    issue(pki, "pi-soon", now=NOW - timedelta(days=LEAF_DAYS - 20))   # 20 days left
    issue(pki, "pi-urgent", now=NOW - timedelta(days=LEAF_DAYS - 3))  # 3 days left
    found = findings(site)
    assert [f.where for f in found if f.check == "certificate_expiry" and f.severity == MEDIUM] == \
        [str(pki / "pi-soon.crt")]
    assert [f.where for f in found if f.check == "certificate_expiry" and f.severity == HIGH] == \
        [str(pki / "pi-urgent.crt")]
    # a revoked certificate is not a finding: it is not used any more
    main(["pki", "revoke", "pi-urgent", "--site", str(site)])
    assert [f.where for f in findings(site) if f.check == "certificate_expiry"] == [str(pki / "pi-soon.crt")]
    # ... but one issued again under the revoked name is what the device loads now: it is checked
    issue(pki, "pi-urgent", now=NOW - timedelta(days=LEAF_DAYS - 3))
    assert [f.where for f in findings(site) if f.check == "certificate_expiry" and f.severity == HIGH] == \
        [str(pki / "pi-urgent.crt")]


def test_doctor_reports_retention_that_does_not_run(site: Path) -> None:
    data = site.parent / "data"
    conn = sqlite3.connect(data / "doorkeep.db")
    cols = [r[1] for r in conn.execute("PRAGMA table_info(events)")]
    old = (NOW - timedelta(days=400)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    row = {c: None for c in cols} | {"id": "ev-old", "ts": old, "device": "pi-wing", "door": "lab_in",
                                     "type": "access", "seq": 1}
    row = {k: v for k, v in row.items() if k in cols}
    conn.execute(f"INSERT INTO events ({', '.join(f'[{c}]' for c in row)}) VALUES ({', '.join('?' * len(row))})", list(row.values()))
    conn.commit()
    conn.close()
    found = [f for f in findings(site, data) if f.check == "retention"]
    assert len(found) == 1 and found[0].severity == HIGH and "events_days = 180" in found[0].what


def test_doctor_output_as_json_lists_findings_and_high_count(site: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    (site / "keys" / "credential.key").chmod(0o644)
    assert main(["doctor", "--site", str(site), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["high"] == 1 and out["findings"][0]["check"] == "file_permissions"


def test_doctor_refuses_a_broken_site_with_exit_2(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "site.toml").write_text("[site\n")
    assert main(["doctor", "--site", str(tmp_path)]) == 2
    assert "site.toml" in capsys.readouterr().err


def test_doctor_reports_admins_without_two_factor_where_the_site_requires_it(site: Path) -> None:
    import pyotp

    from doorkeep.clock import SystemClock
    from server.operators import Operators, TwoFactor

    data = site.parent / "data"
    store = Store(data)
    try:
        ops = Operators(store)
        for name, role in (("alice", "admin"), ("bob", "admin"), ("dora", "desk")):
            ops.add(name, role, "correct horse battery", actor="test")
        tf = TwoFactor(store, SystemClock(), None)
        secret = tf.begin("alice").secret
        assert tf.confirm("alice", pyotp.TOTP(secret).now(), actor="test")
    finally:
        store.close()
    assert "operator_2fa" not in checks(findings(site, data))  # not required: nothing to report
    text = (site / "site.toml").read_text()
    (site / "site.toml").write_text(text + "\n[desk]\nrequire_totp_for_admins = true\n")
    assert [f.where for f in findings(site, data) if f.check == "operator_2fa"] == ["operator bob"]


def test_doctor_reports_an_edge_clock_that_drifts(site: Path) -> None:
    data = site.parent / "data"
    store = Store(data)
    try:
        store.record_device_clock("pi-wing", drift_s=4.2, at=NOW.timestamp())
        store.record_device_clock("pi-wing", drift_s=0.3, at=NOW.timestamp())  # the latest measure counts
        store.record_device_clock("pi-entrance", drift_s=-900.0, at=NOW.timestamp())
        store.record_device_clock("pi-floor3", drift_s=0.8, at=NOW.timestamp())
    finally:
        store.close()
    found = {f.where: f.severity for f in findings(site, data) if f.check == "clock_drift"}
    assert found == {"device pi-entrance": HIGH}


def test_doctor_reads_the_servers_postgresql_store(site: Path, pg_url: str, capsys) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """With [store] url the store checks read PostgreSQL (read-only), not a doorkeep.db that is not there."""
    from server.operators import Operators

    store = Store(site.parent / "pgdata", url=pg_url)
    try:
        store.record_device_clock("pi-entrance", drift_s=-900.0, at=NOW.timestamp())
        Operators(store).add("bob", "admin", "correct horse battery", actor="test")
        store.ingest_event(EventMsg(id="old", seq=1, ts="2020-01-01T00:00:00.000Z", device="pi-entrance",
                                    door="entrance_in", type="door_opened"), NOW.timestamp())
    finally:
        store.close()
    text = (site / "site.toml").read_text()
    (site / "site.toml").write_text(text + f'\n[desk]\nrequire_totp_for_admins = true\n\n[store]\nurl = "{pg_url}"\n')
    found = diagnose(load_site_dir(site), data_dir=None, broker_config=site / "broker" / "mosquitto.conf",
                     store_url=pg_url)
    assert {(f.check, f.where) for f in found if f.check in ("clock_drift", "operator_2fa", "retention")} == {
        ("clock_drift", "device pi-entrance"), ("operator_2fa", "operator bob"),
        ("retention", "the PostgreSQL store events")}
    # The command finds that store by itself, from site.toml's [store] url.
    capsys.readouterr()
    assert main(["doctor", "--site", str(site), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert {"device pi-entrance", "operator bob", "the PostgreSQL store events"} <= {f["where"] for f in report["findings"]}
