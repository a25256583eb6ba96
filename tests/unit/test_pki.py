"""The site CA, the certificates it issues, revocation, the generated Mosquitto files and the [broker] TLS keys."""

from __future__ import annotations

import argparse
import os
import ssl
import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from doorkeep.cli import main
from doorkeep.config import BrokerConfig, check, load_device, load_site_dir
from doorkeep.errors import ConfigError, ConfigErrors
from doorkeep.contract import MAX_SNAPSHOT_BYTES
from doorkeep.pki import (
    MESSAGE_SIZE_FLOOR,
    POLICY_BYTES_PER_PERSON,
    PkiError,
    broker_acl,
    broker_config,
    client_tls_context,
    init_ca,
    issue,
    load_index,
    message_size_limit,
    pki_dir,
    revoke,
)
from tests.unit.test_config import DEVICE, make_site, only

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    d = tmp_path / "site" / "pki"
    init_ca(d, "t", now=NOW)
    return d


def cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def crl_serials(pki: Path) -> set[int]:
    crl = x509.load_pem_x509_crl((pki / "crl.pem").read_bytes())
    assert crl.is_signature_valid(cert(pki / "ca.crt").public_key())
    return {r.serial_number for r in crl}


# ------------------------------------------------------------------- the CA


def test_ca_is_a_ten_year_signing_only_ca_with_a_private_key_and_an_empty_crl(pki: Path) -> None:
    ca = cert(pki / "ca.crt")
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert bc.critical and bc.value.ca
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign and not ku.value.digital_signature
    assert ca.subject == ca.issuer
    assert timedelta(days=3600) < ca.not_valid_after_utc - NOW < timedelta(days=3700)
    assert mode(pki / "ca.key") == 0o600
    key = load_pem_private_key((pki / "ca.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.public_key() == ca.public_key()
    assert crl_serials(pki) == set() and load_index(pki) == []


def test_second_init_refuses_and_keeps_the_existing_ca(pki: Path) -> None:
    before = (pki / "ca.key").read_bytes()
    with pytest.raises(PkiError, match="ca.key: already exists"):
        init_ca(pki, "t", now=NOW)
    assert (pki / "ca.key").read_bytes() == before


def test_issue_without_a_ca_names_the_file_and_the_command(tmp_path: Path) -> None:
    with pytest.raises(PkiError, match=r"ca\.crt.*doorkeep pki init"):
        issue(tmp_path / "pki", "pi-a", now=NOW)


def test_ca_key_readable_by_others_is_refused(pki: Path) -> None:
    os.chmod(pki / "ca.key", 0o644)
    with pytest.raises(PkiError, match="chmod 600"):
        issue(pki, "pi-a", now=NOW)


# ------------------------------------------------------------ certificates


def test_device_certificate_is_a_client_certificate_named_for_the_device(pki: Path) -> None:
    crt_path, key_path = issue(pki, "pi-a", now=NOW)
    c, ca = cert(crt_path), cert(pki / "ca.crt")
    c.verify_directly_issued_by(ca)
    assert c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "pi-a"
    assert list(c.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not c.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:doorkeep:t:pi-a"]
    assert c.not_valid_before_utc <= NOW < c.not_valid_after_utc <= ca.not_valid_after_utc
    assert mode(key_path) == 0o600
    assert load_pem_private_key(key_path.read_bytes(), None).public_key() == c.public_key()
    assert [(r.name, r.role, r.serial) for r in load_index(pki)] == [("pi-a", "device", c.serial_number)]


def test_broker_certificate_serves_localhost_loopback_and_the_given_hosts(pki: Path) -> None:
    c = cert(issue(pki, "broker", now=NOW, hosts=("mqtt.site.lan", "10.0.0.5"))[0])
    assert list(c.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "mqtt.site.lan"}
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "10.0.0.5"}


def test_host_names_only_go_into_the_broker_certificate(pki: Path) -> None:
    with pytest.raises(PkiError, match="--host"):
        issue(pki, "pi-a", now=NOW, hosts=("x.lan",))
    assert not (pki / "pi-a.key").exists()


def test_issuing_twice_refuses_and_never_overwrites_the_key(pki: Path) -> None:
    _, key_path = issue(pki, "server", now=NOW)
    before = key_path.read_bytes()
    with pytest.raises(PkiError, match="doorkeep pki revoke server"):
        issue(pki, "server", now=NOW)
    assert key_path.read_bytes() == before


def test_leftover_key_file_is_not_overwritten(pki: Path) -> None:
    (pki / "pi-a.key").write_text("someone's key")
    with pytest.raises(PkiError, match="pi-a.key: already exists"):
        issue(pki, "pi-a", now=NOW)
    assert (pki / "pi-a.key").read_text() == "someone's key"


def test_name_that_is_not_a_topic_segment_is_refused(pki: Path) -> None:
    with pytest.raises(PkiError, match="not a valid name"):
        issue(pki, "pi/#", now=NOW)


# -------------------------------------------------------------- revocation


def test_revoke_puts_the_serial_in_the_crl_and_allows_a_new_certificate(pki: Path) -> None:
    old = cert(issue(pki, "pi-a", now=NOW)[0]).serial_number
    other = cert(issue(pki, "pi-b", now=NOW)[0]).serial_number
    assert revoke(pki, "pi-a", now=NOW + timedelta(hours=1)) == old
    assert crl_serials(pki) == {old}
    assert (pki / "revoked" / f"pi-a-{old:x}.key").exists() and not (pki / "pi-a.key").exists()
    new = cert(issue(pki, "pi-a", now=NOW)[0]).serial_number
    assert new != old and crl_serials(pki) == {old} and other not in crl_serials(pki)
    rows = {(r.name, r.serial): r.revoked for r in load_index(pki)}
    assert rows[("pi-a", old)] is not None and rows[("pi-a", new)] is None


def test_revoking_an_unknown_name_is_an_error(pki: Path) -> None:
    with pytest.raises(PkiError, match="no live certificate"):
        revoke(pki, "pi-zz", now=NOW)


# ---------------------------------------------------------- Mosquitto files


def test_broker_config_is_mutual_tls_only_with_absolute_paths(pki: Path, tmp_path: Path) -> None:
    text = broker_config("t", pki, tmp_path / "acl", port=8884, bind="127.0.0.1", persistence_dir=tmp_path / "db")
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    listeners = [line for line in lines if line.startswith("listener")]
    assert listeners == ["listener 8884 127.0.0.1"]
    for want in ("allow_anonymous false", "require_certificate true", "use_identity_as_username true",
                 "tls_version tlsv1.2", f"acl_file {(tmp_path / 'acl').resolve()}",
                 f"cafile {pki.resolve() / 'ca.crt'}", f"certfile {pki.resolve() / 'broker.crt'}",
                 f"keyfile {pki.resolve() / 'broker.key'}", f"crlfile {pki.resolve() / 'crl.pem'}",
                 "persistence true", f"persistence_location {tmp_path / 'db'}/"):
        assert want in lines, want
    assert "allow_anonymous true" not in text


def test_broker_config_keeps_the_reliability_settings_of_the_shipped_conf(pki: Path, tmp_path: Path) -> None:
    for name in ("doorkeep.conf", "dev-plain.conf"):
        shipped = (ROOT / "firmware-config" / "mosquitto" / name).read_text().splitlines()
        needed = [line for line in shipped if line.split(" ")[0] in
                  ("set_tcp_nodelay", "max_queued_messages", "max_inflight_messages", "message_size_limit")]
        assert len(needed) == 4, name
        lines = broker_config("t", pki, tmp_path / "acl").splitlines()
        assert all(line in lines for line in needed), name
        assert "listener 8883" in lines  # every interface by default: the Pis reach the broker over the network


def settings(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_shipped_production_conf_is_what_broker_config_generates_for_etc_doorkeep() -> None:
    """firmware-config/mosquitto/doorkeep.conf carries the same client-id binding, size limit and TLS as the
    generator (doorkeep doctor gives it a clean bill); regenerate it when broker_config changes."""
    shipped = (ROOT / "firmware-config" / "mosquitto" / "doorkeep.conf").read_text()
    generated = broker_config("SITE", Path("/etc/doorkeep/pki"), Path("/etc/doorkeep/broker/acl"),
                              log_file=Path("/var/log/mosquitto/doorkeep.log"))
    assert settings(shipped) == settings(generated)
    for want in ("use_identity_as_username true", "use_username_as_clientid true",
                 f"message_size_limit {MESSAGE_SIZE_FLOOR}", "allow_anonymous false", "require_certificate true"):
        assert want in settings(shipped), want


def test_attack_device_takes_over_another_client_id_is_closed_by_binding_ids_to_certificates(
        pki: Path, tmp_path: Path) -> None:
    """Mosquitto 2.0.11, measured: with both options a client's id becomes its certificate's CN, whatever
    it asked for (a device asking for the server's id gets its own), so no certificate can drop another."""
    lines = settings(broker_config("t", pki, tmp_path / "acl"))
    assert lines.index("use_identity_as_username true") < lines.index("use_username_as_clientid true")
    assert "clientid_prefixes" not in "\n".join(lines)  # must not be combined with the binding (man page)


def test_message_size_limit_fits_a_sealed_snapshot_and_the_sites_policies_with_margin() -> None:
    assert MESSAGE_SIZE_FLOOR == 2 * MAX_SNAPSHOT_BYTES == 16 * 1024 * 1024
    assert message_size_limit() == message_size_limit(1000) == MESSAGE_SIZE_FLOOR
    # 110,000 people: a lobby policy measured at ~24 MB; the limit leaves twice that.
    big = message_size_limit(110_000)
    assert big >= 2 * 24_000_000 and big % (1024 * 1024) == 0
    assert message_size_limit(32_768) == MESSAGE_SIZE_FLOOR < message_size_limit(32_769)
    with pytest.raises(PkiError, match="negative"):
        message_size_limit(-1)


def test_policy_weight_per_person_stays_under_what_the_size_limit_allows() -> None:
    """The per-person allowance is a measurement: a real signed policy (two cards and a PIN per person, every
    person allowed at the door) must weigh less than POLICY_BYTES_PER_PERSON each, or the limit is wrong."""
    import hashlib

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from doorkeep.model import AccessEntry, AccessLevel, Area, Credential, CredentialState, Door, Person, Schedule, \
        Site, TimeWindow
    from doorkeep.policy import compile_policy, sign_policy

    n = 2000
    people = {f"p{i:06d}": Person(f"p{i:06d}", f"Person {i}", access_levels=("staff",),
                                  pin_hash=hashlib.sha256(b"%d" % i).hexdigest()) for i in range(n)}
    creds = {}
    for i in range(2 * n):
        h = hashlib.sha256(b"card:%d" % i).hexdigest()
        creds[h] = Credential(h, f"{i % 10000:04d}", "em4100", f"p{i % n:06d}", CredentialState.ACTIVE)
    always = Schedule("always", "Always", (TimeWindow(frozenset({"mon", "tue", "wed", "thu", "fri", "sat", "sun"}),
                                                      __import__("datetime").time(0, 0), None),))
    site = Site("t", "T", "Europe/London", {"outside": Area("outside", "Outside"), "lobby": Area("lobby", "Lobby")},
                {"lobby_in": Door("lobby_in", "Lobby", "outside", "lobby")}, {"always": always},
                {"staff": AccessLevel("staff", "Staff", (AccessEntry("lobby", "always"),))}, people, creds)
    payload = sign_policy(compile_policy(site, ["lobby_in"]), site_id="t", device="pi-a", version=2**40,
                          issued_at=1.8e9, key=Ed25519PrivateKey.generate())
    assert len(payload) / n < POLICY_BYTES_PER_PERSON, len(payload) / n


def test_broker_config_refuses_a_port_out_of_range(pki: Path, tmp_path: Path) -> None:
    with pytest.raises(PkiError, match="port 70000"):
        broker_config("t", pki, tmp_path / "acl", port=70000)


def test_acl_confines_devices_to_their_subtree_and_gives_the_server_the_site() -> None:
    lines = [line for line in broker_acl("hq").splitlines() if line and not line.startswith("#")]
    assert lines == ["pattern readwrite doorkeep/v1/hq/%u/#",
                     "pattern read doorkeep/v1/hq/server/availability",
                     "user server",
                     "topic readwrite doorkeep/v1/hq/#",
                     "user operator",
                     "topic write doorkeep/v1/hq/+/cmd",
                     "topic read doorkeep/v1/hq/+/cmd/result"]


def test_acl_gives_the_operator_commands_and_results_only_and_test_observers_only_when_asked() -> None:
    campus = broker_acl({"demo": ["pi-a"], "hq": ["pi-b"]}).splitlines()
    op = campus.index("user operator")
    assert campus[op + 1:op + 5] == ["topic write doorkeep/v1/demo/+/cmd", "topic read doorkeep/v1/demo/+/cmd/result",
                                     "topic write doorkeep/v1/hq/+/cmd", "topic read doorkeep/v1/hq/+/cmd/result"]
    assert "observer" not in broker_acl("hq") and "observer" not in "\n".join(campus)
    watched = settings(broker_acl("hq", observers=["observer"]))
    assert watched[-2:] == ["user observer", "topic readwrite doorkeep/v1/hq/#"]
    for reserved in ("server", "operator", "broker"):
        with pytest.raises(PkiError, match="reserved"):
            broker_acl({"hq": [reserved]})
        with pytest.raises(PkiError, match="reserved"):
            broker_acl("hq", observers=[reserved])


# ---------------------------------------------------------------- commands


def test_commands_issue_known_names_only_and_write_the_broker_files(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    site = make_site(tmp_path / "s")
    assert main(["pki", "init", "--site", str(site)]) == 0
    assert main(["pki", "issue", "pi-zz", "--site", str(site)]) == 1
    assert "use one of: pi-a, server, broker, operator" in capsys.readouterr().err
    assert main(["broker", "config", "--site", str(site)]) == 1
    assert "doorkeep pki issue broker" in capsys.readouterr().err
    for name in ("pi-a", "server", "operator", "broker"):
        assert main(["pki", "issue", name, "--site", str(site)]) == 0
    assert main(["broker", "config", "--site", str(site), "--port", "9883"]) == 0
    assert (site / "broker" / "acl").read_text() == broker_acl("t")
    conf = (site / "broker" / "mosquitto.conf").read_text().splitlines()
    assert "listener 9883" in conf and "use_username_as_clientid true" in conf
    assert f"message_size_limit {MESSAGE_SIZE_FLOOR}" in conf and not any(c.startswith("log_dest") for c in conf)
    assert main(["broker", "config", "--site", str(site), "--people", "110000", "--log-file", str(tmp_path / "b.log")]) == 0
    conf = (site / "broker" / "mosquitto.conf").read_text().splitlines()
    assert f"message_size_limit {message_size_limit(110_000)}" in conf
    assert f"log_dest file {(tmp_path / 'b.log').resolve()}" in conf
    assert main(["pki", "revoke", "pi-a", "--site", str(site)]) == 0
    assert len(crl_serials(pki_dir(site))) == 1


def test_server_tls_flags_default_to_the_sites_pki(tmp_path: Path) -> None:
    from server.cli import broker_config as server_broker

    args = argparse.Namespace(site=tmp_path, broker="mqtts://127.0.0.1", ca=None, cert=None, key=tmp_path / "k")
    b = server_broker(args)
    assert (b.tls, b.port, b.ca_file, b.cert_file, b.key_file) == (
        True, 8883, tmp_path / "pki" / "ca.crt", tmp_path / "pki" / "server.crt", tmp_path / "k")
    with pytest.raises(ValueError, match="--key need a TLS broker URL"):
        server_broker(argparse.Namespace(site=tmp_path, broker="mqtt://127.0.0.1:1883", ca=None, cert=None,
                                         key=tmp_path / "k"))


# ------------------------------------------------------ client TLS context


def test_client_context_requires_tls12_and_checks_the_brokers_name(pki: Path) -> None:
    crt, key = issue(pki, "pi-a", now=NOW)
    ctx = client_tls_context(BrokerConfig("mqtts://127.0.0.1:8883", ca_file=pki / "ca.crt", cert_file=crt,
                                          key_file=key))
    assert ctx is not None
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    assert client_tls_context(BrokerConfig("mqtt://127.0.0.1:1883")) is None


def test_client_context_with_a_mismatched_key_names_the_certificate(pki: Path) -> None:
    crt, _ = issue(pki, "pi-a", now=NOW)
    _, other_key = issue(pki, "pi-b", now=NOW)
    with pytest.raises(ConfigError) as exc:
        client_tls_context(BrokerConfig("mqtts://h:8883", ca_file=pki / "ca.crt", cert_file=crt, key_file=other_key))
    assert exc.value.file == str(crt) and exc.value.key == "broker.cert_file"


# ------------------------------------------------------ [broker] TLS keys


TLS_BROKER = """
[broker]
url = "mqtts://broker.lan"
ca_file = "tls/ca.crt"
cert_file = "tls/pi-a.crt"
key_file = "tls/pi-a.key"
"""


def test_tls_paths_are_relative_to_the_device_file_and_must_exist_on_the_device(tmp_path: Path) -> None:
    site = make_site(tmp_path / "s", devices={"pi-a": DEVICE + TLS_BROKER})
    dev_file = site / "devices" / "pi-a.toml"
    bundle = load_site_dir(site)  # the server reads every device file: the Pi's own files need not be there
    broker = bundle.devices["pi-a"].broker
    assert (broker.tls, broker.host, broker.port) == (True, "broker.lan", 8883)
    assert broker.ca_file == site / "devices" / "tls" / "ca.crt"
    errors = check(dev_file)
    assert "does not exist" in only(errors, "broker.ca_file").problem
    assert {e.key for e in errors} == {"broker.ca_file", "broker.cert_file", "broker.key_file"}
    tls = site / "devices" / "tls"
    tls.mkdir()
    for name in ("ca.crt", "pi-a.crt", "pi-a.key"):
        (tls / name).write_text("x")
    dev, _ = load_device(dev_file)
    assert dev.broker.key_file == tls / "pi-a.key"


def test_mqtts_without_its_files_is_an_error_naming_each_key(tmp_path: Path) -> None:
    site = make_site(tmp_path / "s", devices={"pi-a": DEVICE + '\n[broker]\nurl = "mqtts://b:8883"\n'})
    with pytest.raises(ConfigErrors) as exc:
        load_site_dir(site)
    for key in ("ca_file", "cert_file", "key_file"):
        err = only(exc.value.errors, f"broker.{key}")
        assert "mqtts://" in err.problem and "doorkeep pki issue" in err.fix


def test_tls_files_with_plain_mqtt_are_an_error(tmp_path: Path) -> None:
    text = DEVICE + '\n[broker]\nurl = "mqtt://b:1883"\nca_file = "ca.crt"\n'
    site = make_site(tmp_path / "s", devices={"pi-a": text})
    with pytest.raises(ConfigErrors) as exc:
        load_site_dir(site)
    assert "mqtts://" in only(exc.value.errors, "broker.ca_file").fix


# ------------------------------------------------------------- client ids


def test_attack_guessing_the_servers_client_id_needs_the_site_key(tmp_path: Path) -> None:
    """Where the broker does not bind ids (the demo's embedded broker, a third-party broker), whoever knows a
    client's id can drop it: the server's id is an HMAC of the credential key, stable across restarts (its
    persistent session) but no longer the predictable sha256 of its data directory."""
    import hashlib

    from server.app import server_client_id

    key, other = b"k" * 32, b"o" * 32
    cid = server_client_id(key, "demo", tmp_path)
    assert cid == server_client_id(key, "demo", tmp_path)  # restarts resume the session
    assert cid != server_client_id(other, "demo", tmp_path) and cid != server_client_id(key, "demo", tmp_path / "x")
    assert hashlib.sha256(str(tmp_path.resolve()).encode()).hexdigest()[:8] not in cid
    assert len(cid.rsplit("-", 1)[1]) == 32  # 128 bits


def test_edge_client_id_carries_128_random_bits() -> None:
    from edge.link import Link

    def link() -> str:
        lk = Link("demo", "pi-a", BrokerConfig("mqtt://127.0.0.1:1", allow_plain=True),
                  on_decision=lambda *a: None, state_payload=lambda: b"{}")
        return lk._client._client_id.decode()

    a, b = link(), link()
    assert a != b and a.startswith("doorkeep-edge-pi-a-") and len(a.rsplit("-", 1)[1]) == 32
