"""atheris harness: ``simulators.scenario.load_scenario`` on the input as a scenario file.

Seeded with the shipped scenarios (their site path made absolute). Anything but ScenarioErrors is a
crash, and so is an error report of more than a million characters.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from simulators.scenario import ScenarioErrors, load_scenario

from tests.fuzz.guard import only_raises
from tests.fuzz.harness import ROOT, run

WORK = Path(tempfile.mkdtemp(prefix="doorkeep-atheris-")) / "scenario.yaml"
MAX_MESSAGE = 1_000_000


def _bounded(exc: BaseException) -> str | None:
    n = len(str(exc))
    return f"message of {n} characters" if n > MAX_MESSAGE else None


def test_one(data: bytes) -> None:
    WORK.write_bytes(data)
    with only_raises("scenario", ScenarioErrors, check=_bounded):
        load_scenario(WORK)


SEEDS = [p.read_bytes().replace(b"site: ../../", f"site: {ROOT}/".encode())
         for p in sorted((ROOT / "simulators" / "scenarios").glob("*.yaml"))]

if __name__ == "__main__":
    run("scenario", test_one, SEEDS)
