"""An edge agent under test without a broker: what it published, what it answered, and its clock driven by hand.

The edge tests that run a real :class:`edge.agent.EdgeAgent` on mock pins with a fake clock (openings, lifts,
overrides) share this: the events the agent's listeners hear, the results of the signed commands it is given
(recorded where it would answer on ``cmd/result``), and ``settle``, which waits until every deadline up to the
fake clock's now is applied and the events it produced are heard.
"""

from __future__ import annotations

import threading
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from doorkeep.clock import FakeClock
from doorkeep.commands import sign_command
from doorkeep.contract import EventMsg
from edge.agent import EdgeAgent


class AgentHarness:
    """Wraps ``agent`` (not started yet): call :meth:`start` once the hardware simulators are wired."""

    def __init__(self, agent: EdgeAgent, clock: FakeClock, signing_key: Ed25519PrivateKey, *, site_id: str,
                 device: str) -> None:
        self.agent, self.clock, self.signing_key = agent, clock, signing_key
        self.site_id, self.device = site_id, device
        self.events: list[EventMsg] = []
        self.results: list[tuple[str, str | None]] = []
        self._lock = threading.Lock()
        agent.listeners.append(self._heard)
        answer = agent._command_result  # what the edge answers on cmd/result (no broker here): recorded

        def record(transaction: str | None, status: str, error: str | None) -> None:
            with self._lock:
                self.results.append((status, error))
            answer(transaction, status, error)

        agent._command_result = record  # type: ignore[method-assign]

    def _heard(self, ev: EventMsg) -> None:
        with self._lock:
            self.events.append(ev)

    def of(self, etype: str, door: str | None = None) -> list[EventMsg]:
        with self._lock:
            return [e for e in self.events if e.type == etype and door in (None, e.door)]

    def settle(self) -> None:
        """Every deadline up to the fake clock's now applied, and the events it produced heard."""
        self.agent.poke()
        assert self.agent.sync(5)
        assert self.agent.sync(5)  # events stored by the first turn reach the listeners

    def after(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.settle()

    def command(self, action: str, issued_at: float | None = None, **args: Any) -> tuple[str, str | None]:
        """Send one signed command; the edge's answer ``(status, error)``, as on ``cmd/result``."""
        with self._lock:
            before = len(self.results)
        self.agent._on_command_payload(sign_command(
            site_id=self.site_id, device=self.device, action=action, args=args, key=self.signing_key,
            issued_at=self.clock.wall() if issued_at is None else issued_at))
        self.settle()
        with self._lock:
            assert len(self.results) == before + 1, "the command was never answered"
            return self.results[-1]
