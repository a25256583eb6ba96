"""A whole demo run logged as JSON (docs/operations.md "Logs"): every line a log shipper gets parses, carries the
stable fields, ties edge and server lines to the same door and event, and holds no card number or PIN.

`doorkeep demo` runs the embedded broker, the server, the desk and both edge agents on simulators in one process,
plays the scripted morning (grants, refusals, a stranger's card, a lost card, forced doors) and stops; at DEBUG
every access decision of the edge and the server is logged too, so the scan covers every line the code can write.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from doorkeep.logfmt import OPTIONAL_KEYS, STABLE_KEYS
from doorkeep.sites import DEMO_SITE
from simulators.brokers import free_port
from simulators.demo import MORNING

pytestmark = pytest.mark.e2e

UTC_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def demo_secrets() -> set[str]:
    """Every card number and PIN the demo knows: its people, its visitor badge pool and the cards its script
    badges (a stranger's card is in no file), each also as the reader may spell it (case, decimal of hex)."""
    people = tomllib.loads((Path(DEMO_SITE) / "people.toml").read_text())
    numbers = {str(card["number"]) for person in people.get("people", {}).values() for card in person.get("cards", [])}
    numbers |= {str(card["number"]) for card in people.get("visitor_pool", {}).get("cards", [])}
    numbers |= {step.card for step in MORNING if step.card}
    pins = {str(person["pin"]) for person in people.get("people", {}).values() if "pin" in person}
    spelled = set()
    for n in numbers:
        spelled |= {n, n.lower(), n.upper()}
        if re.fullmatch(r"[0-9A-Fa-f]{8,}", n):
            spelled.add(str(int(n, 16)))
    return spelled | pins


def test_a_demo_run_logs_only_json_lines_with_stable_fields_and_no_card_number() -> None:
    secrets = demo_secrets()
    assert len(secrets) >= 12 and "0F00A1B2C3" in secrets and "0F00FFFF01" in secrets and "40011111" in secrets
    proc = subprocess.run([sys.executable, "-m", "doorkeep", "--log-level", "DEBUG", "demo", "--log-format", "json",
                           "--duration", "18", "--desk-port", str(free_port())],
                          capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "UNEXPECTED" not in proc.stdout

    records = []
    for number, line in enumerate(proc.stderr.splitlines(), 1):
        try:
            record = json.loads(line)
        except ValueError:
            pytest.fail(f"stderr line {number} is not JSON: {line!r}")
        assert tuple(record)[:len(STABLE_KEYS)] == STABLE_KEYS, line
        assert set(record) - set(STABLE_KEYS) <= set(OPTIONAL_KEYS), line
        assert UTC_MS.match(record["time"]), line
        assert record["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), line
        records.append(record)
    assert len(records) > 30, proc.stderr

    leaks = sorted({s for s in secrets if s in proc.stderr})
    assert not leaks, f"card numbers or PINs in the log: {leaks}\n" + "\n".join(
        line for line in proc.stderr.splitlines() if any(s in line for s in leaks))

    # The context reaches the line: the edge's forced door and the server's alarm name the same door and event.
    forced = [r for r in records if r["component"] == "doorkeep.edge" and r["message"] == "door lobby_out: forced_open"]
    assert forced and forced[0]["device"] == "pi-lobby" and forced[0]["door"] == "lobby_out", forced
    event_id = forced[0]["event_id"]
    assert event_id and re.fullmatch(r"[0-9a-f]{32}", event_id)
    alarm = [r for r in records if r["component"] == "doorkeep.server.supervision" and r["event_id"] == event_id]
    assert alarm and alarm[0]["door"] == "lobby_out" and "forced_open" in alarm[0]["message"], alarm
    decisions = [r for r in records if r["component"] == "doorkeep.edge" and "decided by server" in r["message"]]
    assert decisions and all(r["door"] and r["event_id"] and r["device"] for r in decisions), decisions
    assert any(r["level"] == "WARNING" and "plain MQTT" in r["message"] for r in records)
