"""The workers' commands as an operator runs them (issue 20; docs/scale.md "Several server workers"):
``doorkeep server --worker`` refuses what cannot work with the fix named, and ``doorkeep desk --worker`` serves the
desk from the leader only, the standby's port opening when it takes over.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from simulators.faults import FaultStack, wait_for
from simulators.site import DEMO_SITE, mosquitto_installed
from tests.faults.test_worker_faults import resumed_since
from tests.pg import pg_url  # noqa: F401  (a fixture)

pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _status(port: int) -> int | None:
    """The desk's answer to GET / (its login page), None while nothing listens."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def _server(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "doorkeep", "server", "--site", str(DEMO_SITE), *args],
                          capture_output=True, text=True, timeout=60)


def test_a_worker_without_a_postgresql_store_or_with_a_bad_name_is_refused_with_the_fix(tmp_path: Path) -> None:
    done = _server("--data", str(tmp_path), "--broker", "mqtt://127.0.0.1:1", "--allow-plain-mqtt", "--worker", "a")
    assert done.returncode == 2 and "PostgreSQL" in done.stderr and "fix: --store postgresql://" in done.stderr, \
        done.stderr
    done = _server("--data", str(tmp_path), "--broker", "mqtt://127.0.0.1:1", "--allow-plain-mqtt",
                   "--store", "postgresql://postgres@127.0.0.1:1/x", "--worker", "a/b")
    assert done.returncode == 2 and "--worker a, --worker b" in done.stderr, done.stderr


def test_the_desk_is_served_by_the_leading_worker_and_moves_with_the_lead(tmp_path: Path, pg_url: str) -> None:  # noqa: F811
    if not mosquitto_installed():
        pytest.skip("mosquitto is not installed (make test installs it)")
    stack = FaultStack(tmp_path, store_url=pg_url, workers=("a", "b"))
    stack.desk_ports = {"a": _free_port(), "b": _free_port()}
    with stack:
        assert wait_for(lambda: _status(stack.desk_ports["a"]) == 200, 20), stack.log("server")
        assert _status(stack.desk_ports["b"]) is None, "a standby must not serve the desk"
        assert "stands by for site demo" in stack.log("server-b")
        stack.load.start()  # type: ignore[union-attr]
        at = stack.kill_worker("a")
        assert wait_for(lambda: _status(stack.desk_ports["b"]) == 200, 20), stack.log("server")
        assert stack.leader() == "b"
        assert resumed_since(stack, at) <= 2.0
