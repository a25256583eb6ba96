"""A pin pad door through the whole stack (issue 15): the shipped card + PIN scenario, with the comms room's
ASCII keypad reader swapped for a pin pad that sends each key as it is pressed.

Nothing else changes: the same site, people and expectations pass, which is what the reader registry
promises (a new kind is its adapter, its schema, its simulator, its docs and its tests).
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest

from simulators.scenario import load_scenario, run_scenario

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
HQ = ROOT / "firmware-config" / "sites" / "hq"
PIN_ENTRY = ROOT / "simulators" / "scenarios" / "pin_entry.yaml"
ASCII_READER = 'reader = { url = "/dev/ttyAMA1", protocol = "ascii" }'


def test_the_card_and_pin_scenario_passes_with_a_pin_pad_at_the_comms_room(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edge.kinds import pinpad

    fed: list[bytes] = []
    feed = pinpad.PinpadParser.feed

    def spy(self: pinpad.PinpadParser, data: bytes, *args: object, **kwargs: object) -> object:
        fed.append(bytes(data))
        return feed(self, data, *args, **kwargs)

    monkeypatch.setattr(pinpad.PinpadParser, "feed", spy)
    site = tmp_path / "hq"
    shutil.copytree(HQ, site)
    device = site / "devices" / "pi-wing.toml"
    text = device.read_text(encoding="utf-8")
    start = text.index("[doors.comms_in]")
    assert ASCII_READER in text[start:], "the hq site's comms_in reader changed: update this test"
    device.write_text(text[:start] + text[start:].replace(ASCII_READER, ASCII_READER.replace("ascii", "pinpad"), 1),
                      encoding="utf-8")
    scenario = tmp_path / "pin_entry_pinpad.yaml"
    scenario.write_text(PIN_ENTRY.read_text(encoding="utf-8").replace("../../firmware-config/sites/hq", str(site)),
                        encoding="utf-8")
    out = io.StringIO()
    result = run_scenario(load_scenario(scenario), out=out)
    assert result.passed, out.getvalue()
    assert result.checks and all(c.status == "pass" for c in result.checks)
    wire = b"".join(fed)  # the pty may hand several key presses to one read
    assert b"1234#" in wire and b"0417#" in wire and b"P" not in wire, \
        f"the PINs did not reach the pin pad as key presses: {fed}"
