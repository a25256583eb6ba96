"""What a fuzz target may raise, and the bugs already known and pinned.

Every fuzz test calls its target inside :func:`only_raises`: the documented
error type passes (after an optional check of the error itself), anything
else fails the test, and so does a call that takes longer than
:data:`SLOW_CALL_S` (a hang in the making).

A crash already found is listed in :data:`KNOWN_BUGS` with the exception it
raises, a pattern of its message and the innermost project function it comes
from, and pinned by a strict ``xfail`` test in ``test_known_bugs.py``. While
it is open the fuzzers step over exactly that crash (so ``make test`` stays
green and every *other* crash still fails); once its owner fixes it, the
strict xfail turns into a failure that says to delete the entry here and the
``xfail`` marker there.
"""

from __future__ import annotations

import re
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SLOW_CALL_S = 5.0
"""No single parse or load of fuzzed input may take this long (the largest inputs take milliseconds)."""

ROOT = Path(__file__).resolve().parents[2]


class Crash(AssertionError):
    """A fuzz target raised what its contract does not allow, or took too long."""


class Unbounded(Exception):
    """The documented error came, but carrying an unbounded amount of data (its cause is that error)."""


def innermost_project_frame(exc: BaseException) -> str | None:
    """The function of the deepest traceback frame in doorkeep's own code (not the stdlib, not .venv)."""
    name = None
    while exc is not None:
        for frame in traceback.extract_tb(exc.__traceback__):
            path = Path(frame.filename)
            if path.is_relative_to(ROOT) and ".venv" not in path.parts and "tests" not in path.parts:
                name = frame.name
        if name is not None:
            return name
        exc = exc.__cause__  # type: ignore[assignment]
    return None


@dataclass(frozen=True)
class KnownBug:
    id: str
    target: str
    exc: tuple[type[BaseException], ...]
    message: str  # regular expression searched in str(exception)
    frame: str  # the innermost doorkeep function on its traceback (a regex), so one signature cannot hide another
    summary: str

    def matches(self, target: str, exc: BaseException) -> bool:
        return (target == self.target and isinstance(exc, self.exc) and re.search(self.message, str(exc)) is not None
                and re.fullmatch(self.frame, innermost_project_frame(exc) or "") is not None)


KNOWN_BUGS: tuple[KnownBug, ...] = (
)

hits: Counter[str] = Counter()
"""How often each known bug was stepped over in this process (the atheris harnesses print it)."""


def known_bug(target: str, exc: BaseException) -> KnownBug | None:
    return next((bug for bug in KNOWN_BUGS if bug.matches(target, exc)), None)


def _crash(target: str, exc: BaseException, allowed: tuple[type[BaseException], ...]) -> None:
    bug = known_bug(target, exc)
    if bug is not None:
        hits[bug.id] += 1
        return
    names = ", ".join(a.__name__ for a in allowed) or "nothing"
    raise Crash(f"{target} raised {type(exc).__name__}: {exc!s:.300} (allowed: {names})") from exc


@contextmanager
def only_raises(target: str, *allowed: type[BaseException], slow_s: float = SLOW_CALL_S,
                check: Callable[[BaseException], str | None] | None = None) -> Iterator[None]:
    """Let ``allowed`` errors through (if ``check`` finds nothing wrong with them), step over known bugs,
    fail on anything else."""
    start = time.monotonic()
    try:
        yield
    except allowed as exc:
        problem = check(exc) if check is not None else None
        if problem is not None:
            unbounded = Unbounded(problem)
            unbounded.__cause__ = exc
            _crash(target, unbounded, allowed)
    except Exception as exc:  # noqa: BLE001 - that is the point: anything else is a crash
        _crash(target, exc, allowed)
        return
    took = time.monotonic() - start
    if took > slow_s:
        raise Crash(f"{target} took {took:.1f} s on one input (limit {slow_s:.0f} s)")
