"""Fuzz the scenario loader (simulators/scenario.py): ``load_scenario`` on the shipped scenarios with
lines garbled or values changed raises ScenarioErrors, its documented error, and nothing else."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given
from hypothesis import strategies as st

from simulators.scenario import ScenarioErrors, load_scenario
from tests.fuzz.conftest import fuzz
from tests.fuzz.guard import only_raises
from tests.fuzz.strategies import Raw, hostile_values, mutated_lines, mutated_tree

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "simulators" / "scenarios"
# The shipped scenarios name their site relative to their own folder; the mutants live in a temporary one.
TEXT = {p.name: p.read_text(encoding="utf-8").replace("site: ../../", f"site: {ROOT}/")
        for p in sorted(SCENARIOS.glob("*.yaml"))}
TREES = {name: yaml.safe_load(text) for name, text in TEXT.items()}
names = st.sampled_from(sorted(TEXT))

_YAML_LINES = [
    ":", "- ", "-", "? x", "? [a, b]", ": x", "{", "}", "[", "]", "&a x", "*a", "*nope", "<<: *a", "<<: x",
    "!!python/object:os.system x", "!!python/name:os.system", "!!binary x", "!!binary YWJj", "!!float x", "!!int x",
    "!!int 0x", "!!timestamp x", "!!bool maybe", "!!set {a}", "!!omap [a]", "!!pairs x", "!!str", "!unknown x",
    "%YAML 1.1", "%YAML 9.9", "%TAG ! tag:x,2000:", "---", "...", "\t- x", "  \t", "'", '"', '"\\x"', '"\\ud800"',
    "x: 2026-13-45", "x: 2026-02-30 10:00", "start: 2026-03-02 25:00", "x: 0000-01-01", "x: 9999-12-31 23:59",
    "x: .nan", "x: .inf", "x: -.inf", "x: 0o777", "x: 1_000", "x: 0b102", "x: 1e400", "x: ~", "x: null",
    "  - badge: lobby_in", "  - advance: 99999999999d", "  - advance: 0.0000001ms", "  - advance_to: \"99:99\"",
    "  - advance_to: 23:59:60", "  - settle: 1e9s", "  - broker: down", "  - server: down", "  - server: up",
    "  - check_in: v1", "  - register_visitor: v1", "    for: 1d", "    until: 9999-12-31 23:59",
    "    from: 0001-01-01 00:00", "    card: 0F00A1B2C3", "    pin: 0417", "    within: 121s", "  - {}", "  - []",
    "  - [badge, lobby_in]", "  - badge: [a, b]", "  - badge: {a: b}", "  - ? [a]\n    : b", "a: &a [*a]",
    "steps: !!set {a, b}", "name: !!binary YWJj", "name: [1, 2]", "site: .", "site: /", "site: \"\\0\"",
    "site: \"\\x00\"", "start: []", "steps: []", "steps: {}", "steps: 5",
]
yaml_garbage = st.one_of(
    st.text(max_size=30),
    st.sampled_from(_YAML_LINES),
    st.integers(min_value=50, max_value=3000).map(lambda n: "x: " + "[" * n + "]" * n),
    st.integers(min_value=50, max_value=3000).map(lambda n: "x: " + "{a: " * n + "b" + "}" * n),
)


def _yaml_value(v: Any) -> Any:
    """Hostile values YAML can write: no 50,000-deep nesting, no integer the writer cannot print."""
    if isinstance(v, Raw):
        v = v.value if not isinstance(v.value, (list, dict)) else [[["deep"]]]
    if isinstance(v, int) and v.bit_length() > 10_000:
        return 10**400
    if isinstance(v, dict):
        return {k: _yaml_value(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_yaml_value(x) for x in v]
    return v


yaml_values = st.one_of(
    hostile_values.map(_yaml_value),
    st.datetimes(), st.dates(), st.sampled_from(["2026-03-02 08:55", "08:55", "30s", "1h30m", "0s", "-5s", "1e3s"]),
)


MAX_MESSAGE = 1_000_000
"""Characters an error report may hold: every problem named, but no input blown up into it."""


def _bounded(exc: BaseException) -> str | None:
    n = len(str(exc))
    return f"message of {n} characters" if n > MAX_MESSAGE else None


def _load(text: str | bytes) -> None:
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    with tempfile.TemporaryDirectory(prefix="doorkeep-fuzz-") as tmp:
        path = Path(tmp) / "scenario.yaml"
        path.write_bytes(data)
        with only_raises("scenario", ScenarioErrors, check=_bounded):
            load_scenario(path)


def alias_bomb(levels: int, width: int = 9) -> tuple[str, str]:
    """YAML anchors that expand to ``width ** levels`` items: the anchor lines and the alias to the top."""
    lines = ["b0: &b0 [" + ", ".join(["x"] * width) + "]"]
    lines += [f"b{i}: &b{i} [" + ", ".join([f"*b{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n", f"*b{levels - 1}"


def test_the_shipped_scenarios_fuzzed_below_load() -> None:
    for name, text in TEXT.items():
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_text(text, encoding="utf-8")
            load_scenario(path)


@fuzz(scale=0.5)
@given(data=st.data(), name=names)
def test_scenario_with_lines_deleted_duplicated_or_garbled_raises_scenario_errors(data: st.DataObject,
                                                                                  name: str) -> None:
    _load(data.draw(mutated_lines(TEXT[name], yaml_garbage)))


@fuzz(scale=0.5)
@given(data=st.data(), name=names)
def test_scenario_with_values_changed_anywhere_raises_scenario_errors(data: st.DataObject, name: str) -> None:
    tree = data.draw(mutated_tree(TREES[name], values=yaml_values))
    _load(yaml.safe_dump(tree, allow_unicode=True))


@fuzz(scale=0.25)
@given(content=st.binary(max_size=300), name=names,
       splice=st.tuples(st.integers(min_value=0, max_value=5000), st.binary(min_size=1, max_size=12)))
def test_scenario_with_random_bytes_raises_scenario_errors(content: bytes, name: str,
                                                           splice: tuple[int, bytes]) -> None:
    _load(content)
    original = TEXT[name].encode()
    at = splice[0] % (len(original) + 1)
    _load(original[:at] + splice[1] + original[at:])


BOMB_PLACES = [
    "steps:\n  - {bomb}\n", "steps:\n  - badge: {bomb}\n", "steps:\n  - badge: lobby_in\n    card: {bomb}\n",
    "steps:\n  - expect_decision: lobby_in\n    reason: {bomb}\n", "steps: {bomb}\n",
    "steps:\n  - settle\nstart: {bomb}\n", "steps:\n  - settle\nname: {bomb}\n", "steps:\n  - {{{bomb}: 1}}\n",
    "steps:\n  - register_visitor: v1\n    name: V\n    host: alice\n    areas: {bomb}\n",
]


@fuzz(scale=0.25)
@given(levels=st.integers(min_value=2, max_value=6), width=st.integers(min_value=2, max_value=9),
       place=st.sampled_from(BOMB_PLACES))
def test_yaml_alias_bomb_anywhere_gives_a_bounded_error_quickly(levels: int, width: int, place: str) -> None:
    anchors, bomb = alias_bomb(levels, width)
    head = "" if place.startswith("steps:\n  - settle\nname") else "name: bomb\n"
    if "start:" not in place:
        head += 'start: "2026-03-02 08:55"\n'
    _load(anchors + head + place.format(bomb=bomb))
