"""What privacy masks add to a snapshot: encode time with and without masks, side by side.

Run from the project root:

    .venv/bin/python bench/privacy_mask.py [--width 1280] [--height 720] [--runs 500] [--quality 85]

Times ``Camera.encode`` (mask, then JPEG) on one textured frame, alternating
masked and unmasked runs so that both see the same machine load, and the mask
step alone (``PrivacyMask.apply``: copy the frame, fill the polygons). The two
polygons are the ones in docs/security.md's example: a rectangle over a
street and a slanted window. Run it on the Pi itself for the figure that
matters. A benchmark reports; it does not judge.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import cv2
import numpy as np

from edge.camera import Camera, PrivacyMask

MASKS = (
    ((0.70, 0.00), (1.00, 0.00), (1.00, 0.30), (0.70, 0.30)),
    ((0.05, 0.45), (0.30, 0.50), (0.25, 0.90), (0.02, 0.85)),
)


def frame(width: int, height: int) -> np.ndarray:
    """A frame with camera-like content: smooth gradients, edges and sensor noise (JPEG cost depends on it)."""
    rng = np.random.default_rng(7)
    ys, xs = np.mgrid[0:height, 0:width]
    img = np.empty((height, width, 3), np.uint8)
    img[..., 0] = (xs * 255 // width).astype(np.uint8)
    img[..., 1] = (ys * 255 // height).astype(np.uint8)
    img[..., 2] = (((xs // 40 + ys // 40) % 2) * 160 + 40).astype(np.uint8)
    noise = rng.integers(-12, 13, size=img.shape)
    return np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def percentiles(samples: list[float]) -> tuple[float, float]:
    """(median, p99) in milliseconds."""
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(ordered) * 1000, p99 * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--runs", type=int, default=500)
    ap.add_argument("--quality", type=int, default=85)
    args = ap.parse_args()

    img = frame(args.width, args.height)
    plain = Camera("plain", "0", jpeg_quality=args.quality)
    masked = Camera("masked", "0", jpeg_quality=args.quality, privacy_masks=MASKS)
    mask = PrivacyMask(MASKS)
    for cam in (plain, masked):  # warm up: first calls allocate, and the mask's pixel polygons are cached
        for _ in range(10):
            assert cam.encode(img) is not None
    times: dict[str, list[float]] = {"without masks": [], "with 2 masks": [], "mask step alone": []}
    clock = time.perf_counter
    for _ in range(args.runs):
        t0 = clock()
        plain.encode(img)
        t1 = clock()
        masked.encode(img)
        t2 = clock()
        mask.apply(img)
        t3 = clock()
        times["without masks"].append(t1 - t0)
        times["with 2 masks"].append(t2 - t1)
        times["mask step alone"].append(t3 - t2)

    print(f"privacy masks: {args.width}x{args.height}, JPEG quality {args.quality}, {args.runs} runs, "
          f"OpenCV {cv2.__version__}, {platform.machine()} / {platform.python_implementation()} "
          f"{platform.python_version()}, cv2 threads {cv2.getNumThreads()}")
    print(f"{'':18}{'median ms':>12}{'p99 ms':>12}")
    for name, samples in times.items():
        med, p99 = percentiles(samples)
        print(f"{name:18}{med:12.3f}{p99:12.3f}")
    (m0, q0), (m1, q1) = percentiles(times["without masks"]), percentiles(times["with 2 masks"])
    print(f"{'extra per snapshot':18}{m1 - m0:12.3f}{q1 - q0:12.3f}   (with minus without)")


if __name__ == "__main__":
    main()
