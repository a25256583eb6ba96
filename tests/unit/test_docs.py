"""Every command, config key, topic, event type and reason code is documented."""

from __future__ import annotations

import re
from pathlib import Path

from doorkeep.cli import HANDLERS
from doorkeep.contract import EVENT_TYPES
from doorkeep.decision import Reason

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
CONFIG_DOC = (ROOT / "docs" / "configuration.md").read_text()
MQTT_DOC = (ROOT / "docs" / "mqtt.md").read_text()
REASONS_DOC = (ROOT / "docs" / "reason-codes.md").read_text()


def test_every_command_is_in_the_readme() -> None:
    missing = [cmd for cmd in HANDLERS if f"doorkeep {cmd}" not in README]
    assert not missing, f"undocumented commands: {missing}"


def test_readme_starts_with_the_two_commands() -> None:
    head = README[:800]
    assert "make demo" in head and "make test" in head


def test_every_config_key_the_loader_reads_is_documented() -> None:
    source = (ROOT / "doorkeep" / "config.py").read_text()
    keys = set(re.findall(r'\.(?:get|choice|ident|positive|sub|children)\("([a-z_]+)"', source))
    assert len(keys) > 40
    missing = sorted(k for k in keys if f"`{k}`" not in CONFIG_DOC and f"`[{k}" not in CONFIG_DOC
                     and f" {k}`" not in CONFIG_DOC)
    assert not missing, f"config keys missing from docs/configuration.md: {missing}"


def test_every_reason_code_is_documented() -> None:
    missing = [r.value for r in Reason if f"`{r.value}`" not in REASONS_DOC]
    assert not missing, f"reason codes missing from docs/reason-codes.md: {missing}"


def test_every_event_type_and_topic_is_documented() -> None:
    missing = [t for t in EVENT_TYPES if f"`{t}`" not in MQTT_DOC]
    assert not missing, f"event types missing from docs/mqtt.md: {missing}"
    for leaf in ("availability", "state", "request", "decision", "event", "snapshot/{event_id}"):
        assert f"/{leaf}`" in MQTT_DOC, leaf
