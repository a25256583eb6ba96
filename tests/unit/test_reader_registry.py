"""The reader registry (issue 15): every protocol the config accepts builds an adapter that satisfies the one
``Reader`` protocol, an unknown protocol is a clear error, and the agent knows readers only through it."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory

from doorkeep.clock import SystemClock
from doorkeep.config import READER_PROTOCOLS, ConfigError, DeviceConfig, _load_device
from doorkeep.policy import ReaderSignals
from doorkeep.sites import DEMO_SITE
from edge.osdp.cp import CAUSE_CLEAR_NAK, OsdpReader
from edge.reader_port import (
    Reader,
    ReaderDeps,
    ReaderStats,
    UnknownReaderProtocol,
    build_reader,
    known_protocols,
    register,
)
from edge.readers import SerialReader
from edge.wiegand import WiegandReader

ROOT = Path(__file__).resolve().parents[2]

#: One door per kind; the two OSDP doors share a bus (same url, two addresses).
READERS = {
    "em": ('url = "loop://", protocol = "em4100"', SerialReader),
    "asc": ('url = "loop://", protocol = "ascii"', SerialReader),
    "wg": ('protocol = "wiegand", d0_pin = 23, d1_pin = 24', WiegandReader),
    "os0": ('url = "loop://", protocol = "osdp", address = 0, secure_channel = false', OsdpReader),
    "os1": ('url = "loop://", protocol = "osdp", address = 1, secure_channel = false', OsdpReader),
    "pp": ('url = "loop://", protocol = "pinpad"', SerialReader),
}


def _device(tmp_path: Path) -> DeviceConfig:
    """The device file parsed by the real config loader, so the registry is fed what the agent is fed."""
    (tmp_path / "site.toml").write_text((DEMO_SITE / "site.toml").read_text())
    dev = tmp_path / "devices" / "pi.toml"
    dev.parent.mkdir()
    doors = "".join(f"[doors.{d}]\nreader = {{ {r} }}\nlock = {{ pin = {5 + i} }}\n"
                    for i, (d, (r, _)) in enumerate(READERS.items()))
    dev.write_text(f'device = "pi-x"\nsite = "demo"\ngpio_factory = "mock"\n[broker]\nurl = "mqtt://b:1883"\n{doors}')
    errors: list[ConfigError] = []
    cfg = _load_device(dev, errors)
    assert cfg is not None and not errors, errors
    return cfg


def _deps(cfg: DeviceConfig, **kw: Any) -> ReaderDeps:
    return ReaderDeps(lambda *a: None, SystemClock(), MockFactory(), cfg.doors, **kw)


def test_the_registry_covers_exactly_the_protocols_the_config_accepts() -> None:
    assert set(known_protocols()) == set(READER_PROTOCOLS)
    assert {r.split('protocol = "')[1].split('"')[0] for r, _ in READERS.values()} == set(READER_PROTOCOLS)


def test_every_protocol_is_documented() -> None:
    readers_md = (ROOT / "docs" / "readers.md").read_text()
    config_row = next(line for line in (ROOT / "docs" / "configuration.md").read_text().splitlines()
                      if line.startswith("| reader `protocol` |"))
    for protocol in READER_PROTOCOLS:
        assert f'protocol = "{protocol}"' in readers_md, f"docs/readers.md does not show protocol = {protocol!r}"
        assert f"`{protocol}`" in config_row, f"docs/configuration.md's reader protocol row lacks {protocol!r}"


def test_every_protocol_builds_from_its_config_and_is_a_reader(tmp_path: Path) -> None:
    cfg = _device(tmp_path)
    deps = _deps(cfg)
    built = {d: build_reader(d, hw.reader, deps) for d, hw in cfg.doors.items()}
    for did, reader in built.items():
        assert isinstance(reader, READERS[did][1]), (did, reader)
        assert isinstance(reader, Reader), f"{type(reader).__name__} does not implement the Reader protocol"
        assert reader.door == did and reader.protocol == cfg.doors[did].reader.protocol
        assert isinstance(reader.stats, ReaderStats) and not reader.stats.online, "not started: not online"
        assert reader.health_reason is None or reader.protocol == "osdp"
        reader.feedback(True)  # a no-op where there is no LED; queued (dropped offline) on OSDP; never raises
    # OSDP doors on one url share one bus, built once; the others are known good once started.
    assert isinstance(built["os0"], OsdpReader) and isinstance(built["os1"], OsdpReader)
    assert built["os0"].bus is built["os1"].bus
    assert {d for d, r in built.items() if not r.ready_at_start} == {"os0", "os1"}
    # The state message keeps its shape: secure/reason only where there is a secure channel.
    assert set(built["em"].stats.published()) == {"online", "frames", "faults"}
    assert built["os0"].stats.published() == {"online": False, "frames": 0, "faults": 0, "secure": False,
                                              "reason": None}


def test_new_signal_thresholds_reach_the_shared_bus_and_nothing_else_breaks(tmp_path: Path) -> None:
    cfg = _device(tmp_path)
    deps = _deps(cfg, signals=ReaderSignals())
    built = {d: build_reader(d, hw.reader, deps) for d, hw in cfg.doors.items()}
    signals = dataclasses.replace(ReaderSignals(), clear_naks=7, window_s=123.0)
    for reader in built.values():
        reader.apply_signals(signals)
    os0 = built["os0"]
    assert isinstance(os0, OsdpReader)
    assert os0.bus.signal_window_s == 123.0 and os0.bus.signal_thresholds[CAUSE_CLEAR_NAK] == 7


def test_an_unknown_protocol_names_the_door_and_the_known_ones(tmp_path: Path) -> None:
    cfg = _device(tmp_path)
    rc = dataclasses.replace(cfg.doors["em"].reader, protocol="qr")
    with pytest.raises(UnknownReaderProtocol) as err:
        build_reader("front", rc, _deps(cfg))
    text = str(err.value)
    assert "'front'" in text and "'qr'" in text and all(p in text for p in READER_PROTOCOLS) and "fix" in text


def test_a_protocol_cannot_be_registered_twice() -> None:
    known_protocols()
    with pytest.raises(ValueError, match="registered twice"):
        register("em4100")(lambda door, config, deps: SerialReader(door, "loop://", "em4100", deps.on_card))


# -- the agent knows readers only through the Reader protocol ------------------------------------------------

CONCRETE = {"SerialReader", "OsdpReader", "WiegandReader", "build_buses", "OsdpBus"}


def reader_special_cases(source: str) -> list[str]:
    """Every place in ``source`` that treats a reader by its kind: isinstance/getattr/hasattr on a reader,
    a concrete reader class named, or a reader protocol name compared with."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                node.func.id in {"isinstance", "getattr", "hasattr"} and node.args and \
                "reader" in ast.unparse(node.args[0]):
            found.append(f"{node.lineno} {ast.unparse(node)}")
        elif isinstance(node, ast.Name) and node.id in CONCRETE:
            found.append(f"{node.lineno} {node.id}")
        elif isinstance(node, ast.ImportFrom) and any(a.name in CONCRETE for a in node.names):
            found.append(f"{node.lineno} import {[a.name for a in node.names]}")
        elif isinstance(node, ast.Compare) and any(
                isinstance(c, ast.Constant) and c.value in READER_PROTOCOLS for c in [node.left, *node.comparators]):
            found.append(f"{node.lineno} {ast.unparse(node)}")
    return found


def test_the_checker_sees_the_old_special_cases() -> None:
    old = ("from edge.osdp.cp import OsdpReader\n"
           "if isinstance(rt.reader, OsdpReader): pass\n"
           "f = getattr(rt.reader, 'feedback', None)\n"
           "if hw.reader.protocol == 'wiegand': pass\n")
    assert len(reader_special_cases(old)) == 5


def test_the_agent_builds_and_uses_readers_only_through_the_registry() -> None:
    found = reader_special_cases((ROOT / "edge" / "agent.py").read_text())
    assert not found, f"edge/agent.py special-cases reader kinds (use edge/reader_port.py): {found}"
