"""How fast the control panel may poll an OSDP bus: the line's arithmetic and the standard's rules (pure).

What SIA OSDP 2.2 (section 5.7, Timing) fixes, and what doorkeep does with it:

* **Turnaround**: a device leaves the line idle for at least two character times before it transmits, so
  converters and multiplexers see the line free. The CP waits :func:`turnaround_s` after the end of a reply
  (or of a reply window) before its next command.
* **Reply delay**: a PD answers each command addressed to it within 200 ms (``REPLY_TIMEOUT_S`` in
  edge/osdp/cp.py); *typically* within 3 ms. A PD that cannot take a command now answers ``osdp_BUSY``.
* **Offline**: a PD without a valid reply for 8 s is offline. The standard sets no minimum poll interval: a CP
  may send its next command as soon as the turnaround allows.

doorkeep's rule (docs/readers.md "Timing"): a reader is polled again :func:`poll_interval` after its previous
poll began, the exchanges going round-robin over the bus's readers, each sent as soon as the previous one
ended and the turnaround passed. The interval is the bus's nominal exchange time - a secure POLL and its
secure ACK on the wire at the line rate, both turnarounds, and the standard's typical reply delay
(:func:`exchange_budget_s`: 5.8 ms at 115200 baud, 36 ms at 9600) - times the number of readers, so a bus with
more readers polls each of them less often and the bus as a whole never more often than a real reader can be
answered at that rate; ``poll_ms`` from the device file caps it (a reader is polled at least that often when
the line allows). A queued command (LED, buzzer) does not wait for the interval, and a reader that answers a
POLL with BUSY is given twice the time, up to ``poll_ms`` (:func:`busy_backoff_s`).
"""

from __future__ import annotations

CHAR_BITS = 10
"""Bits per character on the wire: start, 8 data, stop (OSDP is 8N1)."""
TURNAROUND_CHARS = 2
"""Idle character times before a device transmits (OSDP 2.2 section 5.7)."""
TYPICAL_REPLY_DELAY_S = 0.003
"""OSDP 2.2 section 5.7: the typical REPLY_DELAY should be less than 3 ms."""
SECURE_POLL_BYTES = 14
"""A POLL under Secure Channel: SOM, ADDR, LEN (2), CTRL, SCB (2), CODE, MAC (4), CRC (2)."""
SECURE_ACK_BYTES = 14
"""Its ACK, the same shape."""


def char_s(baudrate: int) -> float:
    """One character's time on the wire."""
    if baudrate <= 0:
        raise ValueError(f"baud rate must be positive, got {baudrate}")
    return CHAR_BITS / baudrate


def wire_s(nbytes: int, baudrate: int) -> float:
    """Time ``nbytes`` take on the wire at ``baudrate``: a command's reply window opens only after that."""
    return nbytes * char_s(baudrate)


def turnaround_s(baudrate: int) -> float:
    """The idle line a device leaves before it transmits: 2 character times (0.17 ms at 115200, 2.1 ms at 9600)."""
    return TURNAROUND_CHARS * char_s(baudrate)


def exchange_budget_s(baudrate: int) -> float:
    """Nominal time of one secure POLL/ACK exchange: both packets on the wire, both turnarounds, and the
    standard's typical reply delay."""
    chars = SECURE_POLL_BYTES + SECURE_ACK_BYTES + 2 * TURNAROUND_CHARS
    return chars * char_s(baudrate) + TYPICAL_REPLY_DELAY_S


def poll_interval(baudrate: int, readers: int, poll_ms: int) -> float:
    """Seconds from the start of one poll of a reader to the start of its next: one exchange budget per reader
    on the bus, capped by ``poll_ms``."""
    if readers < 1:
        raise ValueError(f"a bus has at least one reader, got {readers}")
    return min(max(0.0, poll_ms / 1000.0), readers * exchange_budget_s(baudrate))


def line_bound_s(baudrate: int, readers: int) -> float:
    """The shortest interval the line itself allows each reader (nominal exchanges back to back): when it is
    longer than ``poll_ms``, the cap cannot be kept and the bus says so at start."""
    return readers * exchange_budget_s(baudrate)


def busy_backoff_s(current_s: float, cap_s: float) -> float:
    """A reader that answered a POLL with BUSY: its interval doubled, at most ``cap_s`` (``poll_ms``)."""
    return min(cap_s, 2.0 * current_s)


def recovered_s(current_s: float, interval_s: float) -> float:
    """A reader that answered anything but BUSY: its interval halved back towards the bus's ``interval_s``."""
    return max(interval_s, current_s / 2.0)
