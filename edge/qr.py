"""Visitor passes read off a door camera's frames: OpenCV's QR detector on a thread of its own.

The camera thread already keeps the last seconds of frames (edge/camera.py); a camera with ``qr = true``
gets a :class:`QrScanner` that takes the newest of them at most ``qr_fps`` times a second, decodes it to
grey (an MJPEG camera's frames are JPEGs: only the scanned ones are ever decoded), crops the configured
region of interest (``qr_roi``) and runs OpenCV's QR detector on it (``cv2.QRCodeDetectorAruco``, the
detector OpenCV 4.8 added, where there is one, else ``cv2.QRCodeDetector``: on a 1280x720 frame without a
code the first costs 2-3 ms, the classic one 10-40 ms; docs/performance.md). Each misses codes the other reads,
so beside an ArUco detector the classic one takes one scan in :data:`CLASSIC_EVERY`. Frames wider than
:data:`HALF_SIZE_ABOVE` pixels are *searched* at half size (libjpeg scales while decoding, nearly for free), and
only when a code is found there is the frame decoded at full size and the code read from a crop around it:
nearly every frame has no code, and reading one at half size fails for modules of 5-6 pixels that the full
size reads (a pass about 210 pixels across or more is found and read). Scanning costs milliseconds a frame,
far too long for the edge's loop (docs/concurrency.md), so it runs on its own thread, ``qr-CAMERA``, and
hands what it read to the loop with the agent's ``_post`` (``call_soon_threadsafe``), like a reader's card.

A code held up to the camera is in many frames in a row: :class:`HeldCodeFilter` (the readers'
:class:`~edge.readers.RepeatFilter`, refreshed while the code stays in view) passes it on once, and again
only after it has been out of view for ``repeat_s``. Whether the text is a pass, and a valid one, is for the
agent to say (doorkeep/visitor_pass.py); the scanner passes on any text, never logging it whole.

The CPU it costs while nothing is shown, beside the capture's own, is in docs/performance.md
(bench/qr_pass.py).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from edge.camera import Camera
from edge.readers import RepeatFilter

log = logging.getLogger("doorkeep.edge.qr")

#: A code seen again within this many seconds of its last sighting is the same showing, not a new one.
QR_REPEAT_S = 2.0
#: How long the scanner waits for a frame before looking at its stop flag again.
WAIT_S = 0.5
#: Frames wider than this are searched at half their size (a 1280x720 camera: 640x360).
HALF_SIZE_ABOVE = 960
#: A code found this wide (pixels) in the half-size frame is read there; a smaller one from the full-size frame.
LARGE_CODE_PX = 180.0

CodeCallback = Callable[[str, str, float], None]
"""``(door, text, t_captured)``: a code read at ``door`` from a frame captured at ``t_captured`` (monotonic)."""

Roi = tuple[float, float, float, float]


class HeldCodeFilter(RepeatFilter):
    """The readers' repeat filter, for a code in view: each sighting restarts the window, so a pass held in
    front of the camera for a minute is one request, and shown again after ``window_s`` out of view, one more."""

    def is_repeat(self, number: str, now: float) -> bool:
        repeat = super().is_repeat(number, now)
        if repeat:
            self._accepted_at[number] = now
        return repeat


@dataclass
class QrStats:
    """What the scanner did: frames scanned, codes found, codes passed on, and repeats dropped."""

    scans: int = 0
    codes: int = 0
    passed_on: int = 0
    repeats: int = 0
    errors: int = 0


#: With the ArUco detector, one scan in this many uses the classic one instead: each misses codes the other
#: reads (a pass the ArUco detector does not even find is kept in tests/unit/assets), and the classic one costs
#: several times more on a frame with no code, so it gets one scan in four, an even one (scans at half size
#: only: the full-size search of the odd scans is the ArUco detector's).
CLASSIC_EVERY = 4


def make_detector() -> Any:
    """OpenCV's QR detector: the ArUco-based one where this OpenCV has it (much cheaper on a frame with no
    code, which is nearly every frame), else the classic one."""
    aruco = getattr(cv2, "QRCodeDetectorAruco", None)
    return aruco() if aruco is not None else cv2.QRCodeDetector()


def make_detectors() -> tuple[Any, Any | None]:
    """The scanner's detectors: :func:`make_detector`'s, and the classic one beside an ArUco one (else None)."""
    first = make_detector()
    return first, (cv2.QRCodeDetector() if not isinstance(first, cv2.QRCodeDetector) else None)


def detector_for(scan: int, detectors: tuple[Any, Any | None]) -> Any:
    """Which detector scan number ``scan`` (from 0) uses: the classic fallback one scan in :data:`CLASSIC_EVERY`
    (the third of each four: an even scan, which :meth:`QrScanner.scan` searches at half size only)."""
    first, fallback = detectors
    return fallback if fallback is not None and scan % CLASSIC_EVERY == 2 else first


def grey(item: Any, *, half: bool = True) -> np.ndarray | None:
    """A buffered frame (a BGR array, or an MJPEG camera's JPEG bytes) as one grey plane; with ``half``, at half
    size when it is wider than :data:`HALF_SIZE_ABOVE`. None if it cannot be decoded."""
    if isinstance(item, (bytes, bytearray)):
        data = np.frombuffer(item, np.uint8)
        try:
            image = cv2.imdecode(data, cv2.IMREAD_REDUCED_GRAYSCALE_2 if half else cv2.IMREAD_GRAYSCALE)
            if half and image is not None and image.shape[1] * 2 <= HALF_SIZE_ABOVE:
                image = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)  # a small frame: every pixel counts
        except cv2.error:
            return None
        return image
    arr = np.asarray(item)
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGR2GRAY)
    if arr.ndim != 2:
        return None
    if half and arr.shape[1] > HALF_SIZE_ABOVE:
        arr = cv2.resize(arr, (arr.shape[1] // 2, arr.shape[0] // 2), interpolation=cv2.INTER_AREA)
    return arr


def find_code(detector: Any, item: Any, roi: Roi, *, search_full: bool = True) -> str | None:
    """The text of a QR code in a buffered frame's region of interest, None when there is none.

    Searched on the (half-size) grey frame; a code found there is read from the full-size frame, cropped to
    the code and a margin, so a smaller code still reads and a frame without one costs only the search.
    At half size a code of about 5 pixels a module can alias into grey and not be found at all (a third of
    such codes, measured): with ``search_full`` a frame where the half-size search found nothing is searched
    again at full size (about twice the cost of the half-size search; the scanner does it every other scan)."""
    small = grey(item)
    if small is None:
        return None
    region = crop(small, roi)
    try:
        found, points = detector.detect(region)
    except cv2.error:
        return None
    if not found or points is None:
        if not search_full:
            return None
        full = grey(item, half=False)
        if full is None or full.shape[1] == small.shape[1]:
            return None
        return read_code(detector, crop(full, roi))
    corners = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if float(np.ptp(corners[:, 0])) >= LARGE_CODE_PX:  # 4 pixels a module or more even here: read it as it is
        text = read_code(detector, _around(region, corners, 1.0))
        if text is not None:
            return text
    full = grey(item, half=False)
    if full is None or full.shape[1] == small.shape[1]:
        return read_code(detector, region)
    return read_code(detector, _around(crop(full, roi), corners, full.shape[1] / small.shape[1])) \
        or read_code(detector, region)


def _around(image: np.ndarray, corners: np.ndarray, scale: float) -> np.ndarray:
    """The part of ``image`` around a code found at ``corners`` (in an image ``scale`` times smaller), with a
    margin for the quiet zone."""
    corners = corners * scale
    margin = max(16.0, 0.15 * float(np.ptp(corners[:, 0])))
    x0, y0 = np.maximum(corners.min(axis=0) - margin, 0).astype(int)
    x1, y1 = (corners.max(axis=0) + margin).astype(int)
    return image[y0:y1 + 1, x0:x1 + 1]


def crop(image: np.ndarray, roi: Roi) -> np.ndarray:
    """The region of ``image`` that ``roi`` (fractions: left, top, right, bottom) names; a view, not a copy."""
    height, width = image.shape[:2]
    x0, y0, x1, y1 = roi
    return image[int(y0 * height):max(int(y0 * height) + 1, round(y1 * height)),
                 int(x0 * width):max(int(x0 * width) + 1, round(x1 * width))]


def read_code(detector: Any, image: np.ndarray) -> str | None:
    """The text of a QR code in ``image``, None when there is none (or OpenCV could not read it)."""
    try:
        text, points, _ = detector.detectAndDecode(image)
    except cv2.error:
        return None
    return text or None


class QrScanner:
    """Scans one camera's newest frames for QR codes, for one door, on its own thread."""

    def __init__(self, camera: Camera, *, door: str, on_code: CodeCallback, fps: float = 5.0,
                 roi: Roi = (0.0, 0.0, 1.0, 1.0), repeat_s: float = QR_REPEAT_S) -> None:
        if fps <= 0:
            raise ValueError("qr_fps must be positive")
        self.camera = camera
        self.door = door
        self.fps = fps
        self.roi = roi
        self._on_code = on_code
        self._repeats = HeldCodeFilter(repeat_s)
        self._stats = QrStats()
        self._stats_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def stats(self) -> QrStats:
        with self._stats_lock:
            return dataclasses.replace(self._stats)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"qr-{self.camera.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        self.camera.wake()
        thread.join(timeout=5.0)
        if thread.is_alive():
            log.warning("camera %s: the QR scanner did not stop within 5 s", self.camera.name)

    def scan(self, item: Any, captured_at: float, detector: Any) -> str | None:
        """Scan one buffered frame; pass a new code on to the callback. Returns the text read, if any."""
        # every other scan also searches at full size when the half-size search finds nothing (find_code)
        text = find_code(detector, item, self.roi, search_full=self._stats.scans % 2 == 1)
        new = text is not None and not self._repeats.is_repeat(text, captured_at)
        with self._stats_lock:
            self._stats.scans += 1
            if text is not None:
                self._stats.codes += 1
                if new:
                    self._stats.passed_on += 1
                else:
                    self._stats.repeats += 1
        if new and text is not None:
            log.info("door %s: code read by camera %s (%d characters, …%s)", self.door, self.camera.name,
                     len(text), text[-4:])
            self._on_code(self.door, text, captured_at)
        return text

    def _run(self) -> None:
        """Scan the newest frame, at most ``fps`` a second, never the same frame twice; never dies."""
        detectors = make_detectors()  # not thread-safe: this thread's own
        period = 1.0 / self.fps
        clock = self.camera.clock
        last = float("-inf")
        next_at = clock.monotonic()
        while not self._stop.is_set():
            wait = next_at - clock.monotonic()
            if wait > 0 and self._stop.wait(min(wait, WAIT_S)):
                break
            if wait > WAIT_S:
                continue
            frame = self.camera.next_frame(after=last, timeout=WAIT_S)
            if frame is None:
                continue
            last, item = frame
            next_at = max(next_at + period, clock.monotonic())
            try:
                self.scan(item, last, detector_for(self._stats.scans, detectors))
            except Exception:
                with self._stats_lock:
                    self._stats.errors += 1
                log.exception("camera %s: QR scan failed", self.camera.name)
        log.debug("camera %s: QR scanner exiting", self.camera.name)
