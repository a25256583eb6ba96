"""The edge's QR scanner (edge/qr.py) on real JPEG frames, its held-code filter, the camera settings that
configure it (doorkeep/config.py), the simulator's QR drawing, and a serial QR scanner's pass line."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import segno
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from doorkeep.clock import FakeClock
from doorkeep.config import check, load_site_dir
from doorkeep.visitor_pass import MAX_TOKEN_CHARS, PassClaims, sign_pass
from edge.framing import CardRead, FrameParser
from edge.qr import CLASSIC_EVERY, HeldCodeFilter, QrScanner, crop, detector_for, find_code, grey, make_detector, \
    make_detectors, read_code
from simulators.camera import decode_frame_index, draw_frame, qr_image
from tests.conftest import wait_until
from tests.unit.test_config import DEVICE, make_site

TOKEN = sign_pass(PassClaims("v-0123456789ab", 1_765_000_000, 1_765_030_000, 1), Ed25519PrivateKey.generate())


def jpeg(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert ok
    return buf.tobytes()


def frame_with(text: str | None, width: int = 320, height: int = 240, index: int = 7) -> bytes:
    qr = qr_image(text, height - max(8, height // 6)) if text is not None else None
    return jpeg(draw_frame(index, width, height, 0.0, qr))


@pytest.mark.parametrize("size", [(320, 240), (1280, 720)], ids=["320x240", "1280x720-at-half-size"])
def test_a_pass_drawn_into_a_jpeg_frame_reads_back_exactly(size: tuple[int, int]) -> None:
    data = frame_with(TOKEN, *size)
    image = grey(data)
    assert image is not None
    assert image.shape[1] == (size[0] if size[0] <= 960 else size[0] // 2)
    assert read_code(make_detector(), image) == TOKEN
    # The frame index strip is still readable below the code.
    assert decode_frame_index(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)) == 7


def test_a_code_the_aruco_detector_misses_is_read_by_the_classic_one_scan_in_four() -> None:
    """The kiosk's frame the ArUco detector does not find (tests/unit/assets): at a door the scanner uses the
    classic detector one scan in CLASSIC_EVERY, so such a pass is read within that many scans."""
    assets = Path(__file__).parent / "assets"
    frame = (assets / "kiosk_frame_aruco_misses.jpg").read_bytes()
    token = (assets / "kiosk_frame_aruco_misses.txt").read_text().strip()
    detectors = make_detectors()
    assert isinstance(detectors[0], cv2.QRCodeDetectorAruco) and isinstance(detectors[1], cv2.QRCodeDetector)
    roi = (0.0, 0.0, 1.0, 1.0)
    read = [find_code(detector_for(n, detectors), frame, roi, search_full=n % 2 == 1) for n in range(CLASSIC_EVERY)]
    assert read == [None, None, token, None]
    assert [detector_for(n, (detectors[0], None)) for n in range(8)] == [detectors[0]] * 8, \
        "without an ArUco detector there is no fallback: the classic one scans every frame"


def test_a_frame_without_a_code_reads_nothing_and_a_bgr_frame_is_accepted_too() -> None:
    detector = make_detector()
    assert read_code(detector, grey(frame_with(None))) is None
    bgr = draw_frame(1, 1280, 720, 0.0, qr_image(TOKEN, 500))
    assert grey(bgr).shape == (360, 640) and read_code(detector, grey(bgr)) == TOKEN
    assert grey(b"not a jpeg") is None


@pytest.mark.parametrize("module_px", [4, 5, 6, 8, 11])
def test_a_smaller_code_found_at_half_size_is_read_from_the_full_size_frame(module_px: int) -> None:
    """Reading at half size alone fails for 5-6 px modules; the full-size crop around what was found reads them,
    and a code the half-size search misses (about a third of 5 px codes alias into grey there) is found by the
    full-size search. Ten different passes each, since whether a code aliases depends on its pattern."""
    key = Ed25519PrivateKey.generate()
    detector = make_detector()
    for serial in range(10):
        token = sign_pass(PassClaims(f"v-{serial:012d}", 1_765_000_000, 1_765_030_000, serial), key)
        modules = np.array(list(segno.make_qr(token, error="m", boost_error=False).matrix_iter(scale=1, border=4)),
                           dtype=np.uint8)
        code = np.kron(np.where(modules == 1, 0, 255).astype(np.uint8), np.ones((module_px, module_px), np.uint8))
        data = jpeg(draw_frame(1, 1280, 720, 0.0, code))
        assert find_code(detector, data, (0.2, 0.0, 0.8, 0.85)) == token, (module_px, serial)


def test_the_region_of_interest_hides_a_code_outside_it() -> None:
    image = grey(frame_with(TOKEN))
    assert read_code(make_detector(), crop(image, (0.0, 0.0, 0.2, 0.2))) is None
    assert crop(image, (0.25, 0.5, 0.75, 1.0)).shape == (120, 160)


def test_a_code_held_in_view_is_taken_once_and_again_after_it_was_away() -> None:
    f = HeldCodeFilter(2.0)
    assert [f.is_repeat("A", t) for t in (0.0, 0.2, 1.9, 3.5, 5.0)] == [False, True, True, True, True]
    assert f.is_repeat("A", 7.1) is False  # out of view for more than 2 s
    assert f.is_repeat("B", 7.2) is False


class FakeCamera:
    """What the scanner needs of a camera: a clock, the newest frame, a way to be woken."""

    name = "lobby"

    def __init__(self) -> None:
        self.clock = FakeClock()
        self._cond = threading.Condition()
        self._frame: tuple[float, Any] | None = None

    def put(self, data: bytes) -> None:
        with self._cond:
            self.clock.advance(0.1)
            self._frame = (self.clock.monotonic(), data)
            self._cond.notify_all()

    def next_frame(self, after: float, timeout: float) -> tuple[float, Any] | None:
        with self._cond:
            self._cond.wait_for(lambda: self._frame is not None and self._frame[0] > after, timeout)
            return self._frame if self._frame is not None and self._frame[0] > after else None

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


def test_the_scanner_thread_hands_a_new_code_on_once_with_its_frames_time() -> None:
    camera = FakeCamera()
    got: list[tuple[str, str, float]] = []
    scanner = QrScanner(camera, door="lobby_in", on_code=lambda *a: got.append(a), fps=30.0)  # type: ignore[arg-type]
    scanner.start()
    try:
        camera.put(frame_with(None))
        assert wait_until(lambda: scanner.stats.scans >= 1, 5)
        with_code = frame_with(TOKEN)
        for _ in range(4):
            camera.put(with_code)
            scans = scanner.stats.scans
            assert wait_until(lambda: scanner.stats.scans > scans, 5)
        assert [(door, text) for door, text, _ in got] == [("lobby_in", TOKEN)]
        assert got[0][2] == pytest.approx(camera.clock.monotonic() - 0.3)
        # Every sighting after the first is a repeat; the classic detector's scan (one in four) may not read this
        # small code (4-5 px a module) at all, which only leaves it out of the count.
        stats = scanner.stats
        assert stats.passed_on == 1 and stats.repeats == stats.codes - 1 and stats.codes >= 3
        assert threading.current_thread().name != "qr-lobby"
        assert any(t.name == "qr-lobby" for t in threading.enumerate())
    finally:
        started = time.monotonic()
        scanner.stop()
    assert time.monotonic() - started < 2.0 and not any(t.name == "qr-lobby" for t in threading.enumerate())


def test_a_serial_qr_scanner_line_carrying_a_pass_is_not_cut_as_oversized() -> None:
    parser = FrameParser("ascii")
    assert parser.feed(TOKEN.encode() + b"\r\n") == [CardRead(TOKEN, "qr-pass")]  # a pass, not a card number
    long_pass_like = ("DKP1" + "A" * (MAX_TOKEN_CHARS + 10)).encode()
    assert [type(i).__name__ for i in parser.feed(long_pass_like + b"\r\n")] == ["FrameFault"]
    assert [i.kind for i in parser.feed(b"7" * 40 + b"\r\n")] == ["oversized"]  # type: ignore[union-attr]


CAMERA = '\n[cameras.door]\nsource = "0"\nfps = 10\n'


@pytest.mark.parametrize("extra, key, words", [
    ("qr = true\nqr_fps = 12", "cameras.door.qr_fps", "more than the camera's 10 frames"),
    ("qr = true\nqr_roi = [0.5, 0.2, 0.4, 0.9]", "cameras.door.qr_roi", "not a region inside the frame"),
    ("qr = true\nqr_roi = [0.1, 0.2]", "cameras.door.qr_roi", "four numbers"),
    ("qr = true\nqr_door = \"lab\"", "cameras.door.qr_door", "does not use camera"),
    ("qr = \"yes\"", "cameras.door.qr", "must be bool"),
], ids=["fps", "roi-order", "roi-length", "door", "qr-type"])
def test_camera_qr_settings_errors_name_the_key_and_the_fix(tmp_path: Path, extra: str, key: str, words: str) -> None:
    device = DEVICE.replace('gpio_factory = "mock"\n', 'gpio_factory = "mock"\n' + CAMERA + extra + "\n")
    device = device.replace("[doors.lobby_in.reader]", '[doors.lobby_in]\ncamera = "door"\n\n[doors.lobby_in.reader]')
    errors = check(make_site(tmp_path / "s", devices={"pi-a": device}))
    hits = [e for e in errors if e.key == key]
    assert len(hits) == 1 and words in str(hits[0]) and hits[0].fix, [str(e) for e in errors]
    assert "pi-a.toml" in hits[0].file


def test_a_qr_camera_over_one_door_takes_that_door(tmp_path: Path) -> None:
    demo = Path(__file__).resolve().parents[2] / "doorkeep" / "sites" / "demo"
    bundle = load_site_dir(demo)
    cam = bundle.devices["pi-lobby"].cameras["lobby"]
    assert (cam.qr, cam.qr_door, cam.qr_fps) == (True, "lobby_in", 10.0)
    device = DEVICE.replace('gpio_factory = "mock"\n', 'gpio_factory = "mock"\n' + CAMERA + "qr = true\n")
    device = device.replace("[doors.lobby_in.reader]", '[doors.lobby_in]\ncamera = "door"\n\n[doors.lobby_in.reader]')
    site = make_site(tmp_path / "s", devices={"pi-a": device})
    assert check(site) == []
    assert load_site_dir(site).devices["pi-a"].cameras["door"].qr_door == "lobby_in"
