"""A physical door on gpiozero mock pins, for tests and the demo.

The simulator is the world outside the Pi: it holds the contact, REX and
tamper input lines at the levels a reed switch, a button and an enclosure's
tamper loop would, and watches the relay and sounder output lines. It never creates gpiozero devices, so it reserves nothing and
coexists with the edge's devices on the same factory; it uses
``factory.pin(n)``, which returns the very ``MockPin`` the edge's devices use.

How relay and sounder changes are observed (no polling): the simulator turns the
factory's ``MockPin`` into a subclass of its own class (``__class__`` swap on
that one instance). Every level change of a ``MockPin`` goes through
``_change_state``; the subclass calls the original and then notifies its
watchers synchronously, in the thread that changed the pin. The swap works
whichever side touched the pin first, and isinstance checks still see a
``MockPin``.

The same subclass models a switch outweighing a pull resistor: while the
simulator holds an input line, a pull set later (the edge configuring its
``pull_up``) does not move the level, so building the edge after the
simulator does not make a closed door read open.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable
from weakref import WeakMethod

from gpiozero.pins.mock import MockPin

from edge.errors import HardwareError


class _WiredPin(MockPin):
    """Mixin-style MockPin subclass: level watchers and an externally held level."""

    _dk_watchers: list[WeakMethod[Callable[[bool], None]]]
    _dk_held: bool | None
    _dk_pulling: bool

    def _set_pull(self, value: str) -> None:
        self._dk_pulling = True
        try:
            super()._set_pull(value)
        finally:
            self._dk_pulling = False

    def _change_state(self, value: Any) -> bool:
        if self._dk_pulling and self._dk_held is not None:
            return False  # a closed switch wins over the internal pull resistor
        changed = super()._change_state(value)
        if changed:
            for ref in list(self._dk_watchers):
                watcher = ref()
                if watcher is None:
                    self._dk_watchers.remove(ref)
                else:
                    watcher(bool(value))
        return changed

    def dk_hold(self, level: bool) -> None:
        """Drive the input line as a switch would, and keep it there against pulls."""
        if self.function != "input":
            raise HardwareError(f"{self.info.name} is an output; the door simulator can only drive inputs")
        self._dk_held = level
        if level:
            self.drive_high()
        else:
            self.drive_low()


_wired_classes: dict[type, type] = {}
_wired_lock = threading.Lock()


def _wire(factory: Any, number: int) -> _WiredPin:
    """The factory's own pin for ``number``, upgraded in place to a watched/holdable pin."""
    pin = factory.pin(number)
    with _wired_lock:
        if not isinstance(pin, _WiredPin):
            base = type(pin)
            if not isinstance(pin, MockPin):
                raise HardwareError(f"the door simulator needs a MockFactory, got {type(factory).__name__}")
            cls = _wired_classes.get(base)
            if cls is None:
                cls = type(f"Wired{base.__name__}", (_WiredPin, base), {})
                _wired_classes[base] = cls
            pin._dk_watchers = []
            pin._dk_held = None
            pin._dk_pulling = False
            pin.__class__ = cls
    return pin  # type: ignore[return-value]


def _output_line(factory: Any, pin: int, active_high: bool) -> _WiredPin:
    """An output line the simulator watches, held off by the module's own resistor while undriven."""
    line = _wire(factory, pin)
    if line.function == "input" and not line.info.pull:
        # A relay or sounder module's own input resistor holds it off while the
        # Pi's pin is undriven (before the edge starts, after it releases the pin).
        line.pull = "down" if active_high else "up"
    return line


class TamperSwitch:
    """The enclosure's tamper switch on a mock pin, as a door or a lift cab has it (``edge.gpio.DoorInputs`` reads
    it): ``tamper_active_low`` means the intact loop holds the line low. Subclasses set ``_tamper`` (the wired
    pin or None), ``_tamper_intact_level`` and ``_tampered``."""

    _tamper: Any
    _tamper_intact_level: bool
    _tampered: bool

    def tamper(self) -> None:
        """Open the enclosure: the tamper loop opens and its line goes to the tampered level."""
        self._set_tampered(True)

    def restore_tamper(self) -> None:
        """Put the cover back: the loop closes again."""
        self._set_tampered(False)

    def _set_tampered(self, tampered: bool) -> None:
        if self._tamper is None:
            raise HardwareError(f"this simulated {self._WHAT} has no tamper switch wired")
        self._tampered = tampered
        self._tamper.dk_hold(not self._tamper_intact_level if tampered else self._tamper_intact_level)

    @property
    def tampered(self) -> bool:
        return self._tampered

    _WHAT = "door"


class DoorSimulator(TamperSwitch):
    """Physical door on mock pins: drives the contact, REX and tamper input pins, reads the relay and sounder.

    The tamper loop follows the edge's reading (see ``edge.gpio.DoorInputs``):
    with ``tamper_active_low`` the intact loop holds the line low and a
    tampered enclosure lets it go high; without, the reverse. It starts
    intact.
    """

    def __init__(
        self,
        factory: Any,
        *,
        relay_pin: int,
        relay_active_high: bool = True,
        contact_pin: int | None = None,
        contact_open_level: str = "high",
        rex_pin: int | None = None,
        rex_active_low: bool = True,
        tamper_pin: int | None = None,
        tamper_active_low: bool = True,
        sounder_pin: int | None = None,
        sounder_active_high: bool = True,
        passage_pin: int | None = None,
        passage_active_low: bool = True,
    ) -> None:
        if contact_open_level not in ("high", "low"):
            raise ValueError(f"contact_open_level must be 'high' or 'low', got {contact_open_level!r}")
        self._cond = threading.Condition()
        self.relay_history: list[tuple[float, bool]] = []
        """(time.monotonic(), energised) each time the relay line changes."""
        self.sounder_history: list[tuple[float, bool]] = []
        """(time.monotonic(), sounding) each time the sounder line changes."""
        self._active_high = relay_active_high
        self._sounder_active_high = sounder_active_high
        self._open_level = contact_open_level == "high"
        self._rex_pressed_level = not rex_active_low
        self._tamper_intact_level = not tamper_active_low
        self._is_open = False
        self._tampered = False

        self._relay = _output_line(factory, relay_pin, relay_active_high)
        self._relay._dk_watchers.append(WeakMethod(self._relay_changed))
        self._sounder = _output_line(factory, sounder_pin, sounder_active_high) if sounder_pin is not None else None
        if self._sounder is not None:
            self._sounder._dk_watchers.append(WeakMethod(self._sounder_changed))

        self._contact = _wire(factory, contact_pin) if contact_pin is not None else None
        if self._contact is not None:
            self._contact.dk_hold(not self._open_level)  # starts closed
        self._rex = _wire(factory, rex_pin) if rex_pin is not None else None
        if self._rex is not None:
            self._rex.dk_hold(not self._rex_pressed_level)  # starts released
        self._tamper = _wire(factory, tamper_pin) if tamper_pin is not None else None
        if self._tamper is not None:
            self._tamper.dk_hold(self._tamper_intact_level)  # starts with the cover on
        self._passage_level = not passage_active_low
        self._passage = _wire(factory, passage_pin) if passage_pin is not None else None
        if self._passage is not None:
            self._passage.dk_hold(not self._passage_level)  # nobody in the beam
        self.passages = 0
        """Passages the sensor has pulsed for (whatever the arms allowed: a turnstile can be jumped)."""

    def open(self) -> None:
        """Open the door (drives the contact line, if wired)."""
        self._set_open(True)

    def close(self) -> None:
        """Close the door (drives the contact line, if wired)."""
        self._set_open(False)

    def _set_open(self, is_open: bool) -> None:
        self._is_open = is_open
        if self._contact is not None:
            self._contact.dk_hold(self._open_level if is_open else not self._open_level)

    @property
    def turnstile(self) -> bool:
        """A passage sensor is wired: the door is a turnstile direction (walk through it with pass_through)."""
        return self._passage is not None

    def pass_through(self) -> None:
        """A person goes through a turnstile in this door's direction: one pulse of its passage sensor."""
        if self._passage is None:
            raise HardwareError("this simulated door has no passage sensor wired (a turnstile's `passage`)")
        self.passages += 1
        self._passage.dk_hold(self._passage_level)
        self._passage.dk_hold(not self._passage_level)

    def press_rex(self) -> None:
        """Press and release the REX button."""
        if self._rex is None:
            raise HardwareError("this simulated door has no REX button wired")
        self._rex.dk_hold(self._rex_pressed_level)
        self._rex.dk_hold(not self._rex_pressed_level)


    @property
    def is_open(self) -> bool:
        return self._is_open

    @property
    def relay_energised(self) -> bool:
        return bool(self._relay.state) == self._active_high

    def _relay_changed(self, level: bool) -> None:
        with self._cond:
            self.relay_history.append((time.monotonic(), level == self._active_high))
            self._cond.notify_all()

    def wait_relay(self, energised: bool, timeout: float) -> bool:
        """Block until the relay is in that state; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self.relay_energised == energised, timeout)

    @property
    def sounder_on(self) -> bool:
        """The sounder line's state, with its polarity; False when no sounder is wired."""
        if self._sounder is None:
            return False
        return bool(self._sounder.state) == self._sounder_active_high

    def _sounder_changed(self, level: bool) -> None:
        with self._cond:
            self.sounder_history.append((time.monotonic(), level == self._sounder_active_high))
            self._cond.notify_all()

    def wait_sounder(self, on: bool, timeout: float) -> bool:
        """Block until the sounder is in that state; False on timeout (or with no sounder wired)."""
        if self._sounder is None:
            return not on
        with self._cond:
            return self._cond.wait_for(lambda: self.sounder_on == on, timeout)


class EmergencyContactSimulator:
    """The fire alarm panel's release contact on a mock pin (``[emergency]`` in the device file).

    A normally closed contact, read as the edge reads it (``edge.gpio.EmergencyInput``): with ``active_low`` the
    closed contact holds the line low and a release lets it go high; without, the reverse. It starts all clear.
    """

    def __init__(self, factory: Any, pin: int, *, active_low: bool = True) -> None:
        self._clear_level = not active_low
        self._line = _wire(factory, pin)
        self._line.dk_hold(self._clear_level)
        self._active = False

    def release(self) -> None:
        """The fire panel releases (or the wire is cut): the contact opens."""
        self._active = True
        self._line.dk_hold(not self._clear_level)

    def clear(self) -> None:
        """The fire panel is reset: the contact closes again."""
        self._active = False
        self._line.dk_hold(self._clear_level)

    @property
    def active(self) -> bool:
        return self._active
