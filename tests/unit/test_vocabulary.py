"""One vocabulary (doorkeep/vocabulary.py, DESIGN §9): event types, alarm types and reason codes are declared
once, and every consumer derives from that declaration or is checked against it here: the docs' tables (both
ways), the contract's decoder, the edge's published events, supervision's alarm mapping, the intrusion and
broker-log watchers, the store (which refuses an undeclared alarm), the desk's labels and the scenario format.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from doorkeep import vocabulary
from doorkeep.clock import FakeClock
from doorkeep.contract import EVENT_TYPES, EventMsg
from doorkeep.decision import Reason
from doorkeep.errors import MessageError
from doorkeep.vocabulary import (
    ADDRESS,
    ALARMS,
    CREDENTIAL,
    EDGE_EVENT,
    EVENTS,
    INTRUSION,
    REASONS,
    SECURITY,
    SOURCES,
    alarms_about,
    alarms_from,
)
from server.app import Server
from server.store import Store
from server.supervision import Supervisor
from simulators.scenario import ScenarioErrors, load_scenario
from tests.unit import test_desk_live as live_tests
from tests.unit import test_desk_visitors as visitor_tests
from tests.unit.test_desk_visitors import login

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
DEMO = ROOT / "doorkeep" / "sites" / "demo"

# The same real server, app and client as the desk tests (pytest finds fixtures by module attribute).
clock, server, app, client = visitor_tests.clock, visitor_tests.server, visitor_tests.app, visitor_tests.client


def table_after(doc: str, heading: str, first_column: str) -> list[list[str]]:
    """The rows (cells, stripped) of the first markdown table after ``heading`` whose header starts with
    ``| first_column |``."""
    text = (DOCS / doc).read_text()
    start = text.index(heading)
    lines = text[start:].splitlines()
    for i, line in enumerate(lines):
        if line.startswith(f"| {first_column} |"):
            rows = []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    return rows
                rows.append([c.strip() for c in row.strip().strip("|").split(" | ")])
            return rows
    raise AssertionError(f"no table starting with {first_column!r} after {heading!r} in docs/{doc}")


def names(cell: str) -> list[str]:
    return re.findall(r"`([a-z_]+)`", cell)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "data")
    yield s
    s.close()


# ------------------------------------------------------------------ the declaration itself


def test_the_vocabulary_is_consistent_with_itself() -> None:
    assert vocabulary.problems() == []
    assert set(SOURCES) == {"edge_event", "supervision", "intrusion", "security", "violation"}
    # reader_security was missing from two of the old lists: it is an edge alarm like the others now.
    assert "reader_security" in alarms_from(EDGE_EVENT) and EVENTS["reader_security"].raises == "reader_security"


def test_reason_codes_are_derived_from_the_enum_each_with_a_desk_label() -> None:
    assert list(REASONS) == [r.value for r in Reason]
    assert all(REASONS[r.value].granted == r.granted for r in Reason)
    labels = [rc.label for rc in REASONS.values()]
    assert len(set(labels)) == len(labels) and all(label.strip() for label in labels)
    assert all(label != code for code, label in zip(REASONS, labels))  # never the raw code
    assert vocabulary.reason_label("credential_inactive") == "Card not active (lost, revoked)"
    assert vocabulary.reason_label("some_future_code") == "some_future_code"  # shown as it is, never hidden
    assert vocabulary.reason_label(None) is None


# ------------------------------------------------------------------ the docs' tables, both ways


def test_every_alarm_type_is_in_the_alarms_table_with_its_severity_and_label_and_nothing_else() -> None:
    rows = table_after("alarms.md", "## Types", "type")
    documented = {names(r[0])[0]: r for r in rows}
    assert len(documented) == len(rows), "an alarm type is listed twice in docs/alarms.md"
    assert sorted(documented) == sorted(ALARMS), "docs/alarms.md 'Types' and doorkeep/vocabulary.py differ"
    for name, row in documented.items():
        assert (row[1], row[2]) == (ALARMS[name].severity, ALARMS[name].label), name


def test_the_alarms_source_table_lists_each_sources_alarms() -> None:
    rows = table_after("alarms.md", "### One vocabulary", "source")
    assert {names(r[0])[0]: names(r[2]) for r in rows} == {s: list(alarms_from(s)) for s in SOURCES}


def test_every_event_type_is_in_the_mqtt_table_and_every_type_there_is_declared() -> None:
    rows = table_after("mqtt.md", "Event types:", "type")
    documented = [n for r in rows for n in names(r[0])]
    assert len(set(documented)) == len(documented), "an event type is listed twice in docs/mqtt.md"
    assert set(documented) == vocabulary.WIRE_EVENT_TYPES
    reserved = {n for r in rows if "reserved" in r[1] for n in names(r[0])}
    assert reserved == {e.name for e in EVENTS.values() if e.wire and not e.published}
    mqtt = (DOCS / "mqtt.md").read_text()
    never_on_wire = mqtt[mqtt.index("never on the wire"):][:300]
    assert all(f"`{n}`" in never_on_wire for n in vocabulary.SERVER_EVENT_TYPES)
    with_snapshot = re.search(r"Events with a snapshot: ([^(]*)\(", mqtt)
    assert with_snapshot is not None and set(names(with_snapshot.group(1))) == vocabulary.SNAPSHOT_EVENTS


def test_every_reason_code_is_in_the_reason_table_with_its_outcome_and_label_and_nothing_else() -> None:
    rows = table_after("reason-codes.md", "## Codes", "code")
    documented = {names(r[0])[0]: r for r in rows}
    assert len(documented) == len(rows), "a reason code is listed twice in docs/reason-codes.md"
    assert sorted(documented) == sorted(REASONS), "docs/reason-codes.md 'Codes' and doorkeep.decision.Reason differ"
    for code, row in documented.items():
        assert row[1] == ("granted" if REASONS[code].granted else "denied"), code
        assert row[2] == REASONS[code].label, code


def test_every_alarm_a_scenario_can_expect_is_named_in_the_scenarios_doc() -> None:
    doc = (DOCS / "scenarios.md").read_text()
    missing = [a for a in alarms_from(EDGE_EVENT, INTRUSION, SECURITY) if f"`{a}`" not in doc and f"{a}|" not in doc
               and f"|{a}" not in doc]
    assert not missing, f"alarm types a scenario can expect, missing from docs/scenarios.md: {missing}"


# ------------------------------------------------------------------ the consumers


def test_the_contract_decodes_exactly_the_wire_event_types() -> None:
    assert EVENT_TYPES == vocabulary.WIRE_EVENT_TYPES
    for name in EVENTS:
        msg = EventMsg(id="e1", seq=1, ts="2026-03-30T09:00:00.000Z", device="pi-lobby", door="lobby_in", type=name,
                       decision="denied" if name == "access" else None)
        if EVENTS[name].wire:
            assert EventMsg.decode(msg.encode()).type == name
        else:  # recorded by the server only: an edge sending one is refused like any unknown type
            with pytest.raises(MessageError):
                EventMsg.decode(msg.encode())


def test_the_edge_publishes_the_declared_door_events_and_snapshots() -> None:
    from edge.agent import PUBLISHED_DOOR_EVENTS, SNAPSHOT_EVENTS

    assert PUBLISHED_DOOR_EVENTS == {e.name for e in EVENTS.values() if e.door_machine and e.published}
    assert "unlocked" not in PUBLISHED_DOOR_EVENTS and "tamper" in PUBLISHED_DOOR_EVENTS
    assert SNAPSHOT_EVENTS == {"access", "forced_open", "tamper", "tailgate", "forced_passage"}


@pytest.mark.parametrize("etype", sorted(vocabulary.EVENT_ALARMS))
def test_every_alarm_event_raises_its_declared_alarm_with_its_declared_severity(store: Store, etype: str) -> None:
    sup = Supervisor(store, FakeClock(), devices=["pi-lobby"])
    e = EventMsg(id=f"e-{etype}", seq=1, ts="2026-03-30T09:00:00.000Z", device="pi-lobby", door="lobby_in",
                 type=etype)
    sup.on_event(e, store.ingest_event(e, 0.0))
    alarm = ALARMS[EVENTS[etype].raises or ""]
    [row] = store.open_alarms(type=alarm.name)
    assert (row["severity"], row["door"], row["source_event"]) == (alarm.severity, "lobby_in", e.id)
    for restorer in (ev.name for ev in EVENTS.values() if alarm.name in ev.restores):
        closed = EventMsg(id=f"r-{restorer}", seq=2, ts="2026-03-30T09:00:01.000Z", device="pi-lobby",
                          door="lobby_in", type=restorer)
        sup.on_event(closed, store.ingest_event(closed, 0.0))
        assert store.open_alarms(type=alarm.name)[0]["state"] == "cleared", restorer


def test_events_that_raise_no_alarm_raise_none(store: Store) -> None:
    sup = Supervisor(store, FakeClock(), devices=["pi-lobby"])
    quiet = [n for n, e in EVENTS.items() if e.wire and not e.raises]
    for seq, name in enumerate(quiet, 1):
        e = EventMsg(id=f"q{seq}", seq=seq, ts="2026-03-30T09:00:00.000Z", device="pi-lobby", door="lobby_in",
                     type=name, **({"decision": "granted", "reason": "granted"} if name == "access" else {}))
        sup.on_event(e, store.ingest_event(e, 0.0))
    assert store.open_alarms() == []


def test_attack_device_reports_an_undeclared_violation_and_no_undeclared_alarm_is_stored(store: Store) -> None:
    sup = Supervisor(store, FakeClock(), devices=["pi-lobby"])
    base = dict(ts="2026-03-30T09:00:00.000Z", device="pi-lobby", door="lobby_in", type="access",
                decision="granted", reason="granted", person="alice")
    odd = EventMsg(id="v1", seq=1, detail={"violation": "tailgating"}, **base)  # type: ignore[arg-type]
    sup.on_event(odd, store.ingest_event(odd, 0.0))  # must not raise: the store thread keeps ingesting
    assert store.open_alarms() == [] and sup.counters["unknown_violation"] == 1
    soft = EventMsg(id="v2", seq=2, detail={"violation": "anti_passback"}, **base)  # type: ignore[arg-type]
    sup.on_event(soft, store.ingest_event(soft, 0.0))
    [row] = store.open_alarms()
    assert (row["type"], row["severity"]) == ("anti_passback_violation", ALARMS["anti_passback_violation"].severity)


def test_store_refuses_an_alarm_type_the_vocabulary_does_not_declare(store: Store) -> None:
    with pytest.raises(ValueError, match="not declared"):
        store.raise_alarm("door_kicked", key="door_kicked-1", at=1.0, door="lab")
    with pytest.raises(ValueError, match="severity"):
        store.raise_alarm("forced_open", key="forced_open-1", at=1.0, severity="info")  # a changed severity
    assert store.alarms(limit=None) == []
    alarm_id, new = store.raise_alarm("device_offline", key="device_offline:pi", at=1.0, device="pi")
    assert new and store.alarm(alarm_id)["severity"] == ALARMS["device_offline"].severity  # the declared default


def test_every_module_that_raises_alarms_names_declared_types() -> None:
    from server import brokerlog, intrusion, supervision

    assert intrusion.INTRUSION_ALARMS == alarms_from(INTRUSION)
    assert (intrusion.CARD_PROBING, intrusion.PIN_GUESSING, intrusion.DOOR_ATTACK) == alarms_from(INTRUSION)
    assert alarms_from(SECURITY) == (brokerlog.CERTIFICATE_REFUSED,)
    assert brokerlog.SEVERITY == ALARMS[brokerlog.CERTIFICATE_REFUSED].severity
    for name in (supervision.DEVICE_OFFLINE, supervision.EVENT_GAP, supervision.SEQUENCE_RESET,
                 supervision.DEVICE_MISBEHAVING):
        assert ALARMS[name].source == "supervision"
    assert dict(supervision.EVENT_ALARMS) == dict(vocabulary.EVENT_ALARMS)
    assert dict(supervision.RESTORED_BY) == dict(vocabulary.RESTORED_BY)


def test_the_desk_has_a_title_for_every_alarm_type() -> None:
    from server.web.alarms import TYPE_NAMES, alarm_name

    assert set(TYPE_NAMES) == set(ALARMS)
    for name, alarm in ALARMS.items():
        assert alarm_name(name) == alarm.label
    assert alarm_name("retired_type") == "Retired type"  # an old row keeps a readable title


def test_the_live_view_shows_a_lost_card_as_words_not_a_code(client: TestClient, server: Server) -> None:
    login(client, "dex")
    live_tests.ingest(server, live_tests.event("ev-lost", 1, decision="denied", reason="credential_inactive",
                                               snapshot=None))
    (row,) = client.get("/api/v1/events").json()["events"]
    assert (row["reason"], row["reason_label"]) == ("credential_inactive", "Card not active (lost, revoked)")
    js = (ROOT / "server" / "web" / "static" / "live.js").read_text()
    assert "row.reason_label" in js  # the page renders the label (and keeps the code on hover)


SCENARIO_HEAD = f'name: test\nsite: {DEMO}\nstart: "2026-03-02 09:00"\nsteps:\n'


def expectation(alarm: str) -> str:
    """The ``expect_alarm`` step for this alarm type, written for what it is about."""
    if ADDRESS in ALARMS[alarm].subjects:
        return f"  - expect_alarm:\n    type: {alarm}\n"
    return f"  - expect_alarm: lab\n    type: {alarm}\n"


@pytest.mark.parametrize("alarm", alarms_from(EDGE_EVENT, INTRUSION, SECURITY))
def test_the_scenario_format_accepts_every_alarm_a_scenario_can_expect(tmp_path: Path, alarm: str) -> None:
    path = tmp_path / "scenario.yaml"
    path.write_text(SCENARIO_HEAD + expectation(alarm))
    [step] = load_scenario(path).steps
    assert (step.verb, step.options["type"]) == ("expect_alarm", alarm)


def test_the_scenario_format_accepts_card_alarms_for_a_card_and_refuses_undeclared_types(tmp_path: Path) -> None:
    path = tmp_path / "scenario.yaml"
    for alarm in alarms_about(CREDENTIAL):
        path.write_text(SCENARIO_HEAD + f'  - expect_alarm:\n    card: "0F00A1B2C3"\n    type: {alarm}\n')
        assert load_scenario(path).steps[0].options["type"] == alarm
    path.write_text(SCENARIO_HEAD + "  - expect_alarm: lab\n    type: door_kicked\n")
    with pytest.raises(ScenarioErrors) as exc:
        load_scenario(path)
    assert "door_kicked" in str(exc.value.errors[0])
