"""OSDP security hygiene that needs no bus: constant-time comparisons and the security-signal limiter.

The behaviour on the wire (a wrong cryptogram refused, a clear-NAK storm reported once) is
tests/e2e/test_osdp_security_signals.py; the whole chain to the server's alarm is tests/e2e/test_osdp_door.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from edge.osdp import secure
from edge.osdp.cp import SIGNAL_THRESHOLDS, SignalLimiter

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [*sorted((ROOT / "edge" / "osdp").glob("*.py")), ROOT / "simulators" / "osdp_pd.py"]
SECRET_FUNCTIONS = {"client_cryptogram", "server_cryptogram", "initial_rmac", "compute_mac"}


def _secret_operand(node: ast.expr) -> bool:
    """Bytes derived from a key: a cryptogram/MAC function's result, or a variable or field named for one."""
    if isinstance(node, ast.Subscript):
        return _secret_operand(node.value)
    if isinstance(node, ast.Call):
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        return name in SECRET_FUNCTIONS
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
    return not name.isupper() and ("crypt" in name.lower() or "mac" in name.lower())


def _plain_secret_comparisons(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops):
            if any(_secret_operand(x) for x in [node.left, *node.comparators]):
                found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_attack_timing_no_cryptogram_or_mac_is_compared_with_a_plain_equality() -> None:
    """``==`` stops at the first differing byte: its timing tells a peer on the bus how much of a forged
    cryptogram was right. Every comparison of key-derived bytes must go through ``cryptograms_match``."""
    found = [hit for path in SOURCES for hit in _plain_secret_comparisons(path)]
    assert not found, "compare these with edge.osdp.secure.cryptograms_match:\n" + "\n".join(found)


def test_the_scan_catches_the_comparisons_it_is_meant_to_catch(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("ok = client_cryptogram(keys, a, b) != crypt\nok = initial_rmac(k, s) == reply.data\n"
                   "ok = reply.code != pk.REPLY_RMAC_I\nok = len(packet.mac) != MAC_LEN\n")
    hits = _plain_secret_comparisons(bad)
    assert [h.split(":")[1] for h in hits] == ["1", "2"], hits


def test_cryptograms_match_is_constant_time_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = secure.hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(secure.hmac, "compare_digest", recording)
    a = bytes(range(16))
    assert secure.cryptograms_match(a, bytearray(a))
    assert not secure.cryptograms_match(a, a[:-1] + b"\x00")
    assert not secure.cryptograms_match(a, a[:8])
    assert len(calls) == 3


def test_a_session_refuses_a_reply_whose_mac_is_wrong_in_its_last_byte_only() -> None:
    from edge.osdp import packet as pk

    keys = secure.derive_session_keys(bytes(range(16)), bytes(8))
    rmac = secure.initial_rmac(keys, bytes(16))
    cp = secure.SecureSession.established(keys, rmac)
    pd = secure.SecureSession.established(keys, rmac, is_cp=False)
    pd.open(cp.seal(pk.Packet(1, pk.CMD_POLL, b"", sequence=1)))
    reply = pd.seal(pk.Packet(1, pk.REPLY_ACK, b"", sequence=1, reply=True))
    forged = pk.Packet(reply.address, reply.code, reply.data, reply.sequence, True, reply.use_crc, reply.scb,
                       reply.mac[:-1] + bytes([reply.mac[-1] ^ 1]))
    with pytest.raises(secure.SecureChannelError):
        cp.open(forged)


def test_a_limiter_reports_once_at_its_threshold_then_once_per_window_with_the_count_between() -> None:
    lim = SignalLimiter(threshold=3, window_s=60.0)
    assert lim.note(0.0) is None and lim.note(1.0) is None
    first = lim.note(2.0)
    assert first is not None and first["count"] == 3 and first["in_window"] == 3
    assert all(lim.note(3.0 + i) is None for i in range(50)), "a storm is one report per window, not per packet"
    later = lim.note(62.5)
    assert later is not None and later["count"] == 51 and later["total"] == 54


def test_a_limiter_forgets_occurrences_older_than_its_window() -> None:
    lim = SignalLimiter(threshold=3, window_s=10.0)
    assert [lim.note(t) for t in (0.0, 11.0, 22.0, 33.0)] == [None] * 4, "spread out: a reader rebooting now and then"


def test_one_mac_failure_is_an_attack_but_one_clear_nak_or_failed_handshake_is_not() -> None:
    assert SIGNAL_THRESHOLDS["mac_failure"] == 1 and SIGNAL_THRESHOLDS["downgrade"] == 1
    assert SIGNAL_THRESHOLDS["clear_nak"] > 1 and SIGNAL_THRESHOLDS["handshake_failed"] > 1
