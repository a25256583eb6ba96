"""`doorkeep osdp install-key` warns that the key crosses the wire under the public default key.

KEYSET is encrypted only with SCBK-D, which every reader ships with: anyone on the RS-485 bus during the
install learns the new key. The warning must be on stderr before the port is opened (before any byte goes on
the wire), so an operator can still stop and isolate the reader.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from doorkeep.cli import main
from edge.osdp.cp import OsdpBus
from simulators.osdp_pd import OsdpPdSimulator
from simulators.site import DEMO_SITE

pytestmark = pytest.mark.e2e


def _device_with_osdp_reader(tmp_path: Path, sim: OsdpPdSimulator) -> Path:
    site = tmp_path / "site"
    shutil.copytree(DEMO_SITE, site)
    dev = site / "devices" / "pi-lobby.toml"
    text = dev.read_text()
    old = 'reader = { url = "/dev/serial0", protocol = "em4100", baudrate = 9600 }'
    assert old in text
    text = text.replace(old, f'reader = {{ url = "{sim.path}", protocol = "osdp", address = {sim.address}, '
                             'scbk_file = "keys/lobby_in.scbk" }')
    text = text.replace('state_dir = "/var/lib/doorkeep"', f'state_dir = "{tmp_path / "state"}"')
    dev.write_text(text)
    return dev


def test_attack_bus_sniffer_install_key_warns_to_isolate_the_reader_before_any_byte_is_sent(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    sim = OsdpPdSimulator(address=5)  # factory state
    try:
        dev = _device_with_osdp_reader(tmp_path, sim)
        said_before_start: list[str] = []
        real_start = OsdpBus.start

        def start(bus: OsdpBus) -> None:  # the port is opened and the first byte written from here on
            said_before_start.append(capsys.readouterr().err)
            real_start(bus)

        monkeypatch.setattr(OsdpBus, "start", start)
        assert main(["osdp", "install-key", "lobby_in", "--device", str(dev), "--timeout", "8"]) == 0
        assert len(said_before_start) == 1
        warning = said_before_start[0]
        assert "SCBK-D" in warning and "isolated bus" in warning and "alone on its wire" in warning, warning
        assert sim.path in warning, "names the bus the key is about to cross"
        assert sim.scbk is not None, "the key was installed after the warning"
    finally:
        sim.close()


def test_install_key_help_and_docs_say_to_use_an_isolated_bus(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["osdp", "install-key", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "SCBK-D" in help_text and "isolated bus" in help_text
    readers = (Path(__file__).resolve().parents[2] / "docs" / "readers.md").read_text()
    assert "Install keys on an isolated bus" in readers
