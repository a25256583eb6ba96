"""The MQTT wire contract: exact topics, strict messages, nothing but MessageError on bad input."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from typing import Any, Callable

import pytest

from doorkeep.contract import (
    MAX_PAYLOAD,
    DecisionMsg,
    EventMsg,
    ParsedTopic,
    RequestMsg,
    Topics,
    parse_topic,
)
from doorkeep.errors import MessageError

HASH = "ab" * 32

# ------------------------------------------------------------------ topics


def test_topics_exact_strings() -> None:
    t = Topics("demo")
    assert t.device("pi-lobby") == "doorkeep/v1/demo/pi-lobby"
    assert t.availability("pi-lobby") == "doorkeep/v1/demo/pi-lobby/availability"
    assert t.state("pi-lobby") == "doorkeep/v1/demo/pi-lobby/state"
    assert t.request("pi-lobby", "lobby_in") == "doorkeep/v1/demo/pi-lobby/door/lobby_in/request"
    assert t.decision("pi-lobby", "lobby_in") == "doorkeep/v1/demo/pi-lobby/door/lobby_in/decision"
    assert t.event("pi-lobby", "lobby_in") == "doorkeep/v1/demo/pi-lobby/door/lobby_in/event"
    assert t.snapshot("pi-lobby", "lobby_in", "ev-1") == "doorkeep/v1/demo/pi-lobby/door/lobby_in/snapshot/ev-1"
    assert t.server_availability() == "doorkeep/v1/demo/server/availability"


def test_subscription_wildcards() -> None:
    t = Topics("demo")
    assert t.all_requests() == "doorkeep/v1/demo/+/door/+/request"
    assert t.all_events() == "doorkeep/v1/demo/+/door/+/event"
    assert t.all_snapshots() == "doorkeep/v1/demo/+/door/+/snapshot/+"
    assert t.all_availability() == "doorkeep/v1/demo/+/availability"
    assert t.all_decisions("pi-lobby") == "doorkeep/v1/demo/pi-lobby/door/+/decision"


BAD_SEGMENTS = ["+", "#", "a/b", "", " ", "a b", "lobby\n", "caf\u00e9", "a+", "x#"]


@pytest.mark.parametrize("bad", BAD_SEGMENTS)
def test_invalid_segments_raise(bad: str) -> None:
    with pytest.raises(MessageError):
        Topics(bad)
    t = Topics("demo")
    builders: list[Callable[[], str]] = [
        lambda: t.device(bad),
        lambda: t.availability(bad),
        lambda: t.state(bad),
        lambda: t.request(bad, "d"),
        lambda: t.request("pi", bad),
        lambda: t.decision("pi", bad),
        lambda: t.event("pi", bad),
        lambda: t.snapshot("pi", "d", bad),
        lambda: t.all_decisions(bad),
    ]
    for build in builders:
        with pytest.raises(MessageError):
            build()


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda t: t.availability("pi-1"), ParsedTopic("s_1", "pi-1", "availability")),
        (lambda t: t.state("pi-1"), ParsedTopic("s_1", "pi-1", "state")),
        (lambda t: t.request("pi-1", "d1"), ParsedTopic("s_1", "pi-1", "request", "d1")),
        (lambda t: t.decision("pi-1", "d1"), ParsedTopic("s_1", "pi-1", "decision", "d1")),
        (lambda t: t.event("pi-1", "d1"), ParsedTopic("s_1", "pi-1", "event", "d1")),
        (lambda t: t.snapshot("pi-1", "d1", "E-9"), ParsedTopic("s_1", "pi-1", "snapshot", "d1", "E-9")),
        (lambda t: t.server_availability(), ParsedTopic("s_1", "server", "availability")),
    ],
)
def test_parse_topic_round_trip(build: Callable[[Topics], str], expected: ParsedTopic) -> None:
    assert parse_topic(build(Topics("s_1"))) == expected


@pytest.mark.parametrize(
    "topic",
    [
        "",
        "doorkeep",
        "doorkeep/v1",
        "doorkeep/v1/demo",
        "doorkeep/v2/demo/pi/state",
        "other/v1/demo/pi/state",
        "/doorkeep/v1/demo/pi/state",
        "doorkeep/v1/demo/pi/state/",
        "doorkeep/v1/demo/pi",
        "doorkeep/v1/demo/pi/status",
        "doorkeep/v1/demo/pi/door/d",
        "doorkeep/v1/demo/pi/door/d/open",
        "doorkeep/v1/demo/pi/door/d/request/x",
        "doorkeep/v1/demo/pi/door/d/snapshot",
        "doorkeep/v1/demo/pi/door/d/snapshot/e/x",
        "doorkeep/v1/demo/pi/gate/d/request",
        "doorkeep/v1/demo/+/door/+/request",
        "doorkeep/v1/demo/#",
        "doorkeep/v1/demo//state",
        "doorkeep/v1/demo/pi\n/state",
        "doorkeep/v1/demo/pi/door/d/snapshot/e\n",
        "doorkeep/v1/de mo/pi/state",
    ],
)
def test_parse_topic_rejects_foreign_and_unknown(topic: str) -> None:
    with pytest.raises(MessageError):
        parse_topic(topic)


# ---------------------------------------------------------------- messages


def request() -> RequestMsg:
    return RequestMsg(transaction="tx-1", door="lobby_in", credential_hash=HASH, credential_last4="B2C3",
                      credential_format="em4100", ts="2026-03-30T09:00:00.123Z")


def decision(**kw: Any) -> DecisionMsg:
    base = DecisionMsg(transaction="tx-1", door="lobby_in", granted=True, reason="granted", person="alice",
                       unlock_s=5.0, ts="2026-03-30T09:00:00.150Z")
    return replace(base, **kw)


def event(**kw: Any) -> EventMsg:
    base = EventMsg(id="ev-1", seq=7, ts="2026-03-30T09:00:00.160Z", device="pi-lobby", door="lobby_in",
                    type="access", decision="granted", reason="granted", decided_by="server", person="alice",
                    credential_hash=HASH, credential_last4="B2C3", transaction="tx-1", latency_ms=42.5,
                    snapshot="ev-1", detail={"reader": "em4100", "n": [1, 2]})
    return replace(base, **kw)


def as_dict(msg: Any) -> dict[str, Any]:
    return json.loads(msg.encode())


def raw(d: dict[str, Any]) -> bytes:
    return json.dumps(d).encode()


def test_request_round_trip() -> None:
    msg = request()
    assert RequestMsg.decode(msg.encode()) == msg
    assert as_dict(msg)["schema"] == "doorkeep.request/1"


def test_decision_round_trip() -> None:
    for msg in (decision(), decision(granted=False, reason="no_access", person=None, unlock_s=1)):
        back = DecisionMsg.decode(msg.encode())
        assert back == msg
        assert isinstance(back.unlock_s, float)
    assert as_dict(decision())["schema"] == "doorkeep.decision/1"


def test_event_round_trip() -> None:
    for msg in (event(), event(type="door_opened", decision=None, reason=None, decided_by=None, person=None,
                               credential_hash=None, credential_last4=None, transaction=None, latency_ms=None,
                               snapshot=None, detail={})):
        assert EventMsg.decode(msg.encode()) == msg
    assert as_dict(event())["schema"] == "doorkeep.event/1"


def test_encoding_is_compact_and_stable() -> None:
    a, b = event().encode(), event().encode()
    assert a == b
    assert b" " not in a  # compact separators; nothing in this event contains a space
    assert list(json.loads(a)) == sorted(json.loads(a))


@pytest.mark.parametrize("cls", [RequestMsg, DecisionMsg, EventMsg])
@pytest.mark.parametrize(
    "payload",
    [b"", b"not json", b"{", b"[1, 2]", b'"text"', b"42", b"null", b"\xff\xfe\xfa", b'{"schema": "\xff"}'],
)
def test_decode_rejects_non_json_and_non_objects(cls: Any, payload: bytes) -> None:
    with pytest.raises(MessageError):
        cls.decode(payload)


@pytest.mark.parametrize("schema", [None, "", "doorkeep.request/2", "doorkeep.event/1", 1])
def test_request_wrong_schema(schema: Any) -> None:
    d = as_dict(request())
    d["schema"] = schema
    with pytest.raises(MessageError, match="schema"):
        RequestMsg.decode(raw(d))


def test_each_message_refuses_the_others() -> None:
    with pytest.raises(MessageError):
        DecisionMsg.decode(request().encode())
    with pytest.raises(MessageError):
        EventMsg.decode(decision().encode())
    with pytest.raises(MessageError):
        RequestMsg.decode(event().encode())


@pytest.mark.parametrize("name", ["transaction", "door", "credential_hash", "credential_last4", "credential_format", "ts"])
def test_request_missing_field(name: str) -> None:
    d = as_dict(request())
    del d[name]
    with pytest.raises(MessageError, match=name):
        RequestMsg.decode(raw(d))
    d[name] = None
    with pytest.raises(MessageError, match=name):
        RequestMsg.decode(raw(d))


@pytest.mark.parametrize("name", ["transaction", "door", "granted", "reason", "unlock_s", "ts"])
def test_decision_missing_field(name: str) -> None:
    d = as_dict(decision())
    del d[name]
    with pytest.raises(MessageError):
        DecisionMsg.decode(raw(d))


@pytest.mark.parametrize("name", ["id", "seq", "ts", "device", "door", "type"])
def test_event_missing_field(name: str) -> None:
    d = as_dict(event())
    del d[name]
    with pytest.raises(MessageError):
        EventMsg.decode(raw(d))


@pytest.mark.parametrize(
    ("cls", "build", "name", "value"),
    [
        (RequestMsg, request, "transaction", 17),
        (RequestMsg, request, "door", ["lobby_in"]),
        (RequestMsg, request, "ts", 1.5),
        (RequestMsg, request, "credential_last4", 1234),
        (DecisionMsg, decision, "granted", "true"),
        (DecisionMsg, decision, "granted", 1),
        (DecisionMsg, decision, "unlock_s", "5"),
        (DecisionMsg, decision, "unlock_s", True),
        (DecisionMsg, decision, "person", 3),
        (EventMsg, event, "seq", True),
        (EventMsg, event, "seq", False),
        (EventMsg, event, "seq", 1.0),
        (EventMsg, event, "seq", "7"),
        (EventMsg, event, "seq", -1),
        (EventMsg, event, "latency_ms", True),
        (EventMsg, event, "latency_ms", "fast"),
        (EventMsg, event, "detail", [1]),
        (EventMsg, event, "detail", "x"),
        (EventMsg, event, "id", {"a": 1}),
    ],
)
def test_decode_rejects_wrong_types(cls: Any, build: Callable[[], Any], name: str, value: Any) -> None:
    d = as_dict(build())
    d[name] = value
    with pytest.raises(MessageError):
        cls.decode(raw(d))


@pytest.mark.parametrize("bad", ["ab" * 31, "ab" * 33, "AB" * 32, "zz" * 32, "", "ab" * 32 + "\n", " " + "ab" * 32])
def test_hash_must_be_64_lowercase_hex(bad: str) -> None:
    d = as_dict(request())
    d["credential_hash"] = bad
    with pytest.raises(MessageError, match="credential_hash"):
        RequestMsg.decode(raw(d))
    e = as_dict(event())
    e["credential_hash"] = bad
    with pytest.raises(MessageError, match="credential_hash"):
        EventMsg.decode(raw(e))


@pytest.mark.parametrize("bad", ["", "a b", "a/b", "+", "#", "tx\n", "caf\u00e9"])
def test_identifier_fields_are_segments(bad: str) -> None:
    for cls, build, name in ((RequestMsg, request, "transaction"), (RequestMsg, request, "door"),
                             (DecisionMsg, decision, "reason"), (EventMsg, event, "id"),
                             (EventMsg, event, "device"), (EventMsg, event, "snapshot")):
        d = as_dict(build())
        d[name] = bad
        with pytest.raises(MessageError):
            cls.decode(raw(d))


@pytest.mark.parametrize(("granted", "reason"), [(True, "no_access"), (True, "credential_inactive"),
                                                 (False, "granted"), (False, "granted_offline")])
def test_decision_granted_must_match_reason(granted: bool, reason: str) -> None:
    d = as_dict(decision())
    d["granted"], d["reason"] = granted, reason
    with pytest.raises(MessageError, match="contradicts"):
        DecisionMsg.decode(raw(d))


@pytest.mark.parametrize("unlock", [0, -1, 601, 1e9])
def test_decision_unlock_out_of_range(unlock: float) -> None:
    d = as_dict(decision())
    d["unlock_s"] = unlock
    with pytest.raises(MessageError, match="unlock_s"):
        DecisionMsg.decode(raw(d))


@pytest.mark.parametrize("value", [b"NaN", b"Infinity", b"-Infinity"])
def test_decision_unlock_not_finite(value: bytes) -> None:
    payload = decision().encode().replace(b'"unlock_s":5.0', b'"unlock_s":' + value)
    assert value in payload
    with pytest.raises(MessageError):
        DecisionMsg.decode(payload)


@pytest.mark.parametrize("etype", ["", "Access", "door_exploded", "lockdown_x"])
def test_unknown_event_type(etype: str) -> None:
    d = as_dict(event())
    d["type"] = etype
    with pytest.raises(MessageError):
        EventMsg.decode(raw(d))


@pytest.mark.parametrize("value", [None, "maybe", "GRANTED"])
def test_access_event_needs_a_decision(value: Any) -> None:
    d = as_dict(event())
    if value is None:
        del d["decision"]
    else:
        d["decision"] = value
    with pytest.raises(MessageError, match="decision"):
        EventMsg.decode(raw(d))


def test_unknown_decided_by() -> None:
    d = as_dict(event())
    d["decided_by"] = "oracle"
    with pytest.raises(MessageError, match="decided_by"):
        EventMsg.decode(raw(d))


def test_unknown_extra_fields_are_tolerated() -> None:
    # Forward compatibility within one schema version: extra keys are ignored, not fatal.
    d = as_dict(event())
    d["future"] = 1
    assert EventMsg.decode(raw(d)) == event()


def test_oversized_payload() -> None:
    msg = event(detail={"pad": ""})
    base = len(msg.encode())
    at_limit = event(detail={"pad": "x" * (MAX_PAYLOAD - base)})
    assert len(at_limit.encode()) == MAX_PAYLOAD
    assert EventMsg.decode(at_limit.encode()) == at_limit
    over = event(detail={"pad": "x" * (MAX_PAYLOAD - base + 1)})
    with pytest.raises(MessageError, match="exceeds"):
        EventMsg.decode(over.encode())
    with pytest.raises(MessageError, match="exceeds"):
        RequestMsg.decode(b" " * (MAX_PAYLOAD + 1))


def test_invalid_utf8() -> None:
    payload = request().encode().replace(b"lobby_in", b"lobby_\xc3\x28n")
    with pytest.raises(MessageError):
        RequestMsg.decode(payload)


@pytest.mark.parametrize("cls", [RequestMsg, DecisionMsg, EventMsg])
@pytest.mark.parametrize("payload", [b"[" * 50_000, b'{"a":' * 12_000, b"[" * (MAX_PAYLOAD - 1)])
def test_deep_nesting_is_a_message_error(cls: Any, payload: bytes) -> None:
    # A within-limit payload must never crash the receiver with anything but MessageError.
    with pytest.raises(MessageError):
        cls.decode(payload)


def _mutations(rng: random.Random, good: bytes) -> bytes:
    choice = rng.randrange(4)
    if choice == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 200)))
    if choice == 1:  # flip a few bytes of a valid message
        b = bytearray(good)
        for _ in range(rng.randrange(1, 6)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b)
    if choice == 2:  # truncate a valid message
        return good[: rng.randrange(len(good))]
    # splice JSON tokens
    tokens = [b"{", b"}", b"[", b"]", b'"schema"', b":", b",", b"null", b"true", b"1e999", b'"x"', b"-0", b'"\\ud800"']
    return b"".join(rng.choice(tokens) for _ in range(rng.randrange(1, 40)))


@pytest.mark.parametrize("cls", [RequestMsg, DecisionMsg, EventMsg])
def test_random_bytes_only_ever_raise_message_error(cls: Any) -> None:
    rng = random.Random(20260330)
    good = {RequestMsg: request, DecisionMsg: decision, EventMsg: event}[cls]().encode()
    for _ in range(400):
        payload = _mutations(rng, good)
        try:
            cls.decode(payload)
        except MessageError:
            pass


def test_random_topics_only_ever_raise_message_error() -> None:
    rng = random.Random(7)
    alphabet = "ab/+#-_ \n\x00é"
    for _ in range(500):
        topic = "doorkeep/v1/" + "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 30)))
        try:
            parsed = parse_topic(topic)
        except MessageError:
            continue
        assert parsed.site and parsed.device


@pytest.mark.parametrize("latency", [float("nan"), float("inf"), -1.0])
def test_event_latency_must_be_finite_and_non_negative(latency: float) -> None:
    d = as_dict(event(type="access", decision="granted", reason="granted"))
    d["latency_ms"] = latency
    with pytest.raises(MessageError, match="latency_ms"):
        EventMsg.decode(json.dumps(d).encode())


@pytest.mark.parametrize("decision, reason", [("granted", "no_access"), ("denied", "granted")])
def test_access_event_decision_must_agree_with_reason(decision: str, reason: str) -> None:
    payload = raw(as_dict(event(type="access", decision=decision, reason=reason)))
    with pytest.raises(MessageError, match="contradicts"):
        EventMsg.decode(payload)
