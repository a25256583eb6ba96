"""Camera privacy masks: polygons blacked out before a snapshot is encoded, with real OpenCV.

The capture tests read a lossless PNG image sequence through the real
``Camera`` capture thread (OpenCV's FFmpeg backend treats ``frame_%03d.png``
as a file source), so the only loss between the known frame and the decoded
snapshot is the snapshot's own JPEG encoding.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from doorkeep.config import BrokerConfig, CameraConfig, check, load_device, load_site_dir
from doorkeep.errors import ConfigError
from edge.camera import Camera, PrivacyMask
from simulators.wait import wait_until
from tests.unit.test_config import DEVICE, make_site, only

DEMO = Path(__file__).resolve().parents[2] / "doorkeep" / "sites" / "demo"
W, H = 640, 360
FPS = 10.0
# A street seen through the glass (top-right rectangle) and a neighbour's window (a slanted triangle).
RECT = ((0.6, 0.0), (1.0, 0.0), (1.0, 0.4), (0.6, 0.4))
TRIANGLE = ((0.1, 0.5), (0.45, 0.55), (0.2, 0.95))
MASKS = (RECT, TRIANGLE)
MARGIN = 12  # pixels either side of a polygon edge where JPEG blocks mix black and bright


def bright_pattern(width: int = W, height: int = H) -> np.ndarray:
    """A bright, textured frame (every pixel >= 150) whose content differs across the picture."""
    ys, xs = np.mgrid[0:height, 0:width]
    img = np.empty((height, width, 3), np.uint8)
    img[..., 0] = 150 + (xs * 97 // width) % 100
    img[..., 1] = 150 + (ys * 89 // height) % 100
    img[..., 2] = 200 + ((xs // 16 + ys // 16) % 2) * 50
    return img


def regions(masks: tuple[tuple[tuple[float, float], ...], ...], width: int, height: int,
            margin: int) -> tuple[np.ndarray, np.ndarray]:
    """(well inside some polygon, well outside every polygon) as boolean images, ``margin`` px from any edge."""
    drawn = np.zeros((height, width), np.uint8)
    for poly in masks:
        pts = np.round(np.array(poly) * (width, height)).astype(np.int32)
        cv2.fillPoly(drawn, [pts], 255)
    kernel = np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)
    inside = cv2.erode(drawn, kernel, borderType=cv2.BORDER_REPLICATE) > 0
    outside = cv2.dilate(drawn, kernel) == 0
    return inside, outside


def decode(jpeg: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None, "not a decodable JPEG"
    return img


@pytest.fixture
def source(tmp_path: Path) -> str:
    """A lossless file source: five PNG frames of the bright pattern."""
    frame = bright_pattern()
    for i in range(5):
        assert cv2.imwrite(str(tmp_path / f"frame_{i:03d}.png"), frame)
    return str(tmp_path / "frame_%03d.png")


@pytest.fixture
def make_camera() -> Iterator[Callable[..., Camera]]:
    cameras: list[Camera] = []

    def make(src: str, **kwargs: object) -> Camera:
        cam = Camera(f"cam{len(cameras)}", src, fps=FPS, jpeg_quality=95, **kwargs)  # type: ignore[arg-type]
        cam.RECONNECT_MIN_S = cam.RECONNECT_MAX_S = 0.1  # the file loops: reopen promptly after its end
        cameras.append(cam)
        cam.start()
        return cam

    yield make
    for cam in cameras:
        cam.stop()


def snap(cam: Camera) -> bytes:
    """A snapshot of the newest frame, waiting (bounded) for the capture thread to buffer one."""
    shots: list[bytes] = []

    def taken() -> bool:
        s = cam.snapshot(time.monotonic(), wait_s=0.0)  # the camera runs on the system clock
        if s is not None:
            shots.append(s.jpeg)
        return bool(shots)

    assert wait_until(taken, 10.0), f"camera {cam.name} never produced a snapshot: {cam.stats}"
    return shots[0]


# ------------------------------------------------------------------- camera


def test_snapshot_is_black_inside_each_polygon_and_unchanged_outside(
        source: str, make_camera: Callable[..., Camera]) -> None:
    cam = make_camera(source, privacy_masks=MASKS)
    image = decode(snap(cam)).astype(np.int16)
    original = bright_pattern().astype(np.int16)
    for poly in MASKS:
        inside, _ = regions((poly,), W, H, MARGIN)
        assert inside.sum() > 1000, "test polygon too small to mean anything"
        assert image[inside].max() <= 24 and image[inside].mean() <= 3, "a masked area shows through"
    _, outside = regions(MASKS, W, H, MARGIN)
    diff = np.abs(image - original)[outside]
    assert diff.mean() < 4 and np.percentile(diff, 99) < 20, "the picture outside the masks changed"
    # The triangle is a triangle, not its bounding box: the corner of the box beyond the slanted edge stays bright.
    assert image[int(0.9 * H), int(0.4 * W)].min() >= 140


def test_the_mask_is_the_same_area_at_any_resolution() -> None:
    mask = PrivacyMask(MASKS)
    area = 0.4 * 0.4 + 0.5 * abs(0.35 * 0.45 - 0.05 * 0.1)  # rectangle + triangle (shoelace)
    for width, height in ((320, 180), (1280, 720), (1920, 1080)):
        out = mask.apply(bright_pattern(width, height))
        black = (out.max(axis=2) == 0).mean()
        assert abs(black - area) < 0.01, (width, height, black, area)
        inside, outside = regions(MASKS, width, height, 1)
        assert (out[inside] == 0).all() and (out[outside] > 0).all()


def test_a_full_frame_mask_leaves_no_pixel_uncovered() -> None:
    """Fractions 0.0 and 1.0 reach the very edges of the frame (no unmasked last row or column)."""
    out = PrivacyMask([[[0, 0], [1, 0], [1, 1], [0, 1]]]).apply(bright_pattern(333, 177))
    assert not out.any()


def test_masking_works_on_a_copy_and_never_on_another_camera(
        source: str, make_camera: Callable[..., Camera]) -> None:
    frame = bright_pattern()
    before = frame.copy()
    masked = PrivacyMask(MASKS).apply(frame)
    assert masked is not frame and np.array_equal(frame, before), "apply() changed the frame it was given"

    masked_cam = make_camera(source, privacy_masks=MASKS)
    plain_cam = make_camera(source)
    inside, _ = regions((RECT,), W, H, MARGIN)
    assert decode(snap(masked_cam))[inside].max() <= 24
    assert decode(snap(plain_cam))[inside].min() >= 130, "one camera's mask leaked into another camera"
    # And the masked camera's own buffer still holds the untouched frame: a second snapshot is masked again.
    assert decode(snap(masked_cam))[inside].max() <= 24


def test_without_masks_the_snapshot_is_the_plain_encoding(
        source: str, make_camera: Callable[..., Camera]) -> None:
    frame = bright_pattern()
    assert PrivacyMask(()).apply(frame) is frame  # no copy, no cost
    ok, plain = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    cam = make_camera(source)
    assert snap(cam) == plain.tobytes()
    assert Camera("x", "0", jpeg_quality=95).encode(frame) == plain.tobytes()


def test_a_frame_that_cannot_be_masked_is_dropped_not_sent_unmasked(monkeypatch: pytest.MonkeyPatch) -> None:
    cam = Camera("x", "0", privacy_masks=MASKS)

    def broken(*args: object, **kwargs: object) -> None:
        raise cv2.error("simulated failure")

    encoded: list[object] = []
    monkeypatch.setattr(cv2, "fillPoly", broken)
    monkeypatch.setattr(cv2, "imencode", lambda *a, **k: encoded.append(a) or (True, np.zeros(4, np.uint8)))
    assert cam.encode(bright_pattern()) is None
    assert encoded == [], "the unmasked frame was encoded"


@pytest.mark.parametrize("bad", [
    [[[0.1, 0.1], [0.5, 0.1]]],                     # two points
    [[[0.1, 0.1], [0.5, 0.1], [1.5, 0.5]]],         # outside the frame
    [[[0.1, 0.1], [0.5, 0.1], [float("nan"), 0.5]]],
    [[[0.1, 0.1], [0.5], [0.5, 0.5]]],              # not a pair
])
def test_the_camera_refuses_bad_polygons(bad: list) -> None:
    with pytest.raises(ValueError, match="privacy mask 0"):
        Camera("x", "0", privacy_masks=bad)


def test_the_edge_agent_builds_its_cameras_with_the_device_files_masks(tmp_path: Path) -> None:
    from gpiozero.pins.mock import MockFactory

    from edge.agent import EdgeAgent

    bundle = load_site_dir(DEMO)
    dev = bundle.devices["pi-lobby"]
    doors = {d: dataclasses.replace(hw, reader=dataclasses.replace(hw.reader, url="loop://"))
             for d, hw in dev.doors.items()}
    cams = {"lobby": CameraConfig("lobby", "0", privacy_masks=MASKS)}
    # No broker is reached here: a plain loopback URL, allowed, instead of the Pi's mutual-TLS files.
    broker = BrokerConfig("mqtt://127.0.0.1:1", allow_plain=True)
    dev = dataclasses.replace(dev, doors=doors, cameras=cams, gpio_factory="mock", broker=broker)
    agent = EdgeAgent(dev, bundle.site, os.urandom(32), pin_factory=MockFactory(), state_dir=tmp_path)
    try:
        assert agent.cameras["lobby"].privacy_mask.polygons == MASKS
        assert agent.doors["lobby_in"].camera is agent.cameras["lobby"]
    finally:
        agent.outbox.close()


# ------------------------------------------------------------------- config


CAMERA = '\n[cameras.lobby]\nsource = "0"\n'


def device_errors(tmp_path: Path, masks: str) -> list[ConfigError]:
    return check(make_site(tmp_path / "s", devices={"pi-a": DEVICE + CAMERA + masks + "\n"}))


def test_masks_load_as_float_polygons(tmp_path: Path) -> None:
    text = DEVICE + CAMERA + "privacy_masks = [[[0.6, 0], [1, 0], [1, 0.4], [0.6, 0.4]], [[0.1, 0.5], [0.45, 0.55], [0.2, 0.95]]]\n"
    d = make_site(tmp_path / "s", devices={"pi-a": text})
    assert check(d) == []
    cam = load_device(d / "devices" / "pi-a.toml")[0].cameras["lobby"]
    assert cam.privacy_masks == MASKS
    assert all(isinstance(v, float) for poly in cam.privacy_masks for pt in poly for v in pt)


def test_no_masks_is_an_empty_tuple(tmp_path: Path) -> None:
    d = make_site(tmp_path / "s", devices={"pi-a": DEVICE + CAMERA})
    assert load_device(d / "devices" / "pi-a.toml")[0].cameras["lobby"].privacy_masks == ()


def test_a_point_outside_the_frame_names_the_point_and_says_fractions_not_pixels(tmp_path: Path) -> None:
    errors = device_errors(tmp_path, "privacy_masks = [[[0, 0], [1, 0], [0, 1]], [[0, 0], [0.5, 0], [640, 360]]]")
    err = only(errors, "cameras.lobby.privacy_masks[1][2]")
    assert err.file.endswith("pi-a.toml")
    assert "x = 640" in err.problem and "y = 360" in err.problem and "0.0-1.0" in err.problem
    assert "fractions" in err.fix and "not pixels" in err.fix
    assert len(errors) == 1, [str(e) for e in errors]


@pytest.mark.parametrize("masks, key, words", [
    ('privacy_masks = "street"', "cameras.lobby.privacy_masks", "must be list"),
    ("privacy_masks = [[0.1, 0.2, 0.3]]", "cameras.lobby.privacy_masks[0]", "must be a list of [x, y] points"),
    ("privacy_masks = [3]", "cameras.lobby.privacy_masks[0]", "must be a list of [x, y] points"),
    ("privacy_masks = [[[0, 0], [1, 1]]]", "cameras.lobby.privacy_masks[0]", "at least 3"),
    ("privacy_masks = [[[0, 0], [1, 1], [0.5, 0.5]]]", "cameras.lobby.privacy_masks[0]", "no area"),
    ("privacy_masks = [[[0, 0], [1, 0], [0.5]]]", "cameras.lobby.privacy_masks[0][2]", "two numbers"),
    ("privacy_masks = [[[0, 0], [1, 0], [0.5, 0.5, 0.5]]]", "cameras.lobby.privacy_masks[0][2]", "two numbers"),
    ('privacy_masks = [[[0, 0], [1, 0], ["0.5", 1]]]', "cameras.lobby.privacy_masks[0][2]", "two numbers"),
    ("privacy_masks = [[[0, 0], [1, 0], [true, 1]]]", "cameras.lobby.privacy_masks[0][2]", "two numbers"),
    ("privacy_masks = [[[0, 0], [1, 0], [0.5, nan]]]", "cameras.lobby.privacy_masks[0][2]", "y = nan"),
    ("privacy_masks = [[[0, 0], [1, 0], [-0.1, 1]]]", "cameras.lobby.privacy_masks[0][2]", "x = -0.1"),
    ("privacy_masks = [[[0, 0], [1, 0], [0.5, inf]]]", "cameras.lobby.privacy_masks[0][2]", "y = inf"),
])
def test_bad_masks_name_file_key_and_fix(tmp_path: Path, masks: str, key: str, words: str) -> None:
    errors = device_errors(tmp_path, masks)
    err = only(errors, key)
    assert words in err.problem, str(err)
    assert err.file.endswith("pi-a.toml") and err.fix
    assert len(errors) == 1, [str(e) for e in errors]


def test_every_bad_point_is_reported_in_one_pass(tmp_path: Path) -> None:
    errors = device_errors(tmp_path, "privacy_masks = [[[0, 0], [2, 0], [0, 1]], [[0, 0], [1, 0], [0, -1]]]")
    assert {e.key for e in errors} == {"cameras.lobby.privacy_masks[0][1]", "cameras.lobby.privacy_masks[1][2]"}


def test_a_misspelt_key_is_refused_not_ignored(tmp_path: Path) -> None:
    """A typo must not leave a camera unmasked without a word."""
    errors = device_errors(tmp_path, "privacy_mask = [[[0, 0], [1, 0], [0, 1]]]")
    assert "privacy_masks" in only(errors, "cameras.lobby.privacy_mask").fix


def test_the_demo_lobby_camera_has_a_valid_mask_that_spares_the_simulator_code_strip() -> None:
    bundle = load_site_dir(DEMO)
    masks = bundle.devices["pi-lobby"].cameras["lobby"].privacy_masks
    assert masks, "the demo device file shows a privacy mask"
    # The camera simulator encodes its frame index in the bottom sixth; the demo mask must not hide it.
    assert all(y < 5 / 6 for poly in masks for _, y in poly)


def test_one_polygon_without_its_outer_brackets_says_so(tmp_path: Path) -> None:
    errors = device_errors(tmp_path, "privacy_masks = [[0.6, 0.0], [1.0, 0.0], [1.0, 0.4]]")
    assert {e.key for e in errors} == {f"cameras.lobby.privacy_masks[{i}]" for i in range(3)}
    assert all("three levels of brackets" in e.fix for e in errors)
