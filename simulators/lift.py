"""A lift cab on mock pins: reads the floor relays the edge drives, presses the floor buttons.

The edge's :class:`edge.gpio.FloorRelays` and :class:`edge.gpio.FloorButtons` see these pins exactly as a cab's
wiring (docs/openings.md "Lifts"): a relay energised enables its floor's button, a press pulses the button's
input. A floor without a button input can still be "pressed" here: the simulator then only records that its
relay was on, as a real cab whose buttons the edge cannot see.

Like :class:`simulators.door.DoorSimulator` it answers ``relay_energised`` / ``wait_relay`` (any floor enabled),
so a badge at a lift can be checked like a badge at a door.
"""

from __future__ import annotations

import threading
import time
from typing import Any
from weakref import WeakMethod

from edge.errors import HardwareError
from simulators.door import TamperSwitch, _output_line, _wire


class LiftSimulator(TamperSwitch):
    """One cab: ``floors`` maps an area to (relay pin, relay active high, button pin or None, button active low)."""

    _WHAT = "lift"

    def __init__(self, factory: Any, floors: dict[str, tuple[int, bool, int | None, bool]], *,
                 tamper_pin: int | None = None, tamper_active_low: bool = True) -> None:
        self._cond = threading.Condition()
        self.floors = tuple(floors)
        self.relay_history: list[tuple[float, bool]] = []
        """(time.monotonic(), any floor enabled) each time that changes."""
        self.floor_history: list[tuple[float, frozenset[str]]] = []
        """(time.monotonic(), floors enabled) each time a floor relay changes."""
        self.presses: list[tuple[str, bool]] = []
        """(floor, whether its button was enabled when pressed), in order."""
        self._relays: dict[str, tuple[Any, bool]] = {}
        self._buttons: dict[str, tuple[Any, bool]] = {}
        for area, (relay, active_high, button, button_active_low) in floors.items():
            line = _output_line(factory, relay, active_high)
            line._dk_watchers.append(WeakMethod(self._relay_changed))
            self._relays[area] = (line, active_high)
            if button is not None:
                pin = _wire(factory, button)
                pressed = not button_active_low
                pin.dk_hold(not pressed)  # released
                self._buttons[area] = (pin, pressed)
        self._tamper_intact_level = not tamper_active_low
        self._tamper = _wire(factory, tamper_pin) if tamper_pin is not None else None
        if self._tamper is not None:
            self._tamper.dk_hold(self._tamper_intact_level)
        self._tampered = False
        self._any = False

    # -- what the edge drives -------------------------------------------

    @property
    def enabled(self) -> frozenset[str]:
        """The floors whose relay is energised now."""
        return frozenset(a for a, (line, high) in self._relays.items() if bool(line.state) == high)

    @property
    def relay_energised(self) -> bool:
        return bool(self.enabled)

    def _relay_changed(self, level: bool) -> None:
        with self._cond:
            enabled = self.enabled
            self.floor_history.append((time.monotonic(), enabled))
            if bool(enabled) != self._any:
                self._any = bool(enabled)
                self.relay_history.append((time.monotonic(), self._any))
            self._cond.notify_all()

    def wait_relay(self, energised: bool, timeout: float) -> bool:
        """Block until some floor is enabled (or none is); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self.relay_energised == energised, timeout)

    def wait_floors(self, floors: frozenset[str], timeout: float) -> bool:
        """Block until exactly ``floors`` are enabled; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self.enabled == floors, timeout)

    # -- what a person does ---------------------------------------------

    @property
    def has_buttons(self) -> bool:
        return bool(self._buttons)

    def press(self, floor: str) -> bool:
        """Press ``floor``'s button; True if its relay had it enabled (the cab would go there)."""
        if floor not in self._relays:
            raise HardwareError(f"this lift does not serve floor {floor!r} (floors: {', '.join(self.floors)})")
        lit = floor in self.enabled
        self.presses.append((floor, lit))
        button = self._buttons.get(floor)
        if button is not None:
            pin, pressed = button
            pin.dk_hold(pressed)
            pin.dk_hold(not pressed)
        return lit

    # -- the door simulator's other faces -------------------------------

    @property
    def turnstile(self) -> bool:
        return False

    @property
    def is_open(self) -> bool:
        return False

    @property
    def sounder_on(self) -> bool:
        return False

    def wait_sounder(self, on: bool, timeout: float) -> bool:
        return not on

    def open(self) -> None:
        raise HardwareError("a lift cab has no door contact here: press a floor instead")

    def close(self) -> None:
        raise HardwareError("a lift cab has no door contact here")

    def press_rex(self) -> None:
        raise HardwareError("a lift cab has no REX button")

    def pass_through(self) -> None:
        raise HardwareError("a lift cab has no passage sensor: press a floor instead")
