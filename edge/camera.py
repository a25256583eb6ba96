"""The edge camera adapter: a capture thread with a ring buffer of recent frames.

A badge decision takes tens of milliseconds and the event is published after
it; grabbing a frame *then* would show the person walking away. So a thread
reads the camera continuously and keeps the last ``buffer_seconds`` of frames,
each stamped with ``clock.monotonic()`` as it arrives, and
:meth:`Camera.snapshot` picks the frame nearest the badge time. Only that frame
is JPEG-encoded: encoding every frame would cost a core on a Raspberry Pi.

An MJPEG camera (most USB and many IP cameras) already sends every frame as a
JPEG, so for such a source the buffer keeps the camera's own JPEG bytes
(OpenCV's raw mode, ``CAP_PROP_FORMAT = -1``) and only the chosen frame is ever
decoded. Decoding and colour-converting every frame to keep a few of them was
nearly all of the capture thread's work (2.9 ms of CPU a frame at 1280x720 on
the bench machine, against 0.1 ms to read the JPEG), and 20 decoded 720p frames
hold 55 MB where their JPEGs hold a few MB (bench/footprint.py,
docs/performance.md). A source that is not MJPEG, or whose raw frames turn out
not to be decodable JPEGs, is decoded frame by frame as before.

OpenCV and FFmpeg start worker threads of their own (a pool per CPU core for
OpenCV's parallel loops, frame threads in FFmpeg's decoder) that sit idle on a
door controller: the capture asks FFmpeg for one decoding thread, and
:meth:`Camera.start` turns OpenCV's pool off (``cv2.setNumThreads(0)``; the
edge process's only OpenCV user is this module, and JPEG coding, masking and
decoding run on one thread anyway).

The camera is best effort. A dead or unplugged camera never blocks or fails an
access decision: the thread retries with backoff forever, and ``snapshot``
returns None while there is nothing to show.

Privacy masks (a street seen through the glass door, a neighbour's window) are
polygons in fractions of the frame, filled black on a copy of the chosen frame
*before* it is encoded, so no masked pixel ever reaches a JPEG, the outbox or
the server. If masking fails the snapshot is dropped, never sent unmasked.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import cv2
import numpy as np

from doorkeep.clock import Clock, SystemClock

log = logging.getLogger("doorkeep.edge.camera")


@dataclass(frozen=True)
class Snapshot:
    """One JPEG-encoded frame and when it was captured."""

    jpeg: bytes
    captured_at: float  # clock.monotonic() when the frame was read
    width: int
    height: int


@dataclass
class CameraStats:
    """Health counters for the device status report.

    ``read_failures`` counts every failed open or read (EOF included);
    ``reconnects`` counts every attempt to reopen after one. ``jpeg_frames``:
    the buffer holds the camera's own JPEGs (an MJPEG source), not decoded frames.
    """

    frames: int = 0
    read_failures: int = 0
    reconnects: int = 0
    online: bool = False
    last_frame_at: float | None = None
    jpeg_frames: bool = False


Point = tuple[float, float]
Polygon = tuple[Point, ...]


class PrivacyMask:
    """Polygons blacked out of every snapshot of one camera.

    Points are ``(x, y)`` fractions of the frame's width and height (0.0-1.0),
    so a mask drawn once survives a change of the camera's resolution. The
    pixel polygons are computed once per frame size and cached; applying the
    mask copies the frame (buffered frames are shared with the capture thread
    and must never change) and fills each polygon with black. Boundary pixels
    are filled too, so rounding errs on the side of hiding a pixel more.
    """

    def __init__(self, polygons: Sequence[Sequence[Sequence[float]]] = ()) -> None:
        checked: list[Polygon] = []
        for i, poly in enumerate(polygons):
            if len(poly) < 3:
                raise ValueError(f"privacy mask {i} has {len(poly)} points; a polygon needs at least 3")
            points: list[Point] = []
            for j, point in enumerate(poly):
                if len(point) != 2:
                    raise ValueError(f"privacy mask {i} point {j} must be [x, y], got {list(point)!r}")
                x, y = (float(v) for v in point)
                if not (math.isfinite(x) and math.isfinite(y) and 0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
                    raise ValueError(f"privacy mask {i} point {j} ({x}, {y}) is outside 0.0-1.0")
                points.append((x, y))
            checked.append(tuple(points))
        self.polygons: tuple[Polygon, ...] = tuple(checked)
        self._pixels: dict[tuple[int, int], list[np.ndarray]] = {}

    def __bool__(self) -> bool:
        return bool(self.polygons)

    def pixel_polygons(self, width: int, height: int) -> list[np.ndarray]:
        """The polygons in pixels for one frame size (cached; the sizes a camera produces are few)."""
        pixels = self._pixels.get((width, height))
        if pixels is None:
            scale = np.array([width, height], dtype=np.float64)
            pixels = [np.round(np.array(poly, dtype=np.float64) * scale).astype(np.int32).reshape(-1, 1, 2)
                      for poly in self.polygons]
            self._pixels[(width, height)] = pixels  # a racing thread computes the same value
        return pixels

    def apply(self, frame: Any) -> Any:
        """``frame`` with every polygon black: a new array, or ``frame`` itself when there are no polygons."""
        if not self.polygons:
            return frame
        height, width = frame.shape[:2]
        out = frame.copy()
        cv2.fillPoly(out, self.pixel_polygons(width, height), (0, 0, 0))
        return out


#: FOURCCs of sources that send every frame as a whole JPEG: their frames are buffered undecoded.
MJPEG_FOURCCS = frozenset({"MJPG", "JPEG"})


def fourcc(cap: Any) -> str:
    """The capture's codec as four characters ("MJPG", "H264"), or "" when the backend does not say."""
    try:
        code = int(cap.get(cv2.CAP_PROP_FOURCC))
    except (cv2.error, ValueError, OverflowError):
        return ""
    if code <= 0:
        return ""
    return code.to_bytes(4, "little").decode("ascii", "replace")


def raw_jpeg(frame: Any) -> bytes | None:
    """The bytes of a raw-mode frame (one row of uint8) when they start like a JPEG, else None."""
    arr = np.asarray(frame)
    if arr.dtype != np.uint8 or arr.size < 4 or not (arr.ndim == 1 or (arr.ndim == 2 and arr.shape[0] == 1)):
        return None
    data = arr.tobytes()
    return data if data[:2] == b"\xff\xd8" else None


def decode_jpeg(data: bytes) -> Any:
    """A buffered JPEG decoded to a BGR frame, or None if it cannot be decoded."""
    try:
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        return None


def redact(source: str) -> str:
    """The source with any password in a URL masked, fit for logs."""
    if "://" not in source:
        return source
    parts = urlsplit(source)
    if parts.password is None:
        return source
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


class Camera:
    """Continuously captures ``source`` and serves snapshots of past moments.

    ``source`` is a device index given as digits ("0" is /dev/video0), an
    RTSP or HTTP (MJPEG) URL, or a video file path (read at ``fps`` and looped,
    which is handy for demos). ``fps`` should match the source's frame rate: it
    sizes the buffer and the default snapshot wait. ``privacy_masks`` are
    polygons of ``(x, y)`` frame fractions blacked out of every snapshot (see
    :class:`PrivacyMask`).

    Buffered frames are either decoded BGR arrays or, from an MJPEG source, the
    camera's JPEG ``bytes``; :meth:`snapshot` decodes the one it picks.
    """

    # Bounded FFmpeg timeouts for network sources. OpenCV's defaults are 30 s,
    # which would leave a camera "online" for half a minute after its cable is
    # pulled and make stop() wait as long.
    OPEN_TIMEOUT_MS: int = 2000
    READ_TIMEOUT_MS: int = 2000
    RECONNECT_MIN_S: float = 0.5
    RECONNECT_MAX_S: float = 5.0

    def __init__(self, name: str, source: str, *, fps: float = 10.0, buffer_seconds: float = 2.0,
                 jpeg_quality: int = 85, clock: Clock | None = None,
                 privacy_masks: Sequence[Sequence[Sequence[float]]] = ()) -> None:
        if not source:
            raise ValueError("camera source must not be empty")
        if fps <= 0 or buffer_seconds <= 0:
            raise ValueError("fps and buffer_seconds must be positive")
        if not 0 <= jpeg_quality <= 100:
            raise ValueError("jpeg_quality must be 0..100")
        self.name = name
        self.source = source
        self.fps = fps
        self.buffer_seconds = buffer_seconds
        self.jpeg_quality = jpeg_quality
        self.privacy_mask = PrivacyMask(privacy_masks)
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._cond = threading.Condition()
        self._frames: deque[tuple[float, Any]] = deque(maxlen=max(2, round(fps * buffer_seconds)))
        self._stats = CameraStats()
        self._lifecycle = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop: threading.Event | None = None
        # Set by the capture thread (and read only by it) once this source's raw frames proved not to be
        # JPEGs: from then on every frame is decoded.
        self._decode_only = False

    # -- public ------------------------------------------------------------

    def start(self) -> None:
        """Start capturing in a daemon thread; an unreachable source is retried, not raised.

        Also turns OpenCV's own thread pool off (process-wide, and this is the edge's only OpenCV user):
        a pool of one idle worker per core is waste on a door controller, and nothing here runs a
        parallel OpenCV loop that would be faster with it.
        """
        cv2.setNumThreads(0)
        with self._lifecycle:
            if self._thread is not None:
                return
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, args=(self._stop,),
                                            name=f"camera-{self.name}", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop capturing; the thread releases the capture on its way out.

        The thread may be inside OpenCV for up to one open/read timeout, so the
        join has a deadline; if it passes, the thread finishes on its own and
        touches nothing shared after seeing its stop event.
        """
        with self._lifecycle:
            thread, stop = self._thread, self._stop
            self._thread = self._stop = None
        if thread is None or stop is None:
            return
        stop.set()
        with self._cond:
            self._cond.notify_all()
        thread.join(timeout=max(self.OPEN_TIMEOUT_MS, self.READ_TIMEOUT_MS) / 1000 + 1.0)
        if thread.is_alive():
            log.warning("camera %s: capture thread still inside OpenCV after stop; it will exit on its own",
                        self.name)
        with self._cond:
            self._go_offline()

    @property
    def clock(self) -> Clock:
        """The clock frames are stamped with (``clock.monotonic()``)."""
        return self._clock

    def next_frame(self, after: float, timeout: float) -> tuple[float, Any] | None:
        """The newest buffered frame once one was captured after ``after``, as ``(captured_at, frame)``; None
        when none came within ``timeout`` seconds. For a reader of the frames themselves (edge/qr.py): the frame
        is the buffer's own (a decoded array, or an MJPEG camera's JPEG bytes) and must not be changed."""
        with self._cond:
            self._cond.wait_for(lambda: bool(self._frames) and self._frames[-1][0] > after, timeout=timeout)
            if not self._frames or self._frames[-1][0] <= after:
                return None
            return self._frames[-1]

    def wake(self) -> None:
        """Wake every thread waiting in :meth:`next_frame` or :meth:`snapshot` (one that is stopping)."""
        with self._cond:
            self._cond.notify_all()

    def nearer_frame_may_come(self, at: float) -> bool:
        """Whether a frame not yet captured could be nearer ``at`` than every buffered one: the rule
        :meth:`snapshot` waits by, for a caller that must not wait (the edge's jobs worker looks again later)."""
        with self._cond:
            if not self._frames:
                return False
            newest = self._frames[-1][0]
            return newest < at and at - newest > self._frame_interval() / 2

    def snapshot(self, at: float, *, wait_s: float | None = None) -> Snapshot | None:
        """The buffered frame nearest ``at`` (a ``clock.monotonic()`` badge time), as JPEG.

        When the badge is newer than every buffered frame, the next frame may be
        closer than the last one, so wait for it up to ``wait_s`` (default 1.5
        frame periods) before choosing; unless the badge is within half the
        observed frame interval of the newest frame, when the next one cannot
        be nearer and waiting would only delay the event. None when no frame
        is buffered.
        """
        if wait_s is None:
            wait_s = 1.5 / self.fps
        with self._cond:
            if not self._frames:
                return None
            newest = self._frames[-1][0]
            if newest < at and wait_s > 0 and at - newest > self._frame_interval() / 2:
                self._cond.wait_for(lambda: not self._frames or self._frames[-1][0] >= at, timeout=wait_s)
            if not self._frames:
                return None
            captured_at, frame = min(self._frames, key=lambda tf: abs(tf[0] - at))
        if isinstance(frame, bytes):  # the camera's own JPEG: decoded only now, for this snapshot
            frame = decode_jpeg(frame)
            if frame is None:
                log.error("camera %s: the buffered JPEG frame could not be decoded; snapshot dropped", self.name)
                return None
        jpeg = self.encode(frame)
        if jpeg is None:
            return None
        height, width = frame.shape[:2]
        return Snapshot(jpeg=jpeg, captured_at=captured_at, width=width, height=height)

    def encode(self, frame: Any) -> bytes | None:
        """``frame`` with the privacy masks applied, as JPEG; None if masking or encoding failed.

        Frames are never mutated once buffered (the mask works on a copy), so
        this runs outside the lock. A frame that cannot be masked is never
        encoded: no snapshot is better than one showing what must be hidden.
        """
        try:
            masked = self.privacy_mask.apply(frame)
        except (cv2.error, ValueError, TypeError, AttributeError):
            log.error("camera %s: privacy mask could not be applied to a %s frame; snapshot dropped",
                      self.name, getattr(frame, "shape", "?"))
            return None
        try:
            ok, buf = cv2.imencode(".jpg", masked, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        except cv2.error:
            ok = False
        if not ok:
            log.error("camera %s: JPEG encoding of a %s frame failed", self.name, getattr(frame, "shape", "?"))
            return None
        return buf.tobytes()

    def _frame_interval(self) -> float:
        """The mean interval between buffered frames (the source's real rate), else the nominal one.

        Caller holds ``self._cond``.
        """
        if len(self._frames) >= 2:
            span = self._frames[-1][0] - self._frames[0][0]
            if span > 0:
                return span / (len(self._frames) - 1)
        return 1.0 / self.fps

    @property
    def stats(self) -> CameraStats:
        """A consistent copy of the counters."""
        with self._cond:
            return dataclasses.replace(self._stats)

    # -- capture thread ----------------------------------------------------

    def _open(self) -> Any:
        """Open the source; an MJPEG one in raw mode, so frames arrive as the camera's JPEGs."""
        src = self.source
        if src.isdigit():
            cap = cv2.VideoCapture(int(src))
            if cap.isOpened():
                cap.set(cv2.CAP_PROP_FPS, self.fps)  # best effort; the buffer is sized for it
        elif "://" in src:
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, self.OPEN_TIMEOUT_MS,
                      cv2.CAP_PROP_READ_TIMEOUT_MSEC, self.READ_TIMEOUT_MS]
            n_threads = getattr(cv2, "CAP_PROP_N_THREADS", None)  # OpenCV >= 4.6
            if n_threads is not None:
                params += [n_threads, 1]  # one decoding thread (FFmpeg's default: one per core)
            cap = cv2.VideoCapture(src, cv2.CAP_FFMPEG, params)
        else:
            cap = cv2.VideoCapture(src)
        if cap.isOpened() and not self._decode_only and fourcc(cap).upper() in MJPEG_FOURCCS:
            # Best effort: a backend that refuses keeps decoding, and the first frame tells which it did.
            cap.set(cv2.CAP_PROP_FORMAT, -1)
        return cap

    def _buffered_form(self, frame: Any, first: bool) -> tuple[Any, tuple[int, int] | None]:
        """What to buffer for a frame just read, and its (width, height) when known; (None, None) when
        raw frames turned out not to be usable JPEGs (the caller reopens the source, decoding).

        A decoded frame (3-D) is buffered as it is. A raw frame must start like a JPEG, and the first
        one after each open is decoded once, so a stream whose packets are not whole JPEGs (or that
        OpenCV cannot decode) is caught before any of its frames could be chosen for a snapshot.
        """
        if getattr(frame, "ndim", 0) == 3:
            return frame, (frame.shape[1], frame.shape[0])
        jpeg = raw_jpeg(frame)
        size: tuple[int, int] | None = None
        if jpeg is not None and first:
            image = decode_jpeg(jpeg)
            jpeg = jpeg if image is not None else None
            size = (image.shape[1], image.shape[0]) if image is not None else None
        if jpeg is None:
            log.warning("camera %s: the source's raw frames are not decodable JPEGs; decoding every frame instead",
                        self.name)
            self._decode_only = True
            return None, None
        return jpeg, size

    def _is_file(self) -> bool:
        return not self.source.isdigit() and "://" not in self.source

    def _run(self, stop: threading.Event) -> None:
        """Open, read until failure, back off, repeat, until stopped. Never dies."""
        backoff = self.RECONNECT_MIN_S
        attempt = 0
        while not stop.is_set():
            if attempt:
                with self._cond:
                    self._stats.reconnects += 1
            attempt += 1
            cap = None
            try:
                cap = self._open()
                if stop.is_set():
                    break
                if not cap.isOpened():
                    self._failed(stop, "could not open")
                elif self._read_until_failure(cap, stop):
                    backoff = self.RECONNECT_MIN_S  # it worked for a while: retry promptly
            except Exception:
                log.exception("camera %s: capture error", self.name)
                self._failed(stop, "capture error")
            finally:
                if cap is not None:
                    try:
                        cap.release()
                    except Exception:
                        log.exception("camera %s: release failed", self.name)
            if stop.wait(backoff):
                break
            backoff = min(backoff * 2, self.RECONNECT_MAX_S)
        log.debug("camera %s: capture thread exiting", self.name)

    def _read_until_failure(self, cap: Any, stop: threading.Event) -> bool:
        """Read frames into the buffer; returns whether any frame was read."""
        pace = 1.0 / self.fps if self._is_file() else 0.0
        got_any = False
        while not stop.is_set():
            ok, frame = cap.read()  # blocks up to READ_TIMEOUT_MS; never under the lock
            now = self._clock.monotonic()
            if stop.is_set():
                break
            if not ok or frame is None:
                self._failed(stop, "end of stream" if got_any else "no frame after open")
                break
            item, size = self._buffered_form(frame, first=not got_any)
            if item is None:
                break
            got_any = True
            with self._cond:
                self._frames.append((now, item))
                self._stats.frames += 1
                self._stats.last_frame_at = now
                self._stats.jpeg_frames = isinstance(item, bytes)
                if not self._stats.online:
                    self._stats.online = True
                    width, height = size or (0, 0)
                    log.info("camera %s online (%s, %dx%d, %s)", self.name, redact(self.source), width, height,
                             "buffering its JPEGs" if isinstance(item, bytes) else "decoding every frame")
                self._cond.notify_all()
            if pace and stop.wait(pace):
                break
        return got_any

    def _failed(self, stop: threading.Event, why: str) -> None:
        """Count a failure and go offline, logging only the transition, not every retry."""
        if stop.is_set():
            return
        with self._cond:
            self._stats.read_failures += 1
            first = self._stats.read_failures == 1
            if self._stats.online or first:
                log.warning("camera %s offline: %s (%s); retrying", self.name, why, redact(self.source))
            else:
                log.debug("camera %s still offline: %s", self.name, why)
            self._go_offline()

    def _go_offline(self) -> None:
        """Drop the buffer: frames from before an outage must not pass for the badge moment.

        Caller holds ``self._cond``.
        """
        self._stats.online = False
        self._frames.clear()
        self._cond.notify_all()
