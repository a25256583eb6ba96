"""`make bench`: every figure of issue 8 in one run, beside its baseline and target.

Run from the project root:

    .venv/bin/python bench/run_all.py [--quick] [--write] [--only 1,3,...] [--json PATH]

One private Mosquitto (set_tcp_nodelay true, max_queued_messages 0, plain MQTT on
loopback like every echo baseline) serves figures 1, 2, 3 and 5, so each figure and
its transport baseline are measured in the same run on the same broker:

1. badge-to-relay online vs the bare paho request/echo round trip (bench/badge_to_relay.py)
2. badge-to-relay offline: the server stopped, the edge deciding on its cached signed policy
3. server capacity curve, 10 to 2,000 doors, events persisted, vs a bare echo server (bench/capacity.py)
4. event ingest into the store vs raw sqlite-utils ``insert_all`` of the same rows in one transaction
5. revocation: card reported lost at the desk API to refused at every door of 100 simulated edges
6. snapshot: which frame is taken, and the cost of capture and encode at 1280x720, 10 fps
7. edge footprint: RSS, threads and idle CPU of one ``doorkeep edge`` process (bench/footprint.py)
8. edge cache scale: 250,000 credentials, verify-and-load and lookup p99 (bench/policy.py)

``--write`` regenerates docs/performance.md from the figures (the table, the command, the date,
the machine, and the note kept in NOTES below for each target missed). ``--quick`` runs every
figure with fewer samples (a minute or two): the figures are then indicative only.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

import paho.mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from doorkeep.config import BrokerConfig, load_site_dir
from doorkeep.contract import Topics
from doorkeep.credentials import card_hash
from doorkeep.decision import AccessRequest, DecisionState, decide
from doorkeep.envelope import SnapshotKeys
from doorkeep.policy import PolicyError, verify_policy
from simulators.brokers import MosquittoBroker, subscribed_client
from simulators.site import DEMO_SITE, SiteRunner
from simulators.wait import wait_until

DOC = ROOT / "docs" / "performance.md"
KEPT_MARKER = "<!-- kept by bench/run_all.py: figures of the benches it does not table -->"
PASS, MISS, INFO = "PASS", "MISS", "info"

#: The honest note for each target missed, keyed by figure number; written into docs/performance.md
#: beside the table whenever that figure misses. Written from what the profilers showed (see the doc).
NOTES: dict[str, str] = {
    "1": ("The edge's part is now small: traced hop by hop (the table below), reader write to the loop's read "
          "about 0.14 ms, read to the request on the socket about 0.45 ms, decision read to relay about 0.12 ms, "
          "all on one thread (issue 15). The rest, about 1.4-1.5 ms at the median, is the round trip through "
          "Mosquitto and the server process (request read, decide, decision published) against the bare echo's "
          "0.55-0.9 ms: the server's handler and its GIL (issue 20's several server workers is where that goes). "
          "The edge under test also shares its process with the bench's simulators (readers, doors, camera "
          "frame producers and their HTTP servers) and the second edge, whose threads take the GIL whenever the "
          "loop lets it go for a system call (the pty read, the socket send); profiled on the loop thread, the "
          "request path costs about 0.4 ms of CPU (HMAC, JSON, paho's publish and the send), most of the rest "
          "is waiting for the GIL."),
    "2": ("Offline the path is one call on the loop (read, parse, decide on the cached policy, relay): about "
          "0.15 ms of the loop's CPU when called alone. The median adds the pty and the loop's wake-up from "
          "epoll; the p99 is set by the other threads of the bench process (simulators, the other edge, the "
          "cameras' capture threads) holding the GIL when the loop wakes, on a 2-core machine. A real edge "
          "process has no simulator threads: bench/footprint.py counts four threads in it."),
    "3": ("py-spy of the server at 1,000 doors: about 85 % of its network thread is paho-mqtt itself (socket "
          "send/recv, packet parsing, PUBACK handling); ServerBus._answer (decode, decide, encode) is about "
          "16 % and Directory.decide 4 %. Every decision costs the server three MQTT messages (the request in, "
          "the decision out, the access event in) against the echo's two, on one paho thread under one GIL, so "
          "it tops out at roughly half the bare echo's rate. Fixed on the way: each event and each grant's "
          "presence row were committed one by one on the store thread, which held the GIL for ~3/4 of the "
          "time and left a backlog of 14-29 s after a load; they are now group-committed (one transaction for "
          "whatever has queued, server/bus.py, server/store.py), the backlog drains in under a second and the "
          "p99 at 1,000 decisions/s went from ~700 ms to ~11 ms. Reaching 3,000/s needs more than one MQTT "
          "connection (e.g. a shared subscription served by several server processes), not a faster decide(). "
          "The paced p99 at 1,000 decisions/s is sensitive to load: 9.5-14 ms on a quiet machine (within its "
          "target), 40 ms in a full run while test suites shared the 2 cores (median 1.4-3 ms in all); the "
          "tail was not profiled further."),
    "4": ("The figure is the store thread's group commit (up to 256 rows per transaction). A lone event on "
          "an idle site still costs one commit (the per-event figure beside it): it is acknowledged to the "
          "broker only once on disk."),
    "5": ("Revocation is the policy republish: the server compiles and signs one policy per device (100 here) "
          "and every edge verifies its own. The 100 simulated edges verify in one process, one after the "
          "other, so the last edge's figure includes the other 99 verifications."),
    "6": ("The snapshot picks the buffered frame nearest the badge; the frame period is 100 ms at 10 fps. "
          "JPEG encoding runs on the edge's jobs worker, after the request is sent, off the relay path."),
    "7": ("An MJPEG camera's frames are kept as the camera's own JPEG bytes and decoded only for a snapshot "
          "(bench/footprint.py); a camera that is not MJPEG (H.264) is decoded frame by frame, which adds about "
          "55 MB of buffered frames at 720p."),
    "8": ("Verify-and-load is dominated by parsing and building 250,000 Credential objects (site_from_dict); "
          "on a Raspberry Pi expect several times this machine's time."),
}


# ---------------------------------------------------------------- helpers

def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    return s[max(1, math.ceil(len(s) * p / 100)) - 1]


def stop_children(pipes: list[Any], procs: list[Any]) -> None:
    """Ask each load-generator child to stop (``None`` down its pipe), then join it, terminating one that hangs
    (bench/capacity.py and bench/campus.py run their simulated edges as such children)."""
    for pipe in pipes:
        try:
            pipe.send(None)
        except OSError:
            pass
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            p.terminate()
            p.join(timeout=5)


def ms(x: float) -> str:
    return "n/a" if not math.isfinite(x) else (f"{x:.3f} ms" if x < 1 else f"{x:.2f} ms" if x < 100 else f"{x:.0f} ms")


def status(ok: bool) -> str:
    return PASS if ok else MISS


def mosquitto_version() -> str:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    try:
        res = subprocess.run([exe, "-h"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"mosquitto ({exc})"
    text = (res.stdout or res.stderr).strip()
    return text.splitlines()[0] if text else "mosquitto (version unknown)"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> dict[str, Any]:
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "mosquitto": mosquitto_version(), "paho_mqtt": paho.mqtt.__version__,
            "load_average_1m": round(os.getloadavg()[0], 2)}


def row(fig: str, name: str, figure: str, baseline: str, target: str, state: str, **raw: Any) -> dict[str, Any]:
    return {"fig": fig, "name": name, "figure": figure, "baseline": baseline, "target": target, "status": state,
            "raw": raw}


# ------------------------------------------------------- 1 + 2: badge to relay

def traced_hops(runner: SiteRunner, count: int) -> dict[str, tuple[float, float]]:
    """``count`` more badges traced hop by hop on the edge: ``{hop: (p50, p99)}`` in ms."""
    import badge_to_relay as b2r

    tracer = b2r.HopTrace(runner)
    try:
        b2r.run_badges(runner, count, trace=tracer)
    finally:
        tracer.close()
    return {name: (r.median, r.p99) for name, r in tracer.rows.items() if r.n}


def fig_badge(broker: MosquittoBroker, quick: bool) -> list[dict[str, Any]]:
    import badge_to_relay as b2r
    from server_proc import ServerProcess

    count, echo_count = (30, 100) if quick else (150, 300)
    echo = b2r.run_echo(broker.url, echo_count, "echo (idle machine)")
    # The demo site's edges and simulators in this process, the server in its own process, as deployed
    # (one Python process for all of them would make the server queue behind edge threads for the GIL).
    runner = SiteRunner.from_dir(DEMO_SITE, broker_url=broker.url, allow_plain=True)
    server = ServerProcess(DEMO_SITE, broker.url, runner.key, runner.signing_key)
    try:
        runner.start(with_server=False)
        agent = runner.agents[b2r.DEVICE]
        if not runner.wait_connected(15) or not wait_until(lambda: (getattr(agent.policy, "version", 0) or 0) > 0, 15):
            raise RuntimeError("the demo site did not connect or receive its policy within 15 s")
        relay, _edge, _paced, info = b2r.run_badges(runner, count)
        hops = traced_hops(runner, max(30, count // 3))
        server.stop()
        if not wait_until(lambda: agent.server_availability in ("stopped", "offline"), 10):
            raise RuntimeError("the edge did not notice the server stopping")
        offline, _e, _p, info_off = b2r.run_badges(runner, count)
        hops_offline = traced_hops(runner, max(30, count // 3))
    finally:
        server.stop()
        runner.stop()
    ratio = relay.p99 / echo.p99 if echo.p99 > 0 else float("nan")
    ok1 = relay.median <= b2r.TARGET_P50_MS and relay.p99 <= b2r.TARGET_P99_MS and ratio <= b2r.TARGET_RATIO
    fails = relay.failures + offline.failures
    return [
        row("1", "badge-to-relay, online", f"p50 {ms(relay.median)}, p99 {ms(relay.p99)}, max {ms(relay.max)} "
            f"(n={relay.n}, {relay.failures} failed)",
            f"echo p50 {ms(echo.median)}, p99 {ms(echo.p99)}, max {ms(echo.max)}; p99 = {ratio:.1f}x echo",
            f"p50 <= {b2r.TARGET_P50_MS:g} ms, p99 <= {b2r.TARGET_P99_MS:g} ms, p99 <= {b2r.TARGET_RATIO:g}x echo p99",
            status(ok1 and not relay.failures),
            p50_ms=relay.median, p99_ms=relay.p99, max_ms=relay.max, echo_p50_ms=echo.median,
            echo_p99_ms=echo.p99, ratio=ratio, failures=relay.failures, denied=info["denied"],
            hops_ms={name: {"p50": p50, "p99": p99} for name, (p50, p99) in hops.items()}),
        row("2", "badge-to-relay, offline (server stopped)",
            f"p50 {ms(offline.median)}, p99 {ms(offline.p99)}, max {ms(offline.max)} (n={offline.n}, "
            f"{offline.failures} failed)", "online figure above", f"p99 <= {b2r.TARGET_OFFLINE_P99_MS:g} ms",
            status(offline.p99 <= b2r.TARGET_OFFLINE_P99_MS and not offline.failures),
            hops_ms={name: {"p50": p50, "p99": p99} for name, (p50, p99) in hops_offline.items()}, p50_ms=offline.median, p99_ms=offline.p99,
            max_ms=offline.max, failures=offline.failures, denied=info_off["denied"], total_failures=fails),
    ]


# -------------------------------------------------------------- 3: capacity

def fig_capacity(broker: MosquittoBroker, quick: bool) -> list[dict[str, Any]]:
    import capacity

    levels = [10, 100, 500, 1000, 2000]
    res = capacity.run_capacity(levels, 1.0 if quick else 3.0, 1000.0, broker, log=lambda *_: None)
    curve = "; ".join(f"{r['doors']}: {r['per_s']:,.0f}/s p50 {ms(r['p50_ms'])} p99 {ms(r['p99_ms'])} "
                      f"(store +{r['store_catch_up_s']:.1f} s)" for r in res["server"])
    echo = "; ".join(f"{r['doors']}: {r['per_s']:,.0f}/s" for r in res["echo"])
    best = res["max_server_per_s"]
    paced = res["paced"]
    lost = sum(r["lost"] for r in res["server"]) + paced["lost"]
    return [
        row("3", "server capacity, decisions/s by doors badging at once (events persisted)",
            f"{curve}; knee at {res['knee_doors']} doors; {res['events_stored']:,} of {res['events_sent']:,} "
            f"events stored; store +N s = how long after the level the store thread took to catch up; {lost} unanswered",
            f"bare echo messages/s: {echo}", ">= 3,000 decisions/s sustained", status(best >= 3000 and not lost),
            **{k: v for k, v in res.items() if k != "counters"}),
        row("3", "server p99 at 1,000 decisions/s offered (1,000 doors, paced)",
            f"{paced['per_s']:,.0f}/s answered, p50 {ms(paced['p50_ms'])}, p99 {ms(paced['p99_ms'])}, "
            f"max {ms(paced['max_ms'])}", f"bare echo, same pacing: p50 {ms(res['echo_paced']['p50_ms'])}, p99 "
            f"{ms(res['echo_paced']['p99_ms'])}",
            "p99 <= 20 ms", status(paced["p99_ms"] <= 20 and paced["per_s"] >= 950), **paced),
    ]


# ---------------------------------------------------------------- 4: ingest

def fig_ingest(quick: bool) -> list[dict[str, Any]]:
    import sqlite_utils

    from doorkeep.clock import iso_ms
    from doorkeep.contract import EventMsg
    from server.store import Store, migrate

    n = 5_000 if quick else 50_000
    evs = [EventMsg(id=uuid.uuid4().hex, seq=i, ts=iso_ms(time.time()), device="pi-lobby", door="lobby_in",
                    type="access", decision="granted", reason="granted", decided_by="server", person="alice",
                    credential_hash="ab" * 32, credential_last4="B2C3", transaction=f"t{i}", latency_ms=1.2)
           for i in range(n)]
    tmp = Path(tempfile.mkdtemp(prefix="doorkeep-bench-ingest-"))
    try:
        from server.bus import STORE_BATCH

        # The server's path under load: the store thread commits what has queued, up to STORE_BATCH at once.
        store = Store(tmp / "store")
        t0 = time.perf_counter()
        for i in range(0, n, STORE_BATCH):
            store.ingest_events([(ev, time.time()) for ev in evs[i:i + STORE_BATCH]])
        store_s = time.perf_counter() - t0
        stored = store.count_events()
        store.close()
        # A lone event (an idle site): one transaction each.
        single_n = min(n, 2_000)
        store = Store(tmp / "single")
        t0 = time.perf_counter()
        for ev in evs[:single_n]:
            store.ingest_event(ev, time.time())
        single_rate = single_n / (time.perf_counter() - t0)
        store.close()
        from dataclasses import asdict
        rows = []
        for ev in evs:
            r = asdict(ev)
            r["detail"] = json.dumps(r["detail"], sort_keys=True)
            r["received_at"] = time.time()
            rows.append(r)
        db = sqlite_utils.Database(tmp / "raw.db")
        db.enable_wal()
        migrate(db)
        t0 = time.perf_counter()
        with db.conn:
            db["events"].insert_all(rows, batch_size=1000)
        raw_s = time.perf_counter() - t0
        db.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rate, base = n / store_s, n / raw_s
    share = rate / base
    return [row("4", f"event ingest into the store (Store.ingest_events, up to {STORE_BATCH} per commit, as the "
                "server's store thread under load)",
                f"{rate:,.0f} events/s ({stored:,} of {n:,} stored) = {share * 100:.0f} % of baseline; one commit "
                f"per event (a lone event): {single_rate:,.0f} events/s",
                f"sqlite-utils insert_all, one transaction: {base:,.0f} rows/s",
                ">= 20,000 events/s and >= 40 % of baseline", status(rate >= 20_000 and share >= 0.4),
                events_per_s=rate, baseline_per_s=base, share=share, n=n, single_per_s=single_rate)]


# ------------------------------------------------------------ 5: revocation

def serve_generated_site(tmp: Path, n_edges: int, broker_url: str) -> tuple[Any, bytes, Any, Any, Any, int, str]:
    """The demo site plus ``n_edges`` generated doors (one per edge), its real server started on ``broker_url``
    and the desk served by uvicorn on a free port with an admin token: (bundle, credential key, the policy
    public key, server, uvicorn server, port, token). Shared by figure 5 and bench/site_change_to_door.py."""
    import uvicorn
    from argon2 import PasswordHasher
    from gensite import generate_site

    from server.app import bootstrap
    from server.web.app import create_app

    bundle = generate_site(tmp / "site", n_edges, 1)
    key = secrets.token_bytes(32)
    signing = Ed25519PrivateKey.generate()
    server = bootstrap(bundle, tmp / "server", BrokerConfig(broker_url, allow_plain=True), key=key,
                       signing_key=signing, snapshot_keys=SnapshotKeys.generate())
    server.start(wait_s=30)
    app = create_app(server, hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    app.state.desk.operators.add("bench", "admin", "bench password long enough", actor="bench")
    token = app.state.desk.operators.issue_token("bench", "bench", actor="bench")[0]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    web = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=web.run, daemon=True).start()
    return bundle, key, signing.public_key(), server, web, port, token


def fig_revocation(broker: MosquittoBroker, quick: bool) -> list[dict[str, Any]]:
    import http.client

    from gensite import STAFF_CARDS

    n_edges, rounds = 100, (2 if quick else 3)
    tmp = Path(tempfile.mkdtemp(prefix="doorkeep-bench-revoke-"))
    bundle, key, public, server, web, port, token = serve_generated_site(tmp, n_edges, broker.url)
    topics = Topics(bundle.site.id)
    devices = {dev.id: next(iter(dev.doors)) for dev in bundle.devices.values() if dev.id.startswith("gen-")}
    lock = threading.Lock()
    refused_at: dict[str, float] = {}
    versions: dict[str, int] = {}
    watch: dict[str, str] = {"hash": ""}

    def on_policy(c: Any, u: Any, msg: Any) -> None:
        # One simulated edge per device: verify the signed policy it receives, then decide the watched card.
        t_recv = time.perf_counter()
        dev = msg.topic.split("/")[-2]
        if dev not in devices or not msg.payload:
            return
        try:
            pol = verify_policy(msg.payload, public, site_id=bundle.site.id, device=dev,
                                min_version=versions.get(dev))
        except PolicyError:
            return
        versions[dev] = pol.version
        h = watch["hash"]
        if h and not decide(AccessRequest(devices[dev], h), pol.site, DecisionState(), time.time()).granted:
            with lock:
                refused_at.setdefault(dev, time.perf_counter())
        del t_recv

    edge = subscribed_client("127.0.0.1", broker.port, f"bench-revoke-{uuid.uuid4().hex[:6]}",
                             f"{topics.base}/+/policy", on_policy, keepalive=60)
    samples: list[float] = []
    worst: list[float] = []
    incomplete = 0
    try:
        if not wait_until(lambda: web.started, 15):
            raise RuntimeError("uvicorn did not start")
        if not wait_until(lambda: len(versions) == len(devices), 30):
            raise RuntimeError(f"only {len(versions)} of {len(devices)} edges got a policy")
        # Staff cards (granted at every generated door, always) each reported lost once.
        for number in STAFF_CARDS[:rounds]:
            h = card_hash(key, "em4100", number)
            before = [decide(AccessRequest(devices[d], h), server.directory.site, DecisionState(), time.time())
                      for d in devices]
            if not all(dec.granted for dec in before):
                raise RuntimeError(f"card …{number[-4:]} is not granted at every door before it is reported lost")
            with lock:
                refused_at.clear()
            watch["hash"] = h
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            t0 = time.perf_counter()
            conn.request("POST", f"/api/v1/cards/{h}/lost", body=b"",
                         headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            conn.close()
            if resp.status != 200:
                raise RuntimeError(f"POST lost answered {resp.status}")
            done = wait_until(lambda: len(refused_at) == len(devices), 30)
            with lock:
                per = [t - t0 for t in refused_at.values()]
            if not done:
                incomplete += 1
            samples += per
            worst.append(max(per) if per else float("nan"))
    finally:
        edge.disconnect()
        edge.loop_stop()
        web.should_exit = True
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    p50, p99, mx = (pct(samples, 50) * 1e3, pct(samples, 99) * 1e3, max(samples) * 1e3) if samples \
        else (float("nan"),) * 3
    return [row("5", f"revocation: lost at the desk API to refused at every door ({n_edges} edges)",
                f"p50 {ms(p50)}, p99 {ms(p99)}, max {ms(mx)} over {len(samples)} edge-refusals "
                f"({len(worst)} cards; {incomplete} not refused everywhere within 30 s)",
                "commercial controllers' local mode: up to an hour", "p99 <= 1 s",
                status(p99 <= 1000 and not incomplete), p50_ms=p50, p99_ms=p99, max_ms=mx, rounds=len(worst),
                incomplete=incomplete)]


# -------------------------------------------------------------- 6: snapshot

def fig_snapshot(quick: bool) -> list[dict[str, Any]]:
    import cv2

    from edge.camera import Camera
    from simulators.camera import CameraSimulator, decode_frame_index

    fps, n = 10.0, (20 if quick else 100)
    sim = CameraSimulator(width=1280, height=720, fps=fps)
    sim.start()
    cam = Camera("bench", sim.url, fps=fps, buffer_seconds=2)
    try:
        # Cost of the simulator alone, then with the camera capturing beside it (an MJPEG source's frames kept as JPEG).
        window = 2.0 if quick else 5.0
        c0, t0 = time.process_time(), time.perf_counter()
        time.sleep(window)
        sim_only = (time.process_time() - c0) / (time.perf_counter() - t0)
        cam.start()
        if not wait_until(lambda: cam.stats.online and sim.frames_generated > 25, 15):
            raise RuntimeError("the camera did not come online")
        c0, t0 = time.process_time(), time.perf_counter()
        time.sleep(window)
        with_cam = (time.process_time() - c0) / (time.perf_counter() - t0)
        capture_share = max(0.0, with_cam - sim_only)
        offsets, encode_ms, total_ms = [], [], []
        import random
        rng = random.Random(8)
        for _ in range(n):
            time.sleep(rng.uniform(0.05, 0.25))
            at = time.monotonic()
            t1 = time.perf_counter()
            snap = cam.snapshot(at)
            total_ms.append((time.perf_counter() - t1) * 1e3)
            if snap is None:
                continue
            img = cv2.imdecode(__import__("numpy").frombuffer(snap.jpeg, "uint8"), cv2.IMREAD_COLOR)
            idx = decode_frame_index(img)
            gen = sim.frame_time(idx) if idx is not None else None
            if gen is not None:
                offsets.append((gen - at) * 1e3)
        frame = cv2.imdecode(__import__("numpy").frombuffer(sim._latest[1], "uint8"), cv2.IMREAD_COLOR)
        for _ in range(n):
            t1 = time.perf_counter()
            cam.encode(frame)
            encode_ms.append((time.perf_counter() - t1) * 1e3)
    finally:
        cam.stop()
        sim.stop()
    absoff = [abs(o) for o in offsets]
    period = 1000.0 / fps
    return [row("6", "snapshot: frame taken vs badge time (1280x720, 10 fps)",
                f"frame capture time off the badge time by p50 {ms(pct(absoff, 50))}, p99 {ms(pct(absoff, 99))}, max "
                f"{ms(max(absoff) if absoff else float('nan'))} ({len(offsets)} of {n} identified); "
                f"snapshot() call p50 {ms(pct(total_ms, 50))}, p99 {ms(pct(total_ms, 99))}",
                f"frame period {period:.0f} ms", "within one frame period",
                status(bool(absoff) and max(absoff) <= period and len(offsets) == n),
                p50_ms=pct(absoff, 50), p99_ms=pct(absoff, 99), identified=len(offsets), n=n),
            row("6", "snapshot: cost of capture and encode (1280x720, 10 fps)",
                f"capture (frames kept as the camera's JPEGs) {capture_share * 100:.1f} % of a core; encode p50 "
                f"{ms(pct(encode_ms, 50))}, p99 {ms(pct(encode_ms, 99))}",
                "JPEG encode 1.9-4.7 ms at 1280x720 (MEASURED.md)", "reported", INFO,
                capture_core_share=capture_share, encode_p50_ms=pct(encode_ms, 50),
                encode_p99_ms=pct(encode_ms, 99))]


# ------------------------------------------------------------- 7: footprint

def _proc_sample(pid: int) -> tuple[float, float]:
    """(RSS MB, CPU seconds user+system) of a process, from /proc."""
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return rss, (int(fields[11]) + int(fields[12])) / tick


def fig_footprint(broker: MosquittoBroker, quick: bool) -> list[dict[str, Any]]:
    """bench/footprint.py's idle window on a real `doorkeep edge` process (its own broker, with mutual TLS)."""
    import footprint as fp

    window, warmup = (8.0, 5.0) if quick else (30.0, 10.0)
    tmp = Path(tempfile.mkdtemp(prefix="doorkeep-bench-edge-"))
    stack = fp.Stack(tmp, plain=False)
    try:
        phase = fp.run_phase(stack, "camera", True, warmup, window, shutil.which("py-spy"))
    finally:
        stack.close()
        shutil.rmtree(tmp, ignore_errors=True)
    ok = phase.rss_max <= fp.TARGET_RSS_MB and phase.threads_max <= fp.TARGET_THREADS \
        and phase.cpu_pct <= fp.TARGET_CPU_PCT
    names = sorted({t.python_name or t.comm for t in phase.thread_figures})
    return [row("7", "edge footprint: one `doorkeep edge` process, two doors, camera 1280x720 at 10 fps, idle",
                f"RSS max {phase.rss_max:.0f} MB, threads {phase.threads_max} ({', '.join(names)}), CPU "
                f"{phase.cpu_pct:.1f} % of a core over {window:.0f} s",
                "none (absolute targets)",
                f"RSS <= {fp.TARGET_RSS_MB:.0f} MB, threads <= {fp.TARGET_THREADS}, CPU <= {fp.TARGET_CPU_PCT:.0f} %",
                status(ok), rss_mb=phase.rss_max, threads=phase.threads_max, cpu_pct=phase.cpu_pct,
                thread_names=names)]


# ---------------------------------------------------------- 8: cache scale

def fig_cache(quick: bool) -> list[dict[str, Any]]:
    out = Path(tempfile.mkstemp(prefix="doorkeep-bench-policy-", suffix=".json")[1])
    try:
        cmd = [sys.executable, str(BENCH / "policy.py"), "--json", str(out), "--runs", "1" if quick else "3"]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"bench/policy.py failed: {res.stderr.strip()[-500:]}")
        doc = json.loads(out.read_text())
    finally:
        out.unlink(missing_ok=True)
    return [row("8", "edge cache: 250,000 credentials", _cache_figure(doc), "-", "verify+load <= 5 s, lookup p99 "
                "<= 50 us", status(_cache_ok(doc)), **doc)]


def _find(doc: Any, *names: str) -> float | None:
    """The first numeric value under any of ``names`` anywhere in bench/policy.py's JSON."""
    if isinstance(doc, dict):
        for k, v in doc.items():
            if k in names and isinstance(v, (int, float)):
                return float(v)
        for v in doc.values():
            got = _find(v, *names)
            if got is not None:
                return got
    if isinstance(doc, list):
        for v in doc:
            got = _find(v, *names)
            if got is not None:
                return got
    return None


def _cache_figure(doc: dict[str, Any]) -> str:
    load, verify = _find(doc, "cache_load_s"), _find(doc, "verify_s")
    look, rss = _find(doc, "lookup_p99_us"), _find(doc, "cache_load_peak_rss_mb")
    if load is None or look is None or verify is None:
        return "bench/policy.py gave no figures: " + json.dumps(doc)[:300]
    return (f"start-up load (fresh process, verify + decode) {load:.2f} s, verify_policy alone {verify:.2f} s, "
            f"peak RSS {rss or 0:.0f} MB, {doc.get('payload_bytes', 0) / 1e6:.1f} MB signed; lookup (decide() on "
            f"the loaded policy) p50 {_find(doc, 'lookup_p50_us') or 0:.1f} us, p99 {look:.1f} us")


def _cache_ok(doc: dict[str, Any]) -> bool:
    load, look = _find(doc, "cache_load_s"), _find(doc, "lookup_p99_us")
    return load is not None and look is not None and load <= 5 and look <= 50


# ------------------------------------------------------------------ report

FIGURES: dict[str, Callable[..., list[dict[str, Any]]]] = {}


def render_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| # | measurement | figure | baseline (same run) | target | result |", "|---|---|---|---|---|---|"]
    for r in rows:
        cells = [r["fig"], r["name"], r["figure"], r["baseline"], r["target"], r["status"]]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


HOPS_BEFORE = """Before issue 15 (the edge on eight threads: control, link, policy, snapshot, paho, camera and one per
reader), traced the same way (median): reader frame to the request published 0.56 ms, edge publish to the
server's handler 0.69 ms, the server's handler 0.42 ms, decision back to the edge 0.55 ms, control loop to
relay 0.18 ms; four thread wake-ups on the way (reader thread -> control loop -> paho loop -> ... -> control
loop), each 16-64 us at the median and up to 12-20 ms at p99 behind another thread holding the GIL. Online
p50 2.6-2.9 ms, p99 4.2-4.5 ms; offline p99 1.02-1.15 ms. An edge process ran 12 threads (the eight, OpenCV's
and numpy's OpenBLAS workers and an FFmpeg decoder), 144 MB and 3.3 % of a core idle (bench/footprint.py
on the old code). Now: one loop thread for the whole badge path, four threads in all (main, loop, jobs
worker, camera; docs/concurrency.md)."""


def render_hops(rows: list[dict[str, Any]]) -> str:
    """The badge path hop by hop, from figures 1 and 2's traced runs, with the trace before issue 15."""
    lines = ["## The badge path, hop by hop", "",
             "Traced on the edge's own clock in separate runs after figures 1 and 2 (`HopTrace` in "
             "bench/badge_to_relay.py; `--trace N` there).", "",
             "| run | hop | p50 | p99 |", "|---|---|---|---|"]
    found = False
    for r in rows:
        run = {"1": "online", "2": "offline"}.get(r["fig"], r["fig"])
        for name, v in (r.get("raw", {}).get("hops_ms") or {}).items():
            found = True
            lines.append(f"| {run} | {name} | {v['p50']:.3f} ms | {v['p99']:.3f} ms |")
    if not found:
        return ""
    return "\n".join(lines) + "\n\n" + HOPS_BEFORE + "\n"


def write_doc(rows: list[dict[str, Any]], info: dict[str, Any], command: str, elapsed: float, quick: bool) -> None:
    missed = sorted({r["fig"] for r in rows if r["status"] == MISS}, key=int)
    notes = "\n".join(f"- **Figure {f}.** {NOTES.get(f, 'no note written for this figure yet.')}" for f in missed) \
        or "- Every target was met in this run."
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = f"""# Performance

Generated by `{command}` on {when} in {elapsed:.0f} s{" (--quick: fewer samples, indicative only)" if quick else ""}.
Do not edit the table by hand: run `make bench` (which runs `bench/run_all.py --write`) to refresh it.
The notes on missed targets come from `NOTES` in `bench/run_all.py`.

Machine: {info['cpu']}, {info['cores']} cores, Python {info['python']}, {info['mosquitto']}, paho-mqtt
{info['paho_mqtt']}, {info['platform']}; load average {info['load_average_1m']} at the start (other work on
the machine shows in the figures, most in p99 and max).

Every MQTT figure and its baseline ran on one private Mosquitto on loopback (`set_tcp_nodelay true`,
`max_queued_messages 0`, plain MQTT like the echo baselines; MEASURED.md has the TLS cost) with Nagle's
algorithm off on every client.

{render_table(rows)}

## Notes on targets missed

{notes}

{render_hops(rows)}

## What each figure measures

1. Badge-to-relay online: the reader simulator's last frame byte written into the pty to the rising edge of
   the `lobby_in` lock relay (gpiozero mock pin), through the edge agent, Mosquitto and the server's decision
   (`bench/badge_to_relay.py`); the edges and simulators in the bench process, the server in its own process
   (`bench/server_proc.py`), as deployed. Baseline: a bare paho QoS 1 request/echo round trip, same broker.
2. The same with the server stopped: the edge decides on its cached, signed policy.
3. `bench/capacity.py`: the server on a generated site (the demo plus 2,000 doors on 200 devices) and simulated
   edges (paho clients in two child processes, many doors each) that keep one request per door outstanding,
   publish the access event for every decision (the server stores it), and badge again. Baseline: a bare echo
   client republishing every request, same broker, same harness. The paced row offers 1,000 badges/s.
4. `Store.ingest_events` in batches of up to 256 (what the server's store thread commits at once when events
   queue up; each is acknowledged to the broker only after that commit) against sqlite-utils `insert_all` of
   the same rows in one transaction; beside it, one commit per event (a lone event on an idle site).
5. `POST /api/v1/cards/{{hash}}/lost` on the real desk app (uvicorn) to the moment each of 100 simulated edges
   has verified the republished signed policy (`doorkeep.policy.verify_policy`) and `doorkeep.decision.decide`
   refuses the card at its door.
6. `edge/camera.py` reading the simulated MJPEG camera at 1280x720, 10 fps: the frame chosen for a badge
   (identified by the index code the simulator draws into it) against the badge time; the CPU share of
   capture (the camera thread reading every frame, kept as the camera's JPEG) and the JPEG encode time of one
   snapshot.
7. One `doorkeep edge` process (two doors, one camera at 1280x720, 10 fps; `bench/footprint.py`), RSS, thread
   count and CPU from /proc while idle, talking to a real server over mutual TLS.
8. `bench/policy.py`: a 250,000-credential signed policy, verified and loaded in a fresh process, and the
   lookup p99.

## Fixes found with the profilers

- **Per-row commits on the server's store thread** (py-spy of `bench/capacity.py`): every stored event and
  every grant's presence row was its own transaction, with a WAL fsync each; the store thread held the GIL
  most of the time, decisions queued behind it, and a 1,000-door load left 14-29 s of backlog. The store
  thread now commits whatever has queued (events and deferred presence writes, up to 256) in one
  transaction (`Store.transaction`, `ServerBus._store_batch`); an event is still acknowledged to the broker
  only after its commit, a refused disk is retried for the whole batch, and a shutdown mid-retry
  acknowledges nothing (tests/unit/test_store_batch.py). `dataclasses.asdict` (a deep copy) was a third of
  the cost of storing an event and is gone from that path.
- **Nagle's algorithm**: already off everywhere (`set_tcp_nodelay true` in the broker, `TCP_NODELAY` on the
  server's, every edge's and every bench client's socket), so nothing left to fix there.
- **Work on the decision path that belongs after it**: already after it. Presence rows are written by the
  store thread; the edge's events go to the outbox (on the jobs worker) after the relay is set, and
  snapshots are encoded on the jobs worker after the request is on the wire; tracing the badge path found no
  disk or encoding work before the relay.
- **`dataclasses.asdict` in every message's encode** (issue 15, cProfile on the edge's loop thread): its deep
  copy was about a sixth of the CPU from badge to request; messages now build their dict directly.
- The bench itself: the simulated edges number their events per device, as a real edge does; numbering
  them per door made the server's supervision raise sequence-reset alarms, one commit each.
"""
    # The figures of the benches run_all does not table (bench/site_changes.py, bench/replay.py) are written
    # by hand below KEPT_MARKER: a refresh keeps them.
    if DOC.exists() and KEPT_MARKER in (old := DOC.read_text(encoding="utf-8")):
        text = text.rstrip("\n") + "\n\n" + old[old.index(KEPT_MARKER):]
    DOC.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer samples: a short run to check it works")
    ap.add_argument("--write", action="store_true", help=f"write {DOC.relative_to(ROOT)}")
    ap.add_argument("--only", help="comma-separated figure numbers (default: all eight)")
    ap.add_argument("--json", type=Path, help="also write every figure (with raw data) as JSON")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    only = set(args.only.split(",")) if args.only else set("12345678")
    info = machine()
    print(f"doorkeep bench (issue 8): {info['cpu']}, {info['cores']} cores, Python {info['python']}, "
          f"{info['mosquitto']}, paho-mqtt {info['paho_mqtt']}; load average {info['load_average_1m']}")
    started = time.monotonic()
    broker = MosquittoBroker().start()
    print(f"private Mosquitto on {broker.url} (set_tcp_nodelay true, max_queued_messages 0)\n")
    steps: list[tuple[str, Callable[[], list[dict[str, Any]]]]] = [
        ("12", lambda: fig_badge(broker, args.quick)),
        ("3", lambda: fig_capacity(broker, args.quick)),
        ("4", lambda: fig_ingest(args.quick)),
        ("5", lambda: fig_revocation(broker, args.quick)),
        ("6", lambda: fig_snapshot(args.quick)),
        ("7", lambda: fig_footprint(broker, args.quick)),
        ("8", lambda: fig_cache(args.quick)),
    ]
    rows: list[dict[str, Any]] = []
    errors = 0
    try:
        for figs, fn in steps:
            if not only & set(figs):
                continue
            t0 = time.monotonic()
            try:
                got = [r for r in fn() if r["fig"] in only]
            except Exception as exc:  # one broken figure must not hide the others
                errors += 1
                logging.getLogger("bench").exception("figure %s failed", figs)
                got = [row(f, f"figure {f}", f"FAILED: {type(exc).__name__}: {exc}", "-", "-", MISS)
                       for f in figs if f in only]
            for r in got:
                print(f"[{r['fig']}] {r['name']}\n    figure  : {r['figure']}\n    baseline: {r['baseline']}\n"
                      f"    target  : {r['target']}  ->  {r['status']}")
            print(f"    ({time.monotonic() - t0:.0f} s)", flush=True)
            rows += got
    finally:
        broker.stop()
    elapsed = time.monotonic() - started
    rows.sort(key=lambda r: int(r["fig"]))
    print(f"\n{sum(r['status'] == PASS for r in rows)} PASS, {sum(r['status'] == MISS for r in rows)} MISS "
          f"in {elapsed:.0f} s")
    if args.write:
        cmd = "make bench" if os.environ.get("DOORKEEP_BENCH_FROM_MAKE") else \
            "bench/run_all.py " + " ".join(a for a in (argv if argv is not None else sys.argv[1:]))
        write_doc(rows, info, cmd.strip(), elapsed, args.quick)
        print(f"wrote {DOC.relative_to(ROOT)}")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "rows": rows, "elapsed_s": elapsed}, indent=2,
                                        default=str) + "\n")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
