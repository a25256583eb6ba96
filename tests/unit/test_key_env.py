"""Keys from the environment, and the file-permission rule for every key loader.

``$DOORKEEP_CREDENTIAL_KEY`` (hex) and ``$DOORKEEP_POLICY_SIGNING_KEY`` (PEM
text) win over the key files; a malformed value is refused with a message that
names the variable and never contains the secret. Secret key files must be
0600; the policy public key is not secret, but must not be writable by group
or others (whoever rewrites it decides which policies an edge trusts).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from doorkeep.credentials import KEY_ENV, generate_key_file, load_key
from doorkeep.errors import ConfigError
from doorkeep.policy import (
    SIGNING_KEY_ENV,
    PolicyError,
    generate_signing_key,
    load_private_key,
    load_public_key,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(SIGNING_KEY_ENV, raising=False)


def pem(key: Ed25519PrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def raw(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())


# ------------------------------------------------------- credential key


def test_credential_key_from_env_wins_over_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "credential.key"
    generate_key_file(path)
    from_file = load_key(path, source="dev.toml")
    secret = secrets.token_bytes(32)
    monkeypatch.setenv(KEY_ENV, secret.hex().upper())  # either case, surrounding whitespace tolerated
    assert load_key(path, source="dev.toml") == secret != from_file
    monkeypatch.setenv(KEY_ENV, "")  # set but empty counts as unset
    assert load_key(path, source="dev.toml") == from_file


@pytest.mark.parametrize("value, problem", [
    ("not hex at all, but a secret", "is not hexadecimal"),
    ("ab" * 16, "has 16 bytes, expected 32"),
    ("ab" * 33, "has 33 bytes, expected 32"),
    ("abc", "is not hexadecimal"),
])
def test_a_malformed_credential_key_names_the_variable_and_never_echoes_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, problem: str) -> None:
    path = tmp_path / "credential.key"
    generate_key_file(path)  # a good file is there, but a bad variable is never silently replaced by it
    monkeypatch.setenv(KEY_ENV, value)
    with pytest.raises(ConfigError) as exc:
        load_key(path, source="dev.toml")
    assert exc.value.key == KEY_ENV and exc.value.problem == problem
    assert KEY_ENV in str(exc.value) and "unset it" in exc.value.fix
    assert value not in str(exc.value) and value[:8] not in str(exc.value)


def test_an_unreadable_credential_key_path_is_a_config_error(tmp_path: Path) -> None:
    """A directory where the key file should be: a clear error, not a traceback."""
    (tmp_path / "credential.key").mkdir(mode=0o700)
    with pytest.raises(ConfigError, match="cannot be read"):
        load_key(tmp_path / "credential.key", source="dev.toml")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o700, 0o610])
def test_a_credential_key_file_open_to_group_or_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "credential.key"
    generate_key_file(path)
    os.chmod(path, mode)
    if mode & 0o077:
        with pytest.raises(ConfigError) as exc:
            load_key(path, source="dev.toml")
        assert exc.value.fix == f"chmod 600 {path}"
    else:
        assert len(load_key(path, source="dev.toml")) == 32  # owner-only modes (even 0700) are fine


# ------------------------------------------------------ policy signing key


def test_signing_key_from_env_wins_over_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "policy-signing.key"
    generate_signing_key(path)
    from_file = load_private_key(path)
    env_key = Ed25519PrivateKey.generate()
    monkeypatch.setenv(SIGNING_KEY_ENV, pem(env_key))
    assert raw(load_private_key(path)) == raw(env_key) != raw(from_file)
    monkeypatch.setenv(SIGNING_KEY_ENV, "")  # set but empty counts as unset
    assert raw(load_private_key(path)) == raw(from_file)


def test_signing_key_from_env_needs_no_file_and_ignores_a_bad_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_key = Ed25519PrivateKey.generate()
    monkeypatch.setenv(SIGNING_KEY_ENV, pem(env_key))
    assert raw(load_private_key(tmp_path / "missing.key")) == raw(env_key)
    open_file = tmp_path / "open.key"
    open_file.write_text("junk")
    os.chmod(open_file, 0o644)
    assert raw(load_private_key(open_file)) == raw(env_key)  # the file is not read at all


def test_signing_key_env_accepts_one_line_with_escaped_newlines(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    """Docker --env-file and systemd Environment= hold one line per variable."""
    env_key = Ed25519PrivateKey.generate()
    monkeypatch.setenv(SIGNING_KEY_ENV, pem(env_key).strip().replace("\n", "\\n"))
    assert raw(load_private_key(tmp_path / "x.key")) == raw(env_key)


def test_the_signature_of_an_env_key_verifies_with_its_public_half(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "policy-signing.key"
    generate_signing_key(path)
    monkeypatch.setenv(SIGNING_KEY_ENV, path.read_text())
    public = load_public_key(path.with_suffix(".pub"))
    public.verify(load_private_key(tmp_path / "elsewhere.key").sign(b"policy"), b"policy")


def ec_pem() -> str:
    key = generate_private_key(SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


@pytest.mark.parametrize("make_value, problem", [
    (lambda: "-----BEGIN PRIVATE KEY-----\nc2VjcmV0IGJ1dCBub3QgYSBrZXk=\n-----END PRIVATE KEY-----\n",
     "not an unencrypted PEM private key"),
    (lambda: secrets.token_hex(32), "not an unencrypted PEM private key"),  # a hex key in the wrong variable
    (lambda: pem(Ed25519PrivateKey.generate())[:-40], "not an unencrypted PEM private key"),  # truncated
    (ec_pem, "must be Ed25519, got"),
])
def test_a_malformed_signing_key_names_the_variable_and_never_echoes_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_value: object, problem: str) -> None:
    path = tmp_path / "policy-signing.key"
    generate_signing_key(path)  # a good file is there, but a bad variable is never silently replaced by it
    value = make_value()  # type: ignore[operator]
    monkeypatch.setenv(SIGNING_KEY_ENV, value)
    with pytest.raises(PolicyError) as exc:
        load_private_key(path)
    message = str(exc.value)
    assert message.startswith(f"${SIGNING_KEY_ENV}: ") and problem in message
    assert "unset it" in message and str(path) in message
    body = "".join(line for line in value.splitlines() if line and not line.startswith("-----"))
    for chunk in (body[i:i + 12] for i in range(0, max(1, len(body) - 12), 12)):
        assert chunk not in message, "the secret leaked into the error"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o660])
def test_a_signing_key_file_open_to_group_or_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "policy-signing.key"
    generate_signing_key(path)
    os.chmod(path, mode)
    with pytest.raises(PolicyError, match="chmod 600"):
        load_private_key(path)


# ------------------------------------------------------- policy public key


@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666, 0o622])
def test_a_public_key_writable_by_group_or_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "policy-signing.key"
    generate_signing_key(path)
    pub = path.with_suffix(".pub")
    os.chmod(pub, mode)
    with pytest.raises(PolicyError) as exc:
        load_public_key(pub)
    assert "writable by group or others" in str(exc.value) and f"chmod 644 {pub}" in str(exc.value)


@pytest.mark.parametrize("mode", [0o644, 0o444, 0o600, 0o640])
def test_a_readable_public_key_is_fine(tmp_path: Path, mode: int) -> None:
    """The public half is not secret: world-readable is how it is meant to be deployed."""
    path = tmp_path / "policy-signing.key"
    generate_signing_key(path)
    pub = path.with_suffix(".pub")
    os.chmod(pub, mode)
    load_public_key(pub).verify(load_private_key(path).sign(b"policy"), b"policy")


# ------------------------------------------------- the TLS keys (doorkeep/pki.py)


def _pki(tmp_path: Path) -> Path:
    from datetime import UTC, datetime

    from doorkeep import pki

    root = tmp_path / "pki"
    now = datetime.now(UTC)
    pki.init_ca(root, "t", now=now)
    pki.issue(root, "pi-a", now=now)
    return root


def test_a_site_ca_key_open_to_group_or_others_is_refused(tmp_path: Path) -> None:
    from doorkeep.pki import PkiError, load_ca

    root = _pki(tmp_path)
    os.chmod(root / "ca.key", 0o640)
    with pytest.raises(PkiError, match="chmod 600"):
        load_ca(root)


def test_a_device_tls_key_open_to_group_or_others_is_refused(tmp_path: Path) -> None:
    from doorkeep.config import BrokerConfig
    from doorkeep.errors import DoorkeepError
    from doorkeep.pki import client_tls_context

    root = _pki(tmp_path)
    broker = BrokerConfig("mqtts://127.0.0.1:8883", ca_file=root / "ca.crt", cert_file=root / "pi-a.crt",
                          key_file=root / "pi-a.key")
    assert client_tls_context(broker) is not None  # 0600 as issued: fine
    os.chmod(root / "pi-a.key", 0o644)
    with pytest.raises(DoorkeepError, match="chmod 600"):
        client_tls_context(broker)


def test_the_server_warns_about_a_people_file_others_can_read(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from server.cli import warn_if_readable

    people = tmp_path / "people.toml"
    people.write_text("[people]\n")
    people.chmod(0o644)
    assert warn_if_readable(people, "it holds card numbers in clear")
    assert "chmod 600" in caplog.text and "card numbers" in caplog.text
    people.chmod(0o600)
    assert not warn_if_readable(people, "it holds card numbers in clear")
