"""JSON log lines (doorkeep/logfmt.py, docs/operations.md "Logs"): the fields a log shipper's queries rest on, the
option that picks the format, and no log call that hands a card number, PIN or key to a log line.

The whole-run check (every line of a demo run parses, and none holds a demo card's number) is
tests/e2e/test_json_logs.py."""

from __future__ import annotations

import ast
import io
import json
import logging
import math
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from doorkeep import cli
from doorkeep.logfmt import (
    CONTEXT_KEYS, ENV_VAR, OPTIONAL_KEYS, STABLE_KEYS, JsonFormatter, LogFormatError, choose_log_format, log_context,
    parse_log_format, set_defaults, utc_time,
)

ROOT = Path(__file__).resolve().parents[2]
UTC_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, io.StringIO, JsonFormatter]]:
    """A logger of its own, outside the logging tree (nothing of the root's or pytest's handlers), writing JSON
    lines into a buffer."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    formatter = JsonFormatter()
    handler.setFormatter(formatter)
    logger = logging.Logger("doorkeep.test.logfmt", logging.DEBUG)
    logger.addHandler(handler)
    yield logger, buffer, formatter


def lines(buffer: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


# ------------------------------------------------------------------ the line's shape


def test_a_plain_line_has_exactly_the_stable_keys_in_order_with_null_context(capture) -> None:
    logger, buffer, _ = capture
    logger.warning("broker %s not reachable yet", "mqtts://127.0.0.1:8883")
    [line] = lines(buffer)
    assert tuple(line) == STABLE_KEYS == ("time", "level", "component", "device", "door", "event_id", "message")
    assert line["level"] == "WARNING"
    assert line["component"] == "doorkeep.test.logfmt"
    assert line["message"] == "broker mqtts://127.0.0.1:8883 not reachable yet"
    assert (line["device"], line["door"], line["event_id"]) == (None, None, None)
    assert UTC_MS.match(str(line["time"])), line["time"]


def test_context_fields_come_from_the_calls_extra(capture) -> None:
    logger, buffer, _ = capture
    logger.info("door %s: forced_open", "lobby_out", extra=log_context("pi-lobby", "lobby_out", "e1"))
    logger.info("refused", extra=log_context(device="pi-lab"))
    first, second = lines(buffer)
    assert (first["device"], first["door"], first["event_id"]) == ("pi-lobby", "lobby_out", "e1")
    assert (second["device"], second["door"], second["event_id"]) == ("pi-lab", None, None)
    assert tuple(first) == tuple(second) == STABLE_KEYS, "context never adds keys or an 'extra' object"


def test_log_context_leaves_out_what_is_unknown() -> None:
    assert log_context() == {}
    assert log_context("pi-lobby", None, "e1") == {"device": "pi-lobby", "event_id": "e1"}
    assert log_context(door=7) == {"door": "7"}  # type: ignore[arg-type]  # always text


def test_process_defaults_fill_the_device_and_a_calls_own_wins(capture) -> None:
    logger, buffer, formatter = capture
    set_defaults(logger, device="pi-floor7")
    assert formatter.defaults == {"device": "pi-floor7"}
    logger.info("no context")
    logger.info("another device", extra=log_context("pi-lobby"))
    first, second = lines(buffer)
    assert first["device"] == "pi-floor7"
    assert second["device"] == "pi-lobby"
    with pytest.raises(ValueError, match="not context fields"):
        set_defaults(logger, card="0F00A1B2C3")


def test_set_defaults_leaves_text_handlers_alone() -> None:
    logger = logging.Logger("doorkeep.test.logfmt.text")
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    set_defaults(logger, device="pi-lobby")  # no error, nothing to change
    assert type(handler.formatter) is logging.Formatter


def test_time_is_utc_with_milliseconds_whatever_the_hosts_time_zone(capture, monkeypatch) -> None:
    logger, buffer, _ = capture
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        record = logger.makeRecord(logger.name, logging.INFO, __file__, 1, "at a known instant", (), None)
        record.created, record.msecs = 1767268800.25, 250.0  # 2026-01-01T12:00:00.250Z, 07:00 in New York
        logger.handle(record)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert lines(buffer)[0]["time"] == "2026-01-01T12:00:00.250Z"
    assert utc_time(0.0) == "1970-01-01T00:00:00.000Z"
    assert utc_time(1767268800.9999) == "2026-01-01T12:00:00.999Z", "never rounded up to a 1000th millisecond"


def test_an_exception_adds_its_traceback_and_nothing_else(capture) -> None:
    logger, buffer, _ = capture
    try:
        raise RuntimeError("relay driver gone")
    except RuntimeError:
        logger.exception("door %s: could not de-energise the relay", "lab", extra=log_context(door="lab"))
    [line] = lines(buffer)
    assert tuple(line) == (*STABLE_KEYS, "exception")
    assert line["message"] == "door lab: could not de-energise the relay"
    assert "Traceback" in str(line["exception"]) and "RuntimeError: relay driver gone" in str(line["exception"])
    assert line["door"] == "lab"


def test_stack_info_is_exception_text_too(capture) -> None:
    logger, buffer, _ = capture
    logger.info("where am I", stack_info=True)
    [line] = lines(buffer)
    assert "Stack (most recent call last)" in str(line["exception"])


def test_unknown_extras_go_under_extra_and_odd_values_become_text(capture) -> None:
    logger, buffer, _ = capture

    class Opaque:
        def __str__(self) -> str:
            return "opaque!"

    circular: list[object] = []
    circular.append(circular)
    logger.info("odd extras", extra={"count": 3, "ok": True, "ratio": 0.5, "names": ["a", "b"], "obj": Opaque(),
                                     "raw": b"\x00\x01", "nan": math.nan, "loop": circular, "tags": {"x"},
                                     "color_message": "\x1b[32mcoloured\x1b[0m"})
    logger.info("odd keys", extra={"by_pair": {(1, 2): "tuple key"}})
    first, second = lines(buffer)
    assert tuple(first) == (*STABLE_KEYS, "extra")
    extra = first["extra"]
    assert isinstance(extra, dict)
    assert extra["count"] == 3 and extra["ok"] is True and extra["ratio"] == 0.5 and extra["names"] == ["a", "b"]
    assert extra["obj"] == "opaque!"
    assert extra["raw"] == str(b"\x00\x01")
    assert extra["nan"] == "nan", "NaN is not JSON: written as text"
    assert extra["tags"] == "{'x'}"
    assert isinstance(extra["loop"], str)
    assert "color_message" not in extra, "uvicorn's coloured copy of its message is not repeated"
    assert second["extra"] == {"by_pair": str({(1, 2): "tuple key"})}


def test_one_record_is_one_ascii_line(capture) -> None:
    logger, buffer, _ = capture
    logger.info("first line\nsecond line \u2014 Zoë", extra={"note": "a\nb"})
    text = buffer.getvalue()
    assert text.count("\n") == 1 and text.isascii()
    [line] = lines(buffer)
    assert line["message"] == "first line\nsecond line \u2014 Zoë"


def test_a_call_whose_arguments_do_not_fit_its_format_still_gives_a_line(capture) -> None:
    logger, buffer, _ = capture
    logger.info("door %s: %d", "lab", "not a number")
    [line] = lines(buffer)
    assert "door %s: %d" in str(line["message"]) and "not a number" in str(line["message"])


def test_every_line_key_is_stable_or_optional(capture) -> None:
    logger, buffer, _ = capture
    logger.info("a")
    logger.info("b", extra={"x": 1, **log_context("d", "door", "e")})
    try:
        1 / 0
    except ZeroDivisionError:
        logger.exception("c")
    for line in lines(buffer):
        assert tuple(line)[:len(STABLE_KEYS)] == STABLE_KEYS
        assert set(line) - set(STABLE_KEYS) <= set(OPTIONAL_KEYS)
    assert set(CONTEXT_KEYS) < set(STABLE_KEYS)


# ------------------------------------------------------------------ choosing the format


def test_the_flag_beats_the_environment_which_beats_the_default() -> None:
    assert choose_log_format(None, {}) == ("text", None)
    assert choose_log_format(None, {ENV_VAR: ""}) == ("text", None)
    assert choose_log_format(None, {ENV_VAR: "json"}) == ("json", None)
    assert choose_log_format(None, {ENV_VAR: " JSON "}) == ("json", None)
    assert choose_log_format("text", {ENV_VAR: "json"}) == ("text", None)
    assert choose_log_format("json", {ENV_VAR: "bogus"}) == ("json", None)


def test_a_bad_environment_value_falls_back_to_text_and_says_why() -> None:
    chosen, why = choose_log_format(None, {ENV_VAR: "jsn"})
    assert chosen == "text"
    assert why is not None and ENV_VAR in why and "'jsn'" in why and "text, json" in why
    with pytest.raises(LogFormatError):
        parse_log_format("xml")


@pytest.mark.parametrize("argv, expected", [
    (["demo"], None),
    (["--log-format", "json", "demo"], "json"),
    (["demo", "--log-format", "json"], "json"),
    (["--log-format", "json", "demo", "--log-format", "text"], "text"),
    (["server", "--site", "x", "--log-format", "json"], "json"),
    (["desk", "--site", "x", "--log-format", "json"], "json"),
    (["edge", "--device", "x.toml", "--log-format", "json"], "json"),
    (["sim", "run", "s.yaml", "--log-format", "json"], "json"),
    (["sim", "camera", "--log-format", "json"], "json"),
    (["--log-format", "json", "config", "check", "x"], "json"),
])
def test_log_format_is_accepted_before_the_command_and_after_a_long_running_one(argv, expected) -> None:
    assert cli.build_parser().parse_args(argv).log_format == expected


def test_an_unknown_log_format_flag_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.build_parser().parse_args(["demo", "--log-format", "xml"])
    assert exc.value.code == 2
    assert "invalid choice: 'xml'" in capsys.readouterr().err


def bare_root(monkeypatch) -> logging.Logger:
    """The root logger without pytest's capture handlers, so ``cli.main``'s basicConfig takes effect; undone after
    the test. Called in the test itself: pytest adds its handlers for the call after the fixtures ran."""
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", root.level)
    return root


@pytest.mark.parametrize("flag, env, formatter", [
    ([], None, logging.Formatter),
    (["--log-format", "json"], None, JsonFormatter),
    ([], "json", JsonFormatter),
    (["--log-format", "text"], "json", logging.Formatter),
])
def test_main_sets_up_the_chosen_format(monkeypatch, tmp_path, flag, env, formatter) -> None:
    if env is None:
        monkeypatch.delenv(ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(ENV_VAR, env)
    root = bare_root(monkeypatch)
    cli.main([*flag, "config", "check", str(tmp_path / "missing.toml")])
    [handler] = root.handlers
    assert type(handler.formatter) is formatter


def test_main_with_a_bad_environment_value_logs_text_and_says_so(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setenv(ENV_VAR, "yaml")
    root = bare_root(monkeypatch)
    cli.main(["config", "check", str(tmp_path / "missing.toml")])
    [handler] = root.handlers
    assert type(handler.formatter) is logging.Formatter
    err = capsys.readouterr().err
    assert re.search(rf"WARNING doorkeep: {ENV_VAR}: 'yaml' is not a log format; use one of text, json; logging as "
                     "text", err), err


# ------------------------------------------------------------------ the systemd units


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "firmware-config" / "systemd").glob("*.service")))
def test_every_unit_sets_a_log_format(name: str) -> None:
    """The units carry the setting, so switching a machine to JSON is one `systemctl edit` line."""
    text = (ROOT / "firmware-config" / "systemd" / name).read_text()
    values = re.findall(rf"^Environment={ENV_VAR}=(\S+)$", text, re.M)
    assert values == ["text"], f"{name}: Environment={ENV_VAR}=text (json when a log shipper reads the journal)"


# ------------------------------------------------------------------ nothing secret reaches a log call

LOG_METHODS = {"debug", "info", "warning", "warn", "error", "exception", "critical", "log"}
#: names that hold a secret whatever the object: a PIN, a password, an OSDP key, a token
SECRET_NAMES = {"pin", "pin_code", "card_number", "password", "passphrase", "secret", "scbk", "token", "otp"}
#: objects whose ``.number`` is a card number
CARD_HOLDERS = re.compile(r"(^|_)(card|cred|credential|badge|seed|c|read)$")


def _masked(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """``x[-4:]`` or ``last4(x)`` around ``node``: only the last four characters reach the line."""
    up = parents.get(node)
    if isinstance(up, ast.Subscript) and up.value is node and isinstance(up.slice, ast.Slice):
        lower = up.slice.lower
        return isinstance(lower, ast.UnaryOp) and isinstance(lower.op, ast.USub) and \
            isinstance(lower.operand, ast.Constant) and lower.operand.value <= 4 and up.slice.upper is None
    return isinstance(up, ast.Call) and isinstance(up.func, ast.Name) and up.func.id == "last4"


def secret_log_arguments(root: Path) -> list[str]:
    """Every log call argument in the production packages that names a card number, a PIN or a key, unmasked."""
    found = []
    for package in ("doorkeep", "edge", "server", "simulators"):
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            tree = ast.parse(path.read_text(), filename=rel)
            parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
            for call in ast.walk(tree):
                if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                        and call.func.attr in LOG_METHODS and "log" in ast.unparse(call.func.value).lower()):
                    continue
                args = [*call.args[1:], *(k.value for k in call.keywords if k.arg == "extra")]
                for arg in args:
                    for node in ast.walk(arg):
                        name = node.id if isinstance(node, ast.Name) else \
                            node.attr if isinstance(node, ast.Attribute) else None
                        if name is None:
                            continue
                        holder = ast.unparse(node.value).split(".")[-1] if isinstance(node, ast.Attribute) else ""
                        secret = name.lower() in SECRET_NAMES or (name == "number" and CARD_HOLDERS.search(holder))
                        if secret and not _masked(node, parents):
                            found.append(f"{rel}:{call.lineno} {ast.unparse(node)}")
    return found


def test_no_log_call_is_handed_a_card_number_pin_or_key() -> None:
    bad = secret_log_arguments(ROOT)
    assert not bad, ("these log calls pass a card number, PIN or key; log its last four characters "
                     "(number[-4:], last4()) or its hash prefix instead:\n" + "\n".join(bad))


def test_the_secret_scan_finds_a_leak_and_spares_last_four(tmp_path: Path) -> None:
    (tmp_path / "edge").mkdir()
    (tmp_path / "edge" / "leaky.py").write_text(
        "def f(log, card, cred, pin, rev, self):\n"
        "    log.info('card %s', card.number)\n"
        "    log.warning('pin %s typed', pin)\n"
        "    self._log.debug('x', extra={'n': cred.number})\n"
        "    log.info('card …%s', card.number[-4:])\n"
        "    log.info('card …%s', last4(card.number))\n"
        "    log.info('revision %s', rev.number)\n"
        "    log.info('card %s', card.number[:4])\n")
    found = secret_log_arguments(tmp_path)
    assert [f.split(" ")[0] for f in found] == ["edge/leaky.py:2", "edge/leaky.py:3", "edge/leaky.py:4",
                                               "edge/leaky.py:8"], found

