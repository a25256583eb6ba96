"""A physical door on gpiozero mock pins, for tests and the demo.

The simulator is the world outside the Pi: it holds the contact and REX input
lines at the levels a reed switch and a button would, and watches the relay
output line. It never creates gpiozero devices, so it reserves nothing and
coexists with the edge's devices on the same factory; it uses
``factory.pin(n)``, which returns the very ``MockPin`` the edge's devices use.

How relay changes are observed (no polling): the simulator turns the
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


class DoorSimulator:
    """Physical door on mock pins: drives the contact and REX input pins, reads the relay output pin."""

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
    ) -> None:
        if contact_open_level not in ("high", "low"):
            raise ValueError(f"contact_open_level must be 'high' or 'low', got {contact_open_level!r}")
        self._cond = threading.Condition()
        self.relay_history: list[tuple[float, bool]] = []
        """(time.monotonic(), energised) each time the relay line changes."""
        self._active_high = relay_active_high
        self._open_level = contact_open_level == "high"
        self._rex_pressed_level = not rex_active_low
        self._is_open = False

        self._relay = _wire(factory, relay_pin)
        if self._relay.function == "input" and not self._relay.info.pull:
            # A relay module's own input resistor holds it off while the Pi's
            # pin is undriven (before the edge starts, after it releases the pin).
            self._relay.pull = "down" if relay_active_high else "up"
        self._relay._dk_watchers.append(WeakMethod(self._relay_changed))

        self._contact = _wire(factory, contact_pin) if contact_pin is not None else None
        if self._contact is not None:
            self._contact.dk_hold(not self._open_level)  # starts closed
        self._rex = _wire(factory, rex_pin) if rex_pin is not None else None
        if self._rex is not None:
            self._rex.dk_hold(not self._rex_pressed_level)  # starts released

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
