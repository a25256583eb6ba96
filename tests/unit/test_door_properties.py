"""Properties of the door state machine: the relay follows grants and REX, nothing else."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from doorkeep.clock import FakeClock
from edge.door import DoorMachine, DoorTimings

# Everything that can happen at a door except an unlock: contact changes, ticks and time passing.
NO_UNLOCK = st.lists(st.one_of(
    st.tuples(st.just("contact"), st.booleans()),
    st.tuples(st.just("tick"), st.floats(min_value=0.0, max_value=120.0)),
), max_size=40)


@settings(max_examples=300, deadline=None)
@given(NO_UNLOCK)
def test_without_grant_rex_or_hold_the_relay_is_never_energised(steps) -> None:
    clock = FakeClock()
    m = DoorMachine("d", DoorTimings(unlock_s=5, held_open_s=10), clock)
    for kind, arg in steps:
        if kind == "contact":
            m.contact(arg)
        else:
            clock.advance(arg)
            m.tick()
        assert not m.relay_energised


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
        if kind == "contact":
            m.contact(arg)
        else:
            clock.advance(arg)
            m.tick()
    clock.advance(5.0)
    m.tick()
    assert not m.relay_energised, "the unlock window must always end"
