"""gpiozero adapters: the lock relay and sounder outputs, the door contact / REX / tamper inputs.

Every device is built with an explicit ``pin_factory`` so two edge agents in
one process (tests, the demo) never share gpiozero's global factory. The
factory is chosen by name and never falls back silently: a missing driver
library is an error that says what to install.

Pin state across factory instances (gpiozero 2.0.1):

- ``MockFactory`` keeps its pins and pin reservations per instance, so two
  mock factories can both use "GPIO17" without interfering.
- ``lgpio``, ``rpigpio`` and ``native`` derive from ``LocalPiFactory``, which
  deliberately shares pins and reservations across all instances in the
  process: they are the same physical pins, so a second agent claiming a pin
  already in use gets :class:`HardwareError` (GPIOPinInUse) instead of a silent
  fight over the relay. That sharing is correct and is kept.
- ``pigpio`` keeps reservations per instance while all instances talk to one
  daemon, so two pigpio factories in one process would *not* detect a pin
  clash; give each agent distinct pins.
"""

from __future__ import annotations

import importlib
import threading
from typing import Any, Callable

from gpiozero import DigitalInputDevice, OutputDevice
from gpiozero.exc import GPIOZeroError

from edge.errors import HardwareError

FACTORIES: tuple[str, ...] = ("mock", "lgpio", "rpigpio", "pigpio", "native")

# name -> (module, class, the import the module needs, how to install it)
_FACTORY_SOURCES: dict[str, tuple[str, str, str | None, str]] = {
    "mock": ("gpiozero.pins.mock", "MockFactory", None, ""),
    "lgpio": ("gpiozero.pins.lgpio", "LGPIOFactory", "lgpio",
              "install doorkeep with the [pi] extra (pip install 'doorkeep-VERSION-py3-none-any.whl[pi]') or lgpio"),
    "rpigpio": ("gpiozero.pins.rpigpio", "RPiGPIOFactory", "RPi", "pip install RPi.GPIO"),
    "pigpio": (
        "gpiozero.pins.pigpio",
        "PiGPIOFactory",
        "pigpio",
        "pip install pigpio (and run the pigpiod daemon)",
    ),
    "native": ("gpiozero.pins.native", "NativeFactory", None, ""),
}

_GPIO_ERRORS = (GPIOZeroError, OSError)


def make_pin_factory(name: str) -> Any:
    """Return a new gpiozero pin factory for ``name``.

    A new instance each call, so callers own its lifetime (and, for mock, its
    pins). Any failure is a :class:`HardwareError`: never a silent fallback to
    another driver, which could leave a real lock wired to a mock pin.
    """
    try:
        module_name, class_name, library, install = _FACTORY_SOURCES[name]
    except KeyError:
        raise HardwareError(
            f"unknown GPIO pin factory {name!r}; choose one of {', '.join(FACTORIES)}"
        ) from None
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if library is not None and missing == library:
            raise HardwareError(
                f"GPIO pin factory {name!r} needs the {library!r} package: {install}"
            ) from exc
        raise HardwareError(f"GPIO pin factory {name!r} could not be loaded: {exc}") from exc
    except Exception as exc:  # e.g. RPi.GPIO raises RuntimeError off a Pi
        raise HardwareError(f"GPIO pin factory {name!r} could not be loaded: {exc}") from exc
    try:
        return getattr(module, class_name)()
    except Exception as exc:  # drivers raise their own types (lgpio.error, PinUnknownPi, ...)
        raise HardwareError(f"GPIO pin factory {name!r} could not be opened: {exc}") from exc


class _Output:
    """A digital output that is off from construction on and switched off before it is released.

    Subclasses name what is wired (``_WHAT``, used in every error) and give
    the on/off state its own name.
    """

    _WHAT = "output"

    def __init__(self, pin: int, *, active_high: bool, factory: Any) -> None:
        # Re-entrant: on mock pins, watchers of the pin run inside set().
        self._lock = threading.RLock()
        try:
            self._device: OutputDevice | None = OutputDevice(
                pin, active_high=active_high, initial_value=False, pin_factory=factory
            )
        except _GPIO_ERRORS as exc:
            raise HardwareError(f"{self._WHAT} on pin {pin}: {exc}") from exc
        self.pin = pin

    def set(self, on: bool) -> None:
        with self._lock:
            if self._device is None:
                raise HardwareError(f"{self._WHAT} on pin {self.pin} is closed")
            try:
                self._device.value = bool(on)
            except _GPIO_ERRORS as exc:
                raise HardwareError(f"{self._WHAT} on pin {self.pin}: {exc}") from exc

    def _is_on(self) -> bool:
        with self._lock:
            return self._device is not None and bool(self._device.value)

    def close(self) -> None:
        """Switch off before releasing; idempotent."""
        with self._lock:
            device, self._device = self._device, None
            if device is None:
                return
            try:
                device.off()
            finally:
                device.close()


class LockRelay(_Output):
    """The lock relay output; de-energised (the safe state) from construction on.

    :meth:`close` de-energises before releasing: a released pin must never
    leave the door unlocked.
    """

    _WHAT = "lock relay"

    @property
    def energised(self) -> bool:
        return self._is_on()


class Sounder(_Output):
    """The door's local sounder (buzzer or piezo on a transistor or relay): silent from construction on.

    Driven from ``DoorMachine.sounder_on`` after every machine call, like the
    relay; :meth:`close` silences it before releasing the pin.
    ``active_high=False`` for driver boards that sound on a low level.
    """

    _WHAT = "sounder"

    @property
    def on(self) -> bool:
        return self._is_on()


class DoorInputs:
    """Door contact, REX, tamper and (turnstiles) passage-sensor inputs, forwarding gpiozero's edge callbacks.

    Callbacks run on gpiozero's thread (for mock pins: the thread that drove
    the pin) and fire only on changes; read :attr:`contact_open` and
    :attr:`tampered` once at start to learn the initial position. The contact
    is always pulled up (switch to ground); ``contact_open_level`` says which
    level means open. The REX button is pulled up when ``rex_active_low``
    (button to ground), else down.

    The tamper input is a normally-closed loop through the enclosure's cover
    switch: closed (healthy) while the cover is on, open when the cover is
    removed. ``tamper_active_low`` says where the loop goes: ``True`` (the
    default) is a loop to ground with the pin pulled up, so **low means
    intact and high means tampered**; ``False`` is a loop to 3V3 with the pin
    pulled down, so high means intact and low tampered. Either way the pull
    resistor wins when the loop opens, so a cut or unplugged tamper wire
    reads as tampered, never as intact. ``on_tamper(True)`` reports the loop
    opening, ``on_tamper(False)`` its restoration.
    """

    def __init__(
        self,
        *,
        contact_pin: int | None,
        rex_pin: int | None,
        factory: Any,
        on_contact: Callable[[bool], None],
        on_rex: Callable[[], None],
        contact_open_level: str = "high",
        rex_active_low: bool = True,
        debounce_s: float | None = None,
        tamper_pin: int | None = None,
        on_tamper: Callable[[bool], None] | None = None,
        tamper_active_low: bool = True,
        passage_pin: int | None = None,
        on_passage: Callable[[], None] | None = None,
        passage_active_low: bool = True,
    ) -> None:
        if contact_open_level not in ("high", "low"):
            raise ValueError(f"contact_open_level must be 'high' or 'low', got {contact_open_level!r}")
        if tamper_pin is not None and on_tamper is None:
            raise ValueError("a tamper_pin needs an on_tamper callback")
        if passage_pin is not None and on_passage is None:
            raise ValueError("a passage_pin needs an on_passage callback")
        self._on_passage = on_passage
        self._on_contact = on_contact
        self._on_rex = on_rex
        self._on_tamper = on_tamper
        self._closed = False
        # With a pull-up the device is "active" when the pin is low.
        self._open_when_active = contact_open_level == "low"
        self._contact: DigitalInputDevice | None = None
        self._rex: DigitalInputDevice | None = None
        self._tamper: DigitalInputDevice | None = None
        self._passage: DigitalInputDevice | None = None
        try:
            if contact_pin is not None:
                self._contact = self._input(contact_pin, True, debounce_s, factory, "door contact")
                self._contact.when_activated = self._contact_activated
                self._contact.when_deactivated = self._contact_deactivated
            if rex_pin is not None:
                self._rex = self._input(rex_pin, rex_active_low, debounce_s, factory, "REX")
                self._rex.when_activated = self._rex_pressed
            if tamper_pin is not None:
                # Pulled towards the tampered level: the device is "active" while the loop holds it intact.
                self._tamper = self._input(tamper_pin, tamper_active_low, debounce_s, factory, "tamper")
                self._tamper.when_activated = self._tamper_restored
                self._tamper.when_deactivated = self._tamper_opened
            if passage_pin is not None:
                # A turnstile's passage sensor: one pulse (active edge) per person through, like a REX press.
                self._passage = self._input(passage_pin, passage_active_low, debounce_s, factory, "passage sensor")
                self._passage.when_activated = self._passed
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _input(pin: int, pull_up: bool, debounce_s: float | None, factory: Any, what: str) -> DigitalInputDevice:
        try:
            return DigitalInputDevice(pin, pull_up=pull_up, bounce_time=debounce_s, pin_factory=factory)
        except _GPIO_ERRORS as exc:
            raise HardwareError(f"{what} on pin {pin}: {exc}") from exc

    def _contact_activated(self) -> None:
        if not self._closed:
            self._on_contact(self._open_when_active)

    def _contact_deactivated(self) -> None:
        if not self._closed:
            self._on_contact(not self._open_when_active)

    def _rex_pressed(self) -> None:
        if not self._closed:
            self._on_rex()

    def _passed(self) -> None:
        if not self._closed and self._on_passage is not None:
            self._on_passage()

    def _tamper_opened(self) -> None:
        if not self._closed and self._on_tamper is not None:
            self._on_tamper(True)

    def _tamper_restored(self) -> None:
        if not self._closed and self._on_tamper is not None:
            self._on_tamper(False)

    @property
    def contact_open(self) -> bool | None:
        device = self._contact
        if device is None:
            return None
        return device.is_active == self._open_when_active

    @property
    def tampered(self) -> bool | None:
        """True while the tamper loop is open (cover off or wire cut); None with no tamper input."""
        device = self._tamper
        if device is None:
            return None
        return not device.is_active

    def close(self) -> None:
        """Stop forwarding first, so nothing reaches the owner while pins are released; idempotent."""
        self._closed = True
        for attr in ("_contact", "_rex", "_tamper", "_passage"):
            device = getattr(self, attr)
            setattr(self, attr, None)
            if device is not None:
                device.close()


class EmergencyInput:
    """The device's emergency release input: the fire alarm panel's (or a break-glass unit's) normally closed
    contact, which opens to release the doors set ``emergency_release``.

    Wired like the tamper loop and for the same reason: the pull resistor wins when the contact opens, so a cut
    or unplugged wire reads as an emergency, never as all clear (fail safe for the people inside).
    ``active_low`` True (the default): the closed contact goes to ground with the pin pulled up, so **low means
    all clear and high means release**. ``on_change(True)`` reports a release, ``on_change(False)`` its end;
    read :attr:`active` once at start for the initial position.
    """

    def __init__(self, pin: int, *, factory: Any, on_change: Callable[[bool], None], active_low: bool = True,
                 debounce_s: float | None = None) -> None:
        self._on_change = on_change
        self._closed = False
        try:
            self._device: DigitalInputDevice | None = DigitalInputDevice(
                pin, pull_up=active_low, bounce_time=debounce_s, pin_factory=factory)
        except _GPIO_ERRORS as exc:
            raise HardwareError(f"emergency input on pin {pin}: {exc}") from exc
        # "Active" in gpiozero's sense is the closed contact: all clear.
        self._device.when_activated = lambda: self._tell(False)
        self._device.when_deactivated = lambda: self._tell(True)

    def _tell(self, release: bool) -> None:
        if not self._closed:
            self._on_change(release)

    @property
    def active(self) -> bool:
        """True while the contact is open (release), or once the input is closed (nothing says all clear)."""
        device = self._device
        return device is None or not device.is_active

    def close(self) -> None:
        self._closed = True
        device, self._device = self._device, None
        if device is not None:
            device.close()


class FloorRelay(_Output):
    """A lift cab's floor-enable output: energised, the floor's button calls the lift there; off from construction
    on and switched off before release, so a crash or a lost edge leaves the restricted floors disabled."""

    _WHAT = "floor relay"

    @property
    def energised(self) -> bool:
        return self._is_on()


class FloorRelays:
    """A lift cab's floor relays as one output: :meth:`set_floors` energises exactly the floors named; ``set(False)``
    and :meth:`close` switch every one off (the lock relay's contract, so the agent's safe paths serve both)."""

    def __init__(self, relays: dict[str, tuple[int, bool]], *, factory: Any) -> None:
        self.relays: dict[str, FloorRelay] = {}
        try:
            for area, (pin, active_high) in relays.items():
                self.relays[area] = FloorRelay(pin, active_high=active_high, factory=factory)
        except BaseException:
            self.close()
            raise

    def set_floors(self, enabled: frozenset[str]) -> None:
        """Switch off before on, so a change never enables more floors than either state, even for a moment."""
        for area, relay in self.relays.items():
            if area not in enabled:
                relay.set(False)
        for area, relay in self.relays.items():
            if area in enabled:
                relay.set(True)

    def set(self, on: bool) -> None:
        self.set_floors(frozenset(self.relays) if on else frozenset())

    def close(self) -> None:
        for relay in self.relays.values():
            relay.close()


class FloorButtons:
    """A lift cab's floor-button inputs (where wired): ``on_press(area)`` once per press, on gpiozero's thread.

    Each button is a momentary contact; ``active_low`` True (the default) is a button to ground with the pin
    pulled up, like the REX input.
    """

    def __init__(self, buttons: dict[str, tuple[int, bool]], *, factory: Any, on_press: Callable[[str], None],
                 debounce_s: float | None = None) -> None:
        self._on_press = on_press
        self._closed = False
        self._devices: list[DigitalInputDevice] = []
        try:
            for area, (pin, active_low) in buttons.items():
                device = DoorInputs._input(pin, active_low, debounce_s, factory, f"floor button {area}")
                device.when_activated = lambda a=area: self._pressed(a)
                self._devices.append(device)
        except BaseException:
            self.close()
            raise

    def _pressed(self, area: str) -> None:
        if not self._closed:
            self._on_press(area)

    def close(self) -> None:
        self._closed = True
        devices, self._devices = self._devices, []
        for device in devices:
            device.close()
