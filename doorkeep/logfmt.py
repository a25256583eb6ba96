"""Log lines a log shipper can read: ``--log-format json`` writes one JSON object per line.

Why a fixed shape: an operations team feeds these lines to Loki, Elasticsearch or a SIEM and builds queries and
alerts on the field names. So every line carries the same keys (:data:`STABLE_KEYS`, ``null`` when a line is not
about a device, a door or an event), the time is UTC with milliseconds whatever the host's time zone, and what a
call adds beyond them goes under one ``extra`` object rather than new top-level keys. Plain text stays the
default (a person reading a terminal or the journal).

The context fields come from the ``extra=`` of a log call (:func:`log_context` builds it, leaving out what is
unknown), or from defaults a command sets for the whole process (:func:`set_defaults`: ``doorkeep edge`` names
its device once, so every line of that process carries it).

Nothing here decides what is safe to log: call sites never pass card numbers, PINs or keys (only a card's last
four characters or hash prefix), and a test scans a whole demo run's log for the demo's card numbers. A
formatter that masked "anything that looks like a card number" would also mask event ids and hashes.

Pure: a Formatter turns a record into a string; the handler that writes it is set up by the command
(``doorkeep/cli.py``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

from doorkeep.errors import DoorkeepError

#: the values of ``--log-format`` and of :data:`ENV_VAR`; the first is the default
LOG_FORMATS: tuple[str, ...] = ("text", "json")
#: the environment variable that sets the format when ``--log-format`` is not given (the systemd units set it)
ENV_VAR = "DOORKEEP_LOG_FORMAT"
#: the plain text format (unchanged from before JSON logs existed)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: the context a log call may name, each a top-level key of every JSON line
CONTEXT_KEYS: tuple[str, ...] = ("device", "door", "event_id")
#: the keys of every JSON line, in this order
STABLE_KEYS: tuple[str, ...] = ("time", "level", "component", *CONTEXT_KEYS, "message")
#: keys present only when there is something to say: the traceback, and a call's other ``extra=`` fields
OPTIONAL_KEYS: tuple[str, ...] = ("exception", "extra")

#: attributes every LogRecord has (not a call's extras); ``message``/``asctime`` are set by Formatter.format,
#: ``taskName`` by Python 3.12+
_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message", "asctime", "taskName"}
#: extras that only repeat the message for another formatter (uvicorn's coloured copy of its message)
_IGNORED_EXTRAS = frozenset({"color_message"})


class LogFormatError(DoorkeepError, ValueError):
    """A log format that is neither ``text`` nor ``json``."""


def log_context(device: str | None = None, door: str | None = None, event_id: str | None = None) -> dict[str, str]:
    """The ``extra=`` of a log call about a device, a door or an event; unknown ones are left out, so a line's
    field is ``null`` rather than ``"None"``."""
    given = {"device": device, "door": door, "event_id": event_id}
    return {k: str(v) for k, v in given.items() if v is not None}


def parse_log_format(value: str) -> str:
    """``value`` as one of :data:`LOG_FORMATS` (case and spaces forgiven), or :class:`LogFormatError`."""
    chosen = value.strip().lower()
    if chosen not in LOG_FORMATS:
        raise LogFormatError(f"{value!r} is not a log format; use one of {', '.join(LOG_FORMATS)}")
    return chosen


def choose_log_format(flag: str | None, env: Mapping[str, str]) -> tuple[str, str | None]:
    """The format to log in and, when the environment asked for one that does not exist, why it was ignored.

    The flag wins over :data:`ENV_VAR`. A bad environment value falls back to text rather than refusing to
    start: a typo in a unit file must not keep an edge (and its REX buttons and alarms) down."""
    if flag is not None:
        return parse_log_format(flag), None
    raw = env.get(ENV_VAR, "")
    if not raw.strip():
        return LOG_FORMATS[0], None
    try:
        return parse_log_format(raw), None
    except LogFormatError as exc:
        return LOG_FORMATS[0], f"{ENV_VAR}: {exc}; logging as text"


def utc_time(created: float) -> str:
    """``created`` (a LogRecord's epoch seconds) as ISO 8601 UTC with milliseconds: 2026-03-02T08:55:00.120Z."""
    whole = int(created)
    millis = min(999, int((created - whole) * 1000))
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


def _plain(value: Any) -> Any:
    """``value`` if json.dumps takes it as it is, else its ``str``."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return str(value)
    return value


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in a message are escaped), ASCII only so any stderr
    encoding carries it.

    Keys: :data:`STABLE_KEYS` always, then ``exception`` (traceback text) when the record has one and
    ``extra`` (an object) when the call passed fields other than the context ones. A value JSON cannot hold
    (an object, bytes, NaN) is written as its ``str``; a message whose arguments do not fit its format is
    written as the format and the arguments, not dropped."""

    def __init__(self, defaults: Mapping[str, str] | None = None) -> None:
        super().__init__()
        #: context fields of every line this formatter writes unless the call names its own (the process's device)
        self.defaults: dict[str, str] = dict(defaults or {})

    def format(self, record: logging.LogRecord) -> str:
        try:
            message = record.getMessage()
        except Exception:  # a bad format/argument pair in a call: keep the line rather than lose it
            message = f"{record.msg!s} {record.args!r}"
        line: dict[str, Any] = {"time": utc_time(record.created), "level": record.levelname,
                                "component": record.name}
        for key in CONTEXT_KEYS:
            value = getattr(record, key, None)
            if value is None:
                value = self.defaults.get(key)
            line[key] = None if value is None else str(value)
        line["message"] = message
        exception = self._exception_text(record)
        if exception:
            line["exception"] = exception
        extra = {k: _plain(v) for k, v in record.__dict__.items()
                 if k not in _RECORD_ATTRS and k not in CONTEXT_KEYS and k not in _IGNORED_EXTRAS
                 and not k.startswith("_")}
        if extra:
            line["extra"] = extra
        try:
            return json.dumps(line, ensure_ascii=True, allow_nan=False, default=str)
        except (TypeError, ValueError, RecursionError):  # e.g. an extra dict with non-string keys
            if extra:
                line["extra"] = {str(k): str(v) for k, v in extra.items()}
            return json.dumps(line, ensure_ascii=True, allow_nan=False, default=str)

    def _exception_text(self, record: logging.LogRecord) -> str:
        parts = []
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            parts.append(record.exc_text)
        if record.stack_info:
            parts.append(self.formatStack(record.stack_info))
        return "\n".join(parts)


def set_defaults(logger: logging.Logger, **fields: str) -> None:
    """Give every JSON line written by ``logger``'s handlers these context fields unless a call names its own:
    ``doorkeep edge`` names its device once it has read its device file. Text handlers are left alone."""
    unknown = set(fields) - set(CONTEXT_KEYS)
    if unknown:
        raise ValueError(f"not context fields: {sorted(unknown)} (known: {', '.join(CONTEXT_KEYS)})")
    for handler in logger.handlers:
        if isinstance(handler.formatter, JsonFormatter):
            handler.formatter.defaults.update(fields)


__all__ = ["CONTEXT_KEYS", "ENV_VAR", "JsonFormatter", "LOG_FORMATS", "LogFormatError", "OPTIONAL_KEYS",
           "STABLE_KEYS", "TEXT_FORMAT", "choose_log_format", "log_context", "parse_log_format", "set_defaults",
           "utc_time"]
