"""An IP camera on loopback: an MJPEG-over-HTTP server for the edge camera adapter.

The edge reads it with a real ``cv2.VideoCapture`` (FFmpeg backend), exactly as
it reads a real network camera, so tests and the demo exercise the same capture
path. Every frame carries its index twice: as readable text for people looking
at a snapshot, and as a row of large black/white blocks that
:func:`decode_frame_index` reads back after JPEG compression, so a test can tell
*which* frame a snapshot shows and, through :meth:`CameraSimulator.frame_time`,
*when* that frame was generated.

One producer thread renders and encodes each frame once, at ``fps``; every
client is sent the latest frame, so several viewers cost no more CPU than one.

:meth:`CameraSimulator.show_qr` holds a QR code up to the camera: a visitor pass (or any text) drawn by
segno into every frame from then on, above the index strip, until it is taken away again. The frames go
through the same JPEG encoding, MJPEG stream and OpenCV decoding as every other, so the edge's QR scanner
(edge/qr.py) reads exactly what it would read from a real camera (scenario verb ``show_qr``).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import OrderedDict
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import cv2
import numpy as np
import segno

log = logging.getLogger("doorkeep.simulators.camera")

BOUNDARY = "doorkeepframe"
STREAM_PATH = "/stream.mjpg"
SNAPSHOT_PATH = "/snapshot.jpg"

# The machine-readable index: 20 bits of frame index plus a 4-bit check,
# drawn MSB first, left to right, across the bottom sixth of the image.
INDEX_BITS = 20
CHECK_BITS = 4
CODE_BLOCKS = INDEX_BITS + CHECK_BITS
_CHECK_SALT = 0xA  # so an all-black strip does not decode as frame 0
_FRAME_TIMES_KEPT = 500
MIN_WIDTH = CODE_BLOCKS * 8  # blocks at least 8 px wide
MIN_HEIGHT = 64


def _check_nibble(index: int) -> int:
    check = _CHECK_SALT
    for shift in range(0, INDEX_BITS, 4):
        check ^= (index >> shift) & 0xF
    return check


def _code_bits(index: int) -> list[int]:
    value = ((index % (1 << INDEX_BITS)) << CHECK_BITS) | _check_nibble(index % (1 << INDEX_BITS))
    return [(value >> (CODE_BLOCKS - 1 - i)) & 1 for i in range(CODE_BLOCKS)]


def _code_row(width: int, height: int) -> tuple[int, list[tuple[int, int]]]:
    """Where the code strip is: its top row and each block's [x0, x1).

    Derived from the image size alone, so the decoder needs no side channel.
    """
    top = height - max(8, height // 6)
    xs = [round(i * width / CODE_BLOCKS) for i in range(CODE_BLOCKS + 1)]
    return top, list(zip(xs[:-1], xs[1:]))


def qr_image(text: str, max_px: int) -> np.ndarray:
    """``text`` as a QR code (error correction M, a 4-module quiet zone) in grey pixels, each module an integer
    number of pixels (at least 2), as large as fits in ``max_px``: what a phone screen shows."""
    code = segno.make_qr(text, error="m", boost_error=False)
    modules = np.array(list(code.matrix_iter(scale=1, border=4)), dtype=np.uint8)
    scale = max(2, max_px // modules.shape[0])
    image = np.where(modules == 1, 0, 255).astype(np.uint8)
    return np.kron(image, np.ones((scale, scale), dtype=np.uint8))


def draw_frame(index: int, width: int, height: int, wall: float, qr: np.ndarray | None = None) -> np.ndarray:
    """Render frame ``index``: a human-readable clock and counter plus the code strip, and ``qr`` (grey pixels)
    centred above the strip when one is shown."""
    img = np.full((height, width, 3), 48, dtype=np.uint8)
    # A bar that sweeps across makes motion (and a frozen stream) obvious to a viewer.
    sweep = (index * 7) % width
    img[: height // 10, sweep : sweep + 6] = (0, 180, 255)
    stamp = datetime.fromtimestamp(wall).strftime("%H:%M:%S.%f")[:-3]
    scale = width / 640
    cv2.putText(img, f"#{index}", (8, int(height * 0.35)), cv2.FONT_HERSHEY_SIMPLEX,
                scale * 1.6, (255, 255, 255), max(1, int(scale * 3)), cv2.LINE_AA)
    cv2.putText(img, stamp, (8, int(height * 0.6)), cv2.FONT_HERSHEY_SIMPLEX,
                scale * 1.3, (200, 255, 200), max(1, int(scale * 2)), cv2.LINE_AA)
    top, blocks = _code_row(width, height)
    if qr is not None:
        size = min(qr.shape[0], top, width)
        y0 = max(0, (top - size) // 2)
        x0 = (width - size) // 2
        img[y0:y0 + size, x0:x0 + size] = qr[:size, :size, None]
    for bit, (x0, x1) in zip(_code_bits(index), blocks):
        img[top:, x0:x1] = 255 if bit else 0
    return img


def decode_frame_index(image: Any) -> int | None:
    """The frame index drawn by :class:`CameraSimulator`, or None if there is none.

    Reads the mean of the middle of each block, so JPEG ringing at block edges
    does not matter; a block that is neither clearly dark nor clearly light, or
    a failed check nibble, means "not a simulator frame" rather than a guess.
    Indexes wrap at 2**20 (29 hours at 10 fps).
    """
    if image is None:
        return None
    arr = np.asarray(image)
    if arr.ndim == 3:
        arr = arr.mean(axis=2)
    if arr.ndim != 2:
        return None
    height, width = arr.shape
    if width < MIN_WIDTH or height < MIN_HEIGHT:
        return None
    top, blocks = _code_row(width, height)
    band = height - top
    y0, y1 = top + band // 4, height - band // 4
    value = 0
    for x0, x1 in blocks:
        margin = (x1 - x0) // 4
        level = float(arr[y0:y1, x0 + margin : x1 - margin].mean())
        if 70.0 < level < 185.0:
            return None
        value = (value << 1) | (level >= 128.0)
    index, check = value >> CHECK_BITS, value & ((1 << CHECK_BITS) - 1)
    return index if _check_nibble(index) == check else None


class _Server(ThreadingHTTPServer):
    """Daemon handler threads and port reuse, so stop/start on one port is reliable."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], sim: CameraSimulator) -> None:
        self.sim = sim
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A viewer hanging up is routine, not worth a traceback on stderr.
        log.debug("camera simulator: client %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "doorkeep-camera-sim/1"

    def setup(self) -> None:
        super().setup()
        self.server.sim._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.sim._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base class name
        log.debug("camera simulator: " + format, *args)

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        path = self.path.split("?", 1)[0]
        try:
            if path == STREAM_PATH:
                self._stream()
            elif path == SNAPSHOT_PATH:
                self._snapshot()
            else:
                self.send_error(404, "no such path")
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            log.debug("camera simulator: client %s disconnected", self.client_address)
        except OSError as exc:  # socket shut down by stop()
            log.debug("camera simulator: connection ended: %s", exc)

    def _snapshot(self) -> None:
        latest = self.server.sim._wait_frame(-1, timeout=2.0)
        if latest is None:
            self.send_error(503, "no frame yet")
            return
        _, jpeg = latest
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(jpeg)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(jpeg)

    def _stream(self) -> None:
        sim = self.server.sim
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        sent = -1
        while True:
            latest = sim._wait_frame(sent, timeout=1.0)
            if sim._stopped.is_set():
                return
            if latest is None:
                continue
            sent, jpeg = latest
            head = (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                    f"Content-Length: {len(jpeg)}\r\n\r\n").encode("ascii")
            self.wfile.write(head + jpeg + b"\r\n")


class CameraSimulator:
    """An MJPEG network camera on loopback whose frames can be identified and timed."""

    def __init__(self, *, width: int = 320, height: int = 240, fps: float = 10.0,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        if width < MIN_WIDTH or height < MIN_HEIGHT:
            raise ValueError(f"frames must be at least {MIN_WIDTH}x{MIN_HEIGHT} to carry the index code")
        if fps <= 0:
            raise ValueError("fps must be positive")
        self.width = width
        self.height = height
        self.fps = fps
        self.host = host
        self._port = port
        self.frames_generated: int = 0
        self._cond = threading.Condition()
        self._latest: tuple[int, bytes] | None = None
        self._times: OrderedDict[int, float] = OrderedDict()
        self._clients: set[socket.socket] = set()
        self._stopped = threading.Event()
        self._lifecycle = threading.Lock()
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []
        self._qr: np.ndarray | None = None
        self.qr_shown_at: float | None = None
        """``time.monotonic()`` of the first frame that carries the code shown last (None before)."""
        self._qr_pending = False

    @property
    def url(self) -> str:
        """The stream URL; fixed once started, and kept across stop/start."""
        if self._port == 0:
            raise RuntimeError("camera simulator not started yet")
        return f"http://{self.host}:{self._port}{STREAM_PATH}"

    def start(self) -> str:
        """Serve the stream; a restarted simulator comes back on the same port."""
        with self._lifecycle:
            if self._server is not None:
                return self.url
            self._stopped.clear()
            server = _Server((self.host, self._port), self)
            self._port = server.server_address[1]
            self._server = server
            self._threads = [
                threading.Thread(target=self._produce, name="camera-sim-frames", daemon=True),
                threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                 name="camera-sim-http", daemon=True),
            ]
            for thread in self._threads:
                thread.start()
            log.info("camera simulator serving %s", self.url)
            return self.url

    def stop(self) -> None:
        """Stop serving and hang up on every client so their readers see the outage."""
        with self._lifecycle:
            server, self._server = self._server, None
            if server is None:
                return
            self._stopped.set()
            with self._cond:
                self._cond.notify_all()
            server.shutdown()
            server.server_close()
            with self._cond:
                clients = list(self._clients)
            for conn in clients:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            for thread in self._threads:
                thread.join(timeout=2.0)
            self._threads = []
            with self._cond:
                self._latest = None
            log.info("camera simulator on port %d stopped", self._port)

    def show_qr(self, text: str | None) -> None:
        """Hold a QR code of ``text`` up to the camera from the next frame on; None takes it away."""
        image = qr_image(text, self.height - max(8, self.height // 6)) if text is not None else None
        with self._cond:
            self._qr = image
            self._qr_pending = image is not None
            if image is None:
                self.qr_shown_at = None

    def frame_time(self, index: int) -> float | None:
        """``time.monotonic()`` when frame ``index`` was generated (recent frames only)."""
        with self._cond:
            return self._times.get(index)

    # -- internals ---------------------------------------------------------

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._cond:
            if add:
                self._clients.add(conn)
            else:
                self._clients.discard(conn)

    def _wait_frame(self, after: int, timeout: float) -> tuple[int, bytes] | None:
        """The latest frame once it is newer than ``after``; None on timeout or stop."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._stopped.is_set() or (self._latest is not None and self._latest[0] > after),
                timeout=timeout,
            )
            latest = self._latest
        if latest is None or latest[0] <= after:
            return None
        return latest

    def _produce(self) -> None:
        """Render frames on a fixed schedule; falls back into step after a stall."""
        period = 1.0 / self.fps
        next_at = time.monotonic()
        while not self._stopped.is_set():
            index = self.frames_generated
            generated_at = time.monotonic()
            with self._cond:
                qr, first_qr = self._qr, self._qr_pending
            try:
                img = draw_frame(index, self.width, self.height, time.time(), qr)
                ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 80])
                if not ok:
                    raise RuntimeError("imencode failed")
            except Exception:
                log.exception("camera simulator: frame %d failed", index)
            else:
                with self._cond:
                    if first_qr and self._qr is qr:
                        self._qr_pending = False
                        self.qr_shown_at = generated_at
                    self._times[index] = generated_at
                    while len(self._times) > _FRAME_TIMES_KEPT:
                        self._times.popitem(last=False)
                    self._latest = (index, buf.tobytes())
                    self.frames_generated = index + 1
                    self._cond.notify_all()
            next_at += period
            now = time.monotonic()
            if next_at < now - period:  # stalled (e.g. a busy CI box): do not burst to catch up
                next_at = now
            self._stopped.wait(max(0.0, next_at - now))
