"""Fuzz the MQTT wire contract (doorkeep/contract.py): every decoder and the topic parser raise
MessageError and nothing else, whatever arrives; what does decode is a message the contract allows."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from doorkeep.contract import SEGMENT, DecisionMsg, EventMsg, ParsedTopic, RequestMsg, Topics, parse_topic
from doorkeep.errors import MessageError
from tests.fuzz.conftest import fuzz
from tests.fuzz.guard import only_raises
from tests.fuzz.strategies import dumps, hostile_values, json_values, mutated_mapping, mutated_tree

HASH = "3f" * 32
REQUEST = RequestMsg("tx-1", "lobby_in", HASH, "B2C3", "em4100", "2026-03-02T08:55:00.000Z", pin_hash=HASH)
DECISION = DecisionMsg("tx-1", "lobby_in", True, "granted", "alice", 5.0, "2026-03-02T08:55:00.012Z",
                       violation="anti_passback")
EVENT = EventMsg(id="ev1", seq=7, ts="2026-03-02T08:55:00.000Z", device="pi-lobby", door="lobby_in", type="access",
                 decision="granted", reason="granted", decided_by="server", person="alice", credential_hash=HASH,
                 credential_last4="B2C3", transaction="tx-1", latency_ms=12.5, snapshot="ev1",
                 detail={"violation": "anti_passback", "nested": {"a": [1, 2]}})
MESSAGES = {cls: msg for cls, msg in ((RequestMsg, REQUEST), (DecisionMsg, DECISION), (EventMsg, EVENT))}
message_classes = st.sampled_from(list(MESSAGES))


def _base(cls: type) -> dict[str, Any]:
    return json.loads(MESSAGES[cls].encode())


def _decode(cls: Any, payload: bytes) -> Any:
    """Decode under the contract's promise; return the message or None when it was refused."""
    msg = again = None
    with only_raises("contract", MessageError):
        msg = cls.decode(payload)
        # Whatever decodes must survive its own round trip: the receiver re-publishes and stores it.
        again = cls.decode(msg.encode())
        assert again.encode() == msg.encode()
    if msg is not None and again is not None:
        _check_decoded(msg)
    return msg


def _check_decoded(msg: Any) -> None:
    if isinstance(msg, DecisionMsg):
        # What the edge acts on: a grant is only ever a coherent grant with a sane unlock time.
        assert isinstance(msg.granted, bool)
        assert msg.granted == msg.reason.startswith("granted")
        assert math.isfinite(msg.unlock_s) and 0 < msg.unlock_s <= 600
        assert SEGMENT.match(msg.transaction) and SEGMENT.match(msg.door)
    if isinstance(msg, EventMsg):
        assert isinstance(msg.seq, int) and msg.seq >= 0
        assert msg.latency_ms is None or (math.isfinite(msg.latency_ms) and msg.latency_ms >= 0)


def test_the_valid_messages_fuzzed_below_decode() -> None:
    for cls, msg in MESSAGES.items():
        assert cls.decode(msg.encode()) == msg


@fuzz(scale=3)
@given(cls=message_classes, payload=st.binary(max_size=400))
def test_decoders_refuse_random_bytes_with_message_error(cls: Any, payload: bytes) -> None:
    _decode(cls, payload)


@fuzz(scale=2)
@given(cls=message_classes, value=json_values)
def test_decoders_refuse_random_json_with_message_error(cls: Any, value: Any) -> None:
    _decode(cls, dumps(value))
    _decode(cls, dumps({"schema": cls.SCHEMA, "value": value}))


@fuzz(scale=4)
@given(data=st.data(), cls=message_classes)
def test_valid_message_with_fields_mutated_decodes_or_raises_message_error(data: st.DataObject, cls: Any) -> None:
    base = _base(cls)
    extra = tuple(f for f in asdict(MESSAGES[cls]) if f not in base)
    mutated = data.draw(mutated_mapping(base, extra_keys=extra))
    _decode(cls, dumps(mutated))


@fuzz(scale=2)
@given(data=st.data(), cls=message_classes)
def test_valid_message_mutated_anywhere_in_its_tree_decodes_or_raises_message_error(data: st.DataObject,
                                                                                     cls: Any) -> None:
    _decode(cls, dumps(data.draw(mutated_tree(_base(cls)))))


@fuzz(scale=2)
@given(cls=message_classes, value=hostile_values, where=st.integers(min_value=0, max_value=10_000))
def test_valid_message_cut_or_spliced_as_text_raises_message_error(cls: Any, value: Any, where: int) -> None:
    text = MESSAGES[cls].encode()
    at = where % (len(text) + 1)
    _decode(cls, text[:at])
    _decode(cls, text[:at] + dumps(value) + text[at:])


@fuzz(scale=2)
@given(granted=st.booleans(), reason=st.text(max_size=30) | st.sampled_from(["granted", "granted_offline", "denied"]),
       unlock=st.one_of(st.floats(), st.integers(), st.just(10**400)))
def test_decision_granted_reason_and_unlock_time_must_agree(granted: bool, reason: str, unlock: Any) -> None:
    payload = dumps({**_base(DecisionMsg), "granted": granted, "reason": reason, "unlock_s": unlock})
    _decode(DecisionMsg, payload)


# ------------------------------------------------------------------ topics

segments = st.text("abcXYZ019_-", min_size=1, max_size=12)
topic_text = st.one_of(
    st.text(max_size=80),
    st.lists(st.one_of(segments, st.text(max_size=6), st.sampled_from(
        ["doorkeep", "v1", "door", "request", "decision", "event", "snapshot", "policy", "state", "availability",
         "+", "#", "", "\n", "a\n", "é"])), max_size=9).map("/".join),
)


@fuzz(scale=4)
@given(topic=topic_text)
def test_parse_topic_refuses_random_topics_with_message_error(topic: str) -> None:
    parsed = None
    with only_raises("contract", MessageError):
        parsed = parse_topic(topic)
    if parsed is not None:
        for seg in (parsed.site, parsed.device, parsed.door, parsed.event_id):
            assert seg is None or SEGMENT.match(seg)
        assert "+" not in topic and "#" not in topic


@fuzz(scale=2)
@given(topic=topic_text)
def test_parse_topic_under_the_prefix_raises_only_message_error(topic: str) -> None:
    with only_raises("contract", MessageError):
        parse_topic("doorkeep/v1/" + topic)


@fuzz(scale=2)
@given(site=segments, device=segments, door=segments, event_id=segments)
def test_every_topic_the_contract_builds_parses_back(site: str, device: str, door: str, event_id: str) -> None:
    t = Topics(site)
    assert parse_topic(t.request(device, door)) == ParsedTopic(site, device, "request", door)
    assert parse_topic(t.decision(device, door)) == ParsedTopic(site, device, "decision", door)
    assert parse_topic(t.event(device, door)) == ParsedTopic(site, device, "event", door)
    assert parse_topic(t.snapshot(device, door, event_id)) == ParsedTopic(site, device, "snapshot", door, event_id)
    for kind in ("availability", "state", "policy"):
        assert parse_topic(getattr(t, kind)(device)) == ParsedTopic(site, device, kind)
