"""gpiozero adapters and the door simulator on a fresh MockFactory per test.

Callbacks are awaited with threading.Event timeouts, never sleeps: on mock
pins they happen to run synchronously, on real drivers they would not.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Iterator

import pytest
from gpiozero.pins.mock import MockFactory, MockPin

from doorkeep.clock import FakeClock
from edge.door import DoorMachine, DoorTimings
from edge.errors import HardwareError
from edge.gpio import FACTORIES, DoorInputs, LockRelay, make_pin_factory
from simulators.door import DoorSimulator

RELAY, CONTACT, REX = 17, 27, 22
WAIT = 2.0


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    f = make_pin_factory("mock")
    yield f
    f.close()


class Recorder:
    """Collects forwarded callbacks; an Event per expected count avoids sleeping."""

    def __init__(self) -> None:
        self.contacts: list[bool] = []
        self.rex = 0
        self._changed = threading.Condition()

    def on_contact(self, is_open: bool) -> None:
        with self._changed:
            self.contacts.append(is_open)
            self._changed.notify_all()

    def on_rex(self) -> None:
        with self._changed:
            self.rex += 1
            self._changed.notify_all()

    def wait(self, predicate: object) -> bool:
        with self._changed:
            return self._changed.wait_for(predicate, WAIT)  # type: ignore[arg-type]


def inputs(factory: MockFactory, rec: Recorder, **kwargs: object) -> DoorInputs:
    return DoorInputs(
        contact_pin=CONTACT, rex_pin=REX, factory=factory,
        on_contact=rec.on_contact, on_rex=rec.on_rex, **kwargs,  # type: ignore[arg-type]
    )


# -- LockRelay ----------------------------------------------------------


def test_relay_starts_de_energised_active_high(factory: MockFactory) -> None:
    relay = LockRelay(RELAY, active_high=True, factory=factory)
    pin = factory.pin(RELAY)
    assert not relay.energised and pin.function == "output" and pin.state == 0
    relay.set(True)
    assert relay.energised and pin.state == 1
    relay.close()


def test_relay_active_low_inverts_pin_level(factory: MockFactory) -> None:
    relay = LockRelay(RELAY, active_high=False, factory=factory)
    pin = factory.pin(RELAY)
    assert not relay.energised and pin.state == 1  # de-energised = high
    relay.set(True)
    assert relay.energised and pin.state == 0
    relay.close()


def test_relay_close_de_energises_and_is_idempotent(factory: MockFactory) -> None:
    relay = LockRelay(RELAY, active_high=True, factory=factory)
    relay.set(True)
    relay.close()
    assert factory.pin(RELAY).state == 0
    assert not relay.energised
    relay.close()
    with pytest.raises(HardwareError):
        relay.set(True)
    LockRelay(RELAY, active_high=True, factory=factory).close()  # the pin was released


def test_pin_in_use_is_hardware_error(factory: MockFactory) -> None:
    relay = LockRelay(RELAY, active_high=True, factory=factory)
    with pytest.raises(HardwareError, match="17"):
        LockRelay(RELAY, active_high=True, factory=factory)
    relay.close()


def test_two_factories_keep_separate_pins() -> None:
    """Two edge agents in one process may use the same pin numbers on their own factories."""
    f1, f2 = make_pin_factory("mock"), make_pin_factory("mock")
    assert f1 is not f2
    try:
        r1 = LockRelay(RELAY, active_high=True, factory=f1)
        r2 = LockRelay(RELAY, active_high=True, factory=f2)  # no GPIOPinInUse
        assert f1.pin(RELAY) is not f2.pin(RELAY)
        r1.set(True)
        assert r1.energised and not r2.energised
        assert f2.pin(RELAY).state == 0
        r1.close()
        r2.close()
    finally:
        f1.close()
        f2.close()


# -- make_pin_factory ---------------------------------------------------


def test_unknown_factory_names_the_choices() -> None:
    with pytest.raises(HardwareError) as info:
        make_pin_factory("nope")
    for name in FACTORIES:
        assert name in str(info.value)


@pytest.mark.skipif(importlib.util.find_spec("lgpio") is not None, reason="lgpio is installed")
def test_missing_driver_says_what_to_install() -> None:
    with pytest.raises(HardwareError, match=r"doorkeep\[pi\]"):
        make_pin_factory("lgpio")


def test_mock_factory_is_new_each_time() -> None:
    f1, f2 = make_pin_factory("mock"), make_pin_factory("mock")
    assert isinstance(f1, MockFactory) and f1 is not f2


# -- DoorInputs with the simulator --------------------------------------


@pytest.mark.parametrize("simulator_first", [True, False])
def test_contact_and_rex_callbacks(factory: MockFactory, simulator_first: bool) -> None:
    rec = Recorder()
    if simulator_first:
        sim = DoorSimulator(factory, relay_pin=RELAY, contact_pin=CONTACT, rex_pin=REX)
        door = inputs(factory, rec)
    else:
        door = inputs(factory, rec)
        sim = DoorSimulator(factory, relay_pin=RELAY, contact_pin=CONTACT, rex_pin=REX)
        # the simulator closing the (pulled-up, so reading open) door is a real change
        assert rec.wait(lambda: rec.contacts == [False])
        rec.contacts.clear()
    assert door.contact_open is False and not sim.is_open

    sim.open()
    assert rec.wait(lambda: rec.contacts == [True])
    assert door.contact_open is True and sim.is_open
    sim.close()
    assert rec.wait(lambda: rec.contacts == [True, False])
    assert door.contact_open is False

    sim.press_rex()
    assert rec.wait(lambda: rec.rex == 1)
    sim.press_rex()
    assert rec.wait(lambda: rec.rex == 2)
    assert rec.contacts == [True, False]
    door.close()
    door.close()


def test_contact_open_level_low_and_rex_active_high(factory: MockFactory) -> None:
    sim = DoorSimulator(factory, relay_pin=RELAY, contact_pin=CONTACT, contact_open_level="low",
                        rex_pin=REX, rex_active_low=False)
    rec = Recorder()
    door = inputs(factory, rec, contact_open_level="low", rex_active_low=False)
    assert door.contact_open is False and factory.pin(CONTACT).state == 1
    sim.open()
    assert rec.wait(lambda: rec.contacts == [True])
    assert factory.pin(CONTACT).state == 0
    sim.press_rex()
    assert rec.wait(lambda: rec.rex == 1)
    door.close()


def test_no_contact_pin_reads_none(factory: MockFactory) -> None:
    rec = Recorder()
    door = DoorInputs(contact_pin=None, rex_pin=None, factory=factory,
                      on_contact=rec.on_contact, on_rex=rec.on_rex)
    assert door.contact_open is None
    door.close()


def test_inputs_failure_releases_what_was_claimed(factory: MockFactory) -> None:
    rec = Recorder()
    with pytest.raises(HardwareError):
        DoorInputs(contact_pin=CONTACT, rex_pin=CONTACT, factory=factory,
                   on_contact=rec.on_contact, on_rex=rec.on_rex)
    inputs(factory, rec).close()  # the contact pin was not leaked


def test_closed_inputs_forward_nothing(factory: MockFactory) -> None:
    sim = DoorSimulator(factory, relay_pin=RELAY, contact_pin=CONTACT, rex_pin=REX)
    rec = Recorder()
    inputs(factory, rec).close()
    sim.open()
    sim.press_rex()
    assert rec.contacts == [] and rec.rex == 0


# -- the simulator's relay view -----------------------------------------


def test_relay_history_and_wait_relay(factory: MockFactory) -> None:
    sim = DoorSimulator(factory, relay_pin=RELAY)
    relay = LockRelay(RELAY, active_high=True, factory=factory)
    assert sim.relay_history == [] and not sim.relay_energised

    go = threading.Event()

    def energise_later() -> None:
        go.wait(WAIT)
        relay.set(True)

    worker = threading.Thread(target=energise_later)
    worker.start()
    go.set()
    assert sim.wait_relay(True, WAIT)
    worker.join(WAIT)
    assert sim.relay_energised
    relay.set(True)  # no change, no entry
    relay.set(False)
    assert sim.wait_relay(False, WAIT)
    assert not sim.wait_relay(True, 0.05)  # times out, returns False
    assert [e for _, e in sim.relay_history] == [True, False]
    times = [t for t, _ in sim.relay_history]
    assert times == sorted(times)
    relay.close()
    assert [e for _, e in sim.relay_history] == [True, False]


@pytest.mark.parametrize("simulator_first", [True, False])
def test_active_low_relay_seen_with_polarity(factory: MockFactory, simulator_first: bool) -> None:
    if simulator_first:
        sim = DoorSimulator(factory, relay_pin=RELAY, relay_active_high=False)
        assert not sim.relay_energised  # the module's pull-up holds an undriven line off
        relay = LockRelay(RELAY, active_high=False, factory=factory)
    else:
        relay = LockRelay(RELAY, active_high=False, factory=factory)
        sim = DoorSimulator(factory, relay_pin=RELAY, relay_active_high=False)
    assert not sim.relay_energised
    relay.set(True)
    assert sim.wait_relay(True, WAIT) and factory.pin(RELAY).state == 0
    relay.close()
    assert sim.wait_relay(False, WAIT)
    assert [e for _, e in sim.relay_history] == [True, False]
    assert isinstance(factory.pin(RELAY), MockPin)


def test_simulators_on_two_factories_are_independent() -> None:
    f1, f2 = make_pin_factory("mock"), make_pin_factory("mock")
    try:
        s1 = DoorSimulator(f1, relay_pin=RELAY, contact_pin=CONTACT)
        s2 = DoorSimulator(f2, relay_pin=RELAY, contact_pin=CONTACT)
        r1 = LockRelay(RELAY, active_high=True, factory=f1)
        LockRelay(RELAY, active_high=True, factory=f2)
        r1.set(True)
        assert s1.wait_relay(True, WAIT)
        assert not s2.relay_energised and s2.relay_history == []
        s1.open()
        assert f2.pin(CONTACT).state == 0
    finally:
        f1.close()
        f2.close()


def test_press_rex_without_button_is_an_error(factory: MockFactory) -> None:
    sim = DoorSimulator(factory, relay_pin=RELAY)
    with pytest.raises(HardwareError):
        sim.press_rex()
    sim.open()  # a door with no contact still opens physically
    assert sim.is_open


# -- the machine, the adapters and the simulator together ----------------


def test_machine_drives_relay_through_simulated_door(factory: MockFactory) -> None:
    clock = FakeClock()
    machine = DoorMachine("front", DoorTimings(unlock_s=5.0), clock)
    relay = LockRelay(RELAY, active_high=False, factory=factory)
    sim = DoorSimulator(factory, relay_pin=RELAY, relay_active_high=False,
                        contact_pin=CONTACT, rex_pin=REX)
    seen: list[str] = []
    done = threading.Event()

    def apply(events: list) -> None:
        seen.extend(e.type for e in events)
        relay.set(machine.relay_energised)
        if "relocked" in seen:
            done.set()

    door = DoorInputs(contact_pin=CONTACT, rex_pin=REX, factory=factory,
                      on_contact=lambda is_open: apply(machine.contact(is_open)),
                      on_rex=lambda: apply(machine.rex()))
    sim.press_rex()
    assert sim.wait_relay(True, WAIT)
    sim.open()
    sim.close()
    assert done.wait(WAIT)
    assert sim.wait_relay(False, WAIT)
    assert seen == ["rex", "unlocked", "door_opened", "door_closed", "relocked"]
    assert [e for _, e in sim.relay_history] == [True, False]
    door.close()
    relay.close()
