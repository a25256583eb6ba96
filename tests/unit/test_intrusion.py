"""Intrusion signals (server/intrusion.py, docs/alarms.md "Intrusion signals"): card probing, PIN guessing
and door attacks raise one security alarm per subject, on the events' own time, from new events only, in
bounded memory; the thresholds come from site.toml [intrusion]."""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from doorkeep.clock import FakeClock, iso_ms
from doorkeep.config import BrokerConfig, IntrusionSettings, check, load_site_dir
from doorkeep.contract import EventMsg, Topics, parse_topic
from doorkeep.envelope import SnapshotKeys
from server.app import Server, bootstrap
from server.bus import _Work
from server.intrusion import MAX_TRACKED_KEYS, IntrusionDetector
from server.store import Store
from tests.unit.test_config import make_site, only

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "doorkeep" / "sites" / "demo"
HQ = ROOT / "firmware-config" / "sites" / "hq"
T0 = 1_775_000_000.0  # the events' own time (device clock), epoch s
_ids = itertools.count(1)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "data")
    yield s
    s.close()


@pytest.fixture
def det(store: Store, clock: FakeClock) -> IntrusionDetector:
    return IntrusionDetector(store, IntrusionSettings(), clock)


def card(n: int) -> str:
    return f"{n:064x}"


def refusal(at: float, *, door: str = "main_out", reason: str = "unknown_credential", cred: int = 1,
            device: str = "pi-entrance", eid: str | None = None, person: str | None = None) -> EventMsg:
    return EventMsg(id=eid or f"e{next(_ids)}", seq=next(_ids), ts=iso_ms(T0 + at), device=device, door=door,
                    type="access", decision="denied", reason=reason, decided_by="server", person=person,
                    credential_hash=card(cred), credential_last4=f"{cred % 10000:04d}")


def door_event(at: float, type: str, *, door: str = "lobby_in", device: str = "pi-lobby",
               detail: str | None = "opened") -> EventMsg:
    return EventMsg(id=f"e{next(_ids)}", seq=next(_ids), ts=iso_ms(T0 + at), device=device, door=door, type=type,
                    detail={"detail": detail} if type == "tamper" and detail else {})


def feed(det: IntrusionDetector, *events: EventMsg) -> None:
    for e in events:
        det.on_event(e, True)


def alarms(store: Store, type: str, **where: Any) -> list[dict[str, Any]]:
    return store.alarms(limit=None, type=type, **where)


# ------------------------------------------------------------ card probing at one reader


def test_attack_five_unknown_cards_at_one_reader_within_a_minute_raise_one_card_probing_alarm(
        det: IntrusionDetector, store: Store) -> None:
    feed(det, *(refusal(i * 10.0, cred=i, reason="unknown_credential" if i % 2 else "credential_inactive")
                for i in range(5)))
    [alarm] = alarms(store, "card_probing")
    assert (alarm["severity"], alarm["state"], alarm["door"], alarm["device"]) == ("alarm", "active", "main_out",
                                                                                    "pi-entrance")
    d = alarm["detail"]
    assert (d["signal"], d["door"], d["count"], d["window_s"], d["distinct_credentials"]) == ("door", "main_out",
                                                                                             5, 60.0, 5)
    assert d["credential_last4"] == ["0000", "0001", "0002", "0003", "0004"]
    assert (d["first_ts"], d["last_ts"]) == (iso_ms(T0), iso_ms(T0 + 40))
    # The attack goes on: still one alarm (not one per card), its detail follows the count.
    feed(det, refusal(45.0, cred=99))
    [alarm] = alarms(store, "card_probing")
    assert alarm["detail"]["count"] == 6 and alarm["occurrences"] == 1


def test_four_unknown_cards_at_one_reader_within_a_minute_stay_under_the_threshold(
        det: IntrusionDetector, store: Store) -> None:
    feed(det, *(refusal(i * 10.0, cred=i) for i in range(4)))
    feed(det, refusal(20.0, cred=7, door="floor3_in"))  # the fifth is at another reader
    assert alarms(store, "card_probing") == []


def test_five_unknown_cards_spread_over_more_than_the_window_raise_nothing(det: IntrusionDetector,
                                                                           store: Store) -> None:
    feed(det, *(refusal(i * 16.0, cred=i) for i in range(5)))  # 0 … 64 s: never five within 60 s
    assert alarms(store, "card_probing") == []
    feed(det, refusal(70.0, cred=50))  # 16, 32, 48, 64, 70: five within 60 s now
    assert len(alarms(store, "card_probing")) == 1


def test_a_backlog_arriving_newest_first_is_judged_on_the_events_own_time(det: IntrusionDetector,
                                                                          store: Store, clock: FakeClock) -> None:
    clock.advance(3600)  # an outbox drains an hour later, in reverse: arrival time must not matter
    feed(det, *(refusal(t, cred=i) for i, t in enumerate((40.0, 30.0, 20.0, 10.0, 0.0))))
    [alarm] = alarms(store, "card_probing")
    assert alarm["detail"]["count"] == 5 and alarm["detail"]["first_ts"] == iso_ms(T0)


def test_other_refusals_and_grants_at_a_reader_are_not_card_probing(det: IntrusionDetector, store: Store) -> None:
    feed(det, *(refusal(i, cred=i, reason="no_access") for i in range(3)),
         *(refusal(i, cred=10 + i, reason="lockdown") for i in range(3)))
    feed(det, *(EventMsg(id=f"g{i}", seq=i, ts=iso_ms(T0 + i), device="pi-entrance", door="main_out", type="access",
                         decision="granted", reason="granted", credential_hash=card(i)) for i in range(6)))
    assert alarms(store, "card_probing") == []


# ------------------------------------------------------------ one credential at many doors


DOORS = ("main_out", "floor3_in", "lab_in", "gym_in", "archive_in")


def test_attack_one_stolen_card_refused_at_four_doors_within_ten_minutes_raises_card_probing_for_it(
        det: IntrusionDetector, store: Store) -> None:
    feed(det, *(refusal(i * 120.0, door=d, reason="no_access", cred=4242, person="bob") for i, d in enumerate(DOORS[:4])))
    [alarm] = alarms(store, "card_probing")
    assert alarm["key"] == f"card_probing:credential:{card(4242)}"
    assert (alarm["door"], alarm["device"], alarm["severity"]) == (None, None, "alarm")
    d = alarm["detail"]
    assert (d["signal"], d["credential_last4"], d["door_count"], d["window_s"]) == ("credential", "4242", 4, 600.0)
    assert d["doors"] == sorted(DOORS[:4]) and d["person"] == "bob"


def test_one_card_refused_at_three_doors_or_at_four_more_than_ten_minutes_apart_raises_nothing(
        det: IntrusionDetector, store: Store) -> None:
    feed(det, *(refusal(i * 60.0, door=d, reason="credential_inactive", cred=7) for i, d in enumerate(DOORS[:3])))
    feed(det, refusal(120.0, door="main_out", reason="credential_inactive", cred=7))  # a door again: still 3
    feed(det, *(refusal(i * 201.0, door=d, reason="no_access", cred=8) for i, d in enumerate(DOORS[:4])))  # 603 s
    assert alarms(store, "card_probing") == []


def test_refusals_for_the_situation_at_many_doors_are_not_probing(det: IntrusionDetector, store: Store) -> None:
    """A lockdown or full areas refuse an honest person at door after door: that is no attack."""
    for reason in ("lockdown", "occupancy_full", "anti_passback", "awaiting_second_person", "server_timeout"):
        feed(det, *(refusal(i * 10.0, door=d, reason=reason, cred=3) for i, d in enumerate(DOORS)))
    assert alarms(store, "card_probing") == []


# ------------------------------------------------------------ PIN guessing


def test_attack_pin_guessing_across_three_cards_at_one_keypad_raises_pin_guessing(det: IntrusionDetector,
                                                                                  store: Store) -> None:
    """Per-card lockout stops each card after three wrong PINs; guessing across cards is only seen here."""
    guesses = [(0.0, 1, "wrong_pin"), (30.0, 1, "wrong_pin"), (60.0, 2, "wrong_pin"), (90.0, 2, "wrong_pin"),
               (280.0, 3, "pin_locked_out")]
    feed(det, *(refusal(t, door="comms_in", device="pi-wing", reason=r, cred=c) for t, c, r in guesses))
    [alarm] = alarms(store, "pin_guessing")
    assert (alarm["door"], alarm["device"], alarm["severity"]) == ("comms_in", "pi-wing", "alarm")
    d = alarm["detail"]
    assert (d["count"], d["distinct_credentials"], d["window_s"], d["threshold"]) == (5, 3, 300.0, 5)


def test_four_wrong_pins_in_five_minutes_and_a_fifth_later_stay_under_the_threshold(det: IntrusionDetector,
                                                                                   store: Store) -> None:
    feed(det, *(refusal(i * 60.0, door="comms_in", reason="wrong_pin", cred=i % 2) for i in range(4)))
    feed(det, refusal(301.0, door="comms_in", reason="wrong_pin", cred=5))  # 60, 120, 180, 301: four in 300 s
    feed(det, refusal(100.0, door="vault_in", reason="wrong_pin", cred=6))  # another keypad
    assert alarms(store, "pin_guessing") == []


# ------------------------------------------------------------ door attack


@pytest.mark.parametrize("first", ["forced_open", "tamper"])
def test_attack_door_forced_and_reader_tampered_within_a_minute_raises_door_attack_in_either_order(
        det: IntrusionDetector, store: Store, first: str) -> None:
    second = "tamper" if first == "forced_open" else "forced_open"
    a, b = door_event(0.0, first), door_event(59.0, second)
    feed(det, a, b)
    [alarm] = alarms(store, "door_attack")
    assert (alarm["door"], alarm["device"], alarm["severity"], alarm["source_event"]) == ("lobby_in", "pi-lobby",
                                                                                         "alarm", b.id)
    d = alarm["detail"]
    forced, tamper = (a, b) if first == "forced_open" else (b, a)
    assert (d["forced_open_event"], d["tamper_event"], d["seconds_apart"], d["window_s"]) == (forced.id, tamper.id,
                                                                                            59.0, 60.0)
    feed(det, door_event(70.0, "forced_open"))  # forced again: the same alarm, refreshed
    assert len(alarms(store, "door_attack")) == 1


def test_forced_and_tampered_too_far_apart_at_another_door_or_cover_restored_raise_nothing(
        det: IntrusionDetector, store: Store) -> None:
    feed(det, door_event(0.0, "forced_open"), door_event(61.0, "tamper"))
    feed(det, door_event(100.0, "forced_open", door="lobby_out"), door_event(1000.0, "tamper", door="lab",
                                                                             device="pi-floor7"))
    feed(det, door_event(2000.0, "tamper", door="lab", device="pi-floor7", detail="restored"),
         door_event(2010.0, "forced_open", door="lab", device="pi-floor7"))
    assert alarms(store, "door_attack") == []


# ------------------------------------------------------------ lifecycle, bounds, settings


def test_after_an_operator_resolves_the_alarm_only_a_new_burst_opens_a_new_one(det: IntrusionDetector,
                                                                               store: Store) -> None:
    feed(det, *(refusal(i, cred=i) for i in range(5)))
    [first] = alarms(store, "card_probing")
    assert store.resolve(first["id"], "desk", "guard sent; nobody there")
    feed(det, *(refusal(3600.0 + i, cred=100 + i) for i in range(4)))  # an hour later, four: under
    assert len(alarms(store, "card_probing")) == 1
    feed(det, refusal(3605.0, cred=200))
    assert sorted(a["state"] for a in alarms(store, "card_probing")) == ["active", "resolved"]


def test_a_flood_of_distinct_cards_keeps_memory_bounded(det: IntrusionDetector, store: Store) -> None:
    n = MAX_TRACKED_KEYS + 500
    feed(det, *(refusal(i * 0.001, door=DOORS[i % 5], reason="no_access", cred=i) for i in range(n)))
    assert det.tracked()["card_doors"] == MAX_TRACKED_KEYS
    # One reader flooded with unknown cards: the door's own history is capped too.
    feed(det, *(refusal(i * 0.01, cred=10**6 + i) for i in range(200)))
    assert len(det._probes.get("main_out")) <= 5 * 4
    assert alarms(store, "card_probing")[0]["detail"]["count"] == 20


def test_disabled_detector_raises_nothing(store: Store, clock: FakeClock) -> None:
    det = IntrusionDetector(store, IntrusionSettings(enabled=False), clock)
    feed(det, *(refusal(i, cred=i) for i in range(10)), door_event(0, "forced_open"), door_event(1, "tamper"))
    assert store.alarms(limit=None) == []


def test_thresholds_come_from_the_settings(store: Store, clock: FakeClock) -> None:
    det = IntrusionDetector(store, IntrusionSettings(probe_count=3, probe_window_s=10.0), clock)
    feed(det, refusal(0, cred=1), refusal(5, cred=2), refusal(11, cred=3))
    assert alarms(store, "card_probing") == []
    feed(det, refusal(12, cred=4))
    assert alarms(store, "card_probing")[0]["detail"]["count"] == 3


def test_an_unreadable_timestamp_is_counted_and_skipped(det: IntrusionDetector, store: Store) -> None:
    bad = EventMsg(id="bad", seq=1, ts="not-a-time", device="pi-entrance", door="main_out", type="access",
                   decision="denied", reason="unknown_credential", credential_hash=card(1))
    feed(det, *([bad] * 6))
    assert det.counters["bad_ts"] == 6 and alarms(store, "card_probing") == []


# ------------------------------------------------------------ through the server's bus


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    # Never started: the bus's store-thread entry point is called as a delivery would hand the events over.
    srv = bootstrap(load_site_dir(DEMO), tmp_path, BrokerConfig("mqtt://127.0.0.1:1", allow_plain=True),
                    key=secrets.token_bytes(32), signing_key=Ed25519PrivateKey.generate(),
                    snapshot_keys=SnapshotKeys.generate())
    srv.bus._client.ack = lambda mid, qos: None  # type: ignore[method-assign]
    yield srv
    srv.store.close()


def _work(server: Server, ev: EventMsg, mid: int) -> _Work:
    topic = parse_topic(Topics(server.site.id).event(ev.device, ev.door))
    return _Work("event", topic, ev.encode(), 1000.0 + mid, mid=mid, qos=1)


def test_attack_replayed_after_an_outage_is_not_counted_twice(server: Server) -> None:
    """The bus feeds the detector (bootstrap wires it); re-delivered events are duplicates and count for nothing."""
    four = [refusal(i * 5.0, door="lobby_in", device="pi-lobby", cred=i) for i in range(4)]
    server.bus._store_batch([_work(server, e, i) for i, e in enumerate(four, 1)])
    server.bus._store_batch([_work(server, e, 10 + i) for i, e in enumerate(four)])  # the outbox sends them again
    assert server.bus.counters["duplicate_events"] == 4
    assert server.store.alarms(limit=None, type="card_probing") == []
    server.bus._store_batch([_work(server, refusal(30.0, door="lobby_in", device="pi-lobby", cred=9), 20)])
    [alarm] = server.store.alarms(limit=None, type="card_probing")
    assert alarm["door"] == "lobby_in" and alarm["detail"]["count"] == 5


# ------------------------------------------------------------ site.toml [intrusion]


SITE_HEAD = (HQ / "site.toml").read_text()


def test_shipped_sites_load_with_the_default_thresholds() -> None:
    assert load_site_dir(DEMO).intrusion == IntrusionSettings()
    assert load_site_dir(HQ).intrusion == IntrusionSettings()


def test_intrusion_table_sets_every_threshold(tmp_path: Path) -> None:
    from tests.unit.test_config import SITE
    d = make_site(tmp_path / "s", site=SITE + """
[intrusion]
enabled = false
probe_count = 3
probe_window_s = 30
probe_doors = 2
probe_doors_window_s = 120.5
pin_guess_count = 4
pin_guess_window_s = 600
attack_window_s = 90
""")
    assert load_site_dir(d).intrusion == IntrusionSettings(False, 3, 30.0, 2, 120.5, 4, 600.0, 90.0)


def test_the_readers_thresholds_come_from_the_site_file_to_each_osdp_bus(tmp_path: Path) -> None:
    """The edge reads [intrusion] reader_* from its site file and gives them to every OSDP bus it builds."""
    from doorkeep.config import DoorHardware, LockConfig, ReaderConfig, load_intrusion_settings
    from edge.osdp.cp import CAUSE_CLEAR_NAK, CAUSE_HANDSHAKE_FAILED, build_buses, reader_signal_settings
    from tests.unit.test_config import SITE

    d = make_site(tmp_path / "s", site=SITE + "\n[intrusion]\nreader_clear_naks = 1\nreader_handshake_failures = 9\n"
                  "reader_window_s = 300\n")
    settings = load_intrusion_settings(d / "site.toml")
    assert (settings.reader_clear_naks, settings.reader_handshake_failures, settings.reader_window_s) == (1, 9, 300.0)
    hw = DoorHardware("x", ReaderConfig(url="loop://", protocol="osdp", secure_channel=False), LockConfig(pin=5))
    [reader] = build_buses({"x": hw}, lambda *a: None, **reader_signal_settings(settings)).values()
    assert reader.bus.signal_window_s == 300.0
    assert (reader.bus.signal_thresholds[CAUSE_CLEAR_NAK], reader.bus.signal_thresholds[CAUSE_HANDSHAKE_FAILED]) == (1, 9)
    bad = make_site(tmp_path / "b", site=SITE + "\n[intrusion]\nreader_clear_naks = 0\n")
    err = only(check(bad), "intrusion.reader_clear_naks")
    assert "must be 1 to 1000" in str(err)


@pytest.mark.parametrize(("line", "key", "words"), [
    ("probe_count = 1", "intrusion.probe_count", "must be 2 to 1000"),
    ("pin_guess_count = 100000", "intrusion.pin_guess_count", "must be 2 to 1000"),
    ("probe_window_s = 0", "intrusion.probe_window_s", "must be 1 to 86400 seconds"),
    ("attack_window_s = nan", "intrusion.attack_window_s", "must be 1 to 86400 seconds"),
    ("probe_doors = \"4\"", "intrusion.probe_doors", "must be int"),
    ("enabled = 1", "intrusion.enabled", "must be bool"),
    ("probe_cout = 5", "intrusion.probe_cout", "unknown key"),
])
def test_a_bad_intrusion_setting_names_file_key_and_fix(tmp_path: Path, line: str, key: str, words: str) -> None:
    from tests.unit.test_config import SITE
    d = make_site(tmp_path / "s", site=SITE + f"\n[intrusion]\n{line}\n")
    err = only(check(d), key)
    assert err.file == str(d / "site.toml") and words in str(err) and err.fix


# ------------------------------------------------------------ the scenario format


@pytest.mark.parametrize(("step", "words"), [
    ("  - expect_alarm:\n    card: \"0F00E5E5E5\"\n    type: tamper\n", "only card_probing is raised for a card"),
    ("  - expect_alarm: main_out\n    card: \"0F00E5E5E5\"\n    type: card_probing\n", "either a door or `card:`"),
    ("  - expect_alarm:\n    type: pin_guessing\n", "needs a door"),
    ("  - tamper: main_out\n", "has no tamper switch wired"),
    ("  - server: down\n  - expect_alarm: main_out\n    type: card_probing\n    count: 0\n",
     "raised by the server, which is down"),
])
def test_scenario_intrusion_steps_are_checked_before_anything_runs(tmp_path: Path, step: str, words: str) -> None:
    from simulators.scenario import ScenarioErrors, load_scenario
    f = tmp_path / "s.yaml"
    f.write_text(f'name: x\nsite: {HQ}\nstart: "2026-03-02 10:00"\nsteps:\n{step}')
    with pytest.raises(ScenarioErrors) as exc:
        load_scenario(f)
    assert words in str(exc.value)


def test_scenario_expects_an_intrusion_alarm_at_a_door_or_for_a_card(tmp_path: Path) -> None:
    from simulators.scenario import load_scenario
    f = tmp_path / "s.yaml"
    f.write_text(f'name: x\nsite: {DEMO}\nstart: "2026-03-02 10:00"\nsteps:\n  - tamper: lobby_in\n'
                 '  - expect_alarm: lobby_in\n    type: door_attack\n'
                 '  - expect_alarm:\n    card: "0F00E5E5E5"\n    type: card_probing\n    count: 0\n')
    steps = load_scenario(f).steps
    assert [s.text() for s in steps] == ["open the tamper switch at lobby_in", "expect at least 1 door_attack at lobby_in",
                                         "expect exactly 0 card_probing for card 0F00E5E5E5"]
