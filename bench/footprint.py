"""Edge footprint: RSS, threads and idle CPU of one ``doorkeep edge`` process (issue 15).

Run from the project root:

    .venv/bin/python bench/footprint.py [--seconds 30] [--warmup 10] [--json PATH] [--plain]
                                        [--py-spy PATH]

What runs: a private Mosquitto speaking mutual TLS as shipped (``--plain`` for plain MQTT), the server
in this process (so its CPU never counts against the edge), and the real CLI, ``.venv/bin/doorkeep edge
--device FILE``, as a child process: the demo's ``pi-lobby`` with its two doors (EM4100 readers on ptys
opened here, locks, contacts, REX and tamper on gpiozero's mock pins) and one camera, the MJPEG camera
simulator at 1280x720, 10 fps, with the demo's privacy mask. Once the edge is online with its signed
policy (and, with the camera, once it reports the camera online), it idles for ``--warmup`` seconds, then
is sampled once a second for ``--seconds``: VmRSS and Threads from /proc/PID/status, utime+stime from
/proc/PID/stat (CPU as a share of one core), and every thread's own CPU from /proc/PID/task/TID/stat.

The same run is then repeated with the camera removed from the device file, so the camera's share of
RSS, threads and CPU is the difference of the two rows.

Threads are named from /proc/PID/task/TID/comm; Python 3.11 does not give its threads a kernel name,
so where py-spy is available (``--py-spy``, default: on PATH) one ``py-spy dump`` after the window
maps each thread id to its Python thread name. Threads no Python name covers are native (OpenCV's and
FFmpeg's workers, for instance).

A benchmark reports; it does not judge. The targets are printed beside the figures; the exit status
is non-zero only when the edge could not be measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from doorkeep.config import load_site_dir
from doorkeep.envelope import SnapshotKeys
from server.app import Server, bootstrap
from simulators.brokers import MosquittoBroker
from simulators.camera import CameraSimulator
from simulators.reader import ReaderSimulator
from simulators.site import DEMO_SITE
from simulators.wait import wait_until

DEVICE = "pi-lobby"
SITE = "demo"
DOORS = ("lobby_in", "lobby_out")
WIDTH, HEIGHT, FPS = 1280, 720, 10.0

TARGET_RSS_MB = 120.0
TARGET_THREADS = 4
TARGET_CPU_PCT = 5.0

TICK = os.sysconf("SC_CLK_TCK")
START_TIMEOUT_S = 60.0


# ----------------------------------------------------------------- /proc

def read_status(pid: int) -> tuple[float, int]:
    """(VmRSS in MB, Threads) from /proc/PID/status."""
    rss_kb, threads = 0, 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kb = int(line.split()[1])
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    return rss_kb / 1024, threads


def cpu_seconds(stat_path: Path) -> float:
    """utime + stime of a process or thread, in seconds, from its stat file.

    The command name in field 2 may hold spaces and parentheses, so the fields are counted from the
    last ``)``: utime and stime are fields 14 and 15, the 12th and 13th after it.
    """
    fields = stat_path.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """tid -> (comm, CPU seconds) for every thread alive now; threads that end meanwhile are skipped."""
    out: dict[int, tuple[str, float]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            comm = (task / "comm").read_text().strip()
            out[int(task.name)] = (comm, cpu_seconds(task / "stat"))
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out


_PYSPY_THREAD = re.compile(r'^Thread (\d+|0x[0-9A-Fa-f]+) \((\w+)\)(?:: "(.*)")?')


def python_thread_names(pid: int, py_spy: str | None) -> dict[int, str]:
    """tid -> Python thread name from one ``py-spy dump`` (empty when py-spy is missing or refused)."""
    if py_spy is None:
        return {}
    try:
        done = subprocess.run([py_spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    names: dict[int, str] = {}
    for line in done.stdout.splitlines():
        m = _PYSPY_THREAD.match(line)
        if m and not m.group(1).startswith("0x"):
            names[int(m.group(1))] = m.group(3) or "?"
    return names


# ----------------------------------------------------------------- figures

@dataclass
class ThreadFigure:
    tid: int
    comm: str
    python_name: str | None
    cpu_pct: float  # share of one core over the window


@dataclass
class Phase:
    """One edge process sampled for a window."""

    name: str
    seconds: float = 0.0
    rss_mb: list[float] = field(default_factory=list)
    threads: list[int] = field(default_factory=list)
    cpu_pct_per_s: list[float] = field(default_factory=list)
    cpu_pct: float = 0.0  # over the whole window
    thread_figures: list[ThreadFigure] = field(default_factory=list)
    camera_frames_per_s: float | None = None

    @property
    def rss_median(self) -> float:
        return statistics.median(self.rss_mb)

    @property
    def rss_max(self) -> float:
        return max(self.rss_mb)

    @property
    def threads_max(self) -> int:
        return max(self.threads)

    @property
    def threads_median(self) -> float:
        return statistics.median(self.threads)

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "seconds": self.seconds, "rss_mb_median": self.rss_median,
                "rss_mb_max": self.rss_max, "threads_median": self.threads_median, "threads_max": self.threads_max,
                "cpu_pct": self.cpu_pct, "cpu_pct_per_s_median": statistics.median(self.cpu_pct_per_s),
                "cpu_pct_per_s_max": max(self.cpu_pct_per_s), "camera_frames_per_s": self.camera_frames_per_s,
                "threads": [asdict(t) for t in self.thread_figures], "rss_mb": self.rss_mb,
                "thread_counts": self.threads, "cpu_pct_per_s": self.cpu_pct_per_s}


def sample(pid: int, name: str, seconds: float, py_spy: str | None,
           on_tick: Callable[[], None] = lambda: None) -> Phase:
    """Sample ``pid`` once a second for ``seconds``, calling ``on_tick`` after each sample."""
    phase = Phase(name)
    pace = threading.Event()  # pacing of the sampler, not a wait for the system
    t0 = time.monotonic()
    c0 = cpu_seconds(Path(f"/proc/{pid}/stat"))
    per_thread0 = thread_cpu(pid)
    prev_t, prev_c = t0, c0
    k = 0
    while True:
        k += 1
        pace.wait(max(0.0, t0 + k - time.monotonic()))
        now = time.monotonic()
        cpu = cpu_seconds(Path(f"/proc/{pid}/stat"))
        rss, threads = read_status(pid)
        phase.rss_mb.append(rss)
        phase.threads.append(threads)
        phase.cpu_pct_per_s.append(100.0 * (cpu - prev_c) / (now - prev_t))
        prev_t, prev_c = now, cpu
        on_tick()
        if now - t0 >= seconds - 1e-3:
            break
    per_thread1 = thread_cpu(pid)
    phase.seconds = prev_t - t0
    phase.cpu_pct = 100.0 * (prev_c - c0) / phase.seconds
    names = python_thread_names(pid, py_spy)
    for tid, (comm, c1) in sorted(per_thread1.items()):
        before = per_thread0.get(tid, (comm, 0.0))[1]  # a thread born in the window counts from zero
        phase.thread_figures.append(ThreadFigure(tid, comm, names.get(tid), 100.0 * (c1 - before) / phase.seconds))
    return phase


# ----------------------------------------------------------------- the stack

def device_toml(broker_cfg: Any, readers: dict[str, ReaderSimulator], camera_url: str | None, tmp: Path,
                pub: Path) -> str:
    """The demo's pi-lobby, pointed at the simulators: two doors, and the camera when ``camera_url`` is set."""
    lines = [f'device = "{DEVICE}"', f'site = "{SITE}"', f'site_file = "{DEMO_SITE / "site.toml"}"',
             f'policy_key_file = "{pub}"', f'state_dir = "{tmp / "state"}"', 'gpio_factory = "mock"', "",
             "[broker]", f'url = "{broker_cfg.url}"']
    if broker_cfg.tls:
        lines += [f'ca_file = "{broker_cfg.ca_file}"', f'cert_file = "{broker_cfg.cert_file}"',
                  f'key_file = "{broker_cfg.key_file}"']
    else:
        lines.append("allow_plain_mqtt = true")
    lines.append("keepalive = 30")
    camera = 'camera = "lobby"' if camera_url else ""
    if camera_url:
        lines += ["", "[cameras.lobby]", f'source = "{camera_url}"', f"fps = {FPS:g}", "buffer_seconds = 2",
                  "jpeg_quality = 85", "privacy_masks = [[[0.70, 0.00], [1.00, 0.00], [1.00, 0.30], [0.70, 0.30]]]"]
    lines += ["", "[doors.lobby_in]", camera,
              f'reader = {{ url = "{readers["lobby_in"].path}", protocol = "em4100", baudrate = 9600 }}',
              'lock = { pin = 17, active_high = true, fail = "secure" }',
              'contact = { pin = 27, open_level = "high" }', "rex = { pin = 22, active_low = true }",
              "tamper = { pin = 23, active_low = true }",
              "", "[doors.lobby_out]", camera,
              f'reader = {{ url = "{readers["lobby_out"].path}", protocol = "em4100", baudrate = 9600 }}',
              'lock = { pin = 5, active_high = true, fail = "secure" }',
              'contact = { pin = 6, open_level = "high" }', "tamper = { pin = 24, active_low = true }"]
    return "\n".join(line for line in lines if line) + "\n"


class Stack:
    """Broker, server, readers and camera simulator; edge processes come and go on top of it."""

    def __init__(self, tmp: Path, *, plain: bool) -> None:
        self.tmp = tmp
        self.key = secrets.token_bytes(32)
        signing = Ed25519PrivateKey.generate()
        self.pub = tmp / "policy-signing.pub"
        self.pub.write_bytes(signing.public_key().public_bytes(serialization.Encoding.PEM,
                                                               serialization.PublicFormat.SubjectPublicKeyInfo))
        self.broker = (MosquittoBroker() if plain else
                       MosquittoBroker(tls_sites=[SITE], clients=["server", DEVICE])).start()
        self.server: Server = bootstrap(load_site_dir(DEMO_SITE), tmp / "server",
                                        self.broker.client_config("server"), key=self.key, signing_key=signing,
                                        snapshot_keys=SnapshotKeys.generate())
        self.server.start(wait_s=30)
        self.readers = {d: ReaderSimulator("em4100") for d in DOORS}
        self.camera = CameraSimulator(width=WIDTH, height=HEIGHT, fps=FPS)
        self.camera.start()
        self.doorkeep = shutil.which("doorkeep", path=str(Path(sys.executable).parent)) or "doorkeep"

    def edge_state(self) -> dict[str, Any]:
        raw = self.server.bus.states.get(DEVICE)
        try:
            return json.loads(raw) if raw else {}
        except ValueError:
            return {}

    def note_frames(self, seen: dict[str, int]) -> None:
        """Record the camera's frame count from the edge's latest state message, by its timestamp."""
        state = self.edge_state()
        cam = state.get("cameras", {}).get("lobby")
        if isinstance(cam, dict) and isinstance(cam.get("frames"), int) and isinstance(state.get("ts"), str):
            seen[state["ts"]] = cam["frames"]

    def start_edge(self, name: str, with_camera: bool) -> tuple[subprocess.Popen[bytes], Any]:
        device = self.tmp / f"{name}.toml"
        device.write_text(device_toml(self.broker.client_config(DEVICE), self.readers,
                                      self.camera.url if with_camera else None, self.tmp, self.pub))
        env = dict(os.environ, DOORKEEP_CREDENTIAL_KEY=self.key.hex())
        log = (self.tmp / f"{name}.log").open("wb")
        args = [self.doorkeep, "edge", "--device", str(device)]
        if not self.broker.tls:
            args.append("--allow-plain-mqtt")
        self.server.bus.states.pop(DEVICE, None)
        proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
        return proc, log

    def wait_ready(self, proc: subprocess.Popen[bytes], with_camera: bool, log_path: Path) -> None:
        """Online, with a verified policy cached and (with the camera) the camera reported online."""
        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"the edge exited ({proc.returncode}); see {log_path}")
            if self.server.bus.availability.get(DEVICE) != "online":
                return False
            if not (self.tmp / "state" / "policy.json").exists():
                return False
            state = self.edge_state()
            if with_camera:
                return bool(state.get("cameras", {}).get("lobby", {}).get("online"))
            return bool(state)
        if not wait_until(ready, START_TIMEOUT_S, 0.1):
            raise RuntimeError(f"the edge was not ready within {START_TIMEOUT_S:.0f} s; see {log_path}")

    def close(self) -> None:
        self.camera.stop()
        for reader in self.readers.values():
            reader.close()
        self.server.stop()
        self.broker.stop()


def stop_edge(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def run_phase(stack: Stack, name: str, with_camera: bool, warmup: float, seconds: float,
              py_spy: str | None) -> Phase:
    proc, log = stack.start_edge(name, with_camera)
    seen: dict[str, int] = {}  # state message ts -> camera frames the edge had read by then
    try:
        stack.wait_ready(proc, with_camera, Path(log.name))
        stack.note_frames(seen)
        pace = threading.Event()  # idle, as a door does between badges
        warm_until = time.monotonic() + warmup
        while not pace.wait(min(0.5, max(0.0, warm_until - time.monotonic()))) and time.monotonic() < warm_until:
            stack.note_frames(seen)
        if proc.poll() is not None:
            raise RuntimeError(f"the edge exited during the warm-up; see {log.name}")
        phase = sample(proc.pid, name, seconds, py_spy, on_tick=lambda: stack.note_frames(seen))
        phase.camera_frames_per_s = frame_rate(seen) if with_camera else None
        return phase
    finally:
        stop_edge(proc)
        log.close()


def frame_rate(seen: dict[str, int]) -> float | None:
    """Frames per second the edge's camera read, between its first and last state message (heartbeats
    come every 30 s, so a short run may see only one: None)."""
    if len(seen) < 2:
        return None
    stamps = sorted(seen)
    t0, t1 = (datetime.fromisoformat(t.replace("Z", "+00:00")) for t in (stamps[0], stamps[-1]))
    span = (t1 - t0).total_seconds()
    return (seen[stamps[-1]] - seen[stamps[0]]) / span if span > 0 else None


# ----------------------------------------------------------------- report

def verdict(ok: bool) -> str:
    return "meets" if ok else "MISSES"


def print_phase(p: Phase) -> None:
    names_known = any(t.python_name is not None for t in p.thread_figures)
    print(f"\n[{p.name}] {p.seconds:.0f} s sampled once a second")
    print(f"  RSS      median {p.rss_median:6.1f} MB   max {p.rss_max:6.1f} MB    target <= {TARGET_RSS_MB:.0f} MB"
          f"  {verdict(p.rss_max <= TARGET_RSS_MB)}")
    print(f"  threads  median {p.threads_median:6.0f}      max {p.threads_max:6d}       target <= {TARGET_THREADS}"
          f"       {verdict(p.threads_max <= TARGET_THREADS)}")
    print(f"  CPU      {p.cpu_pct:6.2f} % of a core over the window (1-s samples: median "
          f"{statistics.median(p.cpu_pct_per_s):.2f} %, max {max(p.cpu_pct_per_s):.2f} %)"
          f"    target <= {TARGET_CPU_PCT:.0f} %  {verdict(p.cpu_pct <= TARGET_CPU_PCT)}")
    if p.camera_frames_per_s is not None:
        print(f"  camera   {p.camera_frames_per_s:.2f} frames/s read by the edge (from its state messages)")
    print("  threads (tid, kernel comm, Python name, CPU % of a core):")
    for t in sorted(p.thread_figures, key=lambda t: -t.cpu_pct):
        label = t.python_name if t.python_name is not None else "(native)" if names_known else "-"
        label = label if len(label) <= 40 else label[:37] + "..."
        print(f"    {t.tid:>8}  {t.comm:<16} {label:<40} {t.cpu_pct:6.2f} %")


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "load_average_1m": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="sampling window per run (default 30)")
    ap.add_argument("--warmup", type=float, default=10.0, help="idle seconds before sampling (default 10)")
    ap.add_argument("--json", type=Path, help="also write the figures (with every sample) as JSON")
    ap.add_argument("--plain", action="store_true", help="plain MQTT instead of mutual TLS")
    ap.add_argument("--py-spy", default=shutil.which("py-spy"),
                    help="py-spy binary used to name the Python threads (default: py-spy on PATH)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the run with the camera removed")
    args = ap.parse_args(argv)
    if args.seconds < 2:
        ap.error("--seconds must be at least 2")
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    info = machine()
    print(f"doorkeep edge footprint (issue 15): {info['cpu']}, {info['cores']} cores, Python {info['python']}; "
          f"load average {info['load_average_1m']}")
    print(f"edge: {DEVICE}, two doors (EM4100 on ptys, mock GPIO), camera MJPEG {WIDTH}x{HEIGHT} at {FPS:g} fps; "
          f"broker: Mosquitto, {'plain MQTT' if args.plain else 'mutual TLS'}; warm-up {args.warmup:g} s, "
          f"window {args.seconds:g} s; thread names: {'py-spy' if args.py_spy else 'kernel comm only'}")
    tmp = Path(tempfile.mkdtemp(prefix="doorkeep-footprint-"))
    phases: list[Phase] = []
    stack: Stack | None = None
    try:
        stack = Stack(tmp, plain=args.plain)
        phases.append(run_phase(stack, "camera", True, args.warmup, args.seconds, args.py_spy))
        print_phase(phases[-1])
        if not args.no_baseline:
            phases.append(run_phase(stack, "no camera", False, args.warmup, args.seconds, args.py_spy))
            print_phase(phases[-1])
    except (RuntimeError, OSError) as exc:
        print(f"footprint: {exc} (kept {tmp} for the edge's log)", file=sys.stderr)
        return 1
    finally:
        if stack is not None:
            stack.close()
    shutil.rmtree(tmp, ignore_errors=True)
    result: dict[str, Any] = {"machine": info, "plain": args.plain, "warmup_s": args.warmup,
                              "targets": {"rss_mb": TARGET_RSS_MB, "threads": TARGET_THREADS,
                                          "cpu_pct": TARGET_CPU_PCT},
                              "phases": [p.summary() for p in phases]}
    if len(phases) == 2:
        cam, bare = phases
        share = {"rss_mb": cam.rss_median - bare.rss_median, "threads": cam.threads_max - bare.threads_max,
                 "cpu_pct": cam.cpu_pct - bare.cpu_pct}
        result["camera_share"] = share
        print(f"\ncamera's share (camera minus no camera): RSS {share['rss_mb']:+.1f} MB (medians), "
              f"threads {share['threads']:+d}, CPU {share['cpu_pct']:+.2f} % of a core")
    print(f"\nsummary: RSS max {phases[0].rss_max:.1f} MB (<= {TARGET_RSS_MB:.0f}), threads max "
          f"{phases[0].threads_max} (<= {TARGET_THREADS}), CPU {phases[0].cpu_pct:.2f} % of a core idle "
          f"(<= {TARGET_CPU_PCT:.0f} %)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
