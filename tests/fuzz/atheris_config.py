"""atheris harness: ``doorkeep.config.check`` on the demo site with one file replaced by the input.

First byte picks the file (site.toml, people.toml or a device file) and what is checked (the
directory, site.toml or the device file); the rest is the file's new content. check() must return
a list of ConfigError and never raise.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from doorkeep.config import check
    from doorkeep.errors import ConfigError

from tests.fuzz.guard import only_raises
from tests.fuzz.harness import ROOT, run

DEMO = ROOT / "doorkeep" / "sites" / "demo"
FILES = ("site.toml", "people.toml", "devices/pi-lobby.toml", "devices/pi-floor7.toml")
TARGETS = ("", "site.toml", "devices/pi-lobby.toml", "devices/pi-floor7.toml")
ORIGINAL = {name: (DEMO / name).read_bytes() for name in FILES}
WORK = Path(tempfile.mkdtemp(prefix="doorkeep-atheris-")) / "demo"
shutil.copytree(DEMO, WORK, ignore=shutil.ignore_patterns("keys"))


def test_one(data: bytes) -> None:
    if not data:
        return
    name, target = FILES[data[0] % 4], TARGETS[(data[0] // 4) % 4]
    for other in FILES:
        (WORK / other).write_bytes(data[1:] if other == name else ORIGINAL[other])
    with only_raises("config"):
        errors = check(WORK / target if target else WORK)
        assert isinstance(errors, list) and all(isinstance(e, ConfigError) for e in errors), errors


SEEDS = [bytes([i]) + ORIGINAL[FILES[i % 4]] for i in range(16)]

if __name__ == "__main__":
    try:
        run("config", test_one, SEEDS)
    finally:
        shutil.rmtree(WORK.parent, ignore_errors=True)
