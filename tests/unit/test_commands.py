"""Signed commands: envelope round trip, every refusal reason, fuzzing, and the replay guard."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from doorkeep.commands import (
    DEFAULT_MAX_AGE_S,
    DEFAULT_MAX_SKEW_S,
    MAX_OVERRIDE_S,
    REASONS,
    CommandError,
    ReplayGuard,
    peek_door,
    sign_command,
    verify_command,
)
from doorkeep.contract import CommandResult, Topics, parse_topic
from doorkeep.errors import DoorkeepError, MessageError

KEY = Ed25519PrivateKey.generate()
PUB = KEY.public_key()
NOW = 1_764_316_800.0


def signed(action: str = "unlock", args: dict[str, Any] | None = None, *, issued_at: float = NOW,
           key: Ed25519PrivateKey = KEY, site: str = "demo", device: str = "pi-lobby", **kw: Any) -> bytes:
    return sign_command(site_id=site, device=device, action=action,
                        args={"door": "lobby_in"} if args is None else args, key=key, issued_at=issued_at, **kw)


def verify(payload: bytes, *, now: float = NOW, guard: ReplayGuard | None = None) -> Any:
    return verify_command(payload, PUB, site_id="demo", device="pi-lobby", now=now, guard=guard)


def reason_of(payload: bytes, **kw: Any) -> str:
    with pytest.raises(CommandError) as info:
        verify(payload, **kw)
    return info.value.reason


def resign(body: dict[str, Any], key: Ed25519PrivateKey = KEY) -> bytes:
    text = json.dumps(body)
    return json.dumps({"schema": "doorkeep.cmd/1", "signed": text,
                       "signature": base64.b64encode(key.sign(text.encode())).decode()}).encode()


def body_of(payload: bytes) -> dict[str, Any]:
    return json.loads(json.loads(payload)["signed"])


# ------------------------------------------------------------------ round trip


@pytest.mark.parametrize("action, args", [
    ("unlock", {"door": "lobby_in"}),
    ("lock", {"door": "lobby_in"}),
    ("unlock", {"door": "lobby_in", "until": "2025-11-28T09:00:00.000Z"}),
    ("lock", {"door": "lobby_in", "until": "2025-11-28T08:30:00.000Z"}),
    ("release", {"door": "lobby_in"}),
    ("lockdown", {"scope": "site", "active": True}),
    ("lockdown", {"scope": "floor7", "active": False}),
    ("sync", {}),
])
def test_a_signed_command_verifies_with_its_action_args_and_transaction(action: str, args: dict[str, Any]) -> None:
    payload = signed(action, args, transaction="tx-1")
    cmd = verify(payload, now=NOW + 2)
    assert (cmd.site, cmd.device, cmd.transaction, cmd.action, cmd.args) == ("demo", "pi-lobby", "tx-1", action, args)
    assert cmd.issued_at == pytest.approx(NOW, abs=0.001)
    assert len(cmd.nonce) >= 32 and int(cmd.nonce, 16) >= 0


def test_every_command_gets_its_own_nonce_and_transaction() -> None:
    a, b = body_of(signed()), body_of(signed())
    assert a["nonce"] != b["nonce"] and a["transaction"] != b["transaction"]


def test_the_signer_refuses_args_every_edge_would_refuse() -> None:
    with pytest.raises(CommandError) as info:
        signed("unlock", {"door": "lobby in"})
    assert info.value.reason == "bad_args"
    with pytest.raises(CommandError) as info:
        signed("open_sesame", {})
    assert info.value.reason == "unknown_action"


@pytest.mark.parametrize("action, args, why", [
    ("unlock", {"door": "lobby_in", "until": "14:00"}, "not a UTC time"),
    ("unlock", {"door": "lobby_in", "until": "2025-11-28T14:00:00"}, "no time zone"),
    ("unlock", {"door": "lobby_in", "until": 1764338400}, "a number, not a time"),
    ("unlock", {"door": "lobby_in", "until": None}, "null"),
    ("lock", {"door": "lobby_in", "until": "2025-11-28T07:59:59.000Z"}, "before issued_at"),
    ("lock", {"door": "lobby_in", "until": "2025-11-28T08:00:00.000Z"}, "exactly issued_at"),
    ("unlock", {"door": "lobby_in", "until": "2026-01-28T08:00:00.000Z"}, "more than 31 days"),
    ("release", {"door": "lobby_in", "until": "2025-11-28T09:00:00.000Z"}, "release takes no until"),
    ("lockdown", {"scope": "site", "active": True, "until": "2025-11-28T09:00:00.000Z"}, "lockdown: until lifted"),
    ("unlock", {"door": "lobby_in", "until": "2025-11-28T09:00:00.000Z", "extra": 1}, "an extra key"),
])
def test_a_timed_override_with_a_bad_until_is_refused_by_signer_and_verifier(action: str, args: dict[str, Any],
                                                                             why: str) -> None:
    with pytest.raises(CommandError) as info:
        signed(action, args)
    assert info.value.reason == "bad_args", why
    body = body_of(signed(action, {k: v for k, v in args.items() if k in ("door", "scope", "active")}))
    body["args"] = args  # what a signer without these checks would sign: the edge still refuses it
    assert reason_of(resign(body)) == "bad_args", why


def test_until_is_judged_against_issued_at_not_the_edge_clock() -> None:
    """The signature covers until; whether it has passed at the edge is the edge's call (it fails, never unlocks)."""
    payload = signed("unlock", {"door": "lobby_in", "until": "2025-11-28T08:00:05.000Z"}, issued_at=NOW)
    assert verify(payload, now=NOW + 10).args["until"] == "2025-11-28T08:00:05.000Z"
    assert MAX_OVERRIDE_S == 31 * 24 * 3600


def test_old_commands_without_until_are_still_valid() -> None:
    body = body_of(signed("unlock", {"door": "lobby_in"}))
    assert "until" not in body["args"]
    assert verify(resign(body)).args == {"door": "lobby_in"}


# ---------------------------------------------------------------- refusals


def test_unsigned_command_is_refused_as_unsigned() -> None:
    env = json.loads(signed())
    del env["signature"]
    assert reason_of(json.dumps(env).encode()) == "unsigned"
    env["signature"] = ""
    assert reason_of(json.dumps(env).encode()) == "unsigned"


def test_command_signed_with_another_key_is_refused_as_bad_signature() -> None:
    assert reason_of(signed(key=Ed25519PrivateKey.generate())) == "bad_signature"


def test_altered_command_is_refused_as_bad_signature_and_still_names_its_transaction() -> None:
    env = json.loads(signed(transaction="tx-9"))
    env["signed"] = env["signed"].replace("lobby_in", "lab")
    with pytest.raises(CommandError) as info:
        verify(json.dumps(env).encode())
    assert (info.value.reason, info.value.action, info.value.transaction) == ("bad_signature", "unlock", "tx-9")


def test_garbage_signature_is_bad_signature() -> None:
    env = json.loads(signed())
    for sig in ("not base64!", base64.b64encode(b"short").decode(), 42):
        env["signature"] = sig
        assert reason_of(json.dumps(env).encode()) == "bad_signature"


@pytest.mark.parametrize("payload", [b"", b"\xff\xfe", b"[]", b"null", b'{"schema": "doorkeep.policy/1"}',
                                     b'{"schema": "doorkeep.cmd/1", "signed": 5, "signature": "x"}',
                                     b"NaN", b"{" * 5000])
def test_non_envelopes_are_malformed(payload: bytes) -> None:
    assert reason_of(payload) == "malformed"


def test_signed_body_with_missing_or_extra_fields_is_malformed() -> None:
    body = body_of(signed())
    del body["nonce"]
    assert reason_of(resign(body)) == "malformed"
    body = body_of(signed())
    body["extra"] = 1
    assert reason_of(resign(body)) == "malformed"
    body = body_of(signed())
    body["nonce"] = "abc"  # far below 128 bits
    assert reason_of(resign(body)) == "malformed"
    body = body_of(signed())
    body["issued_at"] = "yesterday"
    assert reason_of(resign(body)) == "malformed"


def test_command_for_another_site_or_device_is_refused() -> None:
    assert reason_of(signed(site="other")) == "wrong_site"
    assert reason_of(signed(device="pi-floor7")) == "wrong_device"


def test_command_older_than_max_age_is_stale_and_just_inside_is_accepted() -> None:
    assert reason_of(signed(issued_at=NOW - DEFAULT_MAX_AGE_S - 0.5)) == "stale"
    assert verify(signed(issued_at=NOW - DEFAULT_MAX_AGE_S + 0.5)).action == "unlock"


def test_command_from_beyond_the_clock_skew_is_future() -> None:
    assert reason_of(signed(issued_at=NOW + DEFAULT_MAX_SKEW_S + 1)) == "future"
    assert verify(signed(issued_at=NOW + DEFAULT_MAX_SKEW_S - 1)).action == "unlock"


def test_unknown_action_and_bad_args_in_a_signed_body_are_refused() -> None:
    body = body_of(signed())
    body["action"] = "explode"
    assert reason_of(resign(body)) == "unknown_action"
    for action, args in [("unlock", {}), ("unlock", {"door": 7}), ("unlock", {"door": "a", "x": 1}),
                         ("lockdown", {"scope": "site", "active": "yes"}), ("lockdown", {"scope": "site"}),
                         ("sync", {"now": True}), ("lock", [])]:
        body = body_of(signed())
        body["action"], body["args"] = action, args
        assert reason_of(resign(body)) == "bad_args", (action, args)


def test_the_same_command_twice_is_replayed_even_within_the_window() -> None:
    guard = ReplayGuard()
    payload = signed()
    assert verify(payload, guard=guard).action == "unlock"
    assert reason_of(payload, now=NOW + 1, guard=guard) == "replayed"
    # A stale replay is refused by its age, whatever the guard forgot.
    assert reason_of(payload, now=NOW + DEFAULT_MAX_AGE_S + 1, guard=ReplayGuard()) == "stale"


def test_a_refused_command_does_not_spend_its_nonce() -> None:
    guard = ReplayGuard()
    payload = signed(issued_at=NOW + 20)
    assert reason_of(payload, guard=guard) == "future"
    assert verify(payload, now=NOW + 20, guard=guard).action == "unlock"


def test_every_reason_is_reachable_and_a_doorkeep_error() -> None:
    assert set(REASONS) == {"malformed", "unsigned", "bad_signature", "wrong_site", "wrong_device", "stale",
                            "future", "replayed", "unknown_action", "bad_args"}
    assert issubclass(CommandError, DoorkeepError) and issubclass(CommandError, ValueError)


def test_peek_door_names_the_door_of_even_a_forged_command_and_never_raises() -> None:
    assert peek_door(signed(key=Ed25519PrivateKey.generate())) == "lobby_in"
    assert peek_door(b"\x00garbage") is None
    assert peek_door(resign({"args": {"door": "../../x"}})) is None


# ------------------------------------------------------------------- fuzzing


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_arbitrary_bytes_only_ever_raise_command_error(data: bytes) -> None:
    with pytest.raises(CommandError):
        verify(data, guard=ReplayGuard())


_VALID = signed(transaction="tx-fuzz")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=0, max_value=len(_VALID) - 1), st.integers(min_value=0, max_value=255),
       st.integers(min_value=0, max_value=3))
def test_mutated_valid_envelopes_are_refused_with_command_error_or_verify_unchanged(pos: int, byte: int,
                                                                                    op: int) -> None:
    data = bytearray(_VALID)
    if op == 0:
        data[pos] = byte
    elif op == 1:
        del data[pos]
    elif op == 2:
        data.insert(pos, byte)
    else:
        data = data[:pos]
    try:
        cmd = verify(bytes(data), guard=ReplayGuard())
    except CommandError as exc:
        assert exc.reason in REASONS
        return
    # Only changes outside what is signed (e.g. JSON whitespace) may pass, and then nothing changed.
    assert (cmd.action, cmd.args, cmd.transaction) == ("unlock", {"door": "lobby_in"}, "tx-fuzz")


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["site", "device", "transaction", "action", "args", "issued_at", "nonce", "x"]),
                       st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                                    max_leaves=8)))
def test_any_correctly_signed_body_only_ever_raises_command_error(body: dict[str, Any]) -> None:
    try:
        verify(resign(body), guard=ReplayGuard())
    except CommandError as exc:
        assert exc.reason in REASONS


# ---------------------------------------------------------------- the guard


def test_guard_forgets_nonces_after_the_window_and_stays_bounded() -> None:
    guard = ReplayGuard(window_s=35.0, max_nonces=3)
    for i in range(3):
        guard.check_and_remember(f"{i:032x}", NOW + i, NOW + i)
    assert len(guard) == 3
    guard.prune(NOW + 2 + 35.5)
    assert len(guard) == 0


def test_a_full_guard_refuses_older_commands_rather_than_forgetting_them() -> None:
    guard = ReplayGuard(max_nonces=2)
    for i in range(3):
        guard.check_and_remember(f"{i:032x}", NOW + i, NOW + 3)
    assert len(guard) == 2 and guard.floor == NOW
    # The evicted nonce (issued at NOW) and anything as old can no longer be told from new: refused.
    with pytest.raises(CommandError) as info:
        guard.check_and_remember("0" * 32, NOW, NOW + 3)
    assert info.value.reason == "replayed"
    with pytest.raises(CommandError):
        guard.check_and_remember("f" * 32, NOW - 1, NOW + 3)
    guard.check_and_remember("e" * 32, NOW + 3, NOW + 3)  # a newer command still passes


def test_guard_export_and_load_round_trip_through_json() -> None:
    guard = ReplayGuard()
    payload = signed()
    verify(payload, guard=guard)
    guard.refuse_before(NOW - 100)
    restored = ReplayGuard()
    restored.load(json.loads(json.dumps(guard.export())))
    assert restored.export() == guard.export()
    assert reason_of(payload, now=NOW + 1, guard=restored) == "replayed"


@pytest.mark.parametrize("data", [None, [], {"version": 2, "nonces": {}}, {"version": 1},
                                  {"version": 1, "nonces": {"zz": 1.0}}, {"version": 1, "nonces": {"a" * 32: "x"}},
                                  {"version": 1, "nonces": {}, "floor": "high"}])
def test_guard_refuses_to_load_anything_but_its_own_export(data: Any) -> None:
    with pytest.raises(CommandError):
        ReplayGuard().load(data)


def test_refuse_before_blocks_commands_issued_up_to_then() -> None:
    guard = ReplayGuard()
    guard.refuse_before(NOW)
    assert reason_of(signed(issued_at=NOW - 1), guard=guard) == "replayed"
    assert verify(signed(issued_at=NOW + 0.5), now=NOW + 1, guard=guard).action == "unlock"


# ------------------------------------------------------------ wire contract


def test_cmd_topics_parse_back() -> None:
    t = Topics("demo")
    assert parse_topic(t.cmd("pi-lobby")).kind == "cmd"
    parsed = parse_topic(t.cmd_result("pi-lobby"))
    assert (parsed.kind, parsed.device) == ("cmd_result", "pi-lobby")
    assert t.all_cmd_results() == "doorkeep/v1/demo/+/cmd/result"


def test_command_result_round_trip_and_validation() -> None:
    for res in (CommandResult("tx1", "ok"), CommandResult("tx1", "rejected", "replayed"), CommandResult(None, "rejected", "malformed")):
        assert CommandResult.decode(res.encode()) == res
    for bad in ({"transaction": "t", "status": "maybe"}, {"transaction": "t", "status": "failed"},
                {"transaction": "a b", "status": "ok"}, {"transaction": "t", "status": "failed", "error": "x" * 201}):
        with pytest.raises(MessageError):
            CommandResult.decode(json.dumps({"schema": "doorkeep.cmd_result/1", **bad}).encode())


# ------------------------------------------------------------ the server's sender


def _sender(on_publish: Any) -> Any:
    from doorkeep.clock import SystemClock
    from doorkeep.config import load_site_dir
    from server.commands import CommandSender
    from simulators.site import DEMO_SITE

    bundle = load_site_dir(DEMO_SITE)
    doors = {d: dev.id for dev in bundle.devices.values() for d in dev.doors}
    return CommandSender(bundle.site, doors, KEY, SystemClock(), on_publish)


def test_sender_signs_for_the_door_s_device_and_returns_the_matching_result() -> None:
    sent: list[tuple[str, bytes]] = []

    def edge(topic: str, payload: bytes) -> None:  # answers at once, like a fast edge
        sent.append((topic, payload))
        cmd = verify_command(payload, PUB, site_id="demo", device="pi-floor7", now=time.time())
        sender.on_result("pi-floor7", CommandResult(cmd.transaction, "ok"))

    sender = _sender(edge)
    result = sender.unlock("lab", timeout=2)
    assert (result["status"], result["device"], result["action"]) == ("ok", "pi-floor7", "unlock")
    assert sent[0][0] == "doorkeep/v1/demo/pi-floor7/cmd"


def test_sender_ignores_a_result_from_another_device_and_times_out() -> None:
    sender = _sender(lambda topic, payload: sender.on_result(
        "pi-lobby", CommandResult(json.loads(json.loads(payload)["signed"])["transaction"], "ok")))
    result = sender.unlock("lab", timeout=0.05)
    assert result["status"] == "timeout" and sender.counters["unmatched_results"] == 1


def test_sender_refuses_unknown_doors_and_areas_and_lists_devices_per_scope() -> None:
    from server.commands import CommandSendError

    sender = _sender(lambda topic, payload: None)
    with pytest.raises(CommandSendError):
        sender.unlock("moon_door")
    with pytest.raises(CommandSendError):
        sender.devices_for("mars")
    assert sender.devices_for("site") == ["pi-floor7", "pi-lobby"]
    assert sender.devices_for("floor7") == ["pi-floor7"]
    # The office is behind pi-lobby's gates and one of the lift's floors (the cab is wired to pi-floor7): a
    # lockdown of it must reach the cab too, or its button would still take people there.
    assert sender.devices_for("office") == ["pi-floor7", "pi-lobby"]
    with pytest.raises(CommandSendError):
        sender.lockdown("site", True)  # no directory to persist it in
