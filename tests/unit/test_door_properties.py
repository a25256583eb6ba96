"""Properties of the door state machine: the relay follows grants, REX and holds, nothing else;
the sounder sounds exactly for an open door with an alarm or a running pre-alarm."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from doorkeep.clock import FakeClock
from edge.door import DoorEvent, DoorMachine, DoorState, DoorTimings

# Everything that can happen at a door except an unlock: contact changes, the tamper loop,
# ticks and time passing.
NO_UNLOCK = st.lists(st.one_of(
    st.tuples(st.just("contact"), st.booleans()),
    st.tuples(st.just("tamper"), st.booleans()),
    st.tuples(st.just("tick"), st.floats(min_value=0.0, max_value=120.0)),
), max_size=40)

# Everything, unlocks included.
ANY_STEP = st.one_of(
    st.tuples(st.just("contact"), st.booleans()),
    st.tuples(st.just("tamper"), st.booleans()),
    st.tuples(st.just("tick"), st.floats(min_value=0.0, max_value=40.0)),
    st.tuples(st.just("grant"), st.none()),
    st.tuples(st.just("rex"), st.none()),
    st.tuples(st.just("hold"), st.booleans()),
    st.tuples(st.just("safe"), st.none()),
)
ANY = st.lists(ANY_STEP, max_size=60)
TIMINGS = st.builds(
    DoorTimings,
    unlock_s=st.sampled_from([2.0, 5.0, 60.0]),
    held_open_s=st.sampled_from([5.0, 10.0, 30.0]),
    rex_unlocks=st.booleans(),
    prealarm_s=st.sampled_from([0.0, 3.0, 10.0, 40.0]),
)


def step(m: DoorMachine, clock: FakeClock, kind: str, arg: object) -> list[DoorEvent]:
    if kind == "contact":
        return m.contact(bool(arg))
    if kind == "tamper":
        return m.tamper(bool(arg))
    if kind == "tick":
        clock.advance(float(arg))  # type: ignore[arg-type]
        return m.tick()
    if kind == "grant":
        return m.grant()
    if kind == "rex":
        return m.rex()
    if kind == "hold":
        return m.hold_unlocked(bool(arg))
    return m.safe()


@settings(max_examples=300, deadline=None)
@given(NO_UNLOCK)
def test_without_grant_rex_or_hold_the_relay_is_never_energised(steps) -> None:
    clock = FakeClock()
    m = DoorMachine("d", DoorTimings(unlock_s=5, held_open_s=10), clock)
    for kind, arg in steps:
        step(m, clock, kind, arg)
        assert m.relay_energised is False
        assert m.state is not DoorState.UNLOCKED


@settings(max_examples=300, deadline=None)
@given(NO_UNLOCK, st.floats(min_value=0.0, max_value=4.9))
def test_a_grant_energises_only_until_expiry_or_the_door_closes(steps, after) -> None:
    clock = FakeClock()
    m = DoorMachine("d", DoorTimings(unlock_s=5, held_open_s=10), clock)
    m.grant()
    assert m.relay_energised
    clock.advance(after)
    m.tick()
    for kind, arg in steps:
        step(m, clock, kind, arg)
    clock.advance(5.0)
    m.tick()
    assert m.relay_energised is False, "the unlock window must always end"


@settings(max_examples=400, deadline=None)
@given(TIMINGS, ANY)
def test_relay_is_energised_only_by_a_running_unlock_or_a_hold(timings, steps) -> None:
    """Energised => held by the schedule, or within unlock_s of the last energising grant/REX.

    Tamper changes, contact changes and time never energise it.
    """
    clock = FakeClock()
    m = DoorMachine("d", timings, clock)
    last_unlock = None
    for kind, arg in steps:
        before = m.relay_energised
        events = step(m, clock, kind, arg)
        if kind == "grant" or (kind == "rex" and timings.rex_unlocks):
            last_unlock = clock.monotonic()
        if kind in ("contact", "tamper", "tick", "safe"):
            assert "unlocked" not in [e.type for e in events]
            assert not (m.relay_energised and not before), f"{kind} energised the relay"
        if m.relay_energised:
            assert m.held_unlocked or (last_unlock is not None and clock.monotonic() < last_unlock + timings.unlock_s)


@settings(max_examples=400, deadline=None)
@given(TIMINGS, ANY)
def test_sounder_sounds_exactly_for_an_open_door_with_an_alarm_or_running_prealarm(timings, steps) -> None:
    """The sounder invariant, checked after every input.

    Define *cause* from what the machine reported: it is set by
    ``forced_open``, ``held_open_warning`` or ``held_open``, cleared by
    ``door_opened`` and ``door_closed``, and a schedule hold that starts
    keeps it only if an alarm is raised (it cancels a pre-alarm). Then:

    - the sounder is on exactly when the door is open and *cause* holds;
    - in particular it is off whenever the door is closed, and on whenever the
      door is in alarm (an alarm exists only while the door is open).
    """
    clock = FakeClock()
    m = DoorMachine("d", timings, clock)
    cause = False
    for kind, arg in steps:
        was_held = m.held_unlocked
        for e in step(m, clock, kind, arg):
            if e.type in ("forced_open", "held_open_warning", "held_open"):
                cause = True
            elif e.type in ("door_opened", "door_closed"):
                cause = False
        if kind == "hold" and m.held_unlocked and not was_held:
            cause = m.state is DoorState.ALARM
        assert m.sounder_on == (m.door_open and cause)
        if not m.door_open:
            assert not m.sounder_on
        if m.state is DoorState.ALARM:
            assert m.sounder_on


@settings(max_examples=300, deadline=None)
@given(TIMINGS, ANY)
def test_relay_and_sounder_are_always_exact_booleans(timings, steps) -> None:
    """The agent hands these to ``relay.set()`` and ``sounder.set()``: a None or any other falsy stand-in
    must never leave the machine (``is False``, not ``not``, is what the door tests assert)."""
    clock = FakeClock()
    m = DoorMachine("d", timings, clock)
    for kind, arg in steps:
        step(m, clock, kind, arg)
        assert type(m.relay_energised) is bool and type(m.sounder_on) is bool
        assert type(m.door_open) is bool and type(m.held_unlocked) is bool and type(m.tampered) is bool


@settings(max_examples=400, deadline=None)
@given(TIMINGS, ANY)
def test_relay_stuck_only_after_a_second_forced_opening_in_a_row(timings, steps) -> None:
    clock = FakeClock()
    m = DoorMachine("d", timings, clock)
    forced_in_a_row = 0
    for kind, arg in steps:
        if kind in ("grant", "rex") or (kind == "hold" and arg and not m.held_unlocked):
            forced_in_a_row = 0
        events = step(m, clock, kind, arg)
        types = [e.type for e in events]
        forced_in_a_row += types.count("forced_open")
        if "relay_stuck" in types:
            i = types.index("relay_stuck")
            assert i > 0 and types[i - 1] == "forced_open" and events[i - 1].at == events[i].at
            assert forced_in_a_row >= 2
            assert types.count("relay_stuck") == 1
        if kind == "tamper":
            assert set(types) <= {"tamper", "relocked", "held_open_warning", "held_open"}
