"""Signed policy snapshots: what one edge device needs to decide on its own.

Three parts, each usable alone:

* **The codec** (``site_to_dict`` / ``site_from_dict``, and ``encode_value`` /
  ``decode_value`` for any supported type): the site model as JSON-compatible
  dicts. It is generic over the dataclasses of :mod:`doorkeep.model` — it
  reads their fields and type hints — so a field added to the model travels
  without touching this file, as long as its type is one of: ``str``,
  ``int``, ``float``, ``bool``, ``None`` / ``X | None``, a ``str``-based
  ``Enum``, ``date``, ``time``, ``datetime``, ``frozenset[X]`` / ``set[X]``
  (decoded as ``frozenset``), ``tuple[X, ...]``, ``list[X]``,
  ``dict[str, X]`` or another dataclass. A dataclass is a JSON object; a
  ``dict[str, SomeDataclass]`` (people, credentials, ...) is a table of
  columns, see the codec section. Decoding is strict: a wrong type, an
  unknown value, an unknown key or a missing required key is an error naming
  where (``policy.doors['lab'].offline: ...``). A key left out takes the
  field's default, so an older server's snapshot still loads. Per-type codecs
  are built once and cached.

* **compile_policy**: the subset of a site one device's doors need.

* **The envelope** (``sign_policy`` / ``verify_policy``)::

      {"schema": "doorkeep.policy/1",
       "signed": "<JSON text: {site, device, version, issued_at, nonce, policy[, snapshot_key][, reader_signals]
                    [, pass_keys]}>",
       "signature": "<base64 Ed25519 signature over the UTF-8 bytes of signed>"}

  The signature covers the exact bytes of ``signed``, so checking it needs no
  re-serialisation of the body: parse the envelope, verify, then parse the
  body. Replays are refused by version: an edge passes the version it holds
  as ``min_version``; a lower one is refused, the same one is accepted (a
  broker re-delivering the retained message). The publisher must therefore
  never sign different content under one version. There is deliberately no
  age limit: a retained policy is legitimately as old as the last change.

  Compatibility: the body and the site codec refuse keys they do not know,
  so an edge refuses a policy carrying a field newer than itself. A field
  added later is therefore optional and left out whenever it says nothing
  an older edge would miss: ``reader_signals`` is signed only when the site
  changed those thresholds from their defaults (:class:`ReaderSignals`),
  so older edges keep taking the policies of every other site.

The key-file helpers at the end are the only file I/O in this module.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import gc
import json
import math
import operator
import os
import re
import secrets
import stat
import threading
import types
import typing
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from enum import Enum
from itertools import chain
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from doorkeep.envelope import EnvelopeError, SnapshotRecipient
from doorkeep.errors import DoorkeepError
from doorkeep.model import Site
from doorkeep.visitor_pass import PassError, key_id, public_key_from_text

SCHEMA = "doorkeep.policy/1"
SIGNATURE_BYTES = 64
ENVELOPE_FIELDS = frozenset({"schema", "signed", "signature"})
BODY_FIELDS = frozenset({"site", "device", "version", "issued_at", "nonce", "policy"})
#: body fields a policy may carry; ``snapshot_key``: the server's X25519 key edges seal snapshots to;
#: ``reader_signals``: the site's thresholds for the edge's ``reader_security`` reports (:class:`ReaderSignals`)
OPTIONAL_BODY_FIELDS = frozenset({"snapshot_key", "reader_signals", "pass_keys"})
#: ``pass_keys``: ``{key id: base64 raw Ed25519 public key}``, the keys visitor passes are signed with
#: (doorkeep/visitor_pass.py); signed only when the site issues passes, so older edges keep their policies.
MAX_PASS_KEYS = 16
#: people holding one of these roles may matter at any door (escorts, responders in a lockdown)
ALWAYS_INCLUDED_ROLES = frozenset({"escort", "responder"})
INIT_SIGNING_FIX = "doorkeep key init-signing PATH"

_NONCE = re.compile(r"^[0-9a-f]{16,128}\Z")


class PolicyError(DoorkeepError, ValueError):
    """A policy snapshot or signing key is unusable; the message says what was wrong."""


# ====================================================================== codec
#
# Every supported type gets a _Codec, built once from the type hints and cached.
# Besides encoding and decoding one value, a codec encodes and decodes a whole
# column of values: a ``dict[str, SomeDataclass]`` (people, credentials, ...)
# travels as a table, one list per field, because that is 3-4 times smaller and
# faster to parse than one JSON object per entry, and because a column of plain
# strings or numbers can be checked at C speed instead of value by value:
#
#     {"fields": ["hash", "last4", ...], "keys": "hash", "columns": [[...], [...], ...]}
#
# ``keys`` names the field that equals each entry's dict key (so it is not sent
# twice), or is the list of keys when no field does.


class _Bad(Exception):
    """A value does not fit its declared type; ``where`` is filled in on the way up."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.where: list[str] = []  # innermost first
        self.row: int | None = None  # set when found in a column, for the table to name the entry

    def path(self, root: str) -> str:
        return root + "".join(reversed(self.where))


Encode = Callable[[Any], Any]
Decode = Callable[[Any], Any]
Check = Callable[[list[Any]], bool]
Column = Callable[[list[Any]], "list[Any] | None"]


class _Codec:
    """How one type is written to and read from JSON values, one at a time or a column at once."""

    __slots__ = ("decode", "decode_map", "encode", "encode_map", "exact", "fast_decode", "fast_encode", "plain")

    def __init__(self, encode: Encode, decode: Decode, *, exact: type | None = None, plain: Check | None = None,
                 encode_map: dict[Any, Any] | None = None, decode_map: dict[Any, Any] | None = None,
                 fast_encode: Column | None = None, fast_decode: Column | None = None) -> None:
        self.encode = encode
        self.decode = decode
        # exact: the one Python type a value must have, checked inline by the dataclass decoder.
        self.exact = exact
        # plain(values): True if every value is already valid and the same encoded as decoded.
        self.plain = plain
        # For enums: a lookup that turns a whole column in one C-level map().
        self.encode_map = encode_map
        self.decode_map = decode_map
        # For containers of plain values: a whole column at once, or None if it needs the slow path.
        self.fast_encode = fast_encode
        self.fast_decode = fast_decode

    def encode_column(self, values: list[Any]) -> list[Any]:
        return self._column(values, self.encode, self.encode_map, self.fast_encode)

    def decode_column(self, values: list[Any]) -> list[Any]:
        return self._column(values, self.decode, self.decode_map, self.fast_decode)

    def _column(self, values: list[Any], one: Callable[[Any], Any], lookup: dict[Any, Any] | None,
                fast: Column | None) -> list[Any]:
        if self.plain is not None and self.plain(values):
            return values
        if fast is not None:
            done = fast(values)
            if done is not None:
                return done
        if lookup is not None:
            try:
                return list(map(lookup.__getitem__, values))
            except (KeyError, TypeError):
                pass  # find and name the bad value below
        out = []
        for i, v in enumerate(values):
            try:
                out.append(one(v))
            except _Bad as e:
                e.row = i
                raise
        return out


_codecs: dict[Any, _Codec] = {}   # complete codecs only: read without the lock
_pending: dict[Any, _Codec] = {}  # dataclasses being built (by the thread holding the lock)
_codecs_lock = threading.RLock()


def _codec(tp: Any) -> _Codec:
    found = _codecs.get(tp)
    if found is not None:
        return found
    with _codecs_lock:
        found = _codecs.get(tp) or _pending.get(tp)
        if found is None:
            found = _build(tp)
            _codecs[tp] = found
        return found


def _kind(value: Any) -> str:
    return type(value).__name__


def _build(tp: Any) -> _Codec:
    if tp is str:
        return _Codec(_enc_str, _exact(str, "a string"), exact=str, plain=_only({str}))
    if tp is bool:
        check_bool = _exact(bool, "true or false")
        return _Codec(check_bool, check_bool, exact=bool, plain=_only({bool}))
    if tp is int:
        return _Codec(_enc_int, _exact(int, "an integer"), exact=int, plain=_only({int}))
    if tp is float:
        return _Codec(_enc_float, _dec_float, plain=_finite_floats)
    if tp is type(None) or tp is None:
        return _Codec(_none, _none, plain=_only({type(None)}))
    if tp is datetime:  # before date: a datetime is a date
        return _iso(datetime)
    if tp is date:
        return _iso(date)
    if tp is time:
        return _iso(time)
    if isinstance(tp, type) and issubclass(tp, Enum):
        return _enum(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _dataclass(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(args) == 2:
            return _optional(_codec(rest[0]))
    elif origin in (frozenset, set) and len(args) == 1:
        return _set(_codec(args[0]))
    elif origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return _sequence(_codec(args[0]), tuple)
    elif origin is list and len(args) == 1:
        return _sequence(_codec(args[0]), list)
    elif origin is dict and len(args) == 2 and args[0] is str:
        value = args[1]
        if isinstance(value, type) and dataclasses.is_dataclass(value):
            return _table(value)
        return _mapping(_codec(value))
    raise TypeError(f"doorkeep.policy cannot encode fields of type {tp!r}; "
                    "use one of the types listed in the module docstring")


def _only(kinds: set[type]) -> Check:
    allowed = frozenset(kinds)

    def plain(values: list[Any]) -> bool:
        return set(map(type, values)) <= allowed

    return plain


def _finite_floats(values: list[Any]) -> bool:
    return set(map(type, values)) <= {float} and all(map(math.isfinite, values))


def _exact(kind: type, expected: str) -> Decode:
    def check(value: Any) -> Any:
        if value.__class__ is not kind:
            raise _Bad(f"expected {expected}, got {_kind(value)}")
        return value
    return check


def _enc_str(value: Any) -> str:
    if not isinstance(value, str):
        raise _Bad(f"expected a string, got {_kind(value)}")
    return str.__str__(value)  # a str-based Enum member becomes its plain value


def _enc_int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _Bad(f"expected an integer, got {_kind(value)}")
    return int(value)


def _enc_float(value: Any) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise _Bad(f"expected a number, got {_kind(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise _Bad(f"expected a finite number, got {value}")
    return value


def _dec_float(value: Any) -> float:
    cls = value.__class__
    if cls is float:
        if not math.isfinite(value):
            raise _Bad(f"expected a finite number, got {value}")
        return value
    if cls is int:
        try:
            return float(value)
        except OverflowError:
            raise _Bad("an integer beyond the range of a floating-point number") from None
    raise _Bad(f"expected a number, got {_kind(value)}")


def _none(value: Any) -> None:
    if value is not None:
        raise _Bad(f"expected null, got {_kind(value)}")


def _iso(kind: type) -> _Codec:
    name = kind.__name__

    def encode(value: Any) -> str:
        if not isinstance(value, kind) or (kind is date and isinstance(value, datetime)):
            raise _Bad(f"expected a {name}, got {_kind(value)}")
        return value.isoformat()

    def decode(value: Any) -> Any:
        if value.__class__ is not str:
            raise _Bad(f"expected an ISO 8601 {name} string, got {_kind(value)}")
        try:
            return kind.fromisoformat(value)
        except ValueError:
            raise _Bad(f"{value!r} is not an ISO 8601 {name}") from None

    return _Codec(encode, decode)


def _enum(cls: type[Enum]) -> _Codec:
    by_value = {m.value: m for m in cls}
    # A str-based member hashes and compares like its value, so this maps members and raw values alike.
    to_value = {m: m.value for m in cls}
    allowed = ", ".join(repr(v) for v in by_value)

    def encode(value: Any) -> Any:
        try:
            return to_value[value]
        except (KeyError, TypeError):
            raise _Bad(f"unknown value {value!r} (expected one of {allowed})") from None

    def decode(value: Any) -> Any:
        try:
            return by_value[value]
        except (KeyError, TypeError):
            raise _Bad(f"unknown value {value!r} (expected one of {allowed})") from None

    return _Codec(encode, decode, encode_map=to_value, decode_map=by_value)


def _optional(inner: _Codec) -> _Codec:
    enc, dec, inner_plain = inner.encode, inner.decode, inner.plain

    def encode(value: Any) -> Any:
        return None if value is None else enc(value)

    def decode(value: Any) -> Any:
        return None if value is None else dec(value)

    plain = None
    if inner_plain is not None:
        def plain(values: list[Any]) -> bool:
            present = [v for v in values if v is not None]
            return inner_plain(present)

    return _Codec(encode, decode, plain=plain)


def _sort_key(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _items(value: list[Any], one: Callable[[Any], Any]) -> list[Any]:
    out = []
    for i, v in enumerate(value):
        try:
            out.append(one(v))
        except _Bad as e:
            e.where.append(f"[{i}]")
            raise
    return out


def _set(inner: _Codec) -> _Codec:
    enc, dec, inner_plain = inner.encode, inner.decode, inner.plain

    def encode(value: Any) -> list[Any]:
        if not isinstance(value, (set, frozenset)):
            raise _Bad(f"expected a set, got {_kind(value)}")
        if not value:
            return []
        items = list(value)
        if inner_plain is None or not inner_plain(items):
            items = [enc(v) for v in items]
        try:
            items.sort()  # one spelling per set, so equal policies sign equal bytes
        except TypeError:
            items.sort(key=_sort_key)
        return items

    def decode(value: Any) -> frozenset[Any]:
        if value.__class__ is not list:
            raise _Bad(f"expected a list, got {_kind(value)}")
        if not value:
            return frozenset()
        if inner_plain is not None and inner_plain(value):
            return frozenset(value)
        return frozenset(_items(value, dec))

    fast_encode = fast_decode = None
    if inner_plain is not None:
        def fast_encode(values: list[Any]) -> list[Any] | None:
            if set(map(type, values)) <= {frozenset, set} and inner_plain(list(chain.from_iterable(values))):
                return list(map(sorted, values))
            return None

        def fast_decode(values: list[Any]) -> list[Any] | None:
            if set(map(type, values)) <= {list} and inner_plain(list(chain.from_iterable(values))):
                return list(map(frozenset, values))
            return None

    return _Codec(encode, decode, fast_encode=fast_encode, fast_decode=fast_decode)


def _sequence(inner: _Codec, kind: type) -> _Codec:
    enc, dec, inner_plain = inner.encode, inner.decode, inner.plain

    def encode(value: Any) -> list[Any]:
        if not isinstance(value, (tuple, list)):
            raise _Bad(f"expected a {kind.__name__}, got {_kind(value)}")
        if inner_plain is not None and inner_plain(value):
            return list(value)
        return _items(value, enc)

    def decode(value: Any) -> Any:
        if value.__class__ is not list:
            raise _Bad(f"expected a list, got {_kind(value)}")
        if not value:
            return kind()
        if inner_plain is not None and inner_plain(value):
            return kind(value)
        return kind(_items(value, dec))

    fast_encode = fast_decode = None
    if inner_plain is not None:
        def fast_encode(values: list[Any]) -> list[Any] | None:
            if set(map(type, values)) <= {tuple, list} and inner_plain(list(chain.from_iterable(values))):
                return list(map(list, values))
            return None

        def fast_decode(values: list[Any]) -> list[Any] | None:
            if set(map(type, values)) <= {list} and inner_plain(list(chain.from_iterable(values))):
                return list(map(kind, values))
            return None

    return _Codec(encode, decode, fast_encode=fast_encode, fast_decode=fast_decode)


def _mapping(inner: _Codec) -> _Codec:
    enc, dec = inner.encode, inner.decode

    def encode(value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise _Bad(f"expected a dict, got {_kind(value)}")
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise _Bad(f"keys must be strings, got {_kind(k)} {k!r}")
            try:
                out[str.__str__(k)] = enc(v)
            except _Bad as e:
                e.where.append(f"[{k!r}]")
                raise
        return out

    def decode(value: Any) -> dict[str, Any]:
        if value.__class__ is not dict:
            raise _Bad(f"expected an object, got {_kind(value)}")
        out = {}
        for k, v in value.items():
            try:
                out[k] = dec(v)
            except _Bad as e:
                e.where.append(f"[{k!r}]")
                raise
        return out

    return _Codec(encode, decode)


class _Fields:
    """A dataclass's init fields with their codecs, in declaration order."""

    def __init__(self, cls: type) -> None:
        hints = typing.get_type_hints(cls)
        fields = [f for f in dataclasses.fields(cls) if f.init]
        self.cls = cls
        self.names = [f.name for f in fields]
        self.known = frozenset(self.names)
        self.codecs = {f.name: _codec(hints[f.name]) for f in fields}
        self.required = {f.name for f in fields
                         if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        self.defaults = {f.name: f for f in fields if f.name not in self.required}
        self.positional = not any(f.kw_only for f in fields)
        self.str_fields = [name for name in self.names if self.codecs[name].exact is str]


def _dataclass(cls: type) -> _Codec:
    """One dataclass as a JSON object with one key per field."""
    # A forwarder first, so a dataclass that (indirectly) contains itself still builds.
    box: dict[str, _Codec] = {}
    _pending[cls] = _Codec(lambda v: box["codec"].encode(v), lambda v: box["codec"].decode(v))
    try:
        spec = _Fields(cls)
    finally:
        del _pending[cls]
    # Plain scalars (str, bool, int) are checked inline rather than through a call.
    steps = [(name, spec.codecs[name], spec.codecs[name].exact, name in spec.required) for name in spec.names]
    what = cls.__name__

    def encode(value: Any) -> dict[str, Any]:
        if not isinstance(value, cls):
            raise _Bad(f"expected a {what}, got {_kind(value)}")
        out = {}
        for name, codec, _, _ in steps:
            try:
                out[name] = codec.encode(getattr(value, name))
            except _Bad as e:
                e.where.append(f".{name}")
                raise
        return out

    def decode(value: Any) -> Any:
        if value.__class__ is not dict:
            raise _Bad(f"expected an object ({what}), got {_kind(value)}")
        kwargs = {}
        for name, codec, exact, required in steps:
            if name in value:
                v = value[name]
                try:
                    if exact is not None:
                        if v.__class__ is not exact:
                            raise _Bad(f"expected {exact.__name__}, got {_kind(v)}")
                        kwargs[name] = v
                    else:
                        kwargs[name] = codec.decode(v)
                except _Bad as e:
                    e.where.append(f".{name}")
                    raise
            elif required:
                raise _Bad(f"required key {name!r} is missing")
        if len(kwargs) != len(value):
            unknown = sorted(str(k) for k in value if k not in spec.known)
            raise _Bad(f"unknown key(s) {', '.join(map(repr, unknown))} for {what}")
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as e:  # the dataclass's own checks (__post_init__)
            raise _Bad(f"refused by {what}: {e}") from None

    codec = _Codec(encode, decode)
    box["codec"] = codec
    return codec


def _table(cls: type) -> _Codec:
    """``dict[str, SomeDataclass]`` as a table of columns (see the top of this section)."""
    spec = _Fields(cls)
    what = cls.__name__
    getters = {name: operator.attrgetter(name) for name in spec.names}

    def encode(value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise _Bad(f"expected a dict of {what}, got {_kind(value)}")
        keys = list(value)
        entries = list(value.values())
        for k, entry in value.items():
            if not isinstance(k, str):
                raise _Bad(f"keys must be strings, got {_kind(k)} {k!r}")
            if not isinstance(entry, cls):
                e = _Bad(f"expected a {what}, got {_kind(entry)}")
                e.where.append(f"[{k!r}]")
                raise e
        columns = []
        for name in spec.names:
            try:
                columns.append(spec.codecs[name].encode_column(list(map(getters[name], entries))))
            except _Bad as e:
                e.where.append(f".{name}")
                if e.row is not None:
                    e.where.append(f"[{keys[e.row]!r}]")
                raise
        key_field = next((name for name in spec.str_fields if columns[spec.names.index(name)] == keys), None)
        return {"fields": list(spec.names), "keys": key_field if key_field else [str.__str__(k) for k in keys],
                "columns": columns}

    def decode(value: Any) -> dict[str, Any]:
        if value.__class__ is not dict:
            raise _Bad(f"expected a table of {what} (an object), got {_kind(value)}")
        if value.keys() != {"fields", "keys", "columns"}:
            raise _Bad(f"a table of {what} has exactly the keys 'fields', 'keys' and 'columns', "
                       f"got {', '.join(map(repr, sorted(map(str, value))))}")
        fields, keys, columns = value["fields"], value["keys"], value["columns"]
        if fields.__class__ is not list or not set(map(type, fields)) <= {str} or len(set(fields)) != len(fields):
            raise _Bad(f"'fields' must be a list of distinct field names of {what}")
        unknown = [f for f in fields if f not in spec.known]
        if unknown:
            raise _Bad(f"unknown key(s) {', '.join(map(repr, unknown))} for {what}")
        missing = sorted(spec.required - set(fields))
        if missing:
            raise _Bad(f"required key(s) {', '.join(map(repr, missing))} of {what} are missing")
        if (columns.__class__ is not list or len(columns) != len(fields)
                or not set(map(type, columns)) <= {list}):
            raise _Bad(f"'columns' must be a list of {len(fields)} lists, one per field")
        n = len(columns[0]) if columns else len(keys) if keys.__class__ is list else 0
        for name, column in zip(fields, columns):
            if len(column) != n:
                raise _Bad(f"column {name!r} has {len(column)} values, expected {n}")
        raw = dict(zip(fields, columns))
        if keys.__class__ is str:
            if keys not in raw or keys not in spec.str_fields:
                raise _Bad(f"'keys' names {keys!r}, which is not a string field of this table")
            key_list = raw[keys]
            if not spec.codecs[keys].plain(key_list):  # type: ignore[misc]
                raise _Bad(f"the key column {keys!r} must hold strings")
        elif keys.__class__ is list:
            key_list = keys
            if len(key_list) != n or not set(map(type, key_list)) <= {str}:
                raise _Bad(f"'keys' must be a list of {n} strings")
        else:
            raise _Bad(f"'keys' must be a field name or a list of keys, got {_kind(keys)}")

        decoded: dict[str, list[Any]] = {}
        for name in spec.names:
            if name in raw:
                try:
                    decoded[name] = spec.codecs[name].decode_column(raw[name])
                except _Bad as e:
                    e.where.append(f".{name}")
                    if e.row is not None:
                        e.where.append(f"[{key_list[e.row]!r}]")
                    raise
            else:  # a field this sender does not know yet: its default
                f = spec.defaults[name]
                if f.default is not dataclasses.MISSING:
                    decoded[name] = [f.default] * n
                else:
                    decoded[name] = [f.default_factory() for _ in range(n)]  # type: ignore[misc]
        try:
            if spec.positional:
                entries = list(map(cls, *(decoded[name] for name in spec.names)))
            else:
                entries = [cls(**dict(zip(spec.names, row))) for row in zip(*(decoded[name] for name in spec.names))]
        except (TypeError, ValueError) as e:  # the dataclass's own checks (__post_init__)
            raise _Bad(f"refused by {what}: {e}") from None
        out = dict(zip(key_list, entries))
        if len(out) != n:
            raise _Bad(f"duplicate keys in a table of {what}")
        return out

    return _Codec(encode, decode)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while the APPLICATION builds or loads a large policy.

    A policy's hundreds of thousands of objects form no cycle, yet each collection their
    allocations trigger walks them all again: pausing roughly halves the time to load or
    sign a large policy. The collector is process-wide, so this module's own functions never
    pause it (a library must not switch it off behind its caller's back): the applications
    wrap their own big operations (server/publisher.py around compile and sign,
    edge/policy_cache.py around verify). Re-enabled afterwards only if it was enabled
    before, so an application that manages the collector keeps control.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def encode_value(value: Any, tp: Any, *, root: str = "value") -> Any:
    """``value``, declared as type ``tp`` (e.g. a model dataclass), as JSON-compatible data.

    Raises TypeError if ``tp`` is not supported, PolicyError if ``value`` does not fit it.
    """
    codec = _codec(tp)
    try:
        return codec.encode(value)
    except _Bad as e:
        raise PolicyError(f"cannot encode {e.path(root)}: {e.problem}") from None


def decode_value(data: Any, tp: Any, *, root: str = "value") -> Any:
    """The inverse of :func:`encode_value`; raises PolicyError naming where the data is wrong."""
    codec = _codec(tp)
    try:
        return codec.decode(data)
    except _Bad as e:
        raise PolicyError(f"{e.path(root)}: {e.problem}") from None


def site_to_dict(site: Site) -> dict[str, Any]:
    """The site as JSON-compatible dicts (enums as values, sets as sorted lists, dates as ISO text)."""
    return encode_value(site, Site, root="site")


def site_from_dict(data: Any, *, root: str = "site") -> Site:
    """The inverse of :func:`site_to_dict`; raises PolicyError naming the bad key."""
    return decode_value(data, Site, root=root)


# ===================================================================== compile


def compile_policy(site: Site, doors: Iterable[str]) -> Site:
    """The part of ``site`` that an edge device with these doors needs to decide on its own.

    Kept: the doors; every area (few, and rules refer to them); the access levels
    that cover a door's destination area (or the door itself); the schedules those
    levels and the doors use; the people who could matter at those doors (holders of
    those levels, visitors allowed into a destination area and their hosts, anyone with
    the ``escort`` or ``responder`` role), with their names and companies replaced by their ids;
    exactly those people's credentials (keyed hashes only); the rules and any other site-wide
    setting unchanged.
    """
    door_ids = list(dict.fromkeys(doors))
    unknown = [d for d in door_ids if d not in site.doors]
    if unknown:
        raise PolicyError(f"site {site.id!r} has no door(s) {', '.join(map(repr, unknown))}")
    kept_doors = {d: site.doors[d] for d in door_ids}
    to_areas = {area for door in kept_doors.values() for area in door.entered}

    def covers(level: Any) -> bool:
        for entry in level.entries:
            if entry.area in to_areas or getattr(entry, "door", None) in kept_doors:
                return True
        return False

    levels = {lid: level for lid, level in site.access_levels.items() if covers(level)}

    schedule_ids: set[str] = set()
    for level in levels.values():
        schedule_ids.update(entry.schedule for entry in level.entries)
    for door in kept_doors.values():
        unlock = getattr(door, "unlock_schedule", None)
        if unlock is not None:
            schedule_ids.add(unlock)
        schedule_ids.update(f.public_schedule for f in door.floors if f.public_schedule is not None)
    schedules = {sid: s for sid, s in site.schedules.items() if sid in schedule_ids}

    people = {}
    for pid, person in site.people.items():
        if (any(level in levels for level in person.access_levels)
                or not ALWAYS_INCLUDED_ROLES.isdisjoint(person.roles)
                or (person.kind == "visitor" and not to_areas.isdisjoint(getattr(person, "allowed_areas", ())))):
            people[pid] = person
    # A visitor's host may escort them through these doors: the rule needs the host's badge too.
    for person in list(people.values()):
        host = getattr(person, "host", None)
        if person.kind == "visitor" and host in site.people:
            people.setdefault(host, site.people[host])

    credentials = {h: c for h, c in site.credentials.items() if c.person in people}
    # Data minimisation: a decision needs ids, levels and states, never who someone is. A stolen SD card holds
    # person ids, not names or employers (docs/privacy.md).
    people = {pid: dataclasses.replace(p, name=pid, company=None) for pid, p in people.items()}
    return dataclasses.replace(site, doors=kept_doors, access_levels=levels, schedules=schedules,
                               people=people, credentials=credentials)


# ==================================================================== envelope


@dataclass(frozen=True)
class ReaderSignals:
    """The edge's share of the site's ``[intrusion]`` settings: how many failed Secure Channel handshakes, or
    clear NAKs from a reader that must use Secure Channel, within ``window_s`` make one ``reader_security``
    report from its OSDP readers (edge/osdp/cp.py).

    It travels in the signed policy (body field ``reader_signals``), so an edge without a site file applies
    the site's thresholds too; only when they differ from these defaults (see the module docstring)."""

    handshake_failures: int = 3
    clear_naks: int = 4
    window_s: float = 60.0

    def __post_init__(self) -> None:
        if isinstance(self.handshake_failures, bool) or not isinstance(self.handshake_failures, int) \
                or self.handshake_failures < 1:
            raise ValueError(f"handshake_failures must be a whole number of at least 1, got {self.handshake_failures!r}")
        if isinstance(self.clear_naks, bool) or not isinstance(self.clear_naks, int) or self.clear_naks < 1:
            raise ValueError(f"clear_naks must be a whole number of at least 1, got {self.clear_naks!r}")
        if not isinstance(self.window_s, (int, float)) or isinstance(self.window_s, bool) \
                or not 0 < self.window_s <= 86400 or not math.isfinite(self.window_s):
            raise ValueError(f"window_s must be more than 0 and at most 86400 seconds, got {self.window_s!r}")


@dataclass(frozen=True)
class VerifiedPolicy:
    """A policy whose signature, site, device and version have been checked."""

    site: Site
    version: int
    issued_at: float  # UTC epoch seconds (millisecond precision)
    nonce: str
    snapshot_key: SnapshotRecipient | None = None  # None: this edge cannot seal snapshots, so it keeps none
    reader_signals: ReaderSignals | None = None  # None: not carried (the defaults, or a server older than it)
    pass_keys: dict[str, Ed25519PublicKey] | None = None  # key id -> visitor pass key; None: no passes


def _iso_ms(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")


#: Entries per piece when a large policy is written as JSON (:func:`dumps_in_pieces`).
_PIECE = 1000
_JSON: dict[str, Any] = {"ensure_ascii": False, "separators": (",", ":"), "allow_nan": False}


def dumps_in_pieces(value: Any, *, piece: int = _PIECE, depth: int = 4) -> str:
    """``json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)``, written in pieces.

    One ``json.dumps`` of a 110,000-person policy (20 MB) holds the interpreter lock for about 160 ms, and a
    decision on another thread of the server waits that long (bench/site_changes.py). A dict or list of
    more than ``piece`` entries is written ``piece`` entries at a time, and the tables and lists above them
    (to ``depth`` levels) entry by entry, so no single call holds the lock for more than a millisecond or two; the
    text is exactly the one-call text (tests/unit/test_policy.py).
    """
    if isinstance(value, dict):
        if len(value) > piece:
            items = list(value.items())
            parts = (json.dumps(dict(items[i:i + piece]), **_JSON)[1:-1] for i in range(0, len(items), piece))
            return "{" + ",".join(parts) + "}"
        if depth > 0 and all(isinstance(k, str) for k in value):
            return "{" + ",".join(json.dumps(k, **_JSON) + ":" + dumps_in_pieces(v, piece=piece, depth=depth - 1)
                                  for k, v in value.items()) + "}"
    elif isinstance(value, list):
        if len(value) > piece:
            return "[" + ",".join(json.dumps(value[i:i + piece], **_JSON)[1:-1]
                                  for i in range(0, len(value), piece)) + "]"
        if depth > 0:  # a policy's tables are columns: a short list of long lists
            return "[" + ",".join(dumps_in_pieces(v, piece=piece, depth=depth - 1) for v in value) + "]"
    elif isinstance(value, str) and len(value) > piece * 256:  # escaping a long text is per character
        step = piece * 256
        return '"' + "".join(json.dumps(value[i:i + step], **_JSON)[1:-1] for i in range(0, len(value), step)) + '"'
    return json.dumps(value, **_JSON)


def policy_text(site_subset: Site) -> str:
    """The JSON text of a compiled policy as :func:`sign_policy` signs it: what two versions compare by."""
    return dumps_in_pieces(site_to_dict(site_subset))


def sign_policy(site_subset: Site, *, site_id: str, device: str, version: int, issued_at: float,
                key: Ed25519PrivateKey, snapshot_key: SnapshotRecipient | None = None,
                reader_signals: ReaderSignals | None = None, text: str | None = None,
                pass_keys: dict[str, str] | None = None) -> bytes:
    """The signed envelope (UTF-8 JSON bytes) carrying ``site_subset`` for ``device``.

    ``snapshot_key``: the server's snapshot public key, so the edge can seal snapshots (doorkeep.envelope).
    ``reader_signals``: the site's reader thresholds; signed only when they differ from the defaults.
    ``text``: the subset's :func:`policy_text`, when the caller has it already (the publisher compares by it).
    ``pass_keys``: key id -> base64 raw public key of the visitor pass keys (signed only when not empty).
    """
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise PolicyError(f"version must be a non-negative integer, got {version!r}")
    if site_subset.id != site_id:
        raise PolicyError(f"the policy's site is {site_subset.id!r}, but it is being signed for site {site_id!r}")
    try:
        issued = _iso_ms(issued_at)
    except (TypeError, ValueError, OverflowError, OSError):
        raise PolicyError(f"issued_at must be UTC epoch seconds, got {issued_at!r}") from None
    if text is None:
        text = policy_text(site_subset)
    # The body's keys in this order (the publisher reads site, device and version from its head): the
    # policy's text is put in place as it is, not decoded and written again.
    head = {"site": site_id, "device": device, "version": version, "issued_at": issued, "nonce": secrets.token_hex(16)}
    tail: dict[str, Any] = {}
    if snapshot_key is not None:
        tail["snapshot_key"] = snapshot_key.to_policy()
    if reader_signals is not None and reader_signals != ReaderSignals():
        tail["reader_signals"] = encode_value(reader_signals, ReaderSignals, root="reader_signals")
    if pass_keys:
        _pass_keys(pass_keys)  # never sign what an edge would refuse
        tail["pass_keys"] = dict(sorted(pass_keys.items()))
    signed = (json.dumps(head, **_JSON)[:-1] + ',"policy":' + text
              + ("," + json.dumps(tail, **_JSON)[1:] if tail else "}"))
    raw = signed.encode("utf-8")
    signature = base64.b64encode(key.sign(raw)).decode("ascii")
    return ('{"schema":' + json.dumps(SCHEMA, **_JSON) + ',"signed":' + dumps_in_pieces(signed)
            + ',"signature":' + json.dumps(signature) + "}").encode("utf-8")


def verify_policy(payload: bytes, key: Ed25519PublicKey, *, site_id: str, device: str,
                  min_version: int | None = None) -> VerifiedPolicy:
    """Check and open a signed policy; raise :class:`PolicyError` saying what was wrong.

    Refused: anything that is not a ``doorkeep.policy/1`` envelope, a missing or bad
    signature, a policy for another site or device, a version below ``min_version``
    (a replayed older snapshot; the same version is a re-delivery and passes), and a
    body that does not decode to a site.
    """
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise PolicyError(f"policy payload must be bytes, got {_kind(payload)}")
    try:
        text = bytes(payload).decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyError("policy payload is not UTF-8 text") from None
    try:
        envelope = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise PolicyError("policy payload is not JSON") from None
    if not isinstance(envelope, dict):
        raise PolicyError(f"policy payload must be a JSON object, got {_kind(envelope)}")
    if envelope.get("schema") != SCHEMA:
        raise PolicyError(f"policy schema must be {SCHEMA!r}, got {envelope.get('schema')!r}")
    missing = sorted(ENVELOPE_FIELDS - envelope.keys())
    if missing:
        raise PolicyError(f"policy envelope is missing {', '.join(missing)}")
    extra = sorted(envelope.keys() - ENVELOPE_FIELDS)
    if extra:
        raise PolicyError(f"policy envelope has unexpected field(s) {', '.join(map(repr, extra))}")
    signed, signature = envelope["signed"], envelope["signature"]
    if not isinstance(signed, str):
        raise PolicyError(f"policy 'signed' must be a JSON string, got {_kind(signed)}")
    if not isinstance(signature, str) or not signature:
        raise PolicyError("policy signature is missing or not a string")
    try:
        sig = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        raise PolicyError("policy signature is not base64") from None
    if len(sig) != SIGNATURE_BYTES:
        raise PolicyError(f"policy signature has {len(sig)} bytes, expected {SIGNATURE_BYTES}")
    try:
        raw = signed.encode("utf-8")
    except UnicodeEncodeError:
        raise PolicyError("policy 'signed' text is not valid Unicode") from None
    try:
        key.verify(sig, raw)
    except InvalidSignature:
        raise PolicyError("policy signature does not match: not signed by this site's policy key, "
                          "or altered after signing") from None

    # From here the body is the server's own words; still check it as strictly as any message.
    del raw, envelope, text  # a large policy is held several times over until here
    try:
        body = json.loads(signed, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise PolicyError("signed policy body is not JSON") from None
    del signed
    if not isinstance(body, dict):
        raise PolicyError(f"signed policy body must be a JSON object, got {_kind(body)}")
    missing = sorted(BODY_FIELDS - body.keys())
    if missing:
        raise PolicyError(f"signed policy body is missing {', '.join(missing)}")
    extra = sorted(body.keys() - BODY_FIELDS - OPTIONAL_BODY_FIELDS)
    if extra:
        raise PolicyError(f"signed policy body has unexpected field(s) {', '.join(map(repr, extra))}")
    snapshot_key = None
    if "snapshot_key" in body:
        try:
            snapshot_key = SnapshotRecipient.from_policy(body["snapshot_key"])
        except EnvelopeError as e:
            raise PolicyError(f"policy {e}") from None
    if body["site"] != site_id:
        raise PolicyError(f"policy is for site {body['site']!r}, this is site {site_id!r}")
    if body["device"] != device:
        raise PolicyError(f"policy is for device {body['device']!r}, this is device {device!r}")
    version = body["version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise PolicyError(f"policy version must be a non-negative integer, got {version!r}")
    if min_version is not None and version < min_version:
        raise PolicyError(f"policy version {version} is older than version {min_version} already held "
                          "(a replayed snapshot)")
    issued = body["issued_at"]
    stamp = None
    if isinstance(issued, str):
        try:
            stamp = datetime.fromisoformat(issued)
        except ValueError:
            pass
    if stamp is None or stamp.tzinfo is None:
        raise PolicyError(f"policy issued_at must be a UTC ISO 8601 time, got {issued!r}")
    nonce = body["nonce"]
    if not isinstance(nonce, str) or not _NONCE.match(nonce):
        raise PolicyError(f"policy nonce must be 16-128 lowercase hex digits, got {nonce!r}")
    reader_signals = None
    if "reader_signals" in body:
        reader_signals = decode_value(body["reader_signals"], ReaderSignals, root="policy reader_signals")
    pass_keys = _pass_keys(body["pass_keys"]) if "pass_keys" in body else None
    site = site_from_dict(body["policy"], root="policy")
    if site.id != site_id:
        raise PolicyError(f"policy.id is {site.id!r}, but the envelope is for site {site_id!r}")
    return VerifiedPolicy(site=site, version=version, issued_at=stamp.timestamp(), nonce=nonce,
                          snapshot_key=snapshot_key, reader_signals=reader_signals, pass_keys=pass_keys)


def _pass_keys(value: Any) -> dict[str, Ed25519PublicKey]:
    """The policy's ``pass_keys`` checked: each id must be the id of its key (doorkeep/visitor_pass.py)."""
    if not isinstance(value, dict) or not 0 < len(value) <= MAX_PASS_KEYS:
        raise PolicyError(f"policy pass_keys must be an object of 1-{MAX_PASS_KEYS} keys")
    keys = {}
    for kid, text in value.items():
        try:
            key = public_key_from_text(text)
        except PassError as e:
            raise PolicyError(f"policy pass_keys[{str(kid)[:16]!r}]: {e}") from None
        if kid != key_id(key):
            raise PolicyError(f"policy pass_keys[{str(kid)[:16]!r}]: the id is not the key's ({key_id(key)})")
        keys[kid] = key
    return keys


# ================================================================= key files
# The only file I/O in this module: the server's Ed25519 policy-signing key and
# the public half every edge device holds.


def public_key_path(private_path: Path) -> Path:
    """Where :func:`generate_signing_key` writes the public half: ``PATH`` with suffix ``.pub``."""
    return Path(private_path).with_suffix(".pub")


def generate_signing_key(path: Path) -> None:
    """Write a new Ed25519 private key (PEM, PKCS8, mode 0600) and its public key beside it.

    Never overwrites a private key: raises FileExistsError if ``path`` exists.
    """
    path = Path(path)
    pub_path = public_key_path(path)
    if pub_path == path:
        raise PolicyError(f"{path}: a private key file must not end in .pub "
                          "(fix: name it e.g. policy-signing.key)")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
        f.flush()
        os.fsync(f.fileno())
    pub_path.write_bytes(public_pem)
    pub_path.chmod(0o644)  # whoever may rewrite it decides which policies an edge trusts (load_public_key)


#: PEM text of the policy-signing key; when set and not empty it wins over the key file.
SIGNING_KEY_ENV = "DOORKEEP_POLICY_SIGNING_KEY"


def _private_key_from_env(text: str, path: Path) -> Ed25519PrivateKey:
    """The signing key from ``$DOORKEEP_POLICY_SIGNING_KEY``; errors name the variable, never its value.

    Environment files (Docker ``--env-file``, systemd ``Environment=``) hold one
    line, so a literal ``\\n`` is read as a line break.
    """
    fix = (f"set ${SIGNING_KEY_ENV} to the whole text of a key file written by "
           f"`doorkeep key init-signing PATH` (BEGIN and END lines included), or unset it to use {path}")
    data = text.replace("\\n", "\n").strip().encode()
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise PolicyError(f"${SIGNING_KEY_ENV}: not an unencrypted PEM private key (fix: {fix})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise PolicyError(f"${SIGNING_KEY_ENV}: policy signing key must be Ed25519, got {type(key).__name__} "
                          f"(fix: {fix})")
    return key


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The server's policy-signing key; refuses a file group or others may access.

    ``$DOORKEEP_POLICY_SIGNING_KEY`` (PEM text), when set and not empty, wins
    over the file, which is then not read at all; a malformed value is an
    error, never a silent fall back to the file.
    """
    path = Path(path)
    env = os.environ.get(SIGNING_KEY_ENV)
    if env:
        return _private_key_from_env(env, path)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        data = path.read_bytes()
    except FileNotFoundError:
        raise PolicyError(f"{path}: policy signing key does not exist "
                          f"(fix: create it with `doorkeep key init-signing {path}`)") from None
    except OSError as e:
        raise PolicyError(f"{path}: cannot read the policy signing key: {e.strerror} "
                          "(fix: run as the key's owner)") from None
    if mode & 0o077:
        raise PolicyError(f"{path}: policy signing key is accessible by group or others (mode {mode:03o}) "
                          f"(fix: chmod 600 {path})")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise PolicyError(f"{path}: not an unencrypted PEM private key "
                          f"(fix: recreate it with `doorkeep key init-signing {path}`)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise PolicyError(f"{path}: policy signing key must be Ed25519, got {type(key).__name__} "
                          f"(fix: recreate it with `doorkeep key init-signing {path}`)")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """The policy-verifying key an edge device holds (the ``.pub`` file beside the server's key)."""
    path = Path(path)
    fix = ("copy the server's public key here (the .pub file written by "
           "`doorkeep key init-signing PATH`)")
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        data = path.read_bytes()
    except FileNotFoundError:
        raise PolicyError(f"{path}: policy public key does not exist (fix: {fix})") from None
    except OSError as e:
        raise PolicyError(f"{path}: cannot read the policy public key: {e.strerror} "
                          "(fix: make it readable by the doorkeep user)") from None
    # Not secret, so world-readable is fine; but whoever can rewrite it can sign policies the edge trusts.
    if mode & 0o022:
        raise PolicyError(f"{path}: policy public key is writable by group or others (mode {mode:03o}) "
                          f"(fix: chmod 644 {path})")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise PolicyError(f"{path}: not a PEM public key (fix: {fix})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise PolicyError(f"{path}: policy public key must be Ed25519, got {type(key).__name__} (fix: {fix})")
    return key
