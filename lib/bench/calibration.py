"""``python -m lib.bench calibration``: chapter 10's batched calibration against OpenCV.

Many cameras calibrated at once by one batched Levenberg–Marquardt
(:func:`lib.calibration.calibrate_cameras`) against a loop of ``cv2.calibrateCamera`` calls
(and, for small counts, against our own solver called one camera at a time, which isolates
what batching buys). Runs on the CPU (one thread each) or on CUDA for ours.
"""

from __future__ import annotations

import statistics
import time

import torch

#: the synthetic cameras: views per camera, corner noise in pixels, image size
VIEWS, NOISE, SIZE = 15, 0.2, (640, 480)


def synthetic_cameras(count: int, views: int = VIEWS, seed: int = 0):
    """``count`` cameras with different intrinsics, each seeing ``views`` boards (0.2 px
    noise): object and image points per camera, as float32 numpy arrays (OpenCV's input)."""
    import numpy as np

    from ..chessboard import board_views, random_board_poses

    rng = np.random.default_rng(seed)
    objects, images = [], []
    for c in range(count):
        f = rng.uniform(650, 950)
        K = torch.tensor([[f, 0, rng.uniform(300, 340)], [0, f * rng.uniform(0.98, 1.02),
                                                           rng.uniform(220, 260)], [0, 0, 1]],
                         dtype=torch.float64)
        dist = torch.tensor([rng.uniform(-0.3, 0.0), rng.uniform(0.0, 0.1),
                             *rng.normal(0, 1e-3, 2), 0.0], dtype=torch.float64)
        r, t = random_board_poses(K, dist, SIZE, views, seed=seed * 10_000 + c)
        obj, img = board_views(K, dist, r, t, noise=NOISE, seed=c)
        objects.append([o.float().numpy() for o in obj])
        images.append([p.float().numpy() for p in img])
    return objects, images


def _time(fn, repeats: int, device) -> list[float]:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def compare(counts=(1, 4, 16, 64), views: int = VIEWS, repeats: int = 5, device=None,
            one_at_a_time_up_to: int = 16) -> list[dict]:
    """Seconds (every repetition) of ours batched, cv2 looped and ours looped, per count.

    Returns one dict per count with the lists of times and the largest differences of RMS
    (pixels) and of fx, fy, cx, cy (relative) between ours and OpenCV.
    """
    import cv2
    import numpy as np

    from ..backend import default_device
    from ..calibration import calibrate, calibrate_cameras

    device = torch.device(device) if device is not None else default_device()
    rows = []
    for count in counts:
        objects, images = synthetic_cameras(count, views)
        pairs = list(zip(objects, images, strict=True))

        def batched(objects=objects, images=images):
            return calibrate_cameras(objects, images, SIZE, device=device)

        def cv2_loop(pairs=pairs):
            return [cv2.calibrateCamera(o, i, SIZE, None, None) for o, i in pairs]

        def looped(pairs=pairs):
            return [calibrate(o, i, SIZE, device=device) for o, i in pairs]

        ours, theirs = batched(), cv2_loop()  # also warms up
        rms_diff = max(abs(a.rms - b[0]) for a, b in zip(ours, theirs, strict=True))
        k_diff = max(float(np.abs(a.K.cpu().numpy() - b[1])[[0, 1, 0, 1], [0, 1, 2, 2]].max()
                           / b[1][0, 0]) for a, b in zip(ours, theirs, strict=True))
        row = dict(cameras=count, rms_diff=rms_diff, k_diff=k_diff, batched=[], cv2=[],
                   looped=[])
        for _ in range(repeats):  # interleaved: a change of machine load hits all alike
            row["batched"] += _time(batched, 1, device)
            row["cv2"] += _time(cv2_loop, 1, torch.device("cpu"))
            if count <= one_at_a_time_up_to:
                row["looped"] += _time(looped, 1, device)
        rows.append(row)
    return rows


def _median_spread(times: list[float]) -> str:
    if not times:
        return f"{'-':>22}"
    ms = [t * 1e3 for t in times]
    return f"{statistics.median(ms):9.0f} [{min(ms):5.0f}, {max(ms):5.0f}]"


def bench_calibration(args) -> None:
    """Calibrate 1 to 64 cameras (CPU; up to 1024 on CUDA) of 15 views at once with one
    batched Levenberg-Marquardt, against a loop of cv2.calibrateCamera calls."""
    import cv2

    from ..backend import CUDA, default_device

    device = default_device()
    counts = (1, 16, 64, 256, 1024) if CUDA else (1, 4, 16, 64)
    torch.set_num_threads(1)  # one thread each: OpenCV's loop runs on one core too
    cv2.setNumThreads(1)
    print(f"{VIEWS} views of a 9x6 board per camera, {NOISE} px corner noise, 640x480; ours on "
          f"{device} (float64), OpenCV {cv2.__version__} on the CPU; one thread each; "
          "median [min, max] of 5 interleaved runs, milliseconds")
    print(f"{'cameras':>8}{'ours batched':>24}{'cv2 loop':>24}{'ours one by one':>24}"
          f"{'cv2 / batched':>15}{'max |d rms| px':>16}{'max d K':>10}")
    for row in compare(counts, device=device):
        ratio = statistics.median(row["cv2"]) / statistics.median(row["batched"])
        print(f"{row['cameras']:>8}{_median_spread(row['batched']):>24}"
              f"{_median_spread(row['cv2']):>24}{_median_spread(row['looped']):>24}"
              f"{ratio:>15.2f}{row['rms_diff']:>16.1e}{row['k_diff']:>10.1e}")
    print("cv2 / batched > 1: the batched solver is faster. max d K: largest difference of fx, "
          "fy, cx, cy relative to fx.")


COMMANDS = {"calibration": bench_calibration}
