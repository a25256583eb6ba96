"""A network that misbehaves, for the fault suite: a Linux network namespace joined to this one by a veth pair.

:class:`NetNamespace` creates a namespace with a unique name, a veth pair (one end in the namespace, one here),
a private link-local /30 on it (``169.254.X.1`` here, ``169.254.X.2`` inside), both ends and the namespace's
loopback up. A process started with :meth:`NetNamespace.exec_args` (``ip netns exec NAME ...``) reaches this
namespace only over that pair, so what is done to the pair is done to its network:

- :meth:`partition` / :meth:`heal`: the root end of the link down / up (a cable pulled at the switch);
- :meth:`loss`: random packet loss in both directions (``iptables -m statistic`` inside the namespace);
- :meth:`delay`: a fixed delay with jitter in both directions, packets held by a small NFQUEUE program
  (:func:`run_delayer`) inside the namespace;
- :meth:`flap`: the link toggled down and up from a thread until a deadline (:class:`Flapper`).

``tc qdisc ... netem`` would do loss and delay in one line, but the kernel of this machine has no ``sch_netem``
(docs/faults.md, "Networks that misbehave"); :func:`netem_available` says whether it is there. Nothing leaves the
machine: the addresses are link-local, on a pair of interfaces that exist only here, and the broker listens
on the root end's address only.

Clean-up always runs (context manager); a namespace or veth left by a crashed earlier run (its creator's pid is
in the name) is removed by the next :meth:`NetNamespace.create`. Everything needs root and iproute2; loss and
delay also need iptables. :class:`NetnsUnavailable` says what is missing.
"""

from __future__ import annotations

import argparse
import fcntl
import heapq
import os
import random
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

PREFIX = "doorkeep-"       # namespaces this module made: doorkeep-PID-N
VETH_PREFIX = "dk"          # veth ends: dkhPID-N (here) and dknPID-N (inside), at most 15 characters
_LOCK = Path("/tmp/doorkeep-netns.lock")  # subnet allocation across concurrent test processes
_counter = iter(range(1, 1_000_000))


class NetnsUnavailable(RuntimeError):
    """This machine cannot build the namespace or apply the impairment; the message says why."""


def _run(args: Sequence[str], *, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise NetnsUnavailable(f"`{' '.join(args)}` failed: {(done.stderr or done.stdout).strip() or done.returncode}")
    return done


def unavailable_reason() -> str | None:
    """Why a namespace cannot be made here (not root, no iproute2), or None."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if shutil.which("ip") is None:
        return "iproute2 is not installed (make test installs it: scripts/ensure-test-tools)"
    return None


def netem_available(dev: str) -> bool:
    """Whether ``tc qdisc ... netem`` works on ``dev`` (the kernel has sch_netem): tried, then removed."""
    done = _run(["tc", "qdisc", "add", "dev", dev, "root", "netem", "delay", "1ms"], check=False)
    if done.returncode == 0:
        _run(["tc", "qdisc", "del", "dev", dev, "root"], check=False)
    return done.returncode == 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale() -> list[str]:
    """Delete namespaces and veth ends of this prefix whose creating process is gone; returns their names."""
    removed: list[str] = []
    for line in _run(["ip", "netns", "list"], check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.fullmatch(rf"{PREFIX}(\d+)-\d+", name)
        if m and not _pid_alive(int(m.group(1))):
            _run(["ip", "netns", "del", name], check=False)
            removed.append(name)
    for line in _run(["ip", "-o", "link", "show"], check=False).stdout.splitlines():
        m = re.match(rf"\d+: ({VETH_PREFIX}h(\d+)-\d+)[@:]", line)
        if m and not _pid_alive(int(m.group(2))):
            _run(["ip", "link", "del", m.group(1)], check=False)
            removed.append(m.group(1))
    return removed


class NetNamespace:
    """One namespace joined to this one by a veth pair; see the module docstring.

    ``host_addr`` is this end's address (where the broker listens for the namespace), ``ns_addr`` the far end's.
    """

    def __init__(self) -> None:
        n = next(_counter)
        self.name = f"{PREFIX}{os.getpid()}-{n}"
        self.host_if = f"{VETH_PREFIX}h{os.getpid()}-{n}"
        self.ns_if = f"{VETH_PREFIX}n{os.getpid()}-{n}"
        if len(self.host_if) > 15:
            raise NetnsUnavailable(f"interface name {self.host_if!r} is longer than 15 characters")
        self.subnet: int | None = None
        self._created = False
        self._delayer: subprocess.Popen[bytes] | None = None
        self._flapper: Flapper | None = None

    @property
    def host_addr(self) -> str:
        return f"169.254.{self.subnet}.1"

    @property
    def ns_addr(self) -> str:
        return f"169.254.{self.subnet}.2"

    # ------------------------------------------------------------ life
    def create(self) -> NetNamespace:
        reason = unavailable_reason()
        if reason:
            raise NetnsUnavailable(reason)
        remove_stale()
        with _LOCK.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two test processes must not pick the same /30
            used = set(re.findall(r"inet 169\.254\.(\d+)\.", _run(["ip", "-o", "addr", "show"]).stdout))
            free = [x for x in range(100, 251) if str(x) not in used and x != 169]  # never the metadata block
            if not free:
                raise NetnsUnavailable("no free 169.254.X.0/30 for a veth pair")
            self.subnet = free[0]
            try:
                _run(["ip", "netns", "add", self.name])
                self._created = True
                _run(["ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if,
                      "netns", self.name])
                _run(["ip", "addr", "add", f"{self.host_addr}/30", "dev", self.host_if])
            except BaseException:
                self.close()
                raise
        try:
            _run(["ip", "link", "set", self.host_if, "up"])
            _run(["ip", "-n", self.name, "addr", "add", f"{self.ns_addr}/30", "dev", self.ns_if])
            _run(["ip", "-n", self.name, "link", "set", self.ns_if, "up"])
            _run(["ip", "-n", self.name, "link", "set", "lo", "up"])
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Undo everything, whatever state it is in (safe to call twice)."""
        if self._flapper is not None:
            self._flapper.stop()
            self._flapper = None
        self.clear_delay()
        if self._created:
            _run(["ip", "link", "del", self.host_if], check=False)  # takes its peer with it
            _run(["ip", "netns", "del", self.name], check=False)
            self._created = False

    def __enter__(self) -> NetNamespace:
        return self.create()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def exec_args(self, *cmd: str) -> list[str]:
        """``cmd`` run inside the namespace (``ip netns exec`` execs it: the Popen's pid is the command's)."""
        return ["ip", "netns", "exec", self.name, *cmd]

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(self.exec_args(*cmd), check=check)

    # ------------------------------------------------------------ impairments
    def partition(self) -> float:
        """Pull the cable: the root end down (the far end loses its carrier); returns when."""
        _run(["ip", "link", "set", self.host_if, "down"])
        return time.time()

    def heal(self) -> float:
        _run(["ip", "link", "set", self.host_if, "up"])
        return time.time()

    def link_up(self) -> bool:
        out = _run(["ip", "-o", "link", "show", self.host_if], check=False).stdout
        return ",UP" in out or "<UP" in out

    def _iptables(self, action: str, rule: list[str]) -> None:
        if shutil.which("iptables") is None:
            raise NetnsUnavailable("iptables is not installed (make test installs it: scripts/ensure-test-tools)")
        self.run("iptables", action, *rule)

    def _both_ways(self, target: list[str]) -> list[list[str]]:
        return [["INPUT", "-i", self.ns_if, *target], ["OUTPUT", "-o", self.ns_if, *target]]

    def loss(self, percent: float) -> None:
        """Drop ``percent`` % of packets at random, each direction on its own (inside the namespace)."""
        self.clear_loss()
        for rule in self._both_ways(["-m", "statistic", "--mode", "random", "--probability", f"{percent / 100:.4f}",
                                     "-j", "DROP", "-m", "comment", "--comment", "doorkeep-loss"]):
            self._iptables("-A", rule)

    def clear_loss(self) -> None:
        for chain in ("INPUT", "OUTPUT"):
            rules = self.run("iptables", "-S", chain, check=False).stdout.splitlines()
            for line in rules:
                if "doorkeep-loss" in line and line.startswith("-A "):
                    self.run("iptables", "-D", *line.split()[1:], check=False)

    def delay(self, ms: float, jitter_ms: float = 0.0, *, queue: int = 7) -> None:
        """Hold every packet on the link ``ms`` ± ``jitter_ms`` in each direction (NFQUEUE, see :func:`run_delayer`)."""
        self.clear_delay()
        cmd = self.exec_args(sys.executable, "-m", "simulators.netns", "delay", "--queue", str(queue),
                             "--ms", str(ms), "--jitter-ms", str(jitter_ms))
        self._delayer = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         cwd=Path(__file__).resolve().parent.parent)
        ready = self._delayer.stdout.readline() if self._delayer.stdout else b""  # "bound\n" once it holds the queue
        if ready.strip() != b"bound":
            err = self._delayer.stderr.read().decode(errors="replace") if self._delayer.stderr else ""
            self.clear_delay()
            raise NetnsUnavailable(f"the NFQUEUE delayer did not start: {err.strip() or ready!r}")
        for rule in self._both_ways(["-j", "NFQUEUE", "--queue-num", str(queue), "-m", "comment", "--comment",
                                     "doorkeep-delay"]):
            self._iptables("-A", rule)

    def clear_delay(self) -> None:
        if self._created:
            for chain in ("INPUT", "OUTPUT"):
                for line in self.run("iptables", "-S", chain, check=False).stdout.splitlines():
                    if "doorkeep-delay" in line and line.startswith("-A "):
                        self.run("iptables", "-D", *line.split()[1:], check=False)
        if self._delayer is not None:
            # The rules are gone first, so the queued packets it still holds are all that it releases.
            self._delayer.terminate()
            try:
                self._delayer.wait(5)
            except subprocess.TimeoutExpired:
                self._delayer.kill()
                self._delayer.wait(5)
            self._delayer = None

    def flap(self, down_s: float, up_s: float, duration_s: float) -> Flapper:
        """Toggle the link down ``down_s``, up ``up_s``, … for ``duration_s``; it is left up at the end."""
        self._flapper = Flapper(self, down_s, up_s, duration_s).start()
        return self._flapper


class Flapper:
    """A thread that toggles a namespace's link until its deadline, then leaves it up."""

    def __init__(self, ns: NetNamespace, down_s: float, up_s: float, duration_s: float) -> None:
        self.ns = ns
        self.down_s, self.up_s, self.duration_s = down_s, up_s, duration_s
        self.toggles: list[tuple[float, str]] = []   # (wall time, "down" | "up")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="doorkeep-netns-flap", daemon=True)

    def start(self) -> Flapper:
        self._thread.start()
        return self

    def _loop(self) -> None:
        deadline = time.monotonic() + self.duration_s
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                self.toggles.append((self.ns.partition(), "down"))
                if self._stop.wait(min(self.down_s, max(0.0, deadline - time.monotonic()))):
                    break
                self.toggles.append((self.ns.heal(), "up"))
                self._stop.wait(min(self.up_s, max(0.0, deadline - time.monotonic())))
        finally:
            if not self.toggles or self.toggles[-1][1] != "up":
                self.toggles.append((self.ns.heal(), "up"))

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        self.join(10)

    @property
    def downs(self) -> int:
        return sum(1 for _, what in self.toggles if what == "down")


# ---------------------------------------------------------------- the delayer (NFQUEUE over raw netlink)

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS = 1, 2
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NF_ACCEPT = 1
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2


def _attr(kind: int, payload: bytes) -> bytes:
    body = struct.pack("=HH", 4 + len(payload), kind) + payload
    return body + b"\0" * (-len(body) % 4)


def _msg(msg_type: int, flags: int, queue: int, attrs: bytes, seq: int = 0) -> bytes:
    nfgen = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue))
    body = nfgen + attrs
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg_type, flags, seq, 0) + body


def _packet_ids(data: bytes) -> list[int]:
    """The packet ids of the NFQNL_MSG_PACKET messages in one netlink read; raises on a netlink error."""
    ids: list[int] = []
    off = 0
    while off + 16 <= len(data):
        length, mtype, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, off)
        if length < 16:
            break
        if mtype == NLMSG_ERROR:
            (err,) = struct.unpack_from("=i", data, off + 16)
            if err != 0:
                raise OSError(-err, f"nfnetlink_queue: {os.strerror(-err)}")
        elif mtype == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
            a = off + 16 + 4  # past nlmsghdr and nfgenmsg
            end = off + length
            while a + 4 <= end:
                alen, akind = struct.unpack_from("=HH", data, a)
                if alen < 4:
                    break
                if akind & 0x3FFF == NFQA_PACKET_HDR:
                    ids.append(struct.unpack_from("!I", data, a + 4)[0])
                a += alen + (-alen % 4)
        off += length + (-length % 4)
    return ids


def run_delayer(queue: int, ms: float, jitter_ms: float, *, ready: Callable[[], None] | None = None) -> None:
    """Hold every packet of NFQUEUE ``queue`` for ``ms`` ± ``jitter_ms``, then accept it; until SIGTERM.

    Release times never go backwards, so the link delays without reordering (netem with jitter would
    reorder; TCP copes with either). Copies only the packet's metadata, never its bytes. On the way out
    (SIGTERM, after :meth:`NetNamespace.clear_delay` removed the rules) the packets still held are accepted
    at once: dropping them would add a TCP retransmission to the end of every delay.
    """
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((0, 0))
    config = [
        _msg(NFQNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, queue,
             _attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, 0)), seq=1),
        _msg(NFQNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, queue,
             _attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META)), seq=2),
    ]
    for m in config:
        sock.send(m)
        _packet_ids(sock.recv(65536))  # the ACK; raises on an error (queue taken, no permission)
    if ready is not None:
        ready()
    rng = random.Random()
    held: list[tuple[float, int]] = []
    last = 0.0

    def accept(pid: int) -> None:
        sock.send(_msg(NFQNL_MSG_VERDICT, NLM_F_REQUEST, queue,
                       _attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, pid))))

    try:
        while True:
            timeout = max(0.0, held[0][0] - time.monotonic()) if held else None
            readable, _, _ = select.select([sock], [], [], timeout)
            if readable:
                now = time.monotonic()
                for pid in _packet_ids(sock.recv(262144)):
                    at = max(last, now + (ms + rng.uniform(-jitter_ms, jitter_ms)) / 1000.0)
                    last = at
                    heapq.heappush(held, (at, pid))
            now = time.monotonic()
            while held and held[0][0] <= now:
                accept(heapq.heappop(held)[1])
    finally:
        while held:
            accept(heapq.heappop(held)[1])
        sock.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulators.netns", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("delay", help="hold the packets of an NFQUEUE queue (run inside the namespace)")
    d.add_argument("--queue", type=int, required=True)
    d.add_argument("--ms", type=float, required=True)
    d.add_argument("--jitter-ms", type=float, default=0.0)
    sub.add_parser("clean", help="remove namespaces and veth pairs left by crashed runs")
    args = parser.parse_args(argv)
    if args.cmd == "clean":
        for name in remove_stale():
            print(name)
        return 0

    def ready() -> None:
        sys.stdout.write("bound\n")
        sys.stdout.flush()

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))  # so run_delayer releases what it holds
    try:
        run_delayer(args.queue, args.ms, args.jitter_ms, ready=ready)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
