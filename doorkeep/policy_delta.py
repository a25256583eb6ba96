"""Signed policy deltas: a change to one device's policy without re-signing (or re-sending) the whole policy.

A lobby device's policy at 110,000 people weighs about 24 MB; a card reported lost changes one record of it.
A delta carries only the records that changed, signed with the same Ed25519 policy key as the full policy
(doorkeep/policy.py), and names the exact policy it applies to, so an edge never applies it to anything else.

Three parts, each usable alone (all pure: no I/O):

* **diff and apply** (:func:`diff_policy`, :func:`apply_changes`): the site model's tables (``areas``,
  ``doors``, ``schedules``, ``access_levels``, ``people``, ``credentials``: every ``dict[str, dataclass]``
  field of :class:`~doorkeep.model.Site`) change record by record: ``upsert`` (a record added or changed, as
  the codec encodes that one record) and ``remove`` (keys); every other field of the site (``rules``,
  ``lockdowns``, the time zone...) is replaced whole in ``head`` when it changed.

* **the digest** (:class:`PolicyDigest`): what "the same policy" means. A policy's digest is SHA-256 over the
  canonical JSON of its head fields and, per table, the number of records and the sum (mod 2**256) of the
  SHA-256 of every record's canonical JSON ``[key, record]``. A sum of record hashes does not depend on the
  order of the records, and it is updated per changed record: applying a revocation to a 250,000-credential
  policy re-hashes one record, not 24 MB. The digest guards against a *mistake* (a delta applied to another
  base, a gap, a wrong apply); authenticity comes from the signature over both digests, so an attacker who
  cannot sign cannot choose what the digests cover.

* **the envelope** (:func:`sign_delta`, :func:`verify_delta`)::

      {"schema": "doorkeep.policy-delta/1",
       "signed": "<JSON text: {site, device, base_version, base_digest, version, result_digest,
                    issued_at, nonce, changes}>",
       "signature": "<base64 Ed25519 over the UTF-8 bytes of signed>"}

  :func:`apply_delta` takes a held policy (its site, version and digest) and a verified delta and returns the
  new site and digest, or raises: :class:`DeltaBaseMismatch` when the held policy is not the delta's base
  (wrong version or digest: the edge needs a full policy), :class:`PolicyDeltaError` for anything else,
  including a result whose digest is not the one signed (the apply is refused, never used).

A delta never carries the policy's other signed fields (``snapshot_key``, ``reader_signals``, ``pass_keys``):
the result keeps the base's, and the publisher sends a full policy when one of them changes.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import re
import secrets
import typing
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from doorkeep.model import Site
from doorkeep.policy import PolicyError, decode_value, encode_value, site_to_dict

SCHEMA = "doorkeep.policy-delta/1"
SIGNATURE_BYTES = 64
ENVELOPE_FIELDS = frozenset({"schema", "signed", "signature"})
BODY_FIELDS = frozenset({"site", "device", "base_version", "base_digest", "version", "result_digest",
                         "issued_at", "nonce", "changes"})
#: Versions stay below 2**53 (exact in JSON and doubles), as for full policies.
MAX_VERSION = 2**53 - 1

_HINTS = typing.get_type_hints(Site)
#: The record tables of a policy: each ``dict[str, SomeDataclass]`` field of Site, in declaration order.
TABLES: dict[str, type] = {
    f.name: typing.get_args(_HINTS[f.name])[1] for f in dataclasses.fields(Site)
    if typing.get_origin(_HINTS[f.name]) is dict and dataclasses.is_dataclass(typing.get_args(_HINTS[f.name])[1])
}
#: Every other field of Site: replaced whole when it changes.
HEAD_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Site) if f.init and f.name not in TABLES)

#: Each table's record fields in declaration order (the order of a record's values in its hash).
_FIELDS: dict[str, list[str]] = {name: [f.name for f in dataclasses.fields(cls) if f.init] for name, cls in TABLES.items()}

_DIGEST = re.compile(r"^[0-9a-f]{64}\Z")
_NONCE = re.compile(r"^[0-9a-f]{16,128}\Z")
_MOD = 2**256
_JSON: dict[str, Any] = {"ensure_ascii": False, "separators": (",", ":"), "allow_nan": False}


class PolicyDeltaError(PolicyError):
    """A policy delta is unusable (malformed, not signed by the site, for another device, or its result is wrong)."""


class DeltaBaseMismatch(PolicyDeltaError):
    """The policy held is not this delta's base (a missed delta, or another base): a full policy is needed."""


# ===================================================================== changes


@dataclass(frozen=True)
class TableChange:
    """One table's changes: records added or changed (key -> the record as the codec encodes it) and keys removed."""

    upsert: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    remove: tuple[str, ...] = ()


@dataclass(frozen=True)
class PolicyChanges:
    """What turns one policy subset into another: head fields replaced whole, tables changed record by record."""

    head: dict[str, Any] = dataclasses.field(default_factory=dict)
    tables: dict[str, TableChange] = dataclasses.field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.head and not self.tables

    @property
    def records(self) -> int:
        """Records touched (upserted or removed), over every table."""
        return sum(len(t.upsert) + len(t.remove) for t in self.tables.values())

    def to_json(self) -> dict[str, Any]:
        return {"head": self.head,
                "tables": {name: {"upsert": t.upsert, "remove": list(t.remove)} for name, t in self.tables.items()}}

    @classmethod
    def from_json(cls, data: Any) -> PolicyChanges:
        """Strict: unknown tables, head fields or keys are refused (an edge never guesses what a change means)."""
        if not isinstance(data, dict) or set(data) != {"head", "tables"}:
            raise PolicyDeltaError("delta changes must be an object with exactly 'head' and 'tables'")
        head, tables = data["head"], data["tables"]
        if not isinstance(head, dict) or not isinstance(tables, dict):
            raise PolicyDeltaError("delta changes 'head' and 'tables' must be objects")
        unknown = sorted(set(head) - set(HEAD_FIELDS))
        if unknown:
            raise PolicyDeltaError(f"delta changes unknown head field(s) {', '.join(map(repr, unknown))}")
        out: dict[str, TableChange] = {}
        for name, change in tables.items():
            if name not in TABLES:
                raise PolicyDeltaError(f"delta changes unknown table {name!r}")
            if not isinstance(change, dict) or set(change) != {"upsert", "remove"}:
                raise PolicyDeltaError(f"delta table {name!r} must have exactly 'upsert' and 'remove'")
            upsert, remove = change["upsert"], change["remove"]
            if not isinstance(upsert, dict) or not all(isinstance(v, dict) for v in upsert.values()):
                raise PolicyDeltaError(f"delta table {name!r}: 'upsert' must map keys to records (objects)")
            if not isinstance(remove, list) or not all(isinstance(k, str) for k in remove) \
                    or len(set(remove)) != len(remove):
                raise PolicyDeltaError(f"delta table {name!r}: 'remove' must be a list of distinct keys")
            both = set(upsert) & set(remove)
            if both:
                raise PolicyDeltaError(f"delta table {name!r} both upserts and removes {sorted(both)[0]!r}")
            out[name] = TableChange(dict(upsert), tuple(remove))
        return cls(dict(head), out)


def _head_value(site: Site, name: str) -> Any:
    return encode_value(getattr(site, name), _HINTS[name], root=f"policy.{name}")


def diff_policy(base: Site, new: Site) -> PolicyChanges:
    """The changes that turn ``base`` into ``new`` (both compiled subsets of the same site and device).

    Records are compared as the model's frozen dataclasses (no serialisation of what did not change); only
    the changed ones are encoded. ``apply_changes(base, diff_policy(base, new))`` equals ``new`` record for
    record (the order of the tables' entries aside, which no decision depends on and the digest ignores).
    """
    head = {name: _head_value(new, name) for name in HEAD_FIELDS if getattr(base, name) != getattr(new, name)}
    tables: dict[str, TableChange] = {}
    for name, cls in TABLES.items():
        old_t, new_t = getattr(base, name), getattr(new, name)
        if old_t == new_t:
            continue
        upsert = {k: encode_value(v, cls, root=f"policy.{name}[{k!r}]")
                  for k, v in new_t.items() if old_t.get(k) != v}
        remove = tuple(k for k in old_t if k not in new_t)
        if upsert or remove:
            tables[name] = TableChange(upsert, remove)
    return PolicyChanges(head, tables)


def apply_changes(base: Site, changes: PolicyChanges) -> Site:
    """``base`` with ``changes`` applied; :class:`PolicyDeltaError` if they do not fit it.

    Removing a key the base does not hold is refused (the changes were made for another base). Every
    record is decoded as strictly as in a full policy.
    """
    replace: dict[str, Any] = {}
    for name, value in changes.head.items():
        if name not in HEAD_FIELDS:
            raise PolicyDeltaError(f"delta changes unknown head field {name!r}")
        try:
            replace[name] = decode_value(value, _HINTS[name], root=f"delta head.{name}")
        except PolicyError as e:
            raise PolicyDeltaError(str(e)) from None
    for name, change in changes.tables.items():
        cls = TABLES.get(name)
        if cls is None:
            raise PolicyDeltaError(f"delta changes unknown table {name!r}")
        table = dict(getattr(base, name))
        for key in change.remove:
            if table.pop(key, None) is None:
                raise PolicyDeltaError(f"delta removes {name}[{key!r}], which the base does not hold")
        for key, record in change.upsert.items():
            try:
                table[key] = decode_value(record, cls, root=f"delta {name}[{key!r}]")
            except PolicyError as e:
                raise PolicyDeltaError(str(e)) from None
        replace[name] = table
    try:
        return dataclasses.replace(base, **replace)
    except (TypeError, ValueError) as e:
        raise PolicyDeltaError(f"delta result refused by Site: {e}") from None


# ===================================================================== digest


#: One encoder, built once: json.dumps with options builds a new one per call, a third of the digest's time.
_ROW = json.JSONEncoder(**_JSON).encode


def _row_hash(key: str, values: list[Any]) -> int:
    """A record's hash: SHA-256 of ``[key, [its fields' encoded values in declaration order]]``."""
    return int.from_bytes(hashlib.sha256(_ROW([key, values]).encode("utf-8")).digest(), "big")


def _values(table: str, record: dict[str, Any]) -> list[Any]:
    """An upserted record's values in declaration order (apply_changes has checked it decodes)."""
    fields = _FIELDS[table]
    if list(record) != fields:  # a record left a defaulted field out, or listed them in another order
        record = encode_value(decode_value(record, TABLES[table]), TABLES[table])
    return list(record.values())


@dataclass(frozen=True)
class PolicyDigest:
    """A policy's digest, kept in parts so a delta updates it per changed record (see the module docstring)."""

    head: dict[str, Any]                 # head field -> its encoded value
    tables: dict[str, tuple[int, int]]   # table -> (records, sum of record hashes mod 2**256)

    @classmethod
    def of(cls, site: Site) -> PolicyDigest:
        """The digest of a whole policy: every record hashed once (the codec's columns, no per-record encode)."""
        encoded = site_to_dict(site)
        head = {name: encoded[name] for name in HEAD_FIELDS}
        tables: dict[str, tuple[int, int]] = {}
        for name in TABLES:
            tab = encoded[name]
            fields, columns = tab["fields"], tab["columns"]
            keys = columns[fields.index(tab["keys"])] if isinstance(tab["keys"], str) else tab["keys"]
            if fields != _FIELDS[name]:
                raise PolicyError(f"policy.{name}: fields {fields} are not the model's {_FIELDS[name]}")
            total = 0
            for key, *values in zip(keys, *columns):
                total += _row_hash(key, values)
            tables[name] = (len(keys), total % _MOD)
        return cls(head, tables)

    def hexdigest(self) -> str:
        body = {"head": self.head, "tables": {name: [n, f"{s:064x}"] for name, (n, s) in self.tables.items()}}
        return hashlib.sha256(json.dumps(body, sort_keys=True, **_JSON).encode("utf-8")).hexdigest()

    def updated(self, base: Site, changes: PolicyChanges) -> PolicyDigest:
        """The digest after ``changes`` are applied to ``base`` (whose digest this is): O(records changed)."""
        head = dict(self.head)
        head.update(changes.head)
        tables = dict(self.tables)
        for name, change in changes.tables.items():
            cls = TABLES[name]
            old = getattr(base, name)
            n, total = tables[name]
            for key in change.remove:
                if key in old:
                    total -= _row_hash(key, list(encode_value(old[key], cls).values()))
                    n -= 1
            for key, record in change.upsert.items():
                if key in old:
                    total -= _row_hash(key, list(encode_value(old[key], cls).values()))
                    n -= 1
                total += _row_hash(key, _values(name, record))
                n += 1
            tables[name] = (n, total % _MOD)
        return PolicyDigest(head, tables)


# ===================================================================== envelope


@dataclass(frozen=True)
class VerifiedDelta:
    """A delta whose signature, site and device have been checked (not yet whether it fits the policy held)."""

    base_version: int
    base_digest: str
    version: int
    result_digest: str
    issued_at: float  # UTC epoch seconds
    nonce: str
    changes: PolicyChanges


def _iso_ms(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _version(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_VERSION:
        raise PolicyDeltaError(f"delta {what} must be an integer from 0 to {MAX_VERSION}, got {value!r}")
    return value


def sign_delta(changes: PolicyChanges, *, site_id: str, device: str, base_version: int, base_digest: str,
               version: int, result_digest: str, issued_at: float, key: Ed25519PrivateKey) -> bytes:
    """The signed ``doorkeep.policy-delta/1`` envelope (UTF-8 JSON bytes, one line)."""
    _version(base_version, "base_version")
    _version(version, "version")
    if version <= base_version:
        raise PolicyDeltaError(f"delta version {version} must be above its base version {base_version}")
    for what, digest in (("base_digest", base_digest), ("result_digest", result_digest)):
        if not isinstance(digest, str) or not _DIGEST.match(digest):
            raise PolicyDeltaError(f"delta {what} must be 64 lowercase hex digits")
    body = {"site": site_id, "device": device, "base_version": base_version, "base_digest": base_digest,
            "version": version, "result_digest": result_digest, "issued_at": _iso_ms(issued_at),
            "nonce": secrets.token_hex(16), "changes": changes.to_json()}
    signed = json.dumps(body, **_JSON)
    signature = base64.b64encode(key.sign(signed.encode("utf-8"))).decode("ascii")
    return json.dumps({"schema": SCHEMA, "signed": signed, "signature": signature}, **_JSON).encode("utf-8")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")


def verify_delta(payload: bytes, key: Ed25519PublicKey, *, site_id: str, device: str) -> VerifiedDelta:
    """Check and open a signed delta; :class:`PolicyDeltaError` saying what was wrong.

    Refused: anything but a ``doorkeep.policy-delta/1`` envelope, a missing or bad signature, a delta for
    another site or device, versions out of range or not increasing, malformed digests or changes.
    """
    try:
        envelope = json.loads(bytes(payload).decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError, TypeError):
        raise PolicyDeltaError("delta payload is not UTF-8 JSON") from None
    if not isinstance(envelope, dict) or envelope.get("schema") != SCHEMA:
        raise PolicyDeltaError(f"delta schema must be {SCHEMA!r}")
    if set(envelope) != ENVELOPE_FIELDS:
        raise PolicyDeltaError(f"delta envelope must have exactly the fields {', '.join(sorted(ENVELOPE_FIELDS))}")
    signed, signature = envelope["signed"], envelope["signature"]
    if not isinstance(signed, str) or not isinstance(signature, str):
        raise PolicyDeltaError("delta 'signed' and 'signature' must be strings")
    try:
        sig = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        raise PolicyDeltaError("delta signature is not base64") from None
    if len(sig) != SIGNATURE_BYTES:
        raise PolicyDeltaError(f"delta signature has {len(sig)} bytes, expected {SIGNATURE_BYTES}")
    try:
        key.verify(sig, signed.encode("utf-8"))
    except (InvalidSignature, UnicodeEncodeError):
        raise PolicyDeltaError("delta signature does not match: not signed by this site's policy key, "
                               "or altered after signing") from None
    try:
        body = json.loads(signed, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise PolicyDeltaError("signed delta body is not JSON") from None
    if not isinstance(body, dict) or set(body) != BODY_FIELDS:
        raise PolicyDeltaError(f"signed delta body must have exactly the fields {', '.join(sorted(BODY_FIELDS))}")
    if body["site"] != site_id:
        raise PolicyDeltaError(f"delta is for site {body['site']!r}, this is site {site_id!r}")
    if body["device"] != device:
        raise PolicyDeltaError(f"delta is for device {body['device']!r}, this is device {device!r}")
    base_version = _version(body["base_version"], "base_version")
    version = _version(body["version"], "version")
    if version <= base_version:
        raise PolicyDeltaError(f"delta version {version} is not above its base version {base_version}")
    for what in ("base_digest", "result_digest"):
        if not isinstance(body[what], str) or not _DIGEST.match(body[what]):
            raise PolicyDeltaError(f"delta {what} must be 64 lowercase hex digits")
    issued = body["issued_at"]
    try:
        stamp = datetime.fromisoformat(issued) if isinstance(issued, str) else None
    except ValueError:
        stamp = None
    if stamp is None or stamp.tzinfo is None:
        raise PolicyDeltaError(f"delta issued_at must be a UTC ISO 8601 time, got {issued!r}")
    if not isinstance(body["nonce"], str) or not _NONCE.match(body["nonce"]):
        raise PolicyDeltaError("delta nonce must be 16-128 lowercase hex digits")
    return VerifiedDelta(base_version=base_version, base_digest=body["base_digest"], version=version,
                         result_digest=body["result_digest"], issued_at=stamp.timestamp(), nonce=body["nonce"],
                         changes=PolicyChanges.from_json(body["changes"]))


def apply_delta(site: Site, version: int, digest: PolicyDigest, delta: VerifiedDelta) -> tuple[Site, PolicyDigest]:
    """The policy after ``delta``, given the one held (``site`` at ``version`` with ``digest``).

    :class:`DeltaBaseMismatch` unless the held version and digest are the delta's base; :class:`PolicyDeltaError`
    if the changes do not fit or the result's digest is not the signed one. Nothing held is modified.
    """
    if delta.base_version != version:
        raise DeltaBaseMismatch(f"delta {delta.version} applies to version {delta.base_version}, "
                                f"this edge holds version {version}")
    held = digest.hexdigest()
    if delta.base_digest != held:
        raise DeltaBaseMismatch(f"delta {delta.version} applies to a version {version} with digest "
                                f"{delta.base_digest[:12]}…, the one held has {held[:12]}…")
    result = apply_changes(site, delta.changes)
    result_digest = digest.updated(site, delta.changes)
    if result_digest.hexdigest() != delta.result_digest:
        raise PolicyDeltaError(f"delta {delta.version} applied to version {version} does not give the signed "
                               "result (digest mismatch): refused, the policy held is kept")
    return result, result_digest
