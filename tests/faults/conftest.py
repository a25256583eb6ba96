"""Fixtures of the fault-injection suite and the table it prints at the end of the session.

Each test gets a whole private stack (persistent Mosquitto, `doorkeep server` and `doorkeep edge`
processes, reader simulators) from simulators/faults.py, and reports one row of the table with
``fault_row``. docs/faults.md explains the columns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from simulators.faults import FaultStack, FaultUnavailable, Verdict
from simulators.site import mosquitto_installed

ROWS = pytest.StashKey[list[dict[str, Any]]]()
HEAD = ("fault", "sent", "stored", "duplicates", "lost", "recover_s", "note")


def pytest_configure(config: pytest.Config) -> None:
    config.stash[ROWS] = []


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[FaultStack]:
    if not mosquitto_installed():
        pytest.skip("mosquitto is not installed (make test installs it)")
    stack = FaultStack(tmp_path)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


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
    def add(fault: str, verdict: Verdict, recover_s: float | None, note: str = "", *, lost: int | None = None) -> None:
        request.config.stash[ROWS].append({
            "fault": fault, "sent": verdict.sent, "stored": verdict.stored, "duplicates": verdict.duplicates,
            "lost": verdict.lost if lost is None else lost,
            "recover_s": "-" if recover_s is None else f"{recover_s:.2f}", "note": note,
        })
    return add


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    rows = config.stash.get(ROWS, [])
    if not rows:
        return
    table = [HEAD] + [tuple(str(r[h]) for h in HEAD) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(HEAD))]
    terminalreporter.section("fault injection")
    for n, row in enumerate(table):
        terminalreporter.write_line("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if n == 0:
            terminalreporter.write_line("  ".join("-" * w for w in widths))
