"""The edge camera adapter: a capture thread with a ring buffer of recent frames.

A badge decision takes tens of milliseconds and the event is published after
it; grabbing a frame *then* would show the person walking away. So a thread
reads the camera continuously and keeps the last ``buffer_seconds`` of decoded
frames, each stamped with ``clock.monotonic()`` as it arrives, and
:meth:`Camera.snapshot` picks the frame nearest the badge time. Only that frame
is JPEG-encoded: encoding every frame would cost a core on a Raspberry Pi.

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
    ``reconnects`` counts every attempt to reopen after one.
    """

    frames: int = 0
    read_failures: int = 0
    reconnects: int = 0
    online: bool = False
    last_frame_at: float | None = None


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

    # -- public ------------------------------------------------------------

    def start(self) -> None:
        """Start capturing in a daemon thread; an unreachable source is retried, not raised."""
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
        src = self.source
        if src.isdigit():
            cap = cv2.VideoCapture(int(src))
            if cap.isOpened():
                cap.set(cv2.CAP_PROP_FPS, self.fps)  # best effort; the buffer is sized for it
            return cap
        if "://" in src:
            return cv2.VideoCapture(src, cv2.CAP_FFMPEG, [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, self.OPEN_TIMEOUT_MS,
                cv2.CAP_PROP_READ_TIMEOUT_MSEC, self.READ_TIMEOUT_MS,
            ])
        return cv2.VideoCapture(src)

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
            got_any = True
            with self._cond:
                self._frames.append((now, frame))
                self._stats.frames += 1
                self._stats.last_frame_at = now
                if not self._stats.online:
                    self._stats.online = True
                    log.info("camera %s online (%s, %dx%d)", self.name, redact(self.source),
                             frame.shape[1], frame.shape[0])
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
