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
from edge.gpio import FACTORIES, DoorInputs, LockRelay, Sounder, make_pin_factory
from simulators.door import DoorSimulator

RELAY, CONTACT, REX, TAMPER, SOUNDER = 17, 27, 22, 23, 18
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
        self.tampers: list[bool] = []
        self._changed = threading.Condition()

    def on_contact(self, is_open: bool) -> None:
        with self._changed:
            self.contacts.append(is_open)
            self._changed.notify_all()

    def on_rex(self) -> None:
        with self._changed:
            self.rex += 1
            self._changed.notify_all()

    def on_tamper(self, active: bool) -> None:
        with self._changed:
            self.tampers.append(active)
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
    with pytest.raises(HardwareError, match=r"\[pi\] extra"):
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


# -- tamper input ---------------------------------------------------------


def tamper_inputs(factory: MockFactory, rec: Recorder, **kwargs: object) -> DoorInputs:
    return DoorInputs(contact_pin=None, rex_pin=None, tamper_pin=TAMPER, factory=factory,
                      on_contact=rec.on_contact, on_rex=rec.on_rex, on_tamper=rec.on_tamper,
                      **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("simulator_first", [True, False])
def test_tamper_callbacks_loop_to_ground(factory: MockFactory, simulator_first: bool) -> None:
    """Default wiring: the intact loop holds the line low, a tampered enclosure lets it go high."""
    rec = Recorder()
    if simulator_first:
        sim = DoorSimulator(factory, relay_pin=RELAY, tamper_pin=TAMPER)
        door = tamper_inputs(factory, rec)
    else:
        door = tamper_inputs(factory, rec)
        assert door.tampered is True  # nothing holds the loop yet: the pull-up reads tampered
        sim = DoorSimulator(factory, relay_pin=RELAY, tamper_pin=TAMPER)
        assert rec.wait(lambda: rec.tampers == [False])  # the loop closing is a real change
        rec.tampers.clear()
    assert door.tampered is False and not sim.tampered and factory.pin(TAMPER).state == 0

    sim.tamper()
    assert rec.wait(lambda: rec.tampers == [True])
    assert door.tampered is True and sim.tampered and factory.pin(TAMPER).state == 1
    sim.tamper()  # no change, no callback
    sim.restore_tamper()
    assert rec.wait(lambda: rec.tampers == [True, False])
    assert door.tampered is False and factory.pin(TAMPER).state == 0
    assert rec.contacts == [] and rec.rex == 0
    door.close()


def test_tamper_loop_to_3v3_reads_low_as_tampered(factory: MockFactory) -> None:
    sim = DoorSimulator(factory, relay_pin=RELAY, tamper_pin=TAMPER, tamper_active_low=False)
    rec = Recorder()
    door = tamper_inputs(factory, rec, tamper_active_low=False)
    assert door.tampered is False and factory.pin(TAMPER).state == 1
    sim.tamper()
    assert rec.wait(lambda: rec.tampers == [True])
    assert factory.pin(TAMPER).state == 0 and door.tampered is True
    sim.restore_tamper()
    assert rec.wait(lambda: rec.tampers == [True, False])
    door.close()


@pytest.mark.parametrize("active_low", [True, False])
def test_cut_tamper_wire_reads_tampered(factory: MockFactory, active_low: bool) -> None:
    """With nothing on the pin the pull resistor wins: a cut loop is tampered, never intact."""
    rec = Recorder()
    door = tamper_inputs(factory, rec, tamper_active_low=active_low)
    assert door.tampered is True
    door.close()


def test_no_tamper_pin_reads_none(factory: MockFactory) -> None:
    rec = Recorder()
    door = inputs(factory, rec)
    assert door.tampered is None
    door.close()


def test_tamper_pin_needs_a_callback(factory: MockFactory) -> None:
    with pytest.raises(ValueError, match="on_tamper"):
        DoorInputs(contact_pin=None, rex_pin=None, tamper_pin=TAMPER, factory=factory,
                   on_contact=lambda _: None, on_rex=lambda: None)


def test_closed_inputs_forward_no_tamper(factory: MockFactory) -> None:
    sim = DoorSimulator(factory, relay_pin=RELAY, tamper_pin=TAMPER)
    rec = Recorder()
    tamper_inputs(factory, rec).close()
    sim.tamper()
    assert rec.tampers == []
    tamper_inputs(factory, rec).close()  # the tamper pin was released


def test_simulator_without_tamper_switch_refuses(factory: MockFactory) -> None:
    sim = DoorSimulator(factory, relay_pin=RELAY)
    with pytest.raises(HardwareError, match="tamper"):
        sim.tamper()
    with pytest.raises(HardwareError, match="tamper"):
        sim.restore_tamper()


# -- sounder output -------------------------------------------------------


def test_sounder_starts_silent_active_high(factory: MockFactory) -> None:
    sounder = Sounder(SOUNDER, active_high=True, factory=factory)
    pin = factory.pin(SOUNDER)
    assert not sounder.on and pin.function == "output" and pin.state == 0
    sounder.set(True)
    assert sounder.on and pin.state == 1
    sounder.close()
    assert pin.state == 0 and not sounder.on


def test_sounder_active_low_inverts_pin_level(factory: MockFactory) -> None:
    sounder = Sounder(SOUNDER, active_high=False, factory=factory)
    pin = factory.pin(SOUNDER)
    assert not sounder.on and pin.state == 1
    sounder.set(True)
    assert sounder.on and pin.state == 0
    sounder.close()
    assert pin.state == 1  # silenced before release


def test_sounder_close_is_idempotent_and_final(factory: MockFactory) -> None:
    sounder = Sounder(SOUNDER, active_high=True, factory=factory)
    sounder.set(True)
    sounder.close()
    sounder.close()
    with pytest.raises(HardwareError, match="sounder on pin 18 is closed"):
        sounder.set(True)
    Sounder(SOUNDER, active_high=True, factory=factory).close()  # the pin was released


def test_sounder_pin_in_use_is_hardware_error(factory: MockFactory) -> None:
    relay = LockRelay(RELAY, active_high=True, factory=factory)
    with pytest.raises(HardwareError, match="sounder on pin 17"):
        Sounder(RELAY, active_high=True, factory=factory)
    relay.close()


@pytest.mark.parametrize("active_high", [True, False])
@pytest.mark.parametrize("simulator_first", [True, False])
def test_simulator_sees_sounder_with_polarity_and_history(factory: MockFactory, active_high: bool,
                                                          simulator_first: bool) -> None:
    if simulator_first:
        sim = DoorSimulator(factory, relay_pin=RELAY, sounder_pin=SOUNDER, sounder_active_high=active_high)
        assert not sim.sounder_on  # the driver's own resistor holds an undriven line silent
        sounder = Sounder(SOUNDER, active_high=active_high, factory=factory)
    else:
        sounder = Sounder(SOUNDER, active_high=active_high, factory=factory)
        sim = DoorSimulator(factory, relay_pin=RELAY, sounder_pin=SOUNDER, sounder_active_high=active_high)
    assert not sim.sounder_on and sim.sounder_history == []
    sounder.set(True)
    assert sim.wait_sounder(True, WAIT)
    sounder.set(True)  # no change, no entry
    sounder.set(False)
    assert sim.wait_sounder(False, WAIT)
    sounder.set(True)
    sounder.close()
    assert sim.wait_sounder(False, WAIT)
    assert [on for _, on in sim.sounder_history] == [True, False, True, False]
    times = [t for t, _ in sim.sounder_history]
    assert times == sorted(times)
    assert sim.relay_history == []  # the relay line is a different wire


def test_simulator_without_sounder_is_silent(factory: MockFactory) -> None:
    sim = DoorSimulator(factory, relay_pin=RELAY)
    assert not sim.sounder_on and sim.sounder_history == []
    assert sim.wait_sounder(False, 0.0)
    assert not sim.wait_sounder(True, 0.0)


# -- supervision end to end on mock pins -----------------------------------


class _Wired:
    """A door machine driving a relay and a sounder from its inputs, as the edge agent does."""

    def __init__(self, factory: MockFactory, clock: FakeClock, **timings: float) -> None:
        self.machine = DoorMachine("front", DoorTimings(**timings), clock)  # type: ignore[arg-type]
        self.relay = LockRelay(RELAY, active_high=False, factory=factory)
        self.sounder = Sounder(SOUNDER, active_high=True, factory=factory)
        self.seen: list[str] = []
        self._lock = threading.Lock()
        self.inputs = DoorInputs(
            contact_pin=CONTACT, rex_pin=REX, tamper_pin=TAMPER, factory=factory,
            on_contact=lambda is_open: self.apply(self.machine.contact(is_open)),
            on_rex=lambda: self.apply(self.machine.rex()),
            on_tamper=lambda active: self.apply(self.machine.tamper(active)),
        )

    def apply(self, events: list) -> None:
        with self._lock:
            self.seen.extend(e.type for e in events)
            self.relay.set(self.machine.relay_energised)
            self.sounder.set(self.machine.sounder_on)

    def close(self) -> None:
        self.inputs.close()
        self.sounder.close()
        self.relay.close()


def test_forced_door_sounds_and_tamper_never_energises(factory: MockFactory) -> None:
    clock = FakeClock()
    sim = DoorSimulator(factory, relay_pin=RELAY, relay_active_high=False, contact_pin=CONTACT, rex_pin=REX,
                        tamper_pin=TAMPER, sounder_pin=SOUNDER)
    door = _Wired(factory, clock)
    sim.tamper()
    sim.restore_tamper()
    sim.open()
    assert sim.wait_sounder(True, WAIT)
    assert not sim.relay_energised
    sim.close()
    assert sim.wait_sounder(False, WAIT)
    assert door.seen == ["tamper", "tamper", "door_opened", "forced_open", "door_closed"]
    assert sim.relay_history == []  # tamper and a forced opening never touched the relay
    door.close()


def test_prealarm_drives_sounder_through_simulated_door(factory: MockFactory) -> None:
    clock = FakeClock()
    sim = DoorSimulator(factory, relay_pin=RELAY, relay_active_high=False, contact_pin=CONTACT, rex_pin=REX,
                        tamper_pin=TAMPER, sounder_pin=SOUNDER)
    door = _Wired(factory, clock, unlock_s=5.0, held_open_s=30.0, prealarm_s=10.0)
    sim.press_rex()
    assert sim.wait_relay(True, WAIT)
    sim.open()
    clock.advance(20.0)
    door.apply(door.machine.tick())
    assert sim.wait_sounder(True, WAIT) and not sim.relay_energised
    clock.advance(10.0)
    door.apply(door.machine.tick())
    sim.close()
    assert sim.wait_sounder(False, WAIT)
    assert door.seen == ["rex", "unlocked", "door_opened", "relocked", "held_open_warning", "held_open",
                         "door_closed"]
    assert [on for _, on in sim.sounder_history] == [True, False]
    assert [e for _, e in sim.relay_history] == [True, False]
    door.close()
