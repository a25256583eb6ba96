"""SIEM export (server/siem.py, server/store_siem.py, site.toml [siem]; docs/operations.md "SIEM (syslog)").

The formats are checked against parsers written here from RFC 5424 §6 and the CEF rules alone (not with the
module's own escaping), so an escaping mistake cannot check itself. The queue runs on a real SQLite store with a
FakeClock and a recording fake connection driven through ``Siem.run_once``: what is written, when it is confirmed,
what is sent again after a dropped connection, and how reconnection backs off. tests/e2e/test_siem.py sends to a
real rsyslog over TLS.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterator

import pytest

from doorkeep.clock import FakeClock, iso_ms
from doorkeep.config import SiemSettings, load_site_dir
from doorkeep.contract import EventMsg
from doorkeep.errors import ConfigErrors
from doorkeep.model import Person, PersonKind, Site
from doorkeep.sites import DEMO_SITE
from server.audit import AuditLog
from server.siem import (CEF_SEVERITY, MAX_MESSAGE, Header, Siem, alarm_record, audit_record, cef, cef_header,
                         event_record, frame, header_field, syslog_message)
from server.store import Store
from tests.syslog_collector import parse_5424, parse_cef, unframe

T0 = 1_796_029_200.0  # 2026-11-30 09:00 UTC
HOSTILE = 'Eve "]\\\n|= Mallory'  # every character the formats must escape, and a line break
CARD_HASH = "9f" * 32
HEADER = Header(facility=16, hostname="doorkeep-srv", app_name="doorkeep", procid="42")


# ----------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def site() -> Site:
    bundle = load_site_dir(DEMO_SITE)
    eve = Person("eve", HOSTILE, kind=PersonKind.VISITOR)
    return dataclasses.replace(bundle.site, people={**bundle.people, "eve": eve})


def event_row(**kw: Any) -> dict[str, Any]:
    row = {"id": "ev-1", "type": "access", "ts": "2026-11-30T09:00:00.250Z", "device": "pi-lobby", "door": "lobby_in",
           "decision": "granted", "reason": "granted", "decided_by": "server", "person": "alice",
           "credential_hash": CARD_HASH, "credential_last4": "1111", "seq": 7, "received_at": T0 + 0.3,
           "detail": '{"host": "bob"}'}
    row.update(kw)
    return row


# ----------------------------------------------------------------------- formats

def test_an_access_event_is_an_rfc5424_message_with_its_own_time_and_the_documented_structured_data(
        site: Site) -> None:
    line = syslog_message(event_record(event_row(), site, site_id="demo", include_names=False), HEADER)
    assert line == ('<134>1 2026-11-30T09:00:00.250Z doorkeep-srv doorkeep 42 access [doorkeep@32473 site="demo" '
                    'device="pi-lobby" door="lobby_in" decision="granted" reason="granted" decided_by="server" '
                    'person="alice" kind="employee" card_last4="1111" event="ev-1" seq="7"] '
                    'access granted at Lobby entrance')
    parsed = parse_5424(line)
    assert parsed["pri"] == 16 * 8 + 6 and parsed["sd_id"] == "doorkeep@32473"


def test_the_timestamp_is_the_events_own_text_to_the_millisecond(site: Site) -> None:
    for ts in ("2026-11-30T09:00:00.123Z", "2026-11-30T09:00:00.999Z", "2026-11-30T09:00:00.001Z"):
        rec = event_record(event_row(ts=ts), site, site_id="demo", include_names=False)
        assert parse_5424(syslog_message(rec, HEADER))["ts"] == ts
        assert parse_cef(cef(rec))["ext"]["rt"] == str(1_796_029_200_000 + int(ts[-4:-1]))
    odd = event_record(event_row(ts="2026-11-30T10:00:00+01:00"), site, site_id="demo", include_names=False)
    assert parse_5424(syslog_message(odd, HEADER))["ts"] == "2026-11-30T09:00:00.000Z"  # UTC, always


def test_a_denial_is_a_notice_naming_its_reason_and_a_forced_door_a_warning(site: Site) -> None:
    denied = parse_5424(syslog_message(event_record(event_row(decision="denied", reason="no_access", door="lab"),
                                                    site, site_id="demo", include_names=False), HEADER))
    assert denied["pri"] == 16 * 8 + 5 and denied["params"]["reason"] == "no_access"
    assert denied["msg"] == "access denied (no_access) at Floor 7 lab"
    forced = parse_5424(syslog_message(event_record(
        event_row(type="forced_open", decision=None, reason=None, person=None, credential_last4=None,
                  credential_hash=None), site, site_id="demo", include_names=False), HEADER))
    assert forced["pri"] == 16 * 8 + 4 and forced["msgid"] == "forced_open"
    assert "person" not in forced["params"] and "decision" not in forced["params"]


def test_no_card_number_hash_or_name_leaves_unless_names_are_configured(site: Site) -> None:
    row = event_row()
    for fmt in ("rfc5424", "cef"):
        header = dataclasses.replace(HEADER, format=fmt)
        plain = syslog_message(event_record(row, site, site_id="demo", include_names=False), header)
        assert CARD_HASH not in plain and "9f9f" not in plain and "Alice" not in plain and "bob" not in plain
        named = syslog_message(event_record(row, site, site_id="demo", include_names=True), header)
        assert "Alice Archer" in named and CARD_HASH not in named


def test_a_hostile_name_is_escaped_in_the_structured_data_and_stays_one_line(site: Site) -> None:
    line = syslog_message(event_record(event_row(person="eve"), site, site_id="demo", include_names=True), HEADER)
    assert "\n" not in line and "\r" not in line
    assert 'name="Eve \\"\\]\\\\ |= Mallory"' in line  # RFC 5424 §6.3.3: ", \ and ] escaped; the line break a space
    parsed = parse_5424(line)
    assert parsed["params"]["name"] == 'Eve "]\\ |= Mallory'
    assert parsed["params"]["person"] == "eve" and parsed["params"]["kind"] == "visitor"
    assert parsed["msg"] == 'access granted at Lobby entrance by Eve "]\\ |= Mallory'


def test_a_hostile_name_is_escaped_in_cef_and_every_field_comes_back(site: Site) -> None:
    line = syslog_message(event_record(event_row(person="eve"), site, site_id="demo", include_names=True),
                          dataclasses.replace(HEADER, format="cef"))
    parsed = parse_5424(line)
    assert parsed["sd_id"] is None and "\n" not in line
    assert "suser=Eve \"]\\\\\\n|\\= Mallory" in parsed["msg"]  # \ and = escaped, the line break as \n, | as is
    c = parse_cef(parsed["msg"])
    assert (c["vendor"], c["product"], c["signature"], c["name"], c["severity"]) == (
        "doorkeep", "doorkeep", "access", "Access granted", CEF_SEVERITY[6])
    ext = c["ext"]
    assert ext["suser"] == HOSTILE and ext["suid"] == "eve" and ext["outcome"] == "granted"
    assert ext["rt"] == str(int((T0 + 0.25) * 1000)) and ext["externalId"] == "ev-1" and ext["dvchost"] == "pi-lobby"
    assert (ext["cs1Label"], ext["cs1"], ext["cs2Label"], ext["cs2"]) == ("site", "demo", "door", "lobby_in")
    assert ext["cs5Label"] == "cardLast4" and ext["cs5"] == "1111"


def test_cef_header_fields_escape_pipes_and_backslashes() -> None:
    assert cef_header("a|b\\c\nd") == "a\\|b\\\\c d"
    rec = audit_record({"seq": 3, "ts": "2026-11-30T09:00:01.000Z", "actor": "ada", "action": "x.y|z",
                        "target": "door:lab", "details": '{"a":"b=c"}', "hash": "ab" * 32}, site_id="demo")
    c = parse_cef(cef(rec))
    assert c["signature"] == "audit:x.y|z" and c["name"] == "Audit x.y|z"
    assert c["ext"]["msg"] == '{"a":"b=c"}' and c["ext"]["act"] == "x.y|z" and c["ext"]["suser"] == "ada"


def test_an_alarm_takes_its_severity_from_the_sites_priority(site: Site) -> None:
    row = {"id": "al-1", "type": "forced_open", "severity": "alarm", "device": "pi-lobby", "door": "lobby_out",
           "raised_at": T0 + 1, "source_event": "ev-9"}
    parsed = parse_5424(syslog_message(alarm_record(row, site, site_id="demo"), HEADER))
    assert parsed["pri"] == 16 * 8 + 2 and parsed["msgid"] == "alarm_raised"  # forced_open is high: crit
    assert parsed["params"] == {"site": "demo", "device": "pi-lobby", "door": "lobby_out", "alarm": "al-1",
                                "type": "forced_open", "severity": "alarm", "priority": "high", "event": "ev-9"}
    assert parsed["msg"] == "Door forced open at Lobby exit gate" and parsed["ts"] == iso_ms(T0 + 1)
    low = alarm_record({**row, "type": "sequence_reset", "door": None}, site, site_id="demo")
    assert parse_5424(syslog_message(low, HEADER))["pri"] == 16 * 8 + 4


def test_an_audit_record_carries_its_actor_action_target_details_and_hash() -> None:
    row = {"seq": 12, "ts": "2026-11-30T09:00:02.125Z", "actor": "ada", "action": "door.unlock",
           "target": "door:lab", "details": '{"door":"lab"}', "hash": "cd" * 32}
    parsed = parse_5424(syslog_message(audit_record(row, site_id="demo"), HEADER))
    assert parsed["msgid"] == "audit" and parsed["pri"] == 16 * 8 + 5 and parsed["ts"] == row["ts"]
    assert parsed["params"] == {"site": "demo", "seq": "12", "actor": "ada", "action": "door.unlock",
                                "target": "door:lab", "hash": "cd" * 32}
    assert parsed["msg"] == 'ada door.unlock door:lab {"door":"lab"}'


def test_header_fields_are_printable_ascii_without_spaces() -> None:
    assert header_field("my host é", 255) == "my_host__"
    assert header_field("", 32) == "-"
    assert header_field("x" * 40, 32) == "x" * 32
    line = syslog_message(event_record(event_row(type="weird type"), load_site_dir(DEMO_SITE).site, site_id="demo",
                                       include_names=False), dataclasses.replace(HEADER, hostname="a b"))
    assert parse_5424(line)["msgid"] == "weird_type" and parse_5424(line)["hostname"] == "a_b"


def test_octet_counting_counts_utf8_bytes_and_a_long_message_is_cut_to_the_limit(site: Site) -> None:
    line = syslog_message(event_record(event_row(person="eve"), site, site_id="demo", include_names=True), HEADER)
    framed = frame(line + " é")
    assert unframe(framed + framed) == [line + " é"] * 2
    assert framed.startswith(str(len((line + " é").encode())).encode() + b" ")
    rec = audit_record({"seq": 1, "ts": "2026-11-30T09:00:00.000Z", "actor": "ada", "action": "a.b", "target": None,
                        "details": "é" * 20_000, "hash": "00"}, site_id="demo")
    for fmt in ("rfc5424", "cef"):
        long = syslog_message(rec, dataclasses.replace(HEADER, format=fmt))
        assert len(long.encode()) <= MAX_MESSAGE
        assert parse_5424(long)["msgid"] == "audit"


# ----------------------------------------------------------------------- the queue on a FakeClock

class FakeChannel:
    """A connection that records what it is sent; the test says whether it is alive and what is unacknowledged."""

    def __init__(self) -> None:
        self.data = b""
        self.up = True
        self.unacked_bytes: int | None = 0
        self.fail_send = False
        self.closed: bool | None = None  # graceful?
        self.drains = True

    def send(self, data: bytes) -> None:
        if self.fail_send or not self.up:
            raise BrokenPipeError("Broken pipe")
        self.data += data

    def alive(self) -> bool:
        return self.up

    def unacked(self) -> int | None:
        return self.unacked_bytes

    def close(self, graceful: bool) -> bool:
        self.closed = graceful
        return graceful and self.drains and self.up

    def messages(self) -> list[str]:
        return unframe(self.data)


class FakeConnector:
    def __init__(self) -> None:
        self.channels: list[FakeChannel] = []
        self.refuse = False
        self.attempts = 0

    def connect(self) -> FakeChannel:
        self.attempts += 1
        if self.refuse:
            raise ConnectionRefusedError("Connection refused")
        self.channels.append(FakeChannel())
        return self.channels[-1]

    def describe(self) -> str:
        return "tls://siem.test:6514"

    def sent(self) -> list[str]:
        return [m for ch in self.channels for m in ch.messages()]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(wall=T0)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "data")
    yield s
    s.close()


_seq = iter(range(1, 1_000_000))


def store_event(store: Store, clock: FakeClock, **kw: Any) -> str:
    n = next(_seq)
    fields = {"id": f"ev-{n}", "seq": n, "ts": iso_ms(clock.wall()), "device": "pi-lobby", "door": "lobby_in",
              "type": "access", "decision": "granted", "reason": "granted", "decided_by": "server",
              "person": "alice", "credential_hash": CARD_HASH, "credential_last4": "1111"}
    fields.update(kw)
    store.ingest_event(EventMsg(**fields), clock.wall())
    return str(fields["id"])


def make(store: Store, clock: FakeClock, site: Site, **settings: Any) -> tuple[Siem, FakeConnector]:
    connector = FakeConnector()
    conf = SiemSettings(**{"host": "siem.test", **settings})
    return Siem(store, clock, conf, site=lambda: site, site_id="demo", connector=connector, hostname="srv"), connector


def ids(messages: list[str]) -> list[str]:
    out = []
    for m in messages:
        p = parse_5424(m)["params"]
        out.append(p.get("event") if p.get("event") and parse_5424(m)["msgid"] != "alarm_raised"
                   else p.get("alarm") or f"audit:{p.get('seq')}")
    return out


def test_history_is_never_sent_and_what_is_stored_after_leaves_in_order(store: Store, clock: FakeClock,
                                                                        site: Site) -> None:
    store_event(store, clock)  # before forwarding was ever configured
    siem, conn = make(store, clock, site)
    first = store_event(store, clock)
    clock.advance(0.5)
    second = store_event(store, clock, decision="denied", reason="no_access")
    report = siem.run_once()
    assert (report.queued, report.written, report.confirmed) == (2, 2, 0)
    assert ids(conn.sent()) == [first, second]
    assert siem.stats()["depth"] == 2  # written, not confirmed yet


def test_a_written_message_is_confirmed_only_after_the_window_on_a_live_connection(store: Store, clock: FakeClock,
                                                                                  site: Site) -> None:
    siem, conn = make(store, clock, site, confirm_s=2.0)
    store_event(store, clock)
    siem.run_once()
    clock.advance(1.9)
    assert siem.run_once().confirmed == 0 and siem.stats()["depth"] == 1
    conn.channels[0].unacked_bytes = 120  # the collector's TCP has not acknowledged every byte
    clock.advance(0.2)
    assert siem.run_once().confirmed == 0
    conn.channels[0].unacked_bytes = 0
    assert siem.run_once().confirmed == 1
    assert siem.stats()["depth"] == 0 and siem.counters["sent"] == 1
    assert len(conn.sent()) == 1  # confirmed, never written again


def test_a_connection_dropped_before_confirmation_sends_the_unconfirmed_messages_again_in_order(
        store: Store, clock: FakeClock, site: Site) -> None:
    siem, conn = make(store, clock, site, confirm_s=2.0, retry_s=1.0)
    a = store_event(store, clock)
    siem.run_once()
    clock.advance(2.5)
    siem.run_once()  # a confirmed
    b = store_event(store, clock)
    c = store_event(store, clock)
    siem.run_once()  # b, c written
    conn.channels[0].up = False  # the collector restarted
    d = store_event(store, clock)
    report = siem.run_once()
    assert report.resent == 2 and not siem.connected and conn.channels[0].closed is False
    assert siem.run_once().written == 0 and conn.attempts == 1  # backing off: retry_s not over yet
    clock.advance(1.0)
    report = siem.run_once()
    assert report.written == 3 and conn.attempts == 2
    assert ids(conn.channels[0].messages()) == [a, b, c]
    assert ids(conn.channels[1].messages()) == [b, c, d]  # at least once: b and c twice, nothing lost
    clock.advance(2.0)
    assert siem.run_once().confirmed == 3 and siem.stats()["depth"] == 0
    assert siem.counters["resent"] == 2 and siem.counters["failures"] == 1


def test_a_write_that_fails_drops_the_connection_and_loses_nothing(store: Store, clock: FakeClock,
                                                                   site: Site) -> None:
    siem, conn = make(store, clock, site, retry_s=1.0)
    siem.run_once()
    conn.channels[0].fail_send = True
    a = store_event(store, clock)
    siem.run_once()
    assert not siem.connected
    clock.advance(1.0)
    siem.run_once()
    assert ids(conn.channels[1].messages()) == [a]


def test_connection_attempts_back_off_doubling_up_to_the_maximum(store: Store, clock: FakeClock, site: Site) -> None:
    siem, conn = make(store, clock, site, retry_s=1.0, max_retry_s=4.0)
    conn.refuse = True
    store_event(store, clock)
    times = []
    for _ in range(120):
        before = conn.attempts
        siem.run_once()
        if conn.attempts > before:
            times.append(clock.monotonic())
        clock.advance(0.25)
    gaps = [round(b - a, 2) for a, b in zip(times, times[1:])]
    assert gaps[:5] == [1.0, 2.0, 4.0, 4.0, 4.0]
    conn.refuse = False
    clock.advance(4.0)
    assert siem.run_once().written == 1 and siem.connected


def test_a_collector_that_never_acknowledges_is_dropped_after_the_timeout(store: Store, clock: FakeClock,
                                                                          site: Site) -> None:
    siem, conn = make(store, clock, site, confirm_s=2.0, timeout_s=10.0, retry_s=1.0)
    store_event(store, clock)
    siem.run_once()
    conn.channels[0].unacked_bytes = 300
    clock.advance(11.0)
    assert siem.run_once().confirmed == 0 and siem.connected
    clock.advance(1.5)
    assert siem.run_once().resent == 1 and not siem.connected
    clock.advance(1.0)
    siem.run_once()
    assert len(conn.channels[1].messages()) == 1


def test_a_clean_close_confirms_what_the_collector_read_and_a_restart_resends_the_rest(
        store: Store, clock: FakeClock, site: Site) -> None:
    siem, conn = make(store, clock, site)
    store_event(store, clock)
    siem.run_once()
    assert siem.close() is True and conn.channels[0].closed is True
    assert siem.stats()["depth"] == 0
    # A server that stops without the collector closing its side (or dies) keeps what was written: sent again.
    siem2, conn2 = make(store, clock, site)
    b = store_event(store, clock)
    siem2.run_once()
    conn2.channels[0].drains = False
    assert siem2.close() is False and siem2.stats()["depth"] == 1
    siem3, conn3 = make(store, clock, site)
    siem3.run_once()
    assert ids(conn3.sent()) == [b]


def test_after_a_close_the_collector_did_not_answer_the_same_process_writes_again_and_confirms_only_that(
        store: Store, clock: FakeClock, site: Site) -> None:
    siem, conn = make(store, clock, site, confirm_s=2.0)
    a = store_event(store, clock)
    siem.run_once()
    conn.channels[0].drains = False
    clock.advance(5.0)  # ripe, but the close comes first and proves nothing
    assert siem.close() is False and siem.stats()["depth"] == 1
    b = store_event(store, clock)
    siem.run_once()
    assert ids(conn.channels[1].messages()) == [a, b]
    clock.advance(1.0)
    assert siem.run_once().confirmed == 0  # nothing left over from the closed connection counts as ripe
    clock.advance(1.0)
    assert siem.run_once().confirmed == 2 and siem.stats()["depth"] == 0


def test_events_alarms_and_audit_records_leave_in_the_order_they_were_stored(store: Store, clock: FakeClock,
                                                                           site: Site) -> None:
    audit = AuditLog(store, clock)
    siem, conn = make(store, clock, site)
    ev = store_event(store, clock, type="forced_open", decision=None, reason=None, person=None,
                     credential_hash=None, credential_last4=None, door="lobby_out")
    alarm, _ = store.raise_alarm("forced_open", key=f"event:{ev}", at=clock.wall(), device="pi-lobby",
                                 door="lobby_out", source_event=ev, once=True)
    clock.advance(0.1)
    seq = audit.record("ada", "alarm.acknowledge", f"alarm:{alarm}", {"note": "checked"})
    clock.advance(0.1)
    later = store_event(store, clock)
    siem.run_once()
    sent = [parse_5424(m) for m in conn.sent()]
    assert [m["msgid"] for m in sent] == ["forced_open", "alarm_raised", "audit", "access"]
    assert ids(conn.sent()) == [ev, alarm, f"audit:{seq}", later]
    assert sent[1]["params"]["event"] == ev


def test_only_the_kinds_configured_are_sent_and_the_others_are_skipped_for_good(store: Store, clock: FakeClock,
                                                                               site: Site) -> None:
    audit = AuditLog(store, clock)
    siem, conn = make(store, clock, site, send=("audit",))
    store_event(store, clock)
    seq = audit.record("ada", "door.unlock", "door:lab", {})
    siem.run_once()
    assert ids(conn.sent()) == [f"audit:{seq}"]
    assert set(store.siem_cursors()) == {"events", "alarms", "audit_log"}
    assert store.siem_cursors()["events"][0] > 0  # moved past the event it does not send


def test_a_full_queue_stops_reading_and_drops_nothing(store: Store, clock: FakeClock, site: Site) -> None:
    siem, conn = make(store, clock, site, max_queue=100)
    conn.refuse = True
    stored = [store_event(store, clock) for _ in range(130)]
    siem.run_once()
    assert siem.stats()["depth"] == 100
    siem.run_once()
    assert siem.stats()["depth"] == 100  # the rest waits in the events table
    conn.refuse = False
    clock.advance(60)
    siem.run_once()
    clock.advance(3)
    for _ in range(3):
        siem.run_once()
        clock.advance(3)
    assert ids(conn.sent()) == stored and siem.stats()["depth"] == 0


def test_erasing_a_person_removes_the_queued_messages_that_name_them(store: Store, clock: FakeClock,
                                                                     site: Site) -> None:
    siem, conn = make(store, clock, site, include_names=True)
    conn.refuse = True
    store_event(store, clock, person="alice")
    store_event(store, clock, person="bob")
    siem.run_once()
    counts = store.erase_subject_rows("alice", "ps-0", [], lambda d: d, clock.wall())
    assert counts["siem"] == 1
    conn.refuse = False
    clock.advance(5)
    siem.run_once()
    assert [parse_5424(m)["params"]["person"] for m in conn.sent()] == ["bob"]


def test_the_worker_thread_sends_and_a_stop_closes_cleanly(store: Store, site: Site) -> None:
    from doorkeep.clock import SystemClock
    from tests.conftest import wait_until

    clock = SystemClock()
    connector = FakeConnector()
    siem = Siem(store, clock, SiemSettings(host="siem.test", confirm_s=0.2), site=lambda: site, site_id="demo",
                connector=connector, hostname="srv")
    siem.start()
    try:
        for _ in range(3):
            store.ingest_event(EventMsg(id=f"t-{next(_seq)}", seq=next(_seq), ts=iso_ms(clock.wall()),
                                        device="pi-lobby", door="lobby_in", type="door_opened"), clock.wall())
            siem.wake()
        assert wait_until(lambda: len(connector.sent()) == 3, 10)
        assert wait_until(lambda: siem.stats()["depth"] == 0, 10)
    finally:
        siem.stop()
    assert not siem.running and connector.channels[0].closed is True


# ----------------------------------------------------------------------- [siem] in site.toml

def load_with(tmp_path: Path, table: str) -> SiemSettings:
    import shutil

    site = tmp_path / "site"
    if not site.exists():
        shutil.copytree(DEMO_SITE, site)
        (site / "pki").mkdir()
        for name in ("ca.crt", "soc.crt", "soc.key"):
            (site / "pki" / name).write_text("-----BEGIN X-----\n")
    base = (DEMO_SITE / "site.toml").read_text()
    (site / "site.toml").write_text(base + "\n[siem]\n" + table)
    return load_site_dir(site).siem


def errors_of(tmp_path: Path, table: str) -> list[tuple[str, str, str]]:
    with pytest.raises(ConfigErrors) as info:
        load_with(tmp_path, table)
    return [(e.key, e.problem, e.fix) for e in info.value.errors]


def test_the_siem_table_defaults(tmp_path: Path) -> None:
    s = load_with(tmp_path, 'host = "siem.example.com"\n')
    assert s.enabled and (s.port, s.tls, s.format, s.send, s.app_name, s.facility) == (
        6514, True, "rfc5424", ("access", "alarms", "audit"), "doorkeep", 16)
    assert s.ca_file is None and s.cert_file is None and not s.include_names and s.file.endswith("site.toml")
    full = load_with(tmp_path, 'host = "10.0.0.9"\nport = 10514\nca_file = "pki/ca.crt"\ncert_file = "pki/soc.crt"\n'
                                'key_file = "pki/soc.key"\nformat = "cef"\nsend = ["alarms"]\napp_name = "dk"\n'
                                'facility = "authpriv"\nhostname = "door-server"\ninclude_names = true\n'
                                'max_queue = 500\ntimeout_s = 5\nretry_s = 2\nmax_retry_s = 30\nconfirm_s = 1\n')
    assert (full.port, full.format, full.send, full.facility, full.hostname, full.max_queue) == (
        10514, "cef", ("alarms",), 10, "door-server", 500)
    assert full.cert_file == tmp_path / "site" / "pki" / "soc.crt" and full.include_names
    assert load_with(tmp_path, 'host = "h"\ntls = false\nfacility = 20\n').port == 514
    assert load_site_dir(DEMO_SITE).siem.enabled is False


@pytest.mark.parametrize("table, key, words", [
    ("port = 1\n", "siem.host", "required"),
    ('host = "a b"\n', "siem.host", "not a host name"),
    ('host = "h"\nformat = "leef"\n', "siem.format", "unknown value"),
    ('host = "h"\nsend = ["access", "badges"]\n', "siem.send", "'badges'"),
    ('host = "h"\nsend = []\n', "siem.send", "distinct kinds"),
    ('host = "h"\ncert_file = "pki/soc.crt"\n', "siem.key_file", "required with cert_file"),
    ('host = "h"\nca_file = " "\n', "siem.ca_file", "is empty"),
    ('host = "h"\ntls = false\nca_file = "pki/ca.crt"\n', "siem.ca_file", "tls is false"),
    ('host = "h"\nfacility = "local9"\n', "siem.facility", "unknown facility"),
    ('host = "h"\nfacility = 24\n', "siem.facility", "unknown facility"),
    ('host = "h"\napp_name = "door keep"\n', "siem.app_name", "APP-NAME"),
    ('host = "h"\nport = 70000\n', "siem.port", "1 to 65535"),
    ('host = "h"\nretry_s = 10\nmax_retry_s = 5\n', "siem.max_retry_s", "less than retry_s"),
    ('host = "h"\nhots = 1\n', "siem.hots", "unknown key"),
], ids=lambda v: v if isinstance(v, str) and v.startswith("siem.") else None)
def test_a_bad_siem_value_names_the_file_the_key_and_the_fix(tmp_path: Path, table: str, key: str,
                                                             words: str) -> None:
    found = errors_of(tmp_path, table)
    hits = [e for e in found if e[0] == key]
    assert hits and words in hits[0][1] and hits[0][2], found


# ----------------------------------------------------------------------- TLS

def make_pki(root: Path, name: str = "siem-export") -> Path:
    from datetime import datetime, timezone

    from doorkeep.pki import init_ca, issue

    now = datetime.now(timezone.utc)
    init_ca(root, "demo", now=now)
    issue(root, "broker", now=now)  # a server certificate for 127.0.0.1: the collector's
    issue(root, name, now=now, role="integration", read_only=True)
    return root


class TlsCollector:
    """A one-connection TLS server on loopback: it requires a client certificate and keeps what it reads."""

    def __init__(self, pki: Path) -> None:
        import socket
        import ssl
        import threading

        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(pki / "broker.crt", pki / "broker.key")
        self.ctx.load_verify_locations(pki / "ca.crt")
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.data = b""
        self.peer: str | None = None
        self.error: str | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        conn.settimeout(5)
        try:
            with self.ctx.wrap_socket(conn, server_side=True) as tls:
                cert = tls.getpeercert() or {}
                self.peer = dict(x[0] for x in cert.get("subject", ()))["commonName"]
                while chunk := tls.recv(65536):
                    self.data += chunk
                tls.unwrap()
        except OSError as exc:
            self.error = str(exc)
        finally:
            self.listener.close()


def test_tls_verifies_the_collector_presents_the_integration_certificate_and_a_clean_close_drains(
        tmp_path: Path) -> None:
    from server.siem import connector_for

    pki = make_pki(tmp_path / "pki")
    server = TlsCollector(pki)
    settings = SiemSettings(host="127.0.0.1", port=server.port, ca_file=pki / "ca.crt",
                            cert_file=pki / "siem-export.crt", key_file=pki / "siem-export.key", timeout_s=5)
    channel = connector_for(settings, None).connect()
    channel.send(frame("<134>1 - - - - - - one") + frame("<134>1 - - - - - - two"))
    assert channel.alive() and channel.close(graceful=True) is True
    server.thread.join(5)
    assert server.peer == "siem-export" and unframe(server.data) == ["<134>1 - - - - - - one", "<134>1 - - - - - - two"]


def test_a_collector_whose_certificate_the_ca_did_not_sign_is_refused(tmp_path: Path, clock: FakeClock, site: Site,
                                                                      store: Store) -> None:
    import ssl

    from server.siem import connector_for

    ours, theirs = make_pki(tmp_path / "ours"), make_pki(tmp_path / "theirs")
    server = TlsCollector(theirs)
    settings = SiemSettings(host="127.0.0.1", port=server.port, ca_file=ours / "ca.crt",
                            cert_file=ours / "siem-export.crt", key_file=ours / "siem-export.key", timeout_s=5)
    connector = connector_for(settings, None)
    with pytest.raises(ssl.SSLCertVerificationError):
        connector.connect()
    server.thread.join(5)
    siem = Siem(store, clock, settings, site=lambda: site, site_id="demo", connector=connector)
    store_event(store, clock)
    assert siem.run_once().written == 0 and siem.counters["failures"] == 1 and siem.stats()["depth"] == 1


def test_a_key_others_can_read_a_mismatched_pair_or_a_bad_ca_stop_the_start_naming_the_key(tmp_path: Path) -> None:
    import ssl

    from doorkeep.errors import ConfigError
    from server.siem import tls_context

    pki = make_pki(tmp_path / "pki")
    good = SiemSettings(host="h", cert_file=pki / "siem-export.crt", key_file=pki / "siem-export.key",
                        file="site.toml")
    ctx = tls_context(good, pki / "ca.crt")
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert any(dict(x[0] for x in c["subject"]).get("organizationName") == "doorkeep site demo"
               for c in ctx.get_ca_certs())  # the site CA, beside the system's
    (pki / "siem-export.key").chmod(0o644)
    with pytest.raises(ConfigError) as info:
        tls_context(good, None)
    assert info.value.key == "siem.key_file" and "chmod 600" in info.value.fix and info.value.file == "site.toml"
    (pki / "siem-export.key").chmod(0o600)
    with pytest.raises(ConfigError) as info:
        tls_context(dataclasses.replace(good, key_file=pki / "broker.key"), None)
    assert info.value.key == "siem.cert_file"
    (tmp_path / "bad.crt").write_text("not a certificate\n")
    with pytest.raises(ConfigError) as info:
        tls_context(dataclasses.replace(good, ca_file=tmp_path / "bad.crt"), None)
    assert info.value.key == "siem.ca_file"
    with pytest.raises(ConfigError) as info:  # a file not there (yet) stops the server's start, naming the key
        tls_context(dataclasses.replace(good, ca_file=tmp_path / "missing.crt"), None)
    assert info.value.key == "siem.ca_file" and "missing.crt" in info.value.problem


def test_the_site_loads_while_its_siem_certificate_is_not_issued_yet(tmp_path: Path) -> None:
    """`doorkeep pki issue soc` reads the site too: a [siem] table naming the certificate it is about to write
    must not stop it (the server's start checks the files instead)."""
    s = load_with(tmp_path, 'host = "h"\ncert_file = "pki/soc-new.crt"\nkey_file = "pki/soc-new.key"\n')
    assert s.cert_file is not None and s.cert_file.name == "soc-new.crt" and not s.cert_file.exists()
