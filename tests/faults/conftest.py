"""Fixtures of the fault-injection suite and the table it prints at the end of the session.

Each test gets a whole private stack (persistent Mosquitto, `doorkeep server` and `doorkeep edge`
processes, reader simulators) from simulators/faults.py, and reports one row of the table with
``fault_row``. docs/faults.md explains the columns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from simulators.faults import FaultStack, FaultUnavailable, Verdict
from simulators.site import mosquitto_installed
from tests.conftest import FAULT_ROW

@pytest.fixture
def stack(tmp_path: Path) -> Iterator[FaultStack]:
    if not mosquitto_installed():
        pytest.skip("mosquitto is not installed (make test installs it)")
    with FaultStack(tmp_path) as stack:
        yield stack


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[FaultStack]:
    """A stack whose server data directory is a 4 MB tmpfs."""
    if not mosquitto_installed():
        pytest.skip("mosquitto is not installed (make test installs it)")
    stack = FaultStack(tmp_path, data_tmpfs_mb=4)
    try:
        try:
            stack.start()
        except FaultUnavailable as exc:
            pytest.skip(f"cannot cap the server's disk here: {exc}")
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def clock_stack(tmp_path: Path) -> Iterator[FaultStack]:
    """A stack whose edge runs under libfaketime, so its wall clock can be stepped."""
    if not mosquitto_installed():
        pytest.skip("mosquitto is not installed (make test installs it)")
    try:
        stack = FaultStack(tmp_path, steppable_edge_clock=True)
    except FaultUnavailable as exc:
        pytest.skip(f"cannot step the edge's clock here: {exc}")
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def fault_row(request: pytest.FixtureRequest) -> Callable[..., None]:
    """Adds this test's row to the table tests/conftest.py prints at the end of the session. The row travels as a
    user property of the test's report, so it reaches the table from an xdist worker (``make test``) too."""
    def add(fault: str, verdict: Verdict, recover_s: float | None, note: str = "", *, lost: int | None = None) -> None:
        request.node.user_properties.append((FAULT_ROW, {
            "fault": fault, "sent": verdict.sent, "stored": verdict.stored, "duplicates": verdict.duplicates,
            "lost": verdict.lost if lost is None else lost,
            "recover_s": "-" if recover_s is None else f"{recover_s:.2f}", "note": note,
        }))
    return add
