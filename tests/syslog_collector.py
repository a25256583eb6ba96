"""A real syslog collector for the tests: Debian's rsyslogd in the foreground (``-n``) on a free loopback port.

No system service and no ``/dev/log``: its own generated configuration, pid file and work directory in the test's
directory, only ``imtcp`` loaded, TLS through the ``ossl`` (else ``gtls``) network stream driver with a server
certificate from the test's PKI, and client certificates required and checked by name (``x509/name``, the permitted
peer being the integration certificate doorkeep presents). It writes what it receives to two files: ``raw.log``,
each message as it came (``%rawmsg%``, one per line), and ``parsed.jsonl``, the RFC 5424 fields as rsyslog parsed
them, one JSON object per line. The parsers here (:func:`parse_5424`, :func:`parse_cef`, :func:`unframe`) are
written from RFC 5424 §6, RFC 6587 §3.4.1 and the CEF rules alone, never with server/siem.py's escaping, so a
formatting mistake cannot check itself. scripts/ensure-test-tools installs rsyslog with its TLS drivers; a test calls
:func:`require_rsyslog` and is skipped, saying why, where it is missing.
"""

from __future__ import annotations

import glob
import json
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from simulators.brokers import free_port
from simulators.wait import wait_until

_MODULE_DIRS = ("/usr/lib/*/rsyslog", "/usr/lib/rsyslog", "/usr/lib64/rsyslog")


def rsyslogd() -> str | None:
    return shutil.which("rsyslogd") or next((p for p in ("/usr/sbin/rsyslogd",) if Path(p).exists()), None)


def tls_driver() -> str | None:
    """``ossl`` or ``gtls``: the first network stream driver whose module is installed."""
    for driver in ("ossl", "gtls"):
        if any(glob.glob(f"{d}/lmnsd_{driver}.so") for d in _MODULE_DIRS):
            return driver
    return None


def require_rsyslog() -> tuple[str, str]:
    """The rsyslogd binary and its TLS driver, or skip the test saying what to install."""
    binary = rsyslogd()
    if binary is None:
        pytest.skip("rsyslog is not installed: `make test` installs it (scripts/ensure-test-tools), or "
                    "`apt-get install rsyslog rsyslog-openssl`")
    driver = tls_driver()
    if driver is None:
        pytest.skip("rsyslog has no TLS driver: `apt-get install rsyslog-openssl` (or rsyslog-gnutls)")
    return binary, driver


def _listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port, read from /proc (a probe connection would be a failed TLS
    handshake in rsyslog's log)."""
    try:
        table = Path("/proc/net/tcp").read_text()
    except OSError:
        return False
    want = f":{port:04X}"
    return any(f[1].endswith(want) and f[3] == "0A" for f in (line.split() for line in table.splitlines()[1:])
               if len(f) > 3)


# ----------------------------------------------------------------------- parsers written from the RFCs

_HEADER_RE = re.compile(r"^<(\d{1,3})>1 (\S+) (\S+) (\S+) (\S+) (\S+) (.*)$", re.S)


def parse_5424(line: str) -> dict[str, Any]:
    """RFC 5424 §6: header, one SD-ELEMENT or ``-``, then the message; PARAM-VALUEs unescaped (§6.3.3)."""
    m = _HEADER_RE.match(line)
    assert m, f"not an RFC 5424 message: {line!r}"
    pri, ts, host, app, procid, msgid, rest = m.groups()
    out: dict[str, Any] = {"pri": int(pri), "ts": ts, "hostname": host, "app": app, "procid": procid,
                           "msgid": msgid, "sd_id": None, "params": {}}
    if rest.startswith("- "):
        out["msg"] = rest[2:]
        return out
    assert rest.startswith("["), rest
    i = rest.index(" ")
    out["sd_id"] = rest[1:i]
    params: dict[str, str] = {}
    while rest[i] == " ":
        eq = rest.index("=", i)
        name = rest[i + 1:eq]
        assert rest[eq + 1] == '"', rest[eq:]
        j, value = eq + 2, []
        while rest[j] != '"':
            if rest[j] == "\\" and rest[j + 1] in '"\\]':
                value.append(rest[j + 1])
                j += 2
            else:
                assert rest[j] not in '"]', f"unescaped {rest[j]!r} in {rest!r}"
                value.append(rest[j])
                j += 1
        params[name] = "".join(value)
        i = j + 1
    assert rest[i] == "]", rest[i:]
    out["params"] = params
    out["msg"] = rest[i + 2:]
    return out


def parse_cef(text: str) -> dict[str, Any]:
    """``CEF:0|…|…|…|…|…|…|ext``: header fields split on unescaped ``|``; extension ``key=value`` pairs, a value
    running to the next `` key=``, with ``\\=``, ``\\\\``, ``\\n`` and ``\\r`` unescaped."""
    assert text.startswith("CEF:0|"), text
    fields, cur, i = [], [], 6
    while len(fields) < 6:
        c = text[i]
        if c == "\\":
            cur.append(text[i + 1])
            i += 2
        elif c == "|":
            fields.append("".join(cur))
            cur = []
            i += 1
        else:
            cur.append(c)
            i += 1
    ext: dict[str, str] = {}
    for key, raw in re.findall(r"(\w+)=((?:[^\\=]|\\.)*?)(?=\s\w+=|$)", text[i:]):
        ext[key] = re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r"}.get(m.group(1), m.group(1)), raw)
    vendor, product, version, signature, name, severity = fields
    return {"vendor": vendor, "product": product, "version": version, "signature": signature, "name": name,
            "severity": int(severity), "ext": ext}


def unframe(data: bytes) -> list[str]:
    """RFC 6587 §3.4.1 octet counting: ``LEN SP MSG`` repeated, nothing between."""
    out = []
    while data:
        length, _, rest = data.partition(b" ")
        assert length.isdigit(), data[:20]
        n = int(length)
        assert len(rest) >= n
        out.append(rest[:n].decode("utf-8"))
        data = rest[n:]
    return out


class Rsyslog:
    """rsyslogd receiving RFC 5425 (syslog over TLS, octet-counted) on 127.0.0.1:``port``."""

    def __init__(self, workdir: Path, *, ca: Path, cert: Path, key: Path, peer: str, port: int | None = None) -> None:
        """``ca``: the CA client certificates must chain to; ``cert``/``key``: rsyslog's server certificate (its
        name must match the address doorkeep connects to); ``peer``: the client certificate name it accepts."""
        self.binary, self.driver = require_rsyslog()
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "work").mkdir(exist_ok=True)
        self.port = port or free_port()
        self.ca, self.cert, self.key, self.peer = ca, cert, key, peer
        self.raw = self.dir / "raw.log"
        self.parsed = self.dir / "parsed.jsonl"
        self.log = self.dir / "rsyslogd.out"
        self.proc: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        d = self.dir
        return f"""
global(workDirectory="{d / 'work'}" maxMessageSize="64k"
       defaultNetstreamDriver="{self.driver}"
       defaultNetstreamDriverCAFile="{self.ca}"
       defaultNetstreamDriverCertFile="{self.cert}"
       defaultNetstreamDriverKeyFile="{self.key}")
module(load="imtcp" StreamDriver.Name="{self.driver}" StreamDriver.Mode="1" StreamDriver.AuthMode="x509/name"
       PermittedPeer=["{self.peer}"])
input(type="imtcp" port="{self.port}" address="127.0.0.1")
template(name="raw" type="string" string="%rawmsg%\\n")
template(name="parsed" type="list" option.jsonf="on") {{
  property(outname="pri" name="pri" format="jsonf")
  property(outname="timestamp" name="timereported" dateFormat="rfc3339" format="jsonf")
  property(outname="hostname" name="hostname" format="jsonf")
  property(outname="app_name" name="app-name" format="jsonf")
  property(outname="procid" name="procid" format="jsonf")
  property(outname="msgid" name="msgid" format="jsonf")
  property(outname="sd" name="structured-data" format="jsonf")
  property(outname="msg" name="msg" format="jsonf")
}}
action(type="omfile" file="{self.raw}" template="raw")
action(type="omfile" file="{self.parsed}" template="parsed")
"""

    def start(self, timeout: float = 10.0) -> Rsyslog:
        conf = self.dir / "rsyslog.conf"
        conf.write_text(self.config())
        self.proc = subprocess.Popen([self.binary, "-n", "-f", str(conf), "-i", str(self.dir / "rsyslogd.pid")],
                                     stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        proc = self.proc
        if not wait_until(lambda: _listening(self.port) or proc.poll() is not None, timeout) or \
                not _listening(self.port):
            self.stop()
            raise RuntimeError(f"rsyslogd did not listen on {self.port}: {self.log.read_text(errors='replace')}")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, as a service restart does (rsyslog writes out what it took before it exits)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def raw_lines(self) -> list[str]:
        return self.raw.read_text(encoding="utf-8").splitlines() if self.raw.exists() else []

    def records(self) -> list[dict[str, Any]]:
        """What rsyslog parsed, one dict a message (a torn last line, still being written, is left out)."""
        if not self.parsed.exists():
            return []
        out = []
        for line in self.parsed.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def __enter__(self) -> Rsyslog:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
