"""Several broker addresses: the edge and the server given [A, B] (two real Mosquittos on loopback, one CA).

The real stack as processes (simulators/faults.py: `doorkeep server`, `doorkeep edge`, reader simulators, a
load generator), both given `--broker mqtts://A,mqtts://B`. With A down from the start, both must end up on B
and badges be decided by the server; with A killed -9 under load, both must move to B, the doors decide
offline meanwhile, and every badge is stored exactly once (docs/scale.md, "Several broker addresses").
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator

import pytest

from simulators.brokers import MosquittoBroker, free_port
from simulators.faults import DEVICE, GRANT_DOOR, SITE, FaultStack, Watcher, wait_for
from simulators.site import mosquitto_installed
from tests.faults.test_faults import assert_clean, more_badges, settle, warm_up

pytestmark = pytest.mark.e2e


class TwoBrokerStack(FaultStack):
    """The fault stack with a second Mosquitto (B) beside the stack's own (A), from the same CA; the server and
    the edge are given both addresses, A first."""

    def __init__(self, workdir: Path, *, a_running: bool = True) -> None:
        super().__init__(workdir)
        self.a_running = a_running
        self.standby: MosquittoBroker | None = None
        self.standby_watcher: Watcher | None = None

    def start(self) -> TwoBrokerStack:
        self.prepare()
        self.broker_dir.mkdir(parents=True, exist_ok=True)
        self.broker = self._new_broker(free_port())  # A: writes the CA and the certificates into broker_dir/pki
        self.port = self.broker.port
        standby_dir = self.dir / "broker-b"
        standby_dir.mkdir()
        shutil.copytree(self.pki, standby_dir / "pki")  # one CA: B trusts the same clients, they trust B
        self.standby = MosquittoBroker(workdir=standby_dir, persistent=True, tls_sites=[SITE],
                                       clients=["server", DEVICE]).start()
        self.standby_watcher = self._watch(self.standby)
        if self.a_running:
            self.broker.start()
            self.watcher = self._watch(self.broker)
        else:
            self.watcher = self.standby_watcher  # the server's and edge's `online` can only appear on B
        self.start_server()
        self.start_edge()
        if not wait_for(lambda: (self.state_dir / "policy.json").exists(), 20):
            raise RuntimeError(f"the edge never cached its policy:\n{self.log('edge')}")
        from simulators.faults import LoadGenerator
        self.load = LoadGenerator(self.readers)
        return self

    @property
    def broker_url(self) -> str:
        assert self.standby is not None
        return f"mqtts://127.0.0.1:{self.port},mqtts://127.0.0.1:{self.standby.port}"

    @property
    def edge_broker_url(self) -> str:
        return self.broker_url

    def stop(self) -> None:
        super().stop()
        if self.standby_watcher is not None and self.standby_watcher is not self.watcher:
            self.standby_watcher.stop()
        if self.standby is not None:
            self.standby.stop()


def _stack(tmp_path: Path, **kw: bool) -> Iterator[TwoBrokerStack]:
    if not mosquitto_installed():
        pytest.skip("mosquitto is not installed (make test installs it)")
    with TwoBrokerStack(tmp_path, **kw) as stack:
        yield stack


@pytest.fixture
def both_up(tmp_path: Path) -> Iterator[TwoBrokerStack]:
    yield from _stack(tmp_path)


@pytest.fixture
def first_down(tmp_path: Path) -> Iterator[TwoBrokerStack]:
    yield from _stack(tmp_path, a_running=False)


def decided_by(stack: FaultStack) -> dict[str, int]:
    return dict(stack.query("SELECT decided_by, COUNT(*) FROM events WHERE type = 'access' GROUP BY decided_by"))


def test_edge_and_server_given_a_down_broker_first_connect_to_the_second_and_decide_online(
        first_down: TwoBrokerStack) -> None:
    stack = first_down
    watcher = stack.standby_watcher
    assert watcher is not None
    assert "online" in watcher.server_availability and "online" in watcher.availability  # both on B
    warm_up(stack)
    verdict = settle(stack)
    assert_clean(stack, verdict)
    by = decided_by(stack)
    assert by.get("server", 0) >= 10 and "edge_offline" not in by, \
        f"badges were not decided by the server over B: {by}\n{stack.log('edge')}"


def test_first_broker_killed_under_load_moves_edge_and_server_to_the_second_and_loses_nothing(
        both_up: TwoBrokerStack) -> None:
    stack = both_up
    assert stack.standby_watcher is not None
    warm_up(stack)
    assert decided_by(stack).get("server", 0) >= 1
    standby_online = len(stack.standby_watcher.server_availability)
    at = stack.kill_broker()  # A, kill -9, for good
    more_badges(stack, 10)  # the load goes on while the edge and the server move
    assert wait_for(lambda: "online" in stack.standby_watcher.server_availability[standby_online:]  # type: ignore[union-attr]
                    and stack.standby_watcher.last_availability() == "online", 15), \
        f"the server or the edge never came online on B\n{stack.log('server')}\n{stack.log('edge')}"
    online_again = decided_by(stack).get("server", 0)
    more_badges(stack, 10)
    verdict = settle(stack)
    assert_clean(stack, verdict)  # every badge stored exactly once, in seq order, no wrong decision
    by = decided_by(stack)
    assert by.get("edge_offline", 0) >= 1, f"no badge was decided offline while the edge moved: {by}"
    assert by.get("server", 0) > online_again, f"the server did not decide over B after the move: {by}"
    stored_after = stack.query("SELECT COUNT(*) FROM events WHERE type = 'access' AND door = ? AND received_at > ?",
                               GRANT_DOOR, at)[0][0]
    assert stored_after >= 10, f"only {stored_after} lobby badges stored after the kill"
