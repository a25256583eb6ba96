"""No input energises a relay: random serial bytes into every reader and hostile MQTT payloads on the
edge's decision, policy and server-availability topics, against real edge agents on a real Mosquitto.

The site runs without a server (``start(with_server=False)``) and with a fresh, empty policy cache, so
every decision the edges could reach is a denial: any relay movement at all is a bug. Afterwards every
agent is still running, each door still answers a card, and the counters show what was dropped.
"""

from __future__ import annotations

import json
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from doorkeep.config import load_site_dir
from doorkeep.contract import DecisionMsg, EventMsg, RequestMsg, Topics
from doorkeep.errors import MessageError
from doorkeep.policy import compile_policy, sign_policy
from edge.framing import encode_ascii, encode_em4100
from simulators.brokers import OBSERVER
from simulators.site import DEMO_SITE, SiteRunner, mosquitto_installed
from tests.conftest import wait_until
from tests.fuzz.conftest import fuzz
from tests.fuzz.strategies import chunked, cuts, dumps, mutated_mapping, wire_bytes

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not mosquitto_installed(), reason="mosquitto is not installed")]

TOPICS = Topics("demo")
DECISION_TOPIC = "doorkeep/v1/demo/pi-lobby/door/lobby_in/decision"
POLICY_TOPIC = TOPICS.policy("pi-lobby")
assert DECISION_TOPIC == TOPICS.decision("pi-lobby", "lobby_in")
UNKNOWN_CARD = {"em4100": "0F00FFFF01", "ascii": "99999999"}


@pytest.fixture(scope="module")
def edges(mosquitto: Any) -> Iterator[SiteRunner]:
    with tempfile.TemporaryDirectory(prefix="doorkeep-fuzz-site-") as tmp:
        runner = SiteRunner.from_dir(DEMO_SITE, broker_url=mosquitto.url, data_dir=Path(tmp))
        runner.start(with_server=False)
        try:
            assert runner.wait_connected(10), "edges did not connect to Mosquitto"
            assert all(a.policy is not None and a.policy.site is None for a in runner.agents.values())
            yield runner
        finally:
            runner.stop()


@pytest.fixture(scope="module")
def hostile(edges: SiteRunner) -> Iterator[mqtt.Client]:
    """A bare paho client: what a broken or compromised peer on the broker would send. It holds the
    server's certificate (mutual TLS; the ACL lets only `server` write decisions, policy and commands),
    the strongest position a forger can reach short of the server's signing key."""
    assert edges.broker_url is not None
    client = edges.mqtt_client(OBSERVER, f"fuzz-{uuid.uuid4().hex[:6]}")  # the server's rights, its own identity
    connected = threading.Event()
    client.on_connect = lambda c, u, f, reason, p: connected.set() if not reason.is_failure else None
    client.connect("127.0.0.1", int(edges.broker_url.rsplit(":", 1)[1]))
    client.loop_start()
    assert connected.wait(5)
    yield client
    client.disconnect()
    client.loop_stop()


def publish(client: mqtt.Client, topic: str, payload: bytes, retain: bool = False) -> None:
    client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)


def no_relay_moved(runner: SiteRunner) -> bool:
    return all(not d.door.relay_history and not d.door.relay_energised for d in runner.doors.values())


# ------------------------------------------------------------ payloads

ATTACKER = Ed25519PrivateKey.generate()


def _attacker_policy() -> bytes:
    """A well-formed policy for pi-lobby, signed by a key that is not the server's."""
    site = load_site_dir(DEMO_SITE).site
    return sign_policy(compile_policy(site, ["lobby_in", "lobby_out"]), site_id="demo", device="pi-lobby",
                       version=10**6, issued_at=1_772_441_700.0, key=ATTACKER)


FORGED_POLICY = _attacker_policy()
GRANT = json.loads(DecisionMsg("tx-1", "lobby_in", True, "granted", "alice", 5.0, "2026-03-02T08:55:00.000Z").encode())


@st.composite
def tampered(draw: st.DrawFn, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(out) - 1))
        out[i] = draw(st.integers(0, 255))
    return bytes(out)


decision_payloads = st.one_of(
    st.binary(max_size=200),
    mutated_mapping(GRANT).map(dumps),
    st.builds(lambda tx: DecisionMsg(tx, "lobby_in", True, "granted", "alice", 5.0, "t").encode(),
              st.text("0123456789abcdef", min_size=1, max_size=32)),  # a perfect grant for no pending request
    st.just(b"x" * 70_000),
)
policy_payloads = st.one_of(
    st.binary(max_size=200),
    tampered(FORGED_POLICY),
    st.just(FORGED_POLICY),
    mutated_mapping(json.loads(FORGED_POLICY)).map(dumps),
)
availability_payloads = st.one_of(st.sampled_from([b"online", b"offline", b"stopped", b""]), st.binary(max_size=40))


# --------------------------------------------------------------- tests


def test_no_serial_or_mqtt_input_energises_a_relay_and_every_agent_keeps_running(edges: SiteRunner,
                                                                                  hostile: mqtt.Client) -> None:
    doors = sorted(edges.doors)
    sent = {"serial": 0, "decision": 0, "policy": 0}

    @fuzz(scale=0.2)
    @given(door=st.sampled_from(doors), serial=st.lists(wire_bytes, min_size=1, max_size=5), splits=cuts,
           decisions=st.lists(decision_payloads, max_size=4), policies=st.lists(policy_payloads, max_size=3),
           availability=st.none() | availability_payloads)
    def one(door: str, serial: list[bytes], splits: list[int], decisions: list[bytes], policies: list[bytes],
            availability: bytes | None) -> None:
        for chunk in chunked(b"".join(serial), splits):
            edges.doors[door].reader.write_raw(chunk)
            sent["serial"] += len(chunk)
        for payload in decisions:
            publish(hostile, DECISION_TOPIC, payload)
            sent["decision"] += 1
        for payload in policies:
            publish(hostile, POLICY_TOPIC, payload, retain=True)
            sent["policy"] += 1
        if availability is not None:
            publish(hostile, TOPICS.server_availability(), availability)
        assert no_relay_moved(edges), {d: s.door.relay_history for d, s in edges.doors.items()}

    one()
    # Clear what the fuzzing left behind: a retained forged policy, a server marked offline.
    publish(hostile, POLICY_TOPIC, b"", retain=True)
    publish(hostile, TOPICS.server_availability(), b"online")
    assert edges.wait_edges_idle(10)
    assert no_relay_moved(edges)

    lobby = edges.agents["pi-lobby"]
    # Each decision payload was dropped and counted once: refused by the contract (by the link when the
    # decoder raised something else, a known bug), or a valid decision for no pending request.
    assert wait_until(lambda: lobby.counters["malformed_decisions"] + lobby.counters["late_decisions"]
                      + lobby.link.malformed == sent["decision"], 5), (sent, lobby.counters, lobby.link.malformed)
    if sent["policy"]:  # a burst is verified newest-first, so fewer may be counted than were sent
        assert wait_until(lambda: lobby.counters["policies_refused"] >= 1, 10), lobby.counters
        assert lobby.policy is not None and lobby.policy.site is None, "a policy not signed by the server was taken"

    # Every door still reads a card and decides it: the readers, control loops and links survived.
    for door in doors:
        _assert_door_still_denies(edges, door)
    assert no_relay_moved(edges)
    faults = sum(sum(edges.agents[s.device].doors[d].reader.stats.faults.values()) for d, s in edges.doors.items())
    assert sent["serial"] == 0 or faults >= 1


def _assert_door_still_denies(edges: SiteRunner, door: str) -> None:
    sim = edges.doors[door]
    agent = edges.agents[sim.device]
    seen: list[EventMsg] = []

    def listener(ev: EventMsg) -> None:
        if ev.door == door and ev.type == "access":
            seen.append(ev)

    agent.listeners.append(listener)
    try:
        # Whatever half frame or over-long line the fuzzing left in the reader, a line end and an STX
        # resynchronise it; then one clean frame.
        sim.reader.write_raw(b"\r\n")
        protocol = agent.doors[door].hw.reader.protocol
        number = UNKNOWN_CARD[protocol]
        sim.reader.write_raw(encode_em4100(number) if protocol == "em4100" else encode_ascii(number))
        assert wait_until(lambda: seen, 5), f"door {door} no longer decides cards after the fuzzing"
        assert seen[-1].decision == "denied"
    finally:
        agent.listeners.remove(listener)


def test_a_refused_decision_never_energises_even_with_the_live_transaction_id(edges: SiteRunner,
                                                                            hostile: mqtt.Client) -> None:
    """The strongest forgery: the edge's own pending transaction id, in a decision the contract refuses
    (or a denial). Followed by a genuine denial so the request ends at once instead of timing out."""
    requests: list[RequestMsg] = []
    arrived = threading.Condition()

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with arrived:
            requests.append(RequestMsg.decode(msg.payload))
            arrived.notify_all()

    hostile.on_message = on_message
    hostile.subscribe(TOPICS.request("pi-lobby", "lobby_in"), qos=1)
    reader = edges.doors["lobby_in"].reader
    publish(hostile, TOPICS.server_availability(), b"online")
    reader.write_raw(b"\x02")  # an STX ends any half frame left in the parser
    assert edges.wait_edges_idle(10)

    cards = iter(range(0x100000, 0xFFFFFF))  # a new card each time: a repeat within 1 s is ignored by design

    @fuzz(scale=0.05)
    @given(data=st.data())
    def one(data: st.DataObject) -> None:
        before = len(requests)
        reader.write_raw(encode_em4100(f"0F00{next(cards):06X}"))
        with arrived:
            assert arrived.wait_for(lambda: len(requests) > before, 5), "the edge did not ask"
        tx = requests[-1].transaction
        forged = data.draw(mutated_mapping({**GRANT, "transaction": tx}))
        payload = dumps(forged)
        try:
            msg = DecisionMsg.decode(payload)
        except (MessageError, ValueError, OverflowError):
            msg = None  # refused by the contract (the ValueError and OverflowError ones are known bugs)
        if msg is not None and msg.granted and msg.transaction == tx and msg.door == "lobby_in":
            return  # still a valid grant for this request after mutation: not a forgery the edge can tell
        publish(hostile, DECISION_TOPIC, payload)
        publish(hostile, DECISION_TOPIC, DecisionMsg(tx, "lobby_in", False, "unknown_credential", None, 5.0,
                                                     "2026-03-02T08:55:00.000Z").encode())
        assert edges.wait_edges_idle(5)
        assert no_relay_moved(edges), edges.doors["lobby_in"].door.relay_history

    try:
        one()
    finally:
        hostile.unsubscribe(TOPICS.request("pi-lobby", "lobby_in"))
        hostile.on_message = None
    assert no_relay_moved(edges)
