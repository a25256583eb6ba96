"""The impact preview's engine (doorkeep/replay.py): a proposed site judged against recorded badges."""

from __future__ import annotations

import dataclasses
from datetime import datetime, time, timezone
from typing import Any

import pytest

from doorkeep.decision import AccessRequest, DecisionState, Reason, commit, decide
from doorkeep.model import (
    AccessEntry,
    AccessLevel,
    AntiPassback,
    Area,
    Credential,
    Door,
    Person,
    PersonKind,
    Schedule,
    Site,
    TimeWindow,
)
from doorkeep.replay import OFFLINE, PIN, VISITOR, LockdownChange, RecordedAttempt, render_text, replay, summary

WEEK = frozenset({"mon", "tue", "wed", "thu", "fri", "sat", "sun"})
WEEKDAYS = frozenset({"mon", "tue", "wed", "thu", "fri"})
#: Monday 2026-03-02 00:00 UTC (the site's time zone is UTC, so local hours are UTC hours).
MONDAY = datetime(2026, 3, 2, tzinfo=timezone.utc).timestamp()


def at(hour: float, day: int = 0) -> float:
    return MONDAY + day * 86400 + hour * 3600


def make_site(*, lab_anti_passback: AntiPassback = AntiPassback.NONE, pin_door: bool = False) -> Site:
    """Outside -> lobby -> lab; staff: the lobby around the clock; lab: the lab in business hours."""
    areas = {a.id: a for a in (Area("outside", "Outside"), Area("lobby", "Lobby"),
                               Area("lab", "Lab", restricted=True, anti_passback=lab_anti_passback))}
    doors = {d.id: d for d in (Door("lobby_in", "Lobby in", "outside", "lobby"),
                               Door("lab_in", "Lab in", "lobby", "lab", pin_required=pin_door),
                               Door("lab_out", "Lab out", "lab", "lobby"))}
    schedules = {s.id: s for s in (Schedule("always", "Always", (TimeWindow(WEEK, time(0), None),)),
                                   Schedule("business", "Business", (TimeWindow(WEEKDAYS, time(7), time(19)),)))}
    levels = {lv.id: lv for lv in (
        AccessLevel("staff", "Staff", (AccessEntry("lobby", "always"), AccessEntry("outside", "always"))),
        AccessLevel("lab", "Lab", (AccessEntry("lab", "business"),)))}
    people = {p.id: p for p in (
        Person("alice", "Alice", access_levels=("staff", "lab"), pin_hash="pin-alice"),
        Person("bob", "Bob", access_levels=("staff",), pin_hash="pin-bob"),
        Person("chen", "Chen", access_levels=("staff", "lab"), pin_hash="pin-chen"),
        Person("vera", "Vera", kind=PersonKind.VISITOR, host="alice", allowed_areas=("lobby", "lab")))}
    creds = {f"h-{pid}": Credential(f"h-{pid}", "0000", "em4100", pid) for pid in people}
    return Site("t", "Test", "UTC", areas, doors, schedules, levels, people, creds)


def recorded(site: Site, badges: list[tuple[float, str, str]], *, pin: bool = False) -> list[RecordedAttempt]:
    """What a server running ``site`` would have recorded for these badges (time, door, person): decided live."""
    state = DecisionState()
    out = []
    for ts, door, who in badges:
        typed = site.people[who].pin_hash if pin else None
        req = AccessRequest(door, f"h-{who}", typed)
        d = decide(req, site, state, ts)
        commit(req, d, site, state, ts)
        out.append(RecordedAttempt(ts, door, f"h-{who}", d.granted, d.reason.value, d.person, pin=pin))
    return out


def without_level(site: Site, level: str) -> Site:
    levels = dict(site.access_levels)
    del levels[level]
    return dataclasses.replace(site, access_levels=levels)


def test_removing_an_access_level_flips_exactly_its_holders_grants_with_no_access() -> None:
    site = make_site()
    badges = [(at(9), "lobby_in", p) for p in ("alice", "bob", "chen")]
    badges += [(at(9.1), "lab_in", "alice"), (at(9.2), "lab_in", "bob"), (at(9.3), "lab_in", "chen"),
               (at(10), "lab_out", "alice"), (at(11), "lab_in", "alice")]
    report = replay(recorded(site, badges), site, without_level(site, "lab"))

    assert set(report.to_refused) == {("granted", "no_access")}
    assert report.grants_to_refusals == 3 and report.refusals_to_grants == 0
    assert {p: (i.to_refused, i.to_granted) for p, i in report.people.items()} == {"alice": (2, 0), "chen": (1, 0)}
    assert set(report.doors) == {"lab_in"}, "the lobby and the lab's exit into the lobby are unaffected"
    examples = report.to_refused[("granted", "no_access")].examples
    assert {e.person for e in examples} == {"alice", "chen"} and all(e.door == "lab_in" for e in examples)
    assert summary(report).startswith("2 people / 1 door would change: 3 grants become refusals (no_access 3)")


def test_narrowed_schedule_flips_only_the_badges_outside_the_new_hours() -> None:
    site = make_site()
    narrow = dataclasses.replace(site, schedules={
        **site.schedules, "business": Schedule("business", "Business", (TimeWindow(WEEKDAYS, time(9), time(17)),))})
    hours = [7.5, 8.9, 9.0, 12, 16.9, 17.0, 18.5]
    report = replay(recorded(site, [(at(h), "lab_in", "alice") for h in hours]), site, narrow)

    flipped = report.to_refused[("granted", "outside_schedule")]
    assert flipped.count == 4
    assert sorted((e.ts - MONDAY) / 3600 for e in flipped.examples) == [7.5, 8.9, 17.0, 18.5]
    assert report.granted_before == 7 and report.granted_after == 3
    assert not report.to_granted


def test_anti_passback_state_is_rebuilt_from_the_replay_in_order() -> None:
    hard = make_site(lab_anti_passback=AntiPassback.HARD)
    # In, in again (refused: already inside), out, in again (granted: presence followed the exit).
    badges = [(at(9), "lab_in", "alice"), (at(9.5), "lab_in", "alice"), (at(10), "lab_out", "alice"),
              (at(10.5), "lab_in", "alice")]
    record = recorded(hard, badges)
    assert [r.reason for r in record] == ["granted", "anti_passback", "granted", "granted"]

    same = replay(record, hard, hard)
    assert same.honesty.same_reason == 4, "the current replay rebuilds presence exactly as the server did"
    relaxed = replay(record, hard, make_site(lab_anti_passback=AntiPassback.NONE))
    assert relaxed.to_granted[("anti_passback", "granted")].count == 1
    assert relaxed.grants_to_refusals == 0


def test_anti_passback_introduced_by_the_proposal_refuses_a_second_entry_without_an_exit() -> None:
    site = make_site()
    badges = [(at(9), "lab_in", "alice"), (at(9.5), "lab_in", "alice")]
    report = replay(recorded(site, badges), site, make_site(lab_anti_passback=AntiPassback.HARD))
    assert report.to_refused[("granted", "anti_passback")].count == 1
    assert report.to_refused[("granted", "anti_passback")].examples[0].ts == at(9.5)


def test_pin_attempt_the_record_cannot_vouch_for_is_reported_not_judged() -> None:
    site = make_site(pin_door=True)
    # Bob has no lab level: refused before the PIN rule, so nobody knows whether his PIN was right.
    record = recorded(site, [(at(9), "lab_in", "bob")], pin=True)
    assert record[0].reason == "no_access"
    bob_in_lab = dataclasses.replace(site, people={
        **site.people, "bob": dataclasses.replace(site.people["bob"], access_levels=("staff", "lab"))})
    report = replay(record, site, bob_in_lab)

    assert report.judged == 0 and not report.to_granted, "a grant that needs an unknown PIN is never guessed"
    assert report.not_judged[PIN].count == 1
    assert "PIN" in render_text(report)


def test_pin_attempt_granted_on_record_is_judged_with_the_pin_then_typed() -> None:
    site = make_site(pin_door=True)
    record = recorded(site, [(at(9), "lab_in", "alice"), (at(9), "lab_in", "chen")], pin=True)
    assert [r.reason for r in record] == ["granted", "granted"]
    new_pin = dataclasses.replace(site, people={
        **site.people, "alice": dataclasses.replace(site.people["alice"], pin_hash="pin-alice-2")})
    report = replay(record, site, new_pin)
    assert report.judged == 2 and report.honesty.same_reason == 2
    # Alice typed her old PIN: with the new one in the proposed site, that badge would be refused.
    assert report.to_refused[("granted", "wrong_pin")].examples[0].person == "alice"
    assert set(report.people) == {"alice"}


def test_unchanged_site_gives_zero_flips_and_an_honest_full_agreement() -> None:
    site = make_site(lab_anti_passback=AntiPassback.SOFT)
    badges = [(at(h, day), door, who) for day in range(3) for h in (6, 8, 12, 20)
              for door in ("lobby_in", "lab_in", "lab_out") for who in ("alice", "bob", "chen")]
    record = recorded(site, badges)
    report = replay(record, site, site)

    assert report.attempts == report.judged == len(badges)
    assert not report.to_refused and not report.to_granted and report.reason_changed == 0
    assert report.honesty.same_reason == report.honesty.judged == len(badges)
    assert report.honesty.agreement == 1.0
    assert summary(report).startswith("no grant or refusal would change")


def test_replay_disagreeing_with_the_record_is_counted_as_honesty_not_as_a_flip() -> None:
    site = make_site()
    # Recorded on a day when bob still had the lab level (people edited since): the replay cannot know.
    record = [RecordedAttempt(at(9), "lab_in", "h-bob", True, "granted", "bob")]
    report = replay(record, site, site)
    assert report.honesty.judged == 1 and report.honesty.same_outcome == 0
    assert report.honesty.disagreements[("granted", "no_access")].count == 1
    assert not report.to_refused


def test_offline_and_visitor_badges_are_not_judged_but_still_move_the_state() -> None:
    hard = make_site(lab_anti_passback=AntiPassback.HARD)
    record = [
        # The edge let alice in on its own (server unreachable) ...
        RecordedAttempt(at(9), "lab_in", "h-alice", True, "granted_offline", "alice", decided_by="edge_offline"),
        # ... so the server refused her second entry: the replay must know she is inside.
        RecordedAttempt(at(9.5), "lab_in", "h-alice", False, "anti_passback", "alice"),
        RecordedAttempt(at(9.6), "lobby_in", "h-vera", True, "granted", "vera", visitor=True),
    ]
    report = replay(record, hard, hard)
    assert report.not_judged[OFFLINE].count == 1 and report.not_judged[VISITOR].count == 1
    assert report.judged == 1 and report.honesty.same_reason == 1


def test_recorded_lockdowns_are_replayed_at_their_time() -> None:
    site = make_site()
    record = [LockdownChange(at(9), "lab", True),
              RecordedAttempt(at(9.5), "lab_in", "h-alice", False, "lockdown", "alice"),
              RecordedAttempt(at(9.6), "lobby_in", "h-alice", True, "granted", "alice"),
              LockdownChange(at(10), "lab", False),
              RecordedAttempt(at(10.5), "lab_in", "h-alice", True, "granted", "alice")]
    report = replay(record, site, without_level(site, "lab"))
    assert report.lockdown_changes == 2
    assert report.honesty.same_reason == 3, "refused during the lockdown, granted after, as recorded"
    # Only the badge after the lockdown is lost to the change: during it, both sites refuse.
    assert report.to_refused[("granted", "no_access")].count == 1
    assert report.reason_changed == 0, "the lockdown rule comes before access levels: refused for it in both"


def test_store_streams_access_and_lockdown_events_since_a_time_in_order_across_batches(tmp_path) -> None:
    from doorkeep.contract import EventMsg
    from server.replay import records
    from server.store import Store

    store = Store(tmp_path)
    try:
        def ev(i: int, ts: str, type_: str = "access", **kw: object) -> EventMsg:
            return EventMsg(id=f"e{i}", seq=i, ts=ts, device="pi", door="lab_in", type=type_, **kw)  # type: ignore[arg-type]

        same = "2026-03-02T09:00:00.000Z"
        store.ingest_events([
            (ev(0, "2026-03-01T09:00:00.000Z", decision="granted", reason="granted", credential_hash="h-alice"), 0),
            (ev(1, same, decision="granted", reason="granted", credential_hash="h-alice"), 0),
            (ev(2, same, "door_opened"), 0),
            (ev(3, same, "lockdown", detail={"scope": "lab", "active": True}), 0),
            (ev(4, same, decision="denied", reason="lockdown", credential_hash="h-bob"), 0),
            (ev(5, "2026-03-02T10:00:00.000Z", decision="denied", reason="no_access", credential_hash="h-bob"), 0),
        ])
        rows = list(store.access_events_since("2026-03-02T00:00:00.000Z", batch=2))
        assert [r.id for r in rows] == ["e1", "e3", "e4", "e5"], "no event lost or repeated at a batch boundary"
        out = list(records(rows, make_site(), frozenset(), frozenset()))
        assert out[1] == LockdownChange(at(9), "lab", True)
        assert [(r.granted, r.reason) for r in out if isinstance(r, RecordedAttempt)] == [
            (True, "granted"), (False, "lockdown"), (False, "no_access")]
    finally:
        store.close()


def test_the_replay_on_two_cores_reports_exactly_what_one_process_does() -> None:
    """server/replay.py runs the proposed side in a forked child and feeds its codes back: same report."""
    import importlib.util
    import random
    from pathlib import Path

    from server.replay import replay_on_two_cores

    path = Path(__file__).resolve().parents[2] / "bench" / "replay.py"
    spec = importlib.util.spec_from_file_location("bench_replay", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)  # its generated hq population and live-decided recording
    rng = random.Random(5)
    site = bench.build_site(300, rng)
    levels = dict(site.access_levels)
    del levels[bench.REMOVED]
    proposed = dataclasses.replace(site, access_levels=levels)
    recorded = bench.record(site, 3000, 2, rng)
    one = replay(recorded, site, proposed)
    two = replay_on_two_cores(lambda: recorded, site, proposed)
    assert one.grants_to_refusals > 0
    assert two.to_dict() == one.to_dict()


# ------------------------------------------------------------------ the engine's speed-ups change nothing


def _bench() -> object:
    """bench/replay.py as a module: its generated hq population and live-decided recording."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "replay.py"
    spec = importlib.util.spec_from_file_location("bench_replay", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def rich_recording() -> tuple[list[RecordedAttempt | LockdownChange], Site, Site]:
    """The hq site (anti-passback, a two-person vault, occupancy limits, PIN doors) with 300 people, 4,000 badges
    decided live over two days, lockdowns of the lab and of the site, and attempts no replay may judge
    (offline, visitor, no card) or a card nobody holds; the proposal removes an access level."""
    import random

    bench: Any = _bench()
    rng = random.Random(5)
    site = bench.build_site(300, rng)
    out: list[RecordedAttempt | LockdownChange] = []
    lockdowns = {1000: ("lab", True), 1400: ("lab", False), 2000: ("site", True), 2100: ("site", False)}
    for i, r in enumerate(bench.record(site, 4000, 2, rng)):
        if i in lockdowns:
            out.append(LockdownChange(r.ts - 1, *lockdowns[i]))
        if i % 97 == 0:
            r = dataclasses.replace(r, decided_by="edge_offline", reason="granted_offline", granted=True)
        elif i % 89 == 0:
            r = dataclasses.replace(r, visitor=True)
        elif i % 83 == 0:
            r = dataclasses.replace(r, credential_hash=None)
        elif i % 79 == 0:
            r = dataclasses.replace(r, credential_hash="f" * 64, granted=False, reason="unknown_credential", person=None)
        out.append(r)
    levels = dict(site.access_levels)
    del levels[bench.REMOVED]
    return out, site, dataclasses.replace(site, access_levels=levels)


def test_the_engine_reports_on_a_rich_recording_exactly_what_it_reported_before_it_was_made_faster() -> None:
    """Figures of the engine as it was before the speed-ups (one decide() and commit() per attempt and side,
    an object per request and code): the same recording must give the same report."""
    recorded, site, proposed = rich_recording()
    r = replay(recorded, site, proposed)
    d = r.to_dict()
    assert {k: d[k] for k in ("attempts", "judged", "not_judged_total", "lockdown_changes", "granted_before",
                              "granted_after", "grants_to_refusals", "refusals_to_grants", "reason_changed")} == {
        "attempts": 4000, "judged": 3866, "not_judged_total": 134, "lockdown_changes": 4, "granted_before": 2034,
        "granted_after": 1790, "grants_to_refusals": 244, "refusals_to_grants": 0, "reason_changed": 267}
    assert [(g["before"], g["after"], g["count"]) for g in d["to_refused"]] == [("granted", "no_access", 244)]
    assert [(n["why"], n["count"]) for n in d["not_judged"]] == [("no_credential", 48), ("visitor", 44), ("offline", 42)]
    assert (r.honesty.same_outcome, r.honesty.same_reason, len(r.people), len(r.doors)) == (3814, 3749, 148, 3)


def test_side_codes_cross_the_pipe_in_chunks_that_start_small_and_say_the_same() -> None:
    from doorkeep.replay import side_code_chunks, side_codes

    recorded, site, proposed = rich_recording()
    chunks = list(side_code_chunks(recorded, proposed, site, size=2048))
    assert [len(c) for c in chunks] == [1024, 2048, 928], "the first chunk small, so the comparison starts at once"
    assert b"".join(chunks) == bytes(side_codes(recorded, proposed, site))
    assert replay(recorded, site, proposed, proposed_codes=iter(b"".join(chunks))).to_dict() == \
        replay(recorded, site, proposed).to_dict()


def test_the_two_processes_reading_different_records_is_caught_and_replayed_in_one_process(
        caplog: pytest.LogCaptureFixture) -> None:
    """An event stored with an older time while the replay runs (an edge's outbox flushed late) reaches one
    process and not the other: the codes no longer line up, so the report would be wrong. It is caught (count
    and digest of the records each read) and the replay is made again in one process."""
    import os

    from server.replay import replay_on_two_cores

    recorded, site, proposed = rich_recording()
    parent = os.getpid()
    late = dataclasses.replace(recorded[10], ts=recorded[10].ts + 0.5)  # type: ignore[arg-type]

    def make_records() -> list[RecordedAttempt | LockdownChange]:
        return recorded if os.getpid() == parent else [*recorded[:11], late, *recorded[11:]]

    with caplog.at_level("WARNING", logger="doorkeep.server.replay"):
        two = replay_on_two_cores(make_records, site, proposed)
    assert two.to_dict() == replay(recorded, site, proposed).to_dict()
    assert "different records" in caplog.text

    def failing() -> list[RecordedAttempt | LockdownChange]:
        if os.getpid() != parent:
            raise RuntimeError("the child's store cannot be read")
        return recorded

    caplog.clear()
    with caplog.at_level("WARNING", logger="doorkeep.server.replay"):
        alone = replay_on_two_cores(failing, site, proposed)
    assert alone.to_dict() == two.to_dict() and "ended early" in caplog.text


def test_a_proposed_side_process_that_falls_silent_is_given_up_and_the_replay_made_in_one_process(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fork of a busy server can inherit a lock another thread held: the child then waits forever."""
    import os
    import threading

    import server.replay
    from server.replay import replay_on_two_cores

    recorded, site, proposed = rich_recording()
    parent, never = os.getpid(), threading.Event()
    monkeypatch.setattr(server.replay, "CHILD_SILENCE_S", 0.3)

    def stuck_in_child() -> list[RecordedAttempt | LockdownChange]:
        if os.getpid() != parent:
            never.wait()
        return recorded

    with caplog.at_level("WARNING", logger="doorkeep.server.replay"):
        report = replay_on_two_cores(stuck_in_child, site, proposed)
    assert report.to_dict() == replay(recorded, site, proposed).to_dict()
    assert "sent nothing for 0.3 s" in caplog.text


def test_a_report_fed_fewer_proposed_codes_than_attempts_is_refused_not_miscounted() -> None:
    from doorkeep.replay import ReplayMismatch, side_codes

    recorded, site, proposed = rich_recording()
    codes = list(side_codes(recorded, proposed, site))
    with pytest.raises(ReplayMismatch, match="3,999 attempts"):
        replay(recorded, site, proposed, proposed_codes=iter(codes[:-1]))


def test_the_proposed_side_starts_while_another_thread_holds_stdin_reading(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """`doorkeep demo` has a thread blocked reading typed badges from stdin, which holds stdin's lock. A
    multiprocessing child closes stdin as it starts, so it waited for ever and every preview in the demo took
    the 20 s silence timeout and then ran in one process. The bare fork touches no standard stream."""
    import io
    import os
    import sys
    import threading

    import server.replay
    from server.replay import replay_on_two_cores

    recorded, site, proposed = rich_recording()
    monkeypatch.setattr(server.replay, "CHILD_SILENCE_S", 5.0)
    r, w = os.pipe()
    blocked_stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(r, "r")))
    monkeypatch.setattr(sys, "stdin", blocked_stdin)
    reading = threading.Event()

    def read_typed_badges() -> None:
        reading.set()
        blocked_stdin.readline()  # holds the buffer's lock until a line comes

    reader = threading.Thread(target=read_typed_badges, daemon=True)
    reader.start()
    assert reading.wait(5)
    try:
        with caplog.at_level("WARNING", logger="doorkeep.server.replay"):
            two = replay_on_two_cores(lambda: recorded, site, proposed)
        assert "this process instead" not in caplog.text, caplog.text
        assert two.to_dict() == replay(recorded, site, proposed).to_dict()
    finally:
        os.write(w, b"\n")
        reader.join(5)
        os.close(w)
