"""Chessboard images with known ground truth, and corner detection (chapter 10).

:func:`render_chessboard` draws what a camera with intrinsics ``K``, distortion ``dist``
and pose ``(R, t)`` sees of a planar chessboard: for every sub-pixel sample it inverts the
distortion, intersects the ray with the board plane and reads the square's colour; the
samples are averaged (anti-aliasing), blurred like a lens, and noise is added. The true
corner pixels are :func:`lib.calibration.project_points` of :func:`board_points`.

:func:`detect_corners` is the usual OpenCV pipeline: ``cv2.findChessboardCorners``, then
``cv2.cornerSubPix`` with a (12, 12) half-window and (EPS + COUNT, 30, 0.1) criteria. It
also fixes the order of the corners, which OpenCV leaves ambiguous (see there).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

from .calibration_camera import (
    DTYPE,
    as_tensor,
    check_dist,
    check_image_size,
    intrinsics_vector,
    project,
    rodrigues,
    rotation_to_rodrigues,
    undistort_normalized,
)
from .validate import check_choice, check_int, check_positive_int, check_real

BLACK, WHITE, BACKGROUND = 0.08, 0.92, 0.45  # grey levels, as fractions of 255


def check_pattern(pattern) -> tuple[int, int]:
    """(columns, rows) of inner corners, each at least 2."""
    if not isinstance(pattern, (tuple, list)) or len(pattern) != 2:
        raise TypeError(f"pattern must be (columns, rows) of inner corners, got {pattern!r}")
    return (check_positive_int(pattern[0], "pattern[0] (columns)", minimum=2),
            check_positive_int(pattern[1], "pattern[1] (rows)", minimum=2))


def board_points(pattern=(9, 6), square_size: float = 25.0) -> torch.Tensor:
    """The inner corners on the plane z = 0, row by row: (columns * rows, 3) float64.

    Corner ``j * columns + i`` is at ``(i * square_size, j * square_size, 0)``, the order of
    :func:`detect_corners`.
    """
    cols, rows = check_pattern(pattern)
    s = check_real(square_size, "square_size", minimum=0, strict=True)
    j, i = torch.meshgrid(torch.arange(rows, dtype=DTYPE), torch.arange(cols, dtype=DTYPE),
                          indexing="ij")
    return torch.stack([i.flatten() * s, j.flatten() * s, torch.zeros(rows * cols, dtype=DTYPE)],
                       -1)


def _rotation(R) -> torch.Tensor:
    """A (3, 3) rotation from a matrix or a (3,) Rodrigues vector."""
    dims = np.ndim(R) if not isinstance(R, torch.Tensor) else R.dim()
    if dims == 1:
        return rodrigues(as_tensor(R, "R", (3,)))
    R = as_tensor(R, "R", (3, 3))
    if not torch.allclose(R @ R.T, torch.eye(3, dtype=DTYPE), atol=1e-6):
        raise ValueError("R must be a rotation matrix (R R^T = I) or a (3,) Rodrigues vector")
    return R


_RAYS: dict = {}  # a stream renders many frames with one camera: its rays are computed once


def _rays(K: torch.Tensor, d: torch.Tensor, w: int, h: int) -> torch.Tensor:
    """Undistorted normalised rays (x, y) of the pixel corners: (h + 1, w + 1, 2) float64."""
    key = (tuple(K.flatten().tolist()), tuple(d.tolist()), w, h)
    if key not in _RAYS:
        if len(_RAYS) > 8:
            _RAYS.clear()
        xs = (torch.arange(w + 1, dtype=DTYPE) - 0.5 - K[0, 2]) / K[0, 0]  # pixel corners
        ys = (torch.arange(h + 1, dtype=DTYPE) - 0.5 - K[1, 2]) / K[1, 1]
        grid = torch.stack(torch.broadcast_tensors(xs[None, :], ys[:, None]), -1)
        _RAYS[key] = undistort_normalized(grid, d)
    return _RAYS[key]


def _grey(uvw: torch.Tensor, cols: int, rows: int, s: float, m: float) -> torch.Tensor:
    """Grey level (0..1) where rays with board coordinates (u, v, w) (..., 3) meet the board."""
    in_front = uvw[..., 2] > 0  # w = 1 / depth
    u, v = uvw[..., 0] / uvw[..., 2], uvw[..., 1] / uvw[..., 2]
    a, b = torch.floor(u / s) + 1, torch.floor(v / s) + 1  # square indices, 0 .. columns
    on_squares = (a >= 0) & (a <= cols) & (b >= 0) & (b <= rows)
    on_board = (u >= -s - m) & (u <= cols * s + m) & (v >= -s - m) & (v <= rows * s + m)
    black = ((a + b) % 2 == 0) & on_squares
    value = torch.where(black, BLACK, WHITE)
    return torch.where(on_board & in_front, value, torch.full_like(value, BACKGROUND))


def render_chessboard(K, dist, R, t, pattern=(9, 6), square_size: float = 25.0,
                      image_size=(640, 480), *, supersample: int = 8, blur: float = 1.0,
                      noise: float = 0.0, seed: int = 0, margin: float = 1.0) -> np.ndarray:
    """A grey uint8 image (height, width) of a chessboard seen by a distorted pinhole camera.

    K (3, 3); dist (5,) or None; R (3, 3) or a (3,) Rodrigues vector and t (3,): the board
    pose (board -> camera, eq. cal-project). pattern: inner corners (columns, rows); the
    board has (columns + 1) x (rows + 1) squares of ``square_size`` (the units of t), the
    square beyond corner 0 is black, and a white margin of ``margin`` squares surrounds it.
    supersample: samples per pixel along each axis; blur: Gaussian sigma in pixels (0: none);
    noise: standard deviation of additive Gaussian noise in grey levels; seed for the noise.
    """
    K = as_tensor(K, "K", (3, 3))
    d = check_dist(dist)
    Rm, t = _rotation(R), as_tensor(t, "t", (3,))
    cols, rows = check_pattern(pattern)
    s = check_real(square_size, "square_size", minimum=0, strict=True)
    w, h = check_image_size(image_size)
    ss = check_positive_int(supersample, "supersample")
    blur = check_real(blur, "blur", minimum=0)
    noise = check_real(noise, "noise", minimum=0)
    margin = check_real(margin, "margin", minimum=0)
    check_int(seed, "seed")

    xy = _rays(K, d, w, h)  # (h + 1, w + 1, 2): the ray (x, y, 1) of every pixel corner
    # the board plane maps to the image by H = [r1 r2 t] (eq. cal-homography with K = I), so
    # (u, v, w) = H^-1 (x, y, 1) holds the board point (u / w, v / w) and 1 / depth
    H_inv = torch.linalg.inv(torch.stack([Rm[:, 0], Rm[:, 1], t], -1))
    uvw = (xy @ H_inv[:, :2].T + H_inv[:, 2]).float()
    board = (cols, rows, float(s), margin * float(s))
    at_corners = _grey(uvw, *board)  # (h + 1, w + 1)
    quad = torch.stack([at_corners[:-1, :-1], at_corners[:-1, 1:], at_corners[1:, :-1],
                        at_corners[1:, 1:]], -1)  # the four corners of every pixel
    value = quad[..., 0].clone()  # a pixel whose corners agree holds no edge: one colour
    edge = (quad != quad[..., :1]).any(-1).nonzero(as_tuple=True)
    # pixels crossed by an edge: ss x ss samples, (u, v, w) interpolated bilinearly from the
    # pixel's corners (exact for the affine map; the distortion is smooth at this scale)
    f = (torch.arange(ss, dtype=torch.float32) + 0.5) / ss
    fy, fx = f[:, None, None], f[None, :, None]
    py, px = edge
    c00, c01 = uvw[py, px][:, None, None], uvw[py, px + 1][:, None, None]
    c10, c11 = uvw[py + 1, px][:, None, None], uvw[py + 1, px + 1][:, None, None]
    samples = (1 - fy) * ((1 - fx) * c00 + fx * c01) + fy * ((1 - fx) * c10 + fx * c11)
    value[edge] = _grey(samples, *board).mean((1, 2))
    image = value.numpy().astype(np.float64) * 255
    if blur > 0:
        image = cv2.GaussianBlur(image, (0, 0), blur)
    if noise > 0:
        image = image + np.random.default_rng(seed).normal(0, noise, image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def random_board_poses(K, dist, image_size, count: int, pattern=(9, 6),
                       square_size: float = 25.0, *, distance=(400.0, 600.0),
                       tilt_deg: float = 30.0, roll_deg: float = 20.0, margin: float = 15.0,
                       seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Board poses a camera sees whole: rvecs, tvecs (count, 3), board -> camera.

    The board's centre is put on a random ray of the image at a depth drawn from
    ``distance``; it is tilted by up to ``tilt_deg`` about a random axis in its plane and
    turned by up to ``roll_deg`` about its normal. A pose is kept when every corner of the
    board and of its one-square white margin projects at least ``margin`` pixels inside the
    image (so that the detector can find it); others are drawn again.
    """
    K = as_tensor(K, "K", (3, 3))
    d = check_dist(dist)
    w, h = check_image_size(image_size)
    count = check_positive_int(count, "count")
    cols, rows = check_pattern(pattern)
    s = check_real(square_size, "square_size", minimum=0, strict=True)
    lo, hi = (check_real(x, "distance", minimum=0, strict=True) for x in distance)
    tilt, roll = math.radians(check_real(tilt_deg, "tilt_deg")), math.radians(
        check_real(roll_deg, "roll_deg"))
    check_int(seed, "seed")
    rng = np.random.default_rng(seed)
    centre = torch.tensor([(cols - 1) * s / 2, (rows - 1) * s / 2, 0.0], dtype=DTYPE)
    outline = torch.tensor([[-2 * s, -2 * s, 0], [(cols + 1) * s, -2 * s, 0],
                            [-2 * s, (rows + 1) * s, 0], [(cols + 1) * s, (rows + 1) * s, 0]],
                           dtype=DTYPE)  # the corners of the white margin
    intr = intrinsics_vector(K, d)
    kept_r, kept_t = [], []
    for _ in range(200):  # draw candidates in batches of 256, keep those that fit
        n = 256
        phi = torch.from_numpy(rng.uniform(0, 2 * math.pi, n))
        axis = torch.stack([torch.cos(phi), torch.sin(phi), torch.zeros(n, dtype=DTYPE)], -1)
        spin = torch.zeros(n, 3, dtype=DTYPE)
        spin[:, 2] = torch.from_numpy(rng.uniform(-roll, roll, n))
        R = rodrigues(axis * torch.from_numpy(rng.uniform(-tilt, tilt, n))[:, None]) @ rodrigues(
            spin)
        pixel = torch.from_numpy(rng.uniform(0.1, 0.9, (n, 2)) * np.array([w, h]))
        ray = torch.cat([(pixel - K[:2, 2]) / torch.stack([K[0, 0], K[1, 1]]),
                         torch.ones(n, 1, dtype=DTYPE)], -1)
        t = ray * torch.from_numpy(rng.uniform(lo, hi, (n, 1))) - R @ centre
        rvec = rotation_to_rodrigues(R)
        corners = project(outline, torch.cat([rvec, t], -1), intr)  # (n, 4, 2)
        limit = torch.tensor([w - 1 - margin, h - 1 - margin], dtype=DTYPE)
        inside = ((corners >= margin) & (corners <= limit)).flatten(1).all(1)
        in_front = ((outline @ R.transpose(-1, -2) + t[:, None])[..., 2] > 0).all(1)
        ok = inside & in_front
        kept_r.append(rvec[ok])
        kept_t.append(t[ok])
        if sum(len(k) for k in kept_r) >= count:
            return torch.cat(kept_r)[:count], torch.cat(kept_t)[:count]
    raise ValueError("no board pose fits the image: reduce distance lower bound or tilt, or "
                     "enlarge the image")


def board_views(K, dist, rvecs, tvecs, pattern=(9, 6), square_size: float = 25.0, *,
                noise: float = 0.0, seed: int = 0) -> tuple[list, list]:
    """Exact corners of the board in each pose, plus Gaussian noise of ``noise`` pixels.

    Returns object_points and image_points: lists over views of (N, 3) and (N, 2) float64
    tensors, ready for :func:`lib.calibration.calibrate`.
    """
    K = as_tensor(K, "K", (3, 3))
    intr = intrinsics_vector(K, check_dist(dist))
    rvecs, tvecs = as_tensor(rvecs, "rvecs", (-1, 3)), as_tensor(tvecs, "tvecs", (-1, 3))
    if len(rvecs) != len(tvecs):
        raise ValueError(f"rvecs and tvecs must have the same length, got {len(rvecs)} and "
                         f"{len(tvecs)}")
    noise = check_real(noise, "noise", minimum=0)
    check_int(seed, "seed")
    X = board_points(pattern, square_size)
    gen = torch.Generator().manual_seed(seed)
    image = project(X, torch.cat([rvecs, tvecs], -1), intr)  # (V, N, 2)
    image = image + noise * torch.randn(image.shape, generator=gen, dtype=DTYPE)
    return [X.clone() for _ in range(len(rvecs))], list(image)


SUBPIX_WINDOW = (12, 12)
SUBPIX_CRITERIA = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_COUNT, 30, 0.1)


def _sample(image: np.ndarray, point: np.ndarray) -> float:
    """Mean grey level of the 3 x 3 pixels around a point (0 outside the image)."""
    x, y = int(round(point[0])), int(round(point[1]))
    patch = image[max(y - 1, 0): y + 2, max(x - 1, 0): x + 2]
    return float(patch.mean()) if patch.size else 0.0


def canonical_order(corners: np.ndarray, image: np.ndarray, pattern) -> np.ndarray:
    """Put corner 0 where :func:`board_points` has it. corners (N, 2) -> (N, 2).

    OpenCV returns the grid row by row, but which end of the board comes first depends on
    the view: for two cameras seeing the same board, the orders may be 180 degrees apart.
    Two facts fix it. (1) Seen from the front, the board's axes keep their handedness in
    the image: ``(c_1 - c_0) x (c_columns - c_0) > 0``; a mirrored grid reverses each row.
    (2) The square between corners 0, 1, columns, columns + 1 is black (this module's
    board); if it is the lighter of it and its right-hand neighbour, the grid is reversed.
    (2) needs columns + rows odd: otherwise the board looks the same turned by 180 degrees.
    """
    cols, rows = pattern
    grid = corners.reshape(rows, cols, 2)
    e1, e2 = grid[0, 1] - grid[0, 0], grid[1, 0] - grid[0, 0]
    if e1[0] * e2[1] - e1[1] * e2[0] < 0:
        grid = grid[:, ::-1]
    first = _sample(image, grid[:2, :2].reshape(-1, 2).mean(0))
    second = _sample(image, grid[:2, 1:3].reshape(-1, 2).mean(0))
    if first > second:
        grid = grid[::-1, ::-1]
    return np.ascontiguousarray(grid.reshape(-1, 2))


def _check_image(image, name: str) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        image = image.cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name} must be a numpy array or a tensor, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise TypeError(f"{name} must have dtype uint8, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if image.ndim != 2 or min(image.shape) == 0:
        raise ValueError(f"{name} must be a grey (H, W) or BGR (H, W, 3) image, got shape "
                         f"{image.shape}")
    return image


def detect_corners(images, pattern=(9, 6), *, on_missing: str = "raise", flags: int | None = None,
                   canonical: bool = True) -> list[np.ndarray | None]:
    """Sub-pixel chessboard corners of each image: a list of (N, 2) float32 arrays.

    images: a list of uint8 images (grey or BGR) or a (V, H, W) array; pattern: inner
    corners (columns, rows). ``cv2.findChessboardCorners`` (OpenCV's default flags unless
    ``flags``), then ``cv2.cornerSubPix`` with a (12, 12) half-window and (EPS + COUNT,
    30, 0.1). on_missing: ``"raise"`` (ValueError naming the image) or ``"none"`` (None in
    its place: a stream keeps its frame numbers). canonical: order the corners as
    :func:`board_points` (see :func:`canonical_order`).
    """
    cols, rows = check_pattern(pattern)
    check_choice(on_missing, "on_missing", ("raise", "none"))
    if not isinstance(canonical, bool):
        raise TypeError(f"canonical must be a bool, got {type(canonical).__name__}")
    if canonical and (cols + rows) % 2 == 0:
        raise ValueError(f"pattern {pattern}: with columns + rows even the board looks the same "
                         "turned by 180 degrees, so no order is canonical; use canonical=False "
                         "or a board with columns + rows odd, e.g. (9, 6)")
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 3 and (
            images.shape[-1] != 3):
        images = list(images)
    if isinstance(images, (np.ndarray, torch.Tensor)):
        raise TypeError("images must be a list of images or a (V, H, W) array; for one image "
                        "pass [image]")
    if not isinstance(images, (list, tuple)):
        raise TypeError(f"images must be a list of images, got {type(images).__name__}")
    if flags is None:
        flags = cv2.CALIB_CB_ADAPTIVE_THRESH + cv2.CALIB_CB_NORMALIZE_IMAGE
    found_all = []
    for k, image in enumerate(images):
        gray = _check_image(image, f"images[{k}]")
        found, corners = cv2.findChessboardCorners(gray, (cols, rows), flags=flags)
        if not found:
            if on_missing == "raise":
                raise ValueError(f"images[{k}]: no {cols}x{rows} chessboard found (is all of "
                                 "it in view?)")
            found_all.append(None)
            continue
        corners = cv2.cornerSubPix(gray, corners, SUBPIX_WINDOW, (-1, -1), SUBPIX_CRITERIA)
        corners = corners.reshape(-1, 2)
        if canonical:
            corners = canonical_order(corners, gray, (cols, rows))
        found_all.append(corners.astype(np.float32))
    return found_all
