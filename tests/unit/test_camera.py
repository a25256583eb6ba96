"""The edge camera adapter against the MJPEG camera simulator, over real loopback HTTP."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

import edge.camera
from edge.camera import Camera, raw_jpeg, redact
from simulators.camera import CameraSimulator, decode_frame_index, draw_frame

FPS = 10.0
PERIOD = 1.0 / FPS
FFMPEG_TIMEOUTS = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 2000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 2000]


def wait_until(pred: Callable[[], bool], timeout: float) -> bool:
    """Poll ``pred`` until true or ``timeout`` seconds pass; the only waiting the tests do."""
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while not pred():
        if time.monotonic() > deadline:
            return False
        tick.wait(0.02)
    return True


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def sim() -> Iterator[CameraSimulator]:
    simulator = CameraSimulator(width=320, height=240, fps=FPS)
    simulator.start()
    yield simulator
    simulator.stop()


@pytest.fixture
def make_camera() -> Iterator[Callable[..., Camera]]:
    cameras: list[Camera] = []

    def make(source: str, **kwargs: object) -> Camera:
        cam = Camera("door1", source, fps=FPS, **kwargs)  # type: ignore[arg-type]
        cam.RECONNECT_MAX_S = 1.0  # keep recovery tests short
        cameras.append(cam)
        cam.start()
        return cam

    yield make
    for cam in cameras:
        cam.stop()


def decode_jpeg(data: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None, "not a decodable JPEG"
    return img


# -- simulator ---------------------------------------------------------------


def test_simulator_stream_is_read_by_videocapture(sim: CameraSimulator) -> None:
    assert sim.url.startswith("http://127.0.0.1:") and sim.url.endswith("/stream.mjpg")
    cap = cv2.VideoCapture(sim.url, cv2.CAP_FFMPEG, FFMPEG_TIMEOUTS)
    try:
        assert cap.isOpened()
        indexes = []
        for _ in range(3):
            ok, frame = cap.read()
            assert ok and frame.shape == (240, 320, 3)
            indexes.append(decode_frame_index(frame))
    finally:
        cap.release()
    assert all(i is not None for i in indexes)
    assert indexes == sorted(indexes) and len(set(indexes)) == 3  # consecutive fresh frames
    assert sim.frame_time(indexes[-1]) is not None
    assert indexes[-1] < sim.frames_generated


def test_simulator_snapshot_404_and_rude_clients(sim: CameraSimulator) -> None:
    base = sim.url.rsplit("/", 1)[0]
    with urllib.request.urlopen(base + "/snapshot.jpg", timeout=2) as resp:
        assert resp.headers["Content-Type"] == "image/jpeg"
        assert decode_frame_index(decode_jpeg(resp.read())) is not None
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(base + "/nope", timeout=2)
    assert err.value.code == 404
    # A viewer that hangs up mid-stream must not take the server down.
    port = int(base.rsplit(":", 1)[1])
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"GET /stream.mjpg HTTP/1.0\r\n\r\n")
            head = s.recv(200)
            assert b"multipart/x-mixed-replace" in head
    with urllib.request.urlopen(base + "/snapshot.jpg", timeout=2) as resp:
        assert resp.status == 200


@pytest.mark.parametrize("index", [0, 1, 5, 0b1010_1010_1010, 123_456, 2**20 - 1])
@pytest.mark.parametrize("quality", [40, 85])
def test_decode_frame_index_survives_jpeg(index: int, quality: int) -> None:
    ok, buf = cv2.imencode(".jpg", draw_frame(index, 320, 240, 0.0), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    assert decode_frame_index(decode_jpeg(buf.tobytes())) == index


def test_decode_frame_index_rejects_other_pictures() -> None:
    assert decode_frame_index(np.zeros((240, 320, 3), np.uint8)) is None
    assert decode_frame_index(np.full((240, 320, 3), 128, np.uint8)) is None
    noise = np.random.default_rng(1).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    assert decode_frame_index(noise) is None
    assert decode_frame_index(np.zeros((10, 10, 3), np.uint8)) is None


# -- camera ------------------------------------------------------------------


def test_camera_goes_online_and_buffers(sim: CameraSimulator, make_camera: Callable[..., Camera]) -> None:
    cam = make_camera(sim.url)
    assert wait_until(lambda: cam.stats.online and cam.stats.frames >= 5, 5.0), cam.stats
    stats = cam.stats
    assert stats.read_failures == 0
    assert stats.last_frame_at is not None and abs(time.monotonic() - stats.last_frame_at) < 1.0


def test_snapshot_is_the_frame_nearest_the_badge(sim: CameraSimulator,
                                                 make_camera: Callable[..., Camera]) -> None:
    cam = make_camera(sim.url, jpeg_quality=80)
    assert wait_until(lambda: cam.stats.frames >= 3, 5.0), cam.stats
    for _ in range(3):
        at = time.monotonic()  # the badge, now: the next frame may well be nearer than the last
        snap = cam.snapshot(at)
        assert snap is not None
        assert (snap.width, snap.height) == (320, 240)
        assert abs(snap.captured_at - at) <= PERIOD
        index = decode_frame_index(decode_jpeg(snap.jpeg))
        assert index is not None
        generated = sim.frame_time(index)
        assert generated is not None
        # The picture is the frame generated around the badge (one frame of slack)...
        assert abs(generated - at) <= 1.5 * PERIOD
        # ...and its timestamp belongs to that picture: captured just after it was generated.
        assert 0.0 <= snap.captured_at - generated < PERIOD


def test_snapshot_waits_for_a_nearer_next_frame(sim: CameraSimulator,
                                                make_camera: Callable[..., Camera]) -> None:
    cam = make_camera(sim.url)
    assert wait_until(lambda: cam.stats.frames >= 3, 5.0), cam.stats
    last = cam.stats.last_frame_at
    assert last is not None
    at = last + 0.9 * PERIOD  # the next frame (due at last + PERIOD) is much nearer than `last`
    snap = cam.snapshot(at)
    assert snap is not None
    assert snap.captured_at > last
    assert abs(snap.captured_at - at) < 0.5 * PERIOD


def test_snapshot_does_not_wait_when_the_newest_frame_is_nearest(
        sim: CameraSimulator, make_camera: Callable[..., Camera]) -> None:
    cam = make_camera(sim.url)
    assert wait_until(lambda: cam.stats.frames >= 3, 5.0), cam.stats
    last = cam.stats.last_frame_at
    assert last is not None
    started = time.monotonic()
    snap = cam.snapshot(last + 0.1 * PERIOD, wait_s=1.0)  # the next frame cannot be nearer
    elapsed = time.monotonic() - started
    assert snap is not None and snap.captured_at == last
    assert elapsed < 0.5 * PERIOD  # waiting for the next frame would take ~0.9 periods


def test_snapshot_in_the_past_picks_an_older_frame(sim: CameraSimulator,
                                                   make_camera: Callable[..., Camera]) -> None:
    cam = make_camera(sim.url)
    assert wait_until(lambda: cam.stats.frames >= 12, 5.0), cam.stats  # > 1 s buffered
    at = time.monotonic() - 0.5
    snap = cam.snapshot(at)
    assert snap is not None
    assert abs(snap.captured_at - at) <= PERIOD
    index = decode_frame_index(decode_jpeg(snap.jpeg))
    assert index is not None
    newest = sim.frames_generated - 1
    assert newest - index >= 3, (index, newest)  # about five frames back, not the newest
    generated = sim.frame_time(index)
    assert generated is not None and abs(generated - at) <= 1.5 * PERIOD


def test_unreachable_source_is_offline_not_an_error(make_camera: Callable[..., Camera]) -> None:
    cam = make_camera(f"http://127.0.0.1:{unused_port()}/stream.mjpg")
    assert wait_until(lambda: cam.stats.reconnects >= 1, 3.0), cam.stats  # it keeps retrying
    stats = cam.stats
    assert not stats.online and stats.frames == 0 and stats.read_failures >= 1
    assert cam.snapshot(time.monotonic(), wait_s=0.05) is None
    started = time.monotonic()
    cam.stop()
    cam.stop()  # idempotent
    assert time.monotonic() - started < 1.0


def test_camera_follows_an_outage_and_recovers(make_camera: Callable[..., Camera]) -> None:
    sim = CameraSimulator(fps=FPS)
    url = sim.start()
    try:
        cam = make_camera(url)
        assert wait_until(lambda: cam.stats.online and cam.stats.frames >= 3, 5.0), cam.stats
        sim.stop()
        assert wait_until(lambda: not cam.stats.online, 3.0), cam.stats
        assert cam.snapshot(time.monotonic(), wait_s=0.05) is None
        failures = cam.stats.read_failures
        assert failures >= 1

        assert sim.start() == url  # same port
        before = cam.stats.frames
        assert wait_until(lambda: cam.stats.online and cam.stats.frames >= before + 3, 5.0), cam.stats
        assert cam.stats.reconnects >= 1
        snap = cam.snapshot(time.monotonic())
        assert snap is not None and decode_frame_index(decode_jpeg(snap.jpeg)) is not None
    finally:
        sim.stop()


def test_file_source_is_paced_and_looped(tmp_path: Path, make_camera: Callable[..., Camera]) -> None:
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (320, 240))
    assert writer.isOpened()
    for i in range(4):
        writer.write(draw_frame(i, 320, 240, 0.0))
    writer.release()
    cam = make_camera(str(path))
    assert wait_until(lambda: cam.stats.frames >= 6, 5.0), cam.stats  # looped past the end
    stats = cam.stats
    assert stats.read_failures >= 1 and stats.reconnects >= 1  # EOF counted, then reopened


def test_stop_ends_the_thread_and_empties_the_buffer(sim: CameraSimulator) -> None:
    cam = Camera("gate", sim.url, fps=FPS)
    cam.start()
    cam.start()  # idempotent: still one thread
    assert wait_until(lambda: cam.stats.frames >= 2, 5.0), cam.stats
    assert sum(t.name == "camera-gate" for t in threading.enumerate()) == 1
    cam.stop()
    assert not any(t.name == "camera-gate" for t in threading.enumerate())
    assert not cam.stats.online
    assert cam.snapshot(time.monotonic(), wait_s=0.05) is None
    cam.stop()


# -- what the capture costs ----------------------------------------------------


def native_threads() -> int:
    """Threads of this process that no Python thread accounts for (OpenCV's, FFmpeg's, OpenBLAS's)."""
    return len(os.listdir("/proc/self/task")) - threading.active_count()


def test_an_mjpeg_source_is_buffered_as_its_own_jpegs_and_only_the_snapshot_is_decoded(
        sim: CameraSimulator, make_camera: Callable[..., Camera], monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[int] = []
    real_decode = edge.camera.decode_jpeg
    monkeypatch.setattr(edge.camera, "decode_jpeg", lambda data: decoded.append(len(data)) or real_decode(data))
    cam = make_camera(sim.url)
    assert wait_until(lambda: cam.stats.frames >= 5, 5.0), cam.stats
    assert cam.stats.jpeg_frames
    assert len(decoded) == 1  # the first frame after the open, to check the stream's JPEGs decode at all
    snap = cam.snapshot(time.monotonic())
    assert snap is not None and (snap.width, snap.height) == (320, 240)
    assert len(decoded) == 2  # and the one frame chosen for the snapshot
    assert decode_frame_index(decode_jpeg(snap.jpeg)) is not None


def test_a_snapshot_from_buffered_jpegs_has_its_privacy_mask_applied(
        sim: CameraSimulator, make_camera: Callable[..., Camera]) -> None:
    cam = make_camera(sim.url, privacy_masks=[[[0.0, 0.0], [0.5, 0.0], [0.5, 0.5], [0.0, 0.5]]])
    assert wait_until(lambda: cam.stats.frames >= 3 and cam.stats.jpeg_frames, 5.0), cam.stats
    snap = cam.snapshot(time.monotonic())
    assert snap is not None
    image = decode_jpeg(snap.jpeg)
    assert image[4:116, 4:156].max() <= 24  # the masked quarter (less a JPEG block of ringing) is black
    assert image[:100, 170:].mean() > 30    # the rest of the picture is still there
    assert decode_frame_index(image) is not None


def test_a_source_that_is_not_mjpeg_is_decoded_frame_by_frame(tmp_path: Path,
                                                              make_camera: Callable[..., Camera]) -> None:
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (320, 240))
    assert writer.isOpened()
    for i in range(6):
        writer.write(draw_frame(i, 320, 240, 0.0))
    writer.release()
    cam = make_camera(str(path))
    assert wait_until(lambda: cam.stats.frames >= 3, 5.0), cam.stats
    assert not cam.stats.jpeg_frames  # MPEG-4 packets are no pictures on their own: decoded as before
    snap = cam.snapshot(time.monotonic())
    assert snap is not None and decode_frame_index(decode_jpeg(snap.jpeg)) is not None


class RawButNotJpegCapture:
    """A capture that says MJPEG and takes raw mode, then hands out raw frames that are no JPEG."""

    opened: list[RawButNotJpegCapture] = []

    def __init__(self, *args: object) -> None:
        self.raw = False
        RawButNotJpegCapture.opened.append(self)

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return True

    def get(self, prop: int) -> float:
        return float(cv2.VideoWriter_fourcc(*"MJPG")) if prop == cv2.CAP_PROP_FOURCC else 0.0

    def set(self, prop: int, value: float) -> bool:
        if prop == cv2.CAP_PROP_FORMAT:
            self.raw = value == -1
        return True

    def read(self) -> tuple[bool, np.ndarray]:
        if self.raw:
            return True, np.arange(64, dtype=np.uint8).reshape(1, -1)
        return True, draw_frame(7, 320, 240, 0.0)

    def release(self) -> None:
        pass


def test_raw_frames_that_are_not_jpegs_make_the_camera_decode_every_frame(
        make_camera: Callable[..., Camera], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    RawButNotJpegCapture.opened = []
    monkeypatch.setattr(edge.camera.cv2, "VideoCapture", RawButNotJpegCapture)
    caplog.set_level(logging.WARNING, logger="doorkeep.edge.camera")
    cam = make_camera("clip.avi")  # a file path: read at FPS, not as fast as the fake can answer
    assert wait_until(lambda: cam.stats.online and cam.stats.frames >= 2, 5.0), cam.stats
    assert not cam.stats.jpeg_frames and cam.stats.read_failures == 0
    assert [c.raw for c in RawButNotJpegCapture.opened[:2]] == [True, False]  # reopened without raw mode, once
    assert all(not c.raw for c in RawButNotJpegCapture.opened[1:])
    snap = cam.snapshot(time.monotonic())
    assert snap is not None and decode_frame_index(decode_jpeg(snap.jpeg)) == 7
    assert sum("not decodable JPEGs" in r.getMessage() for r in caplog.records) == 1


def test_raw_jpeg_accepts_one_row_of_jpeg_bytes_only() -> None:
    ok, buf = cv2.imencode(".jpg", draw_frame(1, 320, 240, 0.0))
    assert ok
    assert raw_jpeg(buf.reshape(1, -1)) == buf.tobytes()
    assert raw_jpeg(buf.reshape(-1)) == buf.tobytes()
    assert raw_jpeg(np.arange(64, dtype=np.uint8).reshape(1, -1)) is None  # no start-of-image marker
    assert raw_jpeg(draw_frame(1, 320, 240, 0.0)) is None                   # a decoded picture
    assert raw_jpeg(buf.reshape(1, -1).astype(np.int16)) is None


def test_capturing_an_mjpeg_stream_starts_no_native_threads(sim: CameraSimulator,
                                                            make_camera: Callable[..., Camera]) -> None:
    before = native_threads()
    cam = make_camera(sim.url)
    assert wait_until(lambda: cam.stats.frames >= 5, 5.0), cam.stats
    assert cam.snapshot(time.monotonic()) is not None  # decode, mask and encode once too
    # No FFmpeg decoding threads, no OpenCV worker pool: the camera's one Python thread is all it adds.
    assert native_threads() <= before


def test_redact_hides_passwords() -> None:
    assert redact("rtsp://admin:s3cret@10.0.0.9:554/stream1") == "rtsp://admin:***@10.0.0.9:554/stream1"
    assert redact("http://10.0.0.9/video.mjpg") == "http://10.0.0.9/video.mjpg"
    assert redact("0") == "0"
