"""Sending signed commands to edges and waiting for their results.

:class:`CommandSender` signs each command with the site's Ed25519 key (the
policy signing key; doorkeep/commands.py), publishes it QoS 1 on the device's
``cmd`` topic and waits, with a deadline and no sleeping, for the matching
``cmd/result`` (matched by transaction *and* device). It does not own an MQTT
client: it is given a ``publish`` hook and fed results through
:meth:`CommandSender.on_result`, so the server wires it to its bus and the
``doorkeep door unlock`` / ``doorkeep lockdown`` commands to a short-lived
client of their own.

Every command is recorded in the audit log, with the operator who asked, before it is published.

Door-level helpers: :meth:`CommandSender.unlock` finds the device that owns a
door; :meth:`CommandSender.lockdown` (server only: it needs the directory)
records the lockdown in the directory, so the signed policy carries it and it
survives restarts, then commands every device with a door into that scope so
the edges apply it at once.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from doorkeep.clock import Clock, iso_ms
from doorkeep.commands import CommandError, new_transaction, sign_command
from doorkeep.contract import CommandResult, Topics
from doorkeep.model import Site
from server.audit import Auditor
from server.errors import ServerError

log = logging.getLogger("doorkeep.server.commands")

#: default seconds to wait for an edge's result
DEFAULT_TIMEOUT_S = 5.0

Publish = Callable[[str, bytes], object]


class CommandSendError(ServerError, ValueError):
    """A command cannot be sent as asked (unknown door or area, args an edge would refuse)."""


class _Lockdowns(Protocol):
    def lockdown(self, area: str | None, active: bool, *, actor: str = "system") -> None: ...


#: audit action for each command (docs/security.md, "Audit log")
AUDIT_ACTIONS = {"unlock": "door.unlock", "lock": "door.lock", "release": "door.release",
                 "lockdown": "lockdown.command", "sync": "device.sync"}


@dataclass
class _Waiter:
    device: str
    done: threading.Event = field(default_factory=threading.Event)
    result: CommandResult | None = None


class CommandSender:
    """Signs, publishes and awaits commands; thread-safe (results arrive on paho's network thread)."""

    def __init__(self, site: Site | Callable[[], Site], door_devices: dict[str, str], key: Ed25519PrivateKey,
                 clock: Clock, publish: Publish, *, directory: _Lockdowns | None = None,
                 audit: Auditor | None = None) -> None:
        """``site``: the site, or a callable returning the current one (areas and doors are read from it);
        ``audit``: where every command is recorded before it is sent (None only in unit tests)."""
        self._site = site if callable(site) else (lambda: site)
        self.site_id = self._site().id
        self.topics = Topics(self.site_id)
        self.door_devices = door_devices
        self.key = key
        self.clock = clock
        self.publish = publish
        self.directory = directory
        self.audit = audit
        self.counters: Counter[str] = Counter()
        self._waiting: dict[str, _Waiter] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------- results

    def on_result(self, device: str, result: CommandResult) -> None:
        """A ``cmd/result`` arrived from ``device`` (its topic's device): wake the sender waiting for it."""
        with self._lock:
            waiter = self._waiting.get(result.transaction or "")
            if waiter is None or waiter.device != device:
                self.counters["unmatched_results"] += 1
                log.debug("result %s from %s matches no command waiting here", result.transaction, device)
                return
            waiter.result = result
        waiter.done.set()

    # ---------------------------------------------------------------- send

    def send(self, device: str, action: str, args: dict[str, Any], *, actor: str = "system",
             timeout: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
        """Sign, publish and wait for one command; its result as a dict.

        ``{"device", "action", "transaction", "status": "ok"|"rejected"|"failed"|"timeout", "error"}``.
        """
        return self.send_many([(device, action, args)], actor=actor, timeout=timeout)[0]

    def send_many(self, commands: list[tuple[str, str, dict[str, Any]]], *, actor: str = "system",
                  timeout: float = DEFAULT_TIMEOUT_S) -> list[dict[str, Any]]:
        """Publish every command at once, then wait for all results under one deadline.

        Every operator command (server, desk or CLI) passes here and is recorded in the audit log, with who
        asked, before it is published: a door opened remotely is never missing from the log. What the edge
        did with it is its own event (``remote_unlock``, ``command_rejected``).
        """
        sent: list[tuple[str, str, str, _Waiter]] = []
        try:
            for device, action, args in commands:
                transaction = new_transaction()
                try:
                    payload = sign_command(site_id=self.site_id, device=device, action=action, args=args,
                                           key=self.key, issued_at=self.clock.wall(), transaction=transaction)
                except CommandError as exc:
                    raise CommandSendError(f"{action} {args} for {device}: {exc}") from None
                if self.audit is not None:
                    self.audit.record(actor, AUDIT_ACTIONS.get(action, f"command.{action}"), device,
                                      {"args": args, "transaction": transaction})
                waiter = _Waiter(device)
                with self._lock:
                    self._waiting[transaction] = waiter  # before publishing: the answer can be quick
                sent.append((device, action, transaction, waiter))
                self.publish(self.topics.cmd(device), payload)
                self.counters["sent"] += 1
            results = []
            deadline = self.clock.monotonic() + timeout
            for device, action, transaction, waiter in sent:
                waiter.done.wait(max(0.0, deadline - self.clock.monotonic()))
                res = waiter.result
                out = {"device": device, "action": action, "transaction": transaction,
                       "status": res.status if res is not None else "timeout",
                       "error": res.error if res is not None else f"no result from {device} within {timeout:g} s"}
                self.counters[out["status"]] += 1
                (log.info if out["status"] == "ok" else log.warning)(
                    "command %s to %s (transaction %s): %s%s", action, device, transaction, out["status"],
                    f" ({out['error']})" if out["error"] else "")
                results.append(out)
            return results
        finally:
            with self._lock:
                for _, _, transaction, _ in sent:
                    self._waiting.pop(transaction, None)

    # ------------------------------------------------------- door helpers

    def unlock(self, door: str, *, actor: str = "system", timeout: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
        """A momentary remote unlock of ``door`` (its ``unlock_s``), sent to the device that owns it."""
        device = self.door_devices.get(door)
        if device is None:
            raise CommandSendError(f"no door {door!r} on any device (known: {', '.join(sorted(self.door_devices))})")
        return self.send(device, "unlock", {"door": door}, actor=actor, timeout=timeout)

    def lock(self, door: str, *, actor: str = "system", timeout: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
        """End a momentary unlock of ``door`` now."""
        device = self.door_devices.get(door)
        if device is None:
            raise CommandSendError(f"no door {door!r} on any device")
        return self.send(device, "lock", {"door": door}, actor=actor, timeout=timeout)

    def override(self, door: str, kind: str, until: float, *, actor: str = "system",
                 timeout: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
        """A timed override of ``door``: ``kind`` ``unlock`` (held unlocked) or ``lock`` (held locked against its
        schedule) until the wall time ``until``; the edge ends it by itself then, server or not."""
        device = self.door_devices.get(door)
        if device is None:
            raise CommandSendError(f"no door {door!r} on any device")
        if kind not in ("unlock", "lock"):
            raise CommandSendError(f"an override is 'unlock' or 'lock', not {kind!r}")
        return self.send(device, kind, {"door": door, "until": iso_ms(until)}, actor=actor, timeout=timeout)

    def release(self, door: str, *, actor: str = "system", timeout: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
        """End ``door``'s timed override now: it goes back to its normal state."""
        device = self.door_devices.get(door)
        if device is None:
            raise CommandSendError(f"no door {door!r} on any device")
        return self.send(device, "release", {"door": door}, actor=actor, timeout=timeout)

    def devices_for(self, scope: str) -> list[str]:
        """The devices with a door into ``scope`` (an area id; a lift serving it as a floor counts), or every
        device for ``site``."""
        site = self._site()
        if scope != "site" and scope not in site.areas:
            raise CommandSendError(f"no area {scope!r} (known: site, {', '.join(sorted(site.areas))})")
        return sorted({dev for door, dev in self.door_devices.items()
                       if scope == "site" or (door in site.doors and scope in site.doors[door].entered)})

    def lockdown(self, scope: str, active: bool, *, actor: str = "system", timeout: float = DEFAULT_TIMEOUT_S,
                 persist: bool = True) -> list[dict[str, Any]]:
        """Lock down (or lift) the site or one area: recorded in the directory first (``persist``, so the
        signed policy carries it and it outlives restarts), then commanded to every device it covers."""
        devices = self.devices_for(scope)
        if persist:
            if self.directory is None:
                raise CommandSendError("this sender has no directory to record the lockdown in")
            self.directory.lockdown(None if scope == "site" else scope, active, actor=actor)
        return self.send_many([(d, "lockdown", {"scope": scope, "active": active}) for d in devices],
                              actor=actor, timeout=timeout)

    def sync(self, device: str, *, actor: str = "system", timeout: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
        """Ask ``device`` to republish its state, drain its outbox and re-read its policy cache now."""
        return self.send(device, "sync", {}, actor=actor, timeout=timeout)
