"""gpiozero adapters: the lock relay output and the door contact / REX inputs.

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
    "lgpio": ("gpiozero.pins.lgpio", "LGPIOFactory", "lgpio", "pip install 'doorkeep[pi]'"),
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


class LockRelay:
    """The lock relay output; de-energised (the safe state) from construction on."""

    def __init__(self, pin: int, *, active_high: bool, factory: Any) -> None:
        # Re-entrant: on mock pins, watchers of the pin run inside set().
        self._lock = threading.RLock()
        try:
            self._device: OutputDevice | None = OutputDevice(
                pin, active_high=active_high, initial_value=False, pin_factory=factory
            )
        except _GPIO_ERRORS as exc:
            raise HardwareError(f"lock relay on pin {pin}: {exc}") from exc
        self.pin = pin

    def set(self, energised: bool) -> None:
        with self._lock:
            if self._device is None:
                raise HardwareError(f"lock relay on pin {self.pin} is closed")
            try:
                self._device.value = bool(energised)
            except _GPIO_ERRORS as exc:
                raise HardwareError(f"lock relay on pin {self.pin}: {exc}") from exc

    @property
    def energised(self) -> bool:
        with self._lock:
            return self._device is not None and bool(self._device.value)

    def close(self) -> None:
        """De-energise before releasing: a released pin must never leave the door unlocked."""
        with self._lock:
            device, self._device = self._device, None
            if device is None:
                return
            try:
                device.off()
            finally:
                device.close()


class DoorInputs:
    """Door contact and REX inputs, forwarding gpiozero's edge callbacks.

    Callbacks run on gpiozero's thread (for mock pins: the thread that drove
    the pin) and fire only on changes; read :attr:`contact_open` once at start
    to learn the initial position. The contact is always pulled up (switch to
    ground); ``contact_open_level`` says which level means open. The REX
    button is pulled up when ``rex_active_low`` (button to ground), else down.
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
    ) -> None:
        if contact_open_level not in ("high", "low"):
            raise ValueError(f"contact_open_level must be 'high' or 'low', got {contact_open_level!r}")
        self._on_contact = on_contact
        self._on_rex = on_rex
        self._closed = False
        # With a pull-up the device is "active" when the pin is low.
        self._open_when_active = contact_open_level == "low"
        self._contact: DigitalInputDevice | None = None
        self._rex: DigitalInputDevice | None = None
        try:
            if contact_pin is not None:
                self._contact = self._input(contact_pin, True, debounce_s, factory, "door contact")
                self._contact.when_activated = self._contact_activated
                self._contact.when_deactivated = self._contact_deactivated
            if rex_pin is not None:
                self._rex = self._input(rex_pin, rex_active_low, debounce_s, factory, "REX")
                self._rex.when_activated = self._rex_pressed
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

    @property
    def contact_open(self) -> bool | None:
        device = self._contact
        if device is None:
            return None
        return device.is_active == self._open_when_active

    def close(self) -> None:
        """Stop forwarding first, so nothing reaches the owner while pins are released; idempotent."""
        self._closed = True
        for attr in ("_contact", "_rex"):
            device = getattr(self, attr)
            setattr(self, attr, None)
            if device is not None:
                device.close()
