"""`doorkeep demo --duration 20` on its embedded defaults, as a new user runs it."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def test_demo_with_duration_plays_the_morning_and_exits_zero() -> None:
    proc = subprocess.run([sys.executable, "-m", "doorkeep", "--log-level", "WARNING", "demo", "--duration", "20"],
                          capture_output=True, text=True, timeout=90)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    rows = [line for line in out.splitlines() if line[:2].isdigit() and ":" in line[:8]]
    assert any("Alice Archer" in r and "granted" in r and " ms" in r for r in rows), out
    assert any("Bob Baker" in r and "no_access" in r for r in rows), out
    assert any("forced_open" in r for r in rows), out
    assert any("unknown_credential" in r for r in rows), out
    assert "UNEXPECTED" not in out
    assert "all relays de-energised: yes" in out
