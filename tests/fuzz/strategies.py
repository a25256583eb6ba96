"""Shared hypothesis strategies: byte streams cut into reads, hostile JSON, mutated text files."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone
from itertools import pairwise
from typing import Any

from hypothesis import strategies as st

# ------------------------------------------------------------------ bytes


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` split at the given offsets (taken modulo its length), as successive serial reads."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in pairwise(points)]


cuts = st.lists(st.integers(min_value=0, max_value=10_000), max_size=12)

# Bytes a serial line really produces: mostly the protocol's own alphabet, so frames half-form and break.
_wire_alphabet = st.sampled_from(list(b"\x02\x03\r\n \t\x1a0123456789ABCDEFabcdefPZ\x00\xff"))
wire_bytes = st.one_of(
    st.binary(max_size=300),
    st.lists(_wire_alphabet, max_size=300).map(bytes),
    st.lists(st.one_of(st.binary(max_size=20), st.lists(_wire_alphabet, max_size=20).map(bytes)), max_size=15)
    .map(b"".join),
)

# ------------------------------------------------------------------- JSON


@dataclass(frozen=True)
class Raw:
    """JSON text spliced verbatim into a document: what ``json.dumps`` could never write.

    ``value`` is what that text stands for as a Python value (for targets that take parsed data).
    """

    text: str
    value: Any = None

    def __repr__(self) -> str:
        return f"Raw({self.text[:40]!r}{'...' if len(self.text) > 40 else ''}, {len(self.text)} chars)"


def _nines(n: int) -> Raw:
    return Raw("9" * n, 10**n - 1)


def _nested(depth: int, opener: str) -> Raw:
    value: Any = 0
    for _ in range(depth):
        value = [value] if opener == "[" else {"a": value}
    closer = "]" if opener == "[" else "}"
    return Raw(opener * depth + "0" + closer * depth, value)


def parsed(obj: Any) -> Any:
    """A tree holding :class:`Raw` values as the Python data a JSON parser without limits would give."""
    if isinstance(obj, Raw):
        return obj.value
    if isinstance(obj, dict):
        return {k: parsed(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [parsed(v) for v in obj]
    return obj


def dumps(obj: Any) -> bytes:
    """``json.dumps`` that splices :class:`Raw` values in verbatim (deep nesting, NaN, 5000-digit numbers...)."""
    raws: list[str] = []

    def swap(v: Any) -> Any:
        if isinstance(v, Raw):
            raws.append(v.text)
            return f"\x00raw{len(raws) - 1}\x00"
        if isinstance(v, dict):
            return {k: swap(x) for k, x in v.items()}
        if isinstance(v, list):
            return [swap(x) for x in v]
        return v

    text = json.dumps(swap(obj))
    for i, raw in enumerate(raws):
        text = text.replace(json.dumps(f"\x00raw{i}\x00"), raw, 1)
    return text.encode("utf-8", "surrogatepass")


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)

huge_numbers = st.one_of(
    st.integers(min_value=2**53, max_value=2**2048), st.integers(min_value=-(2**2048), max_value=-(2**53)),
    st.sampled_from([10**308, 10**309, -(10**400), 2**63, 2**64 - 1, -(2**63) - 1]),
    st.integers(min_value=300, max_value=6000).map(_nines),  # past float range, past int() digit limit
    st.sampled_from([Raw("1e999", math.inf), Raw("-1e999", -math.inf), Raw("1e-999", 0.0), Raw("-0", 0),
                     Raw("0.0e0", 0.0), Raw("1" + "0" * 400 + ".5", math.inf)]),
)
special_floats = st.sampled_from([
    float("nan"), float("inf"), float("-inf"), -0.0, 5e-324, 1.7976931348623157e308,
    Raw("NaN", math.nan), Raw("Infinity", math.inf), Raw("-Infinity", -math.inf),
])
deep_nesting = st.builds(_nested, st.integers(min_value=1, max_value=50_000), st.sampled_from(["[", '{"a":']))
unicode_text = st.one_of(
    st.text(st.characters(), max_size=40),  # any code point but lone surrogates (those come as Raw escapes)
    st.sampled_from([Raw('"\\ud800"', "\ud800"), Raw('"\\udfff x"', "\udfff x"), Raw('"\\u0000"', "\x00"),
                     "\u202e", "é", "ß" * 5, "\U0001f6aa", "a\nb", "a/b", "+", "#", "", " ", "granted\u200b"]),
)
long_strings = st.one_of(
    st.integers(min_value=100, max_value=2000).map(lambda n: "a" * n),
    st.integers(min_value=60_000, max_value=70_000).map(lambda n: "b" * n),  # around the 64 KiB payload cap
)
hostile_values = st.one_of(
    json_values, huge_numbers, special_floats, deep_nesting, unicode_text, long_strings,
    st.sampled_from([None, True, False, 0, 1, -1, 0.5, "", [], {}, "granted", "denied", "access"]),
)


@st.composite
def mutated_mapping(draw: st.DrawFn, base: dict[str, Any], extra_keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """``base`` with one to three fields replaced, removed or added."""
    out = dict(base)
    keys = sorted(base) + list(extra_keys)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        how = draw(st.sampled_from(["replace", "replace", "replace", "delete", "add"]))
        if how == "add":
            out[draw(st.text(max_size=10))] = draw(hostile_values)
        else:
            key = draw(st.sampled_from(keys))
            if how == "delete":
                out.pop(key, None)
            else:
                out[key] = draw(hostile_values)
    return out


@st.composite
def mutated_tree(draw: st.DrawFn, tree: Any, max_mutations: int = 3,
                 values: st.SearchStrategy[Any] = hostile_values) -> Any:
    """A deep copy of a JSON (or TOML) tree with a few nodes anywhere in it replaced, removed or added."""
    tree = copy.deepcopy(tree)
    for _ in range(draw(st.integers(min_value=1, max_value=max_mutations))):
        tree = _mutate_at(draw, tree, values)
    return tree


def _mutate_at(draw: st.DrawFn, node: Any, values: st.SearchStrategy[Any]) -> Any:
    # Walk down a random path; at each container decide whether to stop here.
    if isinstance(node, (dict, list)) and node and draw(st.integers(0, 3)) > 0:
        if isinstance(node, dict):
            key = draw(st.sampled_from(sorted(node)))
            action = draw(st.sampled_from(["descend", "descend", "descend", "delete", "add"]))
            if action == "delete":
                del node[key]
            elif action == "add":
                node[draw(st.text(max_size=10))] = draw(values)
            else:
                node[key] = _mutate_at(draw, node[key], values)
        else:
            i = draw(st.integers(0, len(node) - 1))
            action = draw(st.sampled_from(["descend", "descend", "descend", "delete", "duplicate", "append"]))
            if action == "delete":
                del node[i]
            elif action == "duplicate":
                node.insert(i, node[i])
            elif action == "append":
                node.append(draw(values))
            else:
                node[i] = _mutate_at(draw, node[i], values)
        return node
    return draw(values)


# ------------------------------------------------------------- text files


@st.composite
def mutated_lines(draw: st.DrawFn, text: str, garbage: st.SearchStrategy[str]) -> str:
    """A text file with lines deleted, duplicated, swapped, edited or garbage inserted."""
    lines = text.splitlines()
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        if not lines:
            lines.append(draw(garbage))
            continue
        i = draw(st.integers(0, len(lines) - 1))
        how = draw(st.sampled_from(["delete", "duplicate", "move", "garbage", "edit", "truncate"]))
        if how == "delete":
            del lines[i]
        elif how == "duplicate":
            lines.insert(draw(st.integers(0, len(lines))), lines[i])
        elif how == "move":
            lines.insert(draw(st.integers(0, len(lines))), lines.pop(i))
        elif how == "garbage":
            lines.insert(i, draw(garbage))
        elif how == "truncate":
            lines[i] = lines[i][: draw(st.integers(0, max(0, len(lines[i]) - 1)))]
        else:
            start = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:start] + draw(garbage) + lines[i][start:]
    return "\n".join(lines) + draw(st.sampled_from(["\n", "", "\r\n"]))


# -------------------------------------------------------------------- TOML

toml_values = st.one_of(
    hostile_values,
    st.dates(), st.times(), st.datetimes(), st.datetimes(timezones=st.just(UTC)),
    st.sampled_from([
        date.min, date.max, datetime.max, time(23, 59, 59, 999999), date(2026, 2, 28),
        datetime.max.replace(tzinfo=timezone(timedelta(hours=-23, minutes=-59))),
        datetime.min.replace(tzinfo=timezone(timedelta(hours=23, minutes=59))),
    ]),
)

_TOML_LINES = r'''
[
]
[[
[doors]
[doors.x]
[[doors.lobby_in]]
[areas.outside]
[site]
[people.alice]
[broker]
=
a =
= 1
x = 1
x = "y"
pin = 17
pin = -1
pin = 1e3
pin = true
id = "demo"
id = ""
id = 1
clearance = 99
unlock_s = 0
unlock_s = -1
unlock_s = nan
unlock_s = inf
held_open_s = 1e400
decision_timeout_ms = 9999999999999999999999
valid_until = 9999-12-31
valid_from = 0001-01-01
valid_until = 9999-12-31T23:59:59-23:59
start = 24:00
start = "24:00"
timezone = "Mars/Olympus"
timezone = "../../etc/passwd"
timezone = ""
site_file = "."
site_file = "\u0000"
url = "mqtt://"
url = "mqtt://h:99999999"
keepalive = 0
days = ["mon", 1, []]
windows = [1, 2]
entries = [{}]
cards = [{format = 1}]
roles = [[]]
access_levels = [{}]
access_levels = [[1]]
allowed_areas = [{}]
holidays = [1]
"\ud800" = 1
# comment
a.b.c = 1
a = 1979-05-27T07:32:00Z
a = 07:32:00
a = 1979-13-45
a = "\x"
'''.strip("\n").split("\n") + ['a = """', "a = '''"]

toml_garbage = st.one_of(
    st.text(max_size=30),
    st.sampled_from(_TOML_LINES + ["", "   ", "\t", "\x00", "\ufeff", "\x7f"]),
    st.sampled_from(["[", "{b = "]).flatmap(
        lambda opener: st.integers(min_value=100, max_value=3000).map(
            lambda n: "a = " + opener * n + "1" * (opener == "{b = ") + ("]" if opener == "[" else "}") * n)),
    st.integers(min_value=4000, max_value=6000).map(lambda n: "a = " + "9" * n),
)


def _toml_string(s: str) -> str:
    # JSON's escapes are TOML's, except that TOML wants DEL escaped too.
    return json.dumps(s, ensure_ascii=False).replace("\x7f", "\\u007F")


def toml_value(v: Any) -> str | None:
    """``v`` as a TOML value (None: TOML cannot say it, so the key or item is left out)."""
    if v is None:
        return None
    if isinstance(v, Raw):  # JSON text: the same in TOML but for the words for NaN and infinity, and tables
        return v.text.replace('{"a":', "{a = ").replace("NaN", "nan").replace("Infinity", "inf")
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v) if v.bit_length() < 10_000 else "9" * 4400
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _toml_string(v)
    if isinstance(v, (date, time)):  # a datetime is a date
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(t for t in map(toml_value, v) if t is not None) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_string(str(k))} = {t}" for k, x in v.items()
                               if (t := toml_value(x)) is not None) + "}"
    raise TypeError(f"no TOML for {type(v).__name__}")


def toml_text(tree: dict[str, Any]) -> str:
    """A TOML document for ``tree``: one ``"key" = value`` line per top-level key, tables written inline."""
    return "".join(f"{_toml_string(str(k))} = {t}\n" for k, v in tree.items() if (t := toml_value(v)) is not None)
