"""`make mutation`: mutation testing of the modules where a silent mistake opens a door (issue 18).

Runs mutmut 3 (the `mutation` extra) on the modules listed in pyproject.toml's ``[tool.mutmut]``
(``only_mutate``) with the unit tests listed there, in a fresh copy of the sources under ``var/mutation`` (so
the work tree and git never see mutmut's ``mutants/`` folder, and every run scores today's tests: mutmut keeps
old verdicts otherwise). Then, per module, it scores

    score = (killed + timed out) / (mutants - equivalent mutants)

beside the target (97% by default), lists every mutant that survived with its changed lines, and exits 1 if
a module is below the target (2 if mutmut itself failed).

Equivalent mutants (a change no test can notice because the behaviour does not change) are listed in
``tests/mutation/equivalent.txt``, one per line::

    FUNCTION | MUTATED LINE | why it is equivalent

FUNCTION is mutmut's name for the function without the ``__mutmut_N`` number (``doorkeep.decision.x__prune``,
``edge.door.xǁDoorMachineǁ_advance``); MUTATED LINE is the line the mutant puts in (the ``+`` line of
``mutmut show``, without leading and trailing blanks or a trailing ``  # comment``). Matching on the line rather than on mutmut's number
keeps an entry valid when other mutants of the function come and go; an entry that matches no surviving mutant
is reported as stale (it was killed, or its line changed) and sets nothing aside. One entry covers every
surviving mutant of that function that puts in that same line (the same change made at two places).

Run from the repository root: ``.venv/bin/python scripts/mutation.py [--target 97] [--children 1]``;
``--report-only`` scores the last run again (after editing equivalent.txt), ``--retest`` reruns only its
survivors against the selected test files as they are now (after writing a test for one).
Output: ``var/mutation/mutmut.log`` (mutmut's own), ``var/mutation/report.txt`` (what is printed).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "var" / "mutation"
EQUIVALENT = ROOT / "tests" / "mutation" / "equivalent.txt"

# mutmut's exit codes (mutmut.stats.status_by_exit_code), by what they mean for the score.
KILLED = {1, 3}  # a test failed; pytest's internal error counts as a kill in mutmut too
TIMEOUT = {36, 24, -24, 152, 255}  # the tests ran past their CPU limit: a hang a test run would not survive
STATUS = {0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 35: "suspicious", 37: "caught by type check",
          -11: "segfault", -9: "segfault", 2: "interrupted", None: "not checked"}


@dataclass(frozen=True)
class Equivalent:
    function: str
    line: str
    why: str
    where: str  # file:line in equivalent.txt, for messages


@dataclass
class Survivor:
    name: str
    status: str
    removed: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    equivalent: Equivalent | None = None

    @property
    def function(self) -> str:
        return self.name.rpartition("__mutmut_")[0]


@dataclass
class ModuleScore:
    path: str
    total: int = 0
    killed: int = 0
    timeout: int = 0
    survivors: list[Survivor] = field(default_factory=list)

    @property
    def equivalent(self) -> int:
        return sum(1 for s in self.survivors if s.equivalent is not None)

    @property
    def counted(self) -> int:
        return self.total - self.equivalent

    @property
    def score(self) -> float:
        return 100.0 * (self.killed + self.timeout) / self.counted if self.counted else 100.0


def load_config() -> dict:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    try:
        cfg = data["tool"]["mutmut"]
    except KeyError:
        sys.exit("pyproject.toml has no [tool.mutmut] table: add one (docs/testing.md, `make mutation`)")
    for key in ("source_paths", "only_mutate", "pytest_add_cli_args_test_selection"):
        if not cfg.get(key):
            sys.exit(f"pyproject.toml [tool.mutmut] {key} is missing or empty: list it (docs/testing.md)")
    return cfg


def load_equivalents(path: Path = EQUIVALENT) -> list[Equivalent]:
    out: list[Equivalent] = []
    if not path.exists():
        return out
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split(" | ", 2)]
        if len(parts) != 3 or not all(parts):
            sys.exit(f"{path}:{n}: expected `FUNCTION | MUTATED LINE | why`, got {raw!r}")
        out.append(Equivalent(parts[0], parts[1], parts[2], f"{path.relative_to(ROOT)}:{n}"))
    return out


def prepare(cfg: dict) -> None:
    """A fresh copy of what the run needs: the packages to mutate, the tests, pyproject.toml."""
    if WORK.exists():
        shutil.rmtree(WORK)
    WORK.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis", ".pytest_cache")
    for top in [*cfg["source_paths"], "tests"]:
        src = ROOT / top
        if src.is_dir():
            shutil.copytree(src, WORK / top, ignore=ignore)
        else:
            (WORK / top).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, WORK / top)
    shutil.copy2(ROOT / "pyproject.toml", WORK / "pyproject.toml")


def mutmut_command() -> list[str]:
    exe = Path(sys.executable).parent / "mutmut"
    if not exe.exists():
        sys.exit(f"{exe} is missing: install the `mutation` extra (`make mutation` does: pip install -e '.[mutation]')")
    return [str(exe)]


def run_mutmut(children: int) -> int:
    log = WORK / "mutmut.log"
    print(f"mutmut run --max-children {children} in {WORK.relative_to(ROOT)} (log: {log.relative_to(ROOT)})",
          flush=True)
    started = time.monotonic()
    with log.open("w") as out:
        rc = subprocess.run([*mutmut_command(), "run", "--max-children", str(children)], cwd=WORK, stdout=out,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
    print(f"mutmut finished in {time.monotonic() - started:.0f} s (exit {rc})", flush=True)
    return rc


def retest(cfg: dict, children: int) -> int:
    """Run the last run's survivors again against today's copies of the selected test files.

    For a test written against a survivor: cheaper than a fresh run, and it keeps the last run's copy of the
    sources (a module changed since needs a fresh run). Only the test files listed in [tool.mutmut] are copied
    again, since the rest of tests/ may already test code the copied sources do not have.
    """
    if not (WORK / "mutants").is_dir():
        sys.exit("no earlier run in var/mutation to retest: run without --retest first")
    names = []
    for path in cfg["only_mutate"]:
        meta = WORK / "mutants" / f"{path}.meta"
        if meta.exists():
            codes = json.loads(meta.read_text())["exit_code_by_key"]
            names += [n for n, c in codes.items() if c not in KILLED and c not in TIMEOUT]
    for test in cfg["pytest_add_cli_args_test_selection"]:
        for dest in (WORK / test, WORK / "mutants" / test):
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / test, dest)
    if not names:
        return 0
    log = WORK / "mutmut-retest.log"
    print(f"mutmut run: {len(names)} mutants that survived the last run (log: {log.relative_to(ROOT)})", flush=True)
    with log.open("w") as out:
        return subprocess.run([*mutmut_command(), "run", "--max-children", str(children), *names], cwd=WORK,
                              stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode


def diff_lines(name: str) -> tuple[list[str], list[str]]:
    """The lines a mutant removes and adds, from `mutmut show` (stripped)."""
    shown = subprocess.run([*mutmut_command(), "show", name], cwd=WORK, capture_output=True, text=True).stdout
    removed, added = [], []
    for line in shown.splitlines():
        if line.startswith("-") and not line.startswith("---"):
            removed.append(line[1:].strip())
        elif line.startswith("+") and not line.startswith("+++"):
            added.append(line[1:].strip())
    return removed, added


def score(cfg: dict, equivalents: list[Equivalent]) -> tuple[list[ModuleScore], list[Equivalent]]:
    scores: list[ModuleScore] = []
    used: set[Equivalent] = set()
    for path in cfg["only_mutate"]:
        meta = WORK / "mutants" / f"{path}.meta"
        m = ModuleScore(path)
        scores.append(m)
        if not meta.exists():
            continue
        codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
        m.total = len(codes)
        for name, code in sorted(codes.items(), key=lambda kv: _natural(kv[0])):
            if code in KILLED:
                m.killed += 1
            elif code in TIMEOUT:
                m.timeout += 1
            else:
                s = Survivor(name, STATUS.get(code, f"exit {code}"))
                s.removed, s.added = diff_lines(name)
                if s.status == "survived":
                    for eq in equivalents:
                        if eq.function == s.function and eq.line in map(_code, s.added):
                            s.equivalent = eq
                            used.add(eq)
                            break
                m.survivors.append(s)
    stale = [eq for eq in equivalents if eq not in used]
    return scores, stale


def _code(line: str) -> str:
    """A line without its trailing comment (``x = 1  # why`` -> ``x = 1``), as equivalent.txt records it."""
    return line.split("  # ", 1)[0].rstrip()


def _natural(name: str) -> tuple[str, int]:
    base, _, n = name.rpartition("__mutmut_")
    return (base, int(n)) if n.isdigit() else (name, 0)


def report(scores: list[ModuleScore], stale: list[Equivalent], target: float) -> list[str]:
    lines = ["", "Survivors (the lines each mutant changes):"]
    for m in scores:
        for s in m.survivors:
            tag = f"equivalent ({s.equivalent.where})" if s.equivalent else s.status
            lines.append(f"  {s.name}: {tag}")
            lines += [f"      - {r}" for r in s.removed] + [f"      + {a}" for a in s.added]
    if len(lines) == 2:
        lines.append("  none")
    for eq in stale:
        lines.append(f"stale equivalent entry {eq.where}: no surviving mutant of {eq.function} puts in "
                     f"`{eq.line}` (killed now, or the code changed): remove or update it")
    lines += ["", f"{'module':<24} {'mutants':>7} {'equiv.':>6} {'killed':>6} {'timeout':>7} {'left':>5} "
              f"{'raw':>7} {'score':>7}  target"]
    for m in scores:
        left = len(m.survivors) - m.equivalent
        verdict = "ok" if m.total and m.score >= target else "BELOW"
        if not m.total:
            verdict = "NO DATA (mutmut did not mutate it: see the log)"
        raw = 100.0 * (m.killed + m.timeout) / m.total if m.total else 0.0
        lines.append(f"{m.path:<24} {m.total:>7} {m.equivalent:>6} {m.killed:>6} {m.timeout:>7} {left:>5} "
                     f"{raw:>6.1f}% {m.score:>6.1f}%  {target:g}% {verdict}")
    lines.append("(raw: caught / all mutants; score: caught / mutants less the equivalent ones, against the target)")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", type=float, default=97.0, help="minimum score per module, in percent (97)")
    ap.add_argument("--children", type=int, default=1, help="mutmut worker processes (1: the machine is shared)")
    ap.add_argument("--report-only", action="store_true", help="score the last run in var/mutation again")
    ap.add_argument("--retest", action="store_true",
                    help="rerun only the last run's survivors against the selected test files as they are now")
    args = ap.parse_args(argv)
    cfg = load_config()
    equivalents = load_equivalents()
    if args.retest:
        rc = retest(cfg, args.children)
        log = WORK / "mutmut-retest.log"
    elif not args.report_only:
        prepare(cfg)
        rc = run_mutmut(args.children)
        log = WORK / "mutmut.log"
    if (args.retest or not args.report_only) and rc != 0:
        print("\n".join(log.read_text(errors="replace").splitlines()[-40:]))
        print(f"mutmut failed (exit {rc}): see {log.relative_to(ROOT)}", file=sys.stderr)
        return 2
    scores, stale = score(cfg, equivalents)
    lines = report(scores, stale, args.target)
    print("\n".join(lines))
    (WORK / "report.txt").write_text("\n".join(lines) + "\n")
    return 0 if all(m.total and m.score >= args.target for m in scores) else 1


if __name__ == "__main__":
    sys.exit(main())
