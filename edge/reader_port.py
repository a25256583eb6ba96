"""One interface for every kind of badge reader, and the registry that builds them from the device file.

The agent knows readers only through :class:`Reader`: it starts and stops them, reads their
:class:`ReaderStats` and ``health_reason`` for the health events and the retained state, asks how long they
have been silent, passes new reader-security thresholds on, and asks for grant/deny feedback. Which class
serves a door is chosen here by the reader table's ``protocol`` (``doorkeep.config.READER_PROTOCOLS``), so
adding a reader kind is its adapter plus one :func:`register` line, not another branch in the agent
(docs/readers.md "Adding a reader kind").

Adapters register themselves when their module is imported; :data:`KIND_MODULES` lists those modules and is
imported lazily on first use (the adapters import this module for :func:`register` and :class:`ReaderStats`).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from doorkeep.clock import Clock
from doorkeep.policy import ReaderSignals
from edge.errors import EdgeError
from edge.framing import CardRead

if TYPE_CHECKING:
    from doorkeep.config import DoorHardware, ReaderConfig
    from edge.loop import Loop

CardCallback = Callable[[str, CardRead, float], None]
"""``(door, card, t_read)``: a new card or PIN, with the monotonic time its bytes (or bits) arrived."""
TamperCallback = Callable[[str, bool], None]
"""``(door, active)``: the reader's own tamper switch (OSDP)."""
SecurityCallback = Callable[[str, str, dict[str, Any]], None]
"""``(door, cause, detail)``: a reader security signal (OSDP Secure Channel), made a ``reader_security`` alarm."""

#: The modules whose import registers the reader kinds doorkeep ships; every module of the ``edge.kinds``
#: package is imported too, so a new kind is a new module there and nothing in this file.
KIND_MODULES: tuple[str, ...] = ("edge.readers", "edge.wiegand", "edge.osdp.cp")
KIND_PACKAGE = "edge.kinds"


@dataclass
class ReaderStats:
    """Health counters for one reader, the same type for every kind so the agent reads them alike.

    ``frames`` counts every valid frame, including held-card repeats; ``repeats`` is the part of those that was
    not passed on. ``secure`` is None for kinds without a secure channel; for OSDP it says whether the reader is
    online over Secure Channel, and ``reason`` why it is offline. ``mac_failures``, ``retries`` and ``polls``
    are counted by OSDP only (bench/osdp.py and the security tests read them).
    """

    frames: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    io_errors: int = 0
    last_frame_at: float | None = None
    last_data_at: float | None = None
    """Monotonic time of the last bytes received (valid, garbled or a keep-alive line), or of the port opening."""
    online: bool = False
    repeats: int = 0
    secure: bool | None = None
    reason: str | None = None
    mac_failures: int = 0
    retries: int = 0
    polls: int = 0

    def published(self) -> dict[str, Any]:
        """The reader's entry in the retained ``state`` message (docs/mqtt.md): ``online``, ``frames``,
        ``faults``, and ``secure`` and ``reason`` for kinds that have a secure channel."""
        out: dict[str, Any] = {"online": self.online, "frames": self.frames, "faults": sum(self.faults.values())}
        if self.secure is not None:  # why it is offline, and whether over Secure Channel
            out.update(secure=self.secure, reason=self.reason)
        return out


@runtime_checkable
class Reader(Protocol):
    """What the agent needs of a door's reader, whatever the wire (serial, OSDP bus, Wiegand GPIO)."""

    door: str
    protocol: str
    ready_at_start: bool
    """True if a reader that started without error is known good (a port opened, pins claimed); False if it
    proves itself later (an OSDP reader is good only once its Secure Channel is up), so it gets the start-up
    grace before being reported offline."""

    def start(self) -> None:
        """Open the hardware; raise ``HardwareError`` if it cannot be (the agent reports it and goes on)."""

    def stop(self) -> None:
        """Release the hardware; safe to call any number of times."""

    @property
    def stats(self) -> ReaderStats:
        """A copy of the counters, safe to read from any thread."""

    @property
    def health_reason(self) -> str | None:
        """Why the reader is unhealthy (``no_reply``, ``line_stuck_low``, ...), None when healthy."""

    def silent_for(self, now: float) -> float:
        """Seconds since the reader last sent anything (for ``silence_timeout_s``)."""

    def feedback(self, granted: bool) -> None:
        """Grant/deny LED and beep; a no-op for readers without them."""

    def apply_signals(self, signals: ReaderSignals) -> None:
        """New ``reader_security`` thresholds (a signed policy's); a no-op for readers without security signals."""


@dataclass
class ReaderDeps:
    """What the agent hands every reader factory: its callbacks, clock and pin factory, and the device's doors
    for kinds that share a port between doors (OSDP buses), which keep that shared state in ``shared``."""

    on_card: CardCallback
    clock: Clock
    pin_factory: Any
    doors: Mapping[str, DoorHardware]
    signals: ReaderSignals = field(default_factory=ReaderSignals)
    on_tamper: TamperCallback | None = None
    on_security: SecurityCallback | None = None
    shared: dict[str, Any] = field(default_factory=dict)
    """Per kind (keyed by its protocol name): state its readers share, built by its first factory call."""
    loop: Loop | None = None
    """The edge's reactor (edge/loop.py): readers register their file descriptors and timers on it and call
    ``on_card`` on its thread. None only for code that runs a reader without an agent (tests build one)."""


ReaderFactory = Callable[[str, "ReaderConfig", ReaderDeps], Reader]

_FACTORIES: dict[str, ReaderFactory] = {}


class UnknownReaderProtocol(EdgeError):
    """A door's reader ``protocol`` has no registered adapter."""


def register(protocol: str) -> Callable[[ReaderFactory], ReaderFactory]:
    """Register ``factory(door_id, reader_config, deps) -> Reader`` for the config's ``protocol`` value."""

    def deco(factory: ReaderFactory) -> ReaderFactory:
        if _FACTORIES.get(protocol, factory) is not factory:
            raise ValueError(f"reader protocol {protocol!r} is registered twice")
        _FACTORIES[protocol] = factory
        return factory

    return deco


def _load_kinds() -> None:
    for module in KIND_MODULES:
        importlib.import_module(module)
    try:
        package = importlib.import_module(KIND_PACKAGE)
    except ModuleNotFoundError:
        return
    for info in pkgutil.iter_modules(package.__path__, KIND_PACKAGE + "."):
        importlib.import_module(info.name)


def known_protocols() -> tuple[str, ...]:
    """Every registered reader protocol, sorted."""
    _load_kinds()
    return tuple(sorted(_FACTORIES))


def build_reader(door: str, config: ReaderConfig, deps: ReaderDeps) -> Reader:
    """The reader for ``door`` from its ``reader`` table; :class:`UnknownReaderProtocol` names the fix."""
    _load_kinds()
    factory = _FACTORIES.get(config.protocol)
    if factory is None:
        raise UnknownReaderProtocol(
            f"door {door!r}: reader protocol {config.protocol!r} has no reader adapter (known: "
            f"{', '.join(sorted(_FACTORIES))}); fix: use one of those in the door's reader table")
    return factory(door, config, deps)
