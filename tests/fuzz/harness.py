"""The common part of the atheris harnesses (``atheris_*.py``): corpus, seeds, flags and the report.

Run one from the repository root, e.g. ``python -m tests.fuzz.atheris_contract -max_total_time=60``;
any libFuzzer flag passes through. Each harness keeps its corpus in ``var/fuzz/NAME/corpus`` (seeded
with valid inputs the first time) and writes a crashing input to ``var/fuzz/NAME/crash-*``; replay one
with ``python -m tests.fuzz.atheris_NAME var/fuzz/NAME/crash-...``. Crashes listed in
``guard.KNOWN_BUGS`` are stepped over and counted, like in the hypothesis tests.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import atheris

from tests.fuzz import guard

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_FLAGS = {"-timeout": "10", "-rss_limit_mb": "2048", "-print_final_stats": "1"}


def run(name: str, test_one: Callable[[bytes], None], seeds: Iterable[bytes]) -> None:
    out = ROOT / "var" / "fuzz" / name
    corpus = out / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    if not any(corpus.iterdir()):
        for i, seed in enumerate(seeds):
            (corpus / f"seed-{i:03d}").write_bytes(seed)
    args = sys.argv[1:]
    flags = [a for a in args if a.startswith("-")]
    inputs = [a for a in args if not a.startswith("-")]
    for flag, value in {**DEFAULT_FLAGS, "-artifact_prefix": f"{out}/"}.items():
        if not any(a.startswith(flag + "=") for a in flags):
            flags.append(f"{flag}={value}")

    reported: set[str] = set()

    def one(data: bytes) -> None:
        test_one(data)
        if len(guard.hits) > len(reported):  # libFuzzer exits without Python's atexit: say it when first seen
            for bug in sorted(set(guard.hits) - reported):
                print(f"atheris {name}: stepped over known bug {bug} (see tests/fuzz/guard.py)", file=sys.stderr)
                reported.add(bug)

    # Replaying given files runs just those; otherwise fuzz from (and into) the corpus.
    atheris.Setup([sys.argv[0], *flags, *(inputs or [str(corpus)])], one)
    atheris.Fuzz()
