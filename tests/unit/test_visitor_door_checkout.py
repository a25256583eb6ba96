"""Check-out by the pass at an exit door (issue 17, "After"): a door with ``visitor_checkout = true``
(doorkeep/config.py) where a visitor's pass is granted checks the visit out (server/visitors.py
``DoorCheckout``), from the stored access event, so an offline grant that arrives late counts too; a pool
badge there, or a denied pass, only does what any door does.

Real parts: a ``Server`` bootstrapped on a copy of the demo site with the lobby exit gate marked, a real
SQLite store and pass key, real decisions through ``Directory.decide``, events through the bus's real ingest
entry point (``ServerBus._store_one``), the desk's API over FastAPI's TestClient, a fake clock.
"""

from __future__ import annotations

import json
import secrets
import shutil
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from doorkeep.clock import FakeClock, iso_ms
from doorkeep.config import BrokerConfig, load_site_dir
from doorkeep.contract import EventMsg, Topics, parse_topic
from doorkeep.decision import AccessRequest
from doorkeep.envelope import SnapshotKeys
from doorkeep.errors import ConfigErrors
from doorkeep.model import CredentialState
from server.app import Server, bootstrap
from server.bus import _Work
from server.passes import PassKeys
from tests.unit.test_visitor_badge import DEMO, MONDAY_9, actions, check_in, login, make_app, register


def marked_site(tmp_path: Path, value: str = "true") -> Path:
    """The demo site with ``visitor_checkout`` written on the lobby exit gate (whatever the demo itself says)."""
    site = tmp_path / "site"
    shutil.copytree(DEMO, site)
    toml = site / "site.toml"
    text = toml.read_text().replace("visitor_checkout = true\n", "")
    marker = '[doors.lobby_out]\nname = "Lobby exit gate"\n'
    assert marker in text
    toml.write_text(text.replace(marker, marker + f"visitor_checkout = {value}\n"))
    return site


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(wall=MONDAY_9)


@pytest.fixture
def server(tmp_path: Path, clock: FakeClock) -> Iterator[Server]:
    srv = bootstrap(load_site_dir(marked_site(tmp_path)), tmp_path / "data", BrokerConfig("mqtt://127.0.0.1:9"),
                    key=secrets.token_bytes(32), signing_key=Ed25519PrivateKey.generate(),
                    snapshot_keys=SnapshotKeys.generate(), clock=clock,
                    pass_keys=PassKeys(Ed25519PrivateKey.generate()))
    yield srv
    srv.store.close()


@pytest.fixture
def visit(server: Server, clock: FakeClock) -> tuple[str, str, str]:
    """A visitor registered at the desk and checked in: (visit id, pass hash, pool badge hash)."""
    client = TestClient(make_app(server, clock), raise_server_exceptions=False, follow_redirects=False)
    vid = register(client, login(client, "dex"))
    check_in(server, vid)
    held = server.passes.ensure_pass(vid, actor="test")  # no relay here, so no invitation issued one
    badge = server.directory.visitor(vid).card_hash
    assert badge and server.site.credentials[held.credential_hash].state is CredentialState.ACTIVE
    return vid, held.credential_hash, badge


def exit_event(server: Server, eid: str, person: str, credential_hash: str, **kw: Any) -> EventMsg:
    ev = EventMsg(id=eid, seq=int(eid[-1]), ts=iso_ms(server.directory.clock.wall()), device="pi-lobby",
                  door="lobby_out", type="access", decision="granted", reason="granted", decided_by="server",
                  person=person, credential_hash=credential_hash, credential_last4="0001", transaction=f"tx-{eid}",
                  latency_ms=3.0)
    return replace(ev, **kw)  # type: ignore[arg-type]


def ingest(server: Server, ev: EventMsg) -> None:
    """Through the bus's store-thread entry point, as an MQTT delivery is handed over."""
    topic = parse_topic(Topics(server.site.id).event(ev.device, ev.door))
    server.bus._store_one(_Work("event", topic, ev.encode(), server.directory.clock.wall()))


def status(server: Server, vid: str) -> str:
    return server.directory.visitor(vid).status


def test_the_setting_is_read_per_door_and_a_non_boolean_is_a_clear_error(tmp_path: Path) -> None:
    site = load_site_dir(marked_site(tmp_path / "a")).site
    assert site.doors["lobby_out"].visitor_checkout is True
    assert site.doors["lobby_in"].visitor_checkout is False
    with pytest.raises(ConfigErrors) as exc:
        load_site_dir(marked_site(tmp_path / "b", '"yes"'))
    assert "visitor_checkout" in str(exc.value) and "must be bool" in str(exc.value)


def test_a_pass_granted_at_the_exit_gate_checks_the_visit_out_and_ends_the_pass(
        server: Server, visit: tuple[str, str, str]) -> None:
    vid, pass_hash, badge = visit
    decision = server.directory.decide(AccessRequest("lobby_out", pass_hash))
    assert decision.granted and decision.person == vid
    ingest(server, exit_event(server, "ev-1", vid, pass_hash))
    assert status(server, vid) == "checked_out"
    assert server.site.credentials[pass_hash].state is CredentialState.REVOKED  # the pass opens nothing now
    assert server.directory.decide(AccessRequest("lobby_in", pass_hash)).reason.value == "credential_inactive"
    assert not server.directory.decide(AccessRequest("lobby_in", badge)).granted  # back in the pool, as at the desk
    rec = next(a for a in actions(server) if a["action"] == "visitor.door_check_out")
    details = rec["details"] if isinstance(rec["details"], dict) else json.loads(rec["details"])
    assert rec["actor"] == "door:lobby_out" and details == {"door": "lobby_out", "event": "ev-1",
                                                            "decided_by": "server"}
    assert vid not in json.dumps(rec)  # a pseudonym, never the visit id
    assert any(a["action"] == "visitor.check_out" and a["actor"] == "door:lobby_out" for a in actions(server))
    # The same event delivered again changes nothing, and raises nothing.
    ingest(server, exit_event(server, "ev-1", vid, pass_hash))
    assert sum(a["action"] == "visitor.door_check_out" for a in actions(server)) == 1


def test_an_offline_grant_arriving_late_checks_the_visit_out(server: Server, clock: FakeClock,
                                                             visit: tuple[str, str, str]) -> None:
    vid, pass_hash, _ = visit
    ts = iso_ms(clock.wall())
    clock.advance(600)  # the edge was cut off; its event reaches the server ten minutes later
    ingest(server, exit_event(server, "ev-2", vid, pass_hash, ts=ts, decided_by="edge_offline",
                              reason="granted_offline"))
    assert status(server, vid) == "checked_out"


def test_a_badge_or_a_denied_pass_at_the_exit_gate_does_not_check_out(server: Server,
                                                                      visit: tuple[str, str, str]) -> None:
    vid, pass_hash, badge = visit
    ingest(server, exit_event(server, "ev-3", vid, badge, decided_by="edge_offline", reason="granted_offline"))
    assert status(server, vid) == "checked_in"
    assert server.directory.state.presence[vid].area == "outside"  # the badge moved presence, as at any door
    ingest(server, exit_event(server, "ev-4", vid, pass_hash, decision="denied", reason="outside_schedule"))
    assert status(server, vid) == "checked_in"
    # A pass granted at a door without the setting (the lobby entry) does not either.
    ingest(server, exit_event(server, "ev-5", vid, pass_hash, door="lobby_in"))
    assert status(server, vid) == "checked_in"
    assert not any(a["action"] == "visitor.door_check_out" for a in actions(server))
    assert server.site.credentials[pass_hash].state is CredentialState.ACTIVE
