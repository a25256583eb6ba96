"""atheris harness: the MQTT contract decoders and topic parser (doorkeep/contract.py).

First byte picks the target (request, decision, event decoder, or parse_topic on the rest as text);
anything but MessageError is a crash, and whatever decodes must encode and decode again unchanged.
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports():
    from doorkeep.contract import DecisionMsg, EventMsg, RequestMsg, parse_topic
    from doorkeep.errors import MessageError

from tests.fuzz.guard import only_raises
from tests.fuzz.harness import run

DECODERS = (RequestMsg, DecisionMsg, EventMsg)


def test_one(data: bytes) -> None:
    if not data:
        return
    which, payload = data[0] % 4, data[1:]
    with only_raises("contract", MessageError):
        if which == 3:
            parse_topic(payload.decode("utf-8", "surrogateescape"))
            return
        cls = DECODERS[which]
        msg = cls.decode(payload)
        assert cls.decode(msg.encode()).encode() == msg.encode()
        if isinstance(msg, DecisionMsg):
            assert msg.granted == msg.reason.startswith("granted") and 0 < msg.unlock_s <= 600


HASH = "3f" * 32
SEEDS = [
    b"\x00" + RequestMsg("tx-1", "lobby_in", HASH, "B2C3", "em4100", "2026-03-02T08:55:00.000Z", HASH).encode(),
    b"\x01" + DecisionMsg("tx-1", "lobby_in", True, "granted", "alice", 5.0, "2026-03-02T08:55:00.012Z").encode(),
    b"\x01" + DecisionMsg("tx-2", "lab", False, "no_access", None, 4, "t", violation=None).encode(),
    b"\x02" + EventMsg(id="ev1", seq=7, ts="t", device="pi-lobby", door="lobby_in", type="access",
                       decision="granted", reason="granted", decided_by="server", person="alice",
                       credential_hash=HASH, credential_last4="B2C3", transaction="tx-1", latency_ms=12.5,
                       snapshot="ev1", detail={"violation": "anti_passback"}).encode(),
    b"\x03doorkeep/v1/demo/pi-lobby/door/lobby_in/snapshot/ev1",
    b"\x03doorkeep/v1/demo/pi-lobby/availability",
]

if __name__ == "__main__":
    run("contract", test_one, SEEDS)
