"""The doorkeep server in a child process, for benches that time the edge and the server separately.

In production the server and each edge agent are separate processes (on separate machines); a bench that
runs them in one Python process makes them share one GIL, and every server step then waits for edge and
simulator threads (and the reverse). ``ServerProcess`` bootstraps the real server (``server.app.bootstrap``)
in a spawned child with the keys the parent's SiteRunner uses, so the edges verify its policies as usual.
"""

from __future__ import annotations

import multiprocessing as mp
import tempfile
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def _serve(conn: Any, site_dir: str, broker_url: str, key: bytes, signing_raw: bytes, data_dir: str) -> None:
    import logging

    from doorkeep.config import BrokerConfig, load_site_dir
    from doorkeep.envelope import SnapshotKeys
    from server.app import bootstrap

    logging.basicConfig(level=logging.ERROR)
    try:
        server = bootstrap(load_site_dir(site_dir), Path(data_dir), BrokerConfig(broker_url, allow_plain=True),
                           key=key, signing_key=Ed25519PrivateKey.from_private_bytes(signing_raw),
                           snapshot_keys=SnapshotKeys.generate())
        server.start(wait_s=30)
        conn.send(("ready", server.bus.connected))
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        raise
    conn.recv()  # any message (or the parent going away) stops it
    server.stop()
    conn.send(("stopped", dict(server.bus.counters)))


class ServerProcess:
    def __init__(self, site_dir: Path, broker_url: str, key: bytes, signing_key: Ed25519PrivateKey) -> None:
        raw = signing_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                        serialization.NoEncryption())
        self._tmp = tempfile.TemporaryDirectory(prefix="doorkeep-bench-server-")
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, str(site_dir), broker_url, key, raw, self._tmp.name),
                                 daemon=True)
        self._proc.start()
        if not self._conn.poll(60):
            raise RuntimeError("the server process did not start within 60 s")
        kind, body = self._conn.recv()
        if kind != "ready" or not body:
            raise RuntimeError(f"the server process failed: {body}")

    def stop(self) -> dict[str, int]:
        """Stop the server cleanly (it says ``stopped`` on its availability topic); idempotent."""
        counters: dict[str, int] = {}
        if not self._proc.is_alive():
            return counters
        try:
            self._conn.send("stop")
            if self._conn.poll(30):
                _, counters = self._conn.recv()
        except (OSError, EOFError):
            pass
        self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(timeout=5)
        self._tmp.cleanup()
        return counters
