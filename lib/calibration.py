"""Camera calibration (chapter 10): Zhang's closed-form initialisation and Levenberg–Marquardt
refinement, batched over views and over cameras.

Conventions are OpenCV's, so that results can be handed to OpenCV and checked against it
(the camera model is in :mod:`lib.calibration_camera`):

* a pose (``rvec``, ``tvec``) maps object (board) coordinates to camera coordinates,
  ``X_cam = R(rvec) X + tvec``, with ``rvec`` a Rodrigues rotation vector (eq. cal-rodrigues);
* ``K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` (no skew), pixel centres at integers;
* ``dist = (k1, k2, p1, p2, k3)``: radial k1, k2, k3 and tangential p1, p2 (eq. cal-dist);
* the RMS error is ``sqrt(sum of squared point errors / number of points)`` and the error of
  a view ``sqrt(its sum / its number of points)``, as ``cv2.calibrateCamera`` returns them
  (eq. cal-rms).

Reading order: the homography of a plane (:func:`homographies`), Zhang's method
(:func:`zhang_init`: constraints on B, closed-form K, poses, distortion by least squares),
and the refinement (:func:`calibrate_cameras`, :func:`calibrate`, :func:`solve_pnp`), which
calls the solver of :mod:`lib.calibration_lm`. Stereo pairs, rigs, rectification and YAML
files are in :mod:`lib.calibration_rig`, rendered boards and corner detection in
:mod:`lib.chessboard`; their public functions (``render_chessboard``, ``detect_corners``,
``stereo_calibrate``, ``calibrate_rig``, ``save_yaml``, ``load_yaml``...) can be imported
from here too. Everything runs in float64 on any device.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass

import numpy as np
import torch

from .calibration_camera import (
    DTYPE,
    as_tensor,
    camera_matrix,
    check_dist,
    check_image_size,
    check_pairs,
    intrinsics_vector,
    pad_views,
    project,
    project_jacobian,
    project_points,
    rodrigues,
    rotation_to_rodrigues,
    undistort_normalized,
    undistort_points,
)
from .calibration_lm import levenberg_marquardt
from .validate import check_positive_int

__all__ = [
    "CameraCalibration", "calibrate", "calibrate_cameras", "homographies", "project_points",
    "rodrigues", "rotation_to_rodrigues", "solve_pnp", "undistort_points", "zhang_init",
]


# --------------------------------------------------------------------- Zhang's method


def _normalizing_transform(points: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Hartley's similarity: centroid to 0, mean distance sqrt(2). (..., N, 2) -> (..., 3, 3)."""
    m = mask[..., None].to(points.dtype)
    n = m.sum(-2).clamp_min(1)
    centre = (points * m).sum(-2) / n
    spread = (((points - centre[..., None, :]) ** 2).sum(-1).sqrt() * m[..., 0]).sum(-1)
    s = math.sqrt(2) * n[..., 0] / spread.clamp_min(1e-300)
    T = torch.zeros(*points.shape[:-2], 3, 3, dtype=points.dtype, device=points.device)
    T[..., 0, 0], T[..., 1, 1], T[..., 2, 2] = s, s, 1.0
    T[..., :2, 2] = -s[..., None] * centre
    return T


def homographies(src: torch.Tensor, dst: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Homographies H with ``dst ~ H [src, 1]`` by normalised DLT (eq. cal-homography).

    src, dst (..., N, 2); mask (..., N) marks real points (padding is ignored) -> (..., 3, 3),
    scaled so that ``H[2, 2] = 1``. Each point gives two rows of ``A h = 0``; h is the right
    singular vector of the smallest singular value.
    """
    Ts, Td = _normalizing_transform(src, mask), _normalizing_transform(dst, mask)
    s = src @ Ts[..., :2, :2].transpose(-1, -2) + Ts[..., None, :2, 2]
    d = dst @ Td[..., :2, :2].transpose(-1, -2) + Td[..., None, :2, 2]
    one, zero = torch.ones_like(s[..., :1]), torch.zeros_like(s)
    sh = torch.cat([s, one], -1)  # (..., N, 3)
    zero = torch.cat([zero, zero[..., :1]], -1)
    rows_u = torch.cat([sh, zero, -d[..., :1] * sh], -1)  # u' (h3 . s) = h1 . s
    rows_v = torch.cat([zero, sh, -d[..., 1:] * sh], -1)
    A = torch.cat([rows_u, rows_v], -2) * torch.cat([mask, mask], -1)[..., None]
    _, _, Vh = torch.linalg.svd(A)  # A (2N, 9), padding rows zero; Vh (9, 9) even for N = 4
    Hn = Vh[..., -1, :].unflatten(-1, (3, 3))
    H = torch.linalg.solve(Td, Hn @ Ts)  # undo the normalisations
    return H / H[..., 2:, 2:]


def _v(H: torch.Tensor, i: int, j: int) -> torch.Tensor:
    """Zhang's v_ij with ``h_i^T B h_j = v_ij^T b``, b = (B11, B12, B22, B13, B23, B33)."""
    hi, hj = H[..., :, i], H[..., :, j]
    return torch.stack([hi[..., 0] * hj[..., 0], hi[..., 0] * hj[..., 1] + hi[..., 1] * hj[..., 0],
                        hi[..., 1] * hj[..., 1], hi[..., 2] * hj[..., 0] + hi[..., 0] * hj[..., 2],
                        hi[..., 2] * hj[..., 1] + hi[..., 1] * hj[..., 2],
                        hi[..., 2] * hj[..., 2]], -1)


# sigma_5 / sigma_1 of Zhang's constraint matrix (image coordinates scaled by 1 / max(w, h)),
# measured over 20 seeds of 10 views with 0.2 px of noise: boards within 2 degrees of
# fronto-parallel give at most 9.2e-5, boards tilted up to 20 degrees at least 5.6e-4
DEGENERATE_RATIO = 1.2e-4


def _intrinsics_from_homographies(H: torch.Tensor, view_mask: torch.Tensor):
    """Zhang's closed form (eqs. cal-zhang-constraints, cal-zhang-k), batched over cameras.

    H (C, V, 3, 3) homographies from the board plane to image coordinates normalised by a
    similarity; view_mask (C, V). Returns K (C, 3, 3) without skew and the conditioning
    ratio sigma_5 / sigma_1 of the constraint matrix (small: the views do not determine K).
    """
    Hn = H / H.flatten(-2).norm(dim=-1)[..., None, None]  # equal weight for every view
    rows = torch.cat([_v(Hn, 0, 1), _v(Hn, 0, 0) - _v(Hn, 1, 1)], -2)  # (C, 2V, 6)
    rows = rows * torch.cat([view_mask, view_mask], -1)[..., None]
    skewless = torch.zeros_like(rows[:, :1])
    skewless[..., 1] = 1.0  # B12 = 0 <=> gamma = 0: the camera has no skew
    V = torch.cat([rows, skewless], -2)
    _, sv, Vh = torch.linalg.svd(V.transpose(-1, -2) @ V)
    ratio = torch.sqrt(sv[..., 4] / sv[..., 0])  # singular values of V itself
    b = Vh[..., -1, :]
    b = b * torch.where(b[..., :1] < 0, -1.0, 1.0)  # B is positive definite: B11 > 0
    B11, B12, B22, B13, B23, B33 = b.unbind(-1)
    den = B11 * B22 - B12**2
    v0 = (B12 * B13 - B11 * B23) / den
    lam = B33 - (B13**2 + v0 * (B12 * B13 - B11 * B23)) / B11
    alpha2, beta2 = lam / B11, lam * B11 / den
    valid = (alpha2 > 0) & (beta2 > 0) & (den > 0)
    alpha = torch.sqrt(alpha2.abs())
    beta = torch.sqrt(beta2.abs())
    u0 = -B13 * alpha**2 / lam  # gamma = 0
    K = camera_matrix(torch.stack([alpha, beta, u0, v0], -1))
    return K, ratio, valid


def _poses_from_homographies(K: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """R and t of each view from ``H ~ K [r1 r2 t]`` (eq. cal-zhang-rt): (C, V, 6) poses.

    The two columns are scaled to unit length on average, r3 = r1 x r2, and the nearest
    rotation is taken (SVD); the sign makes the board lie in front of the camera (t_z > 0).
    """
    M = torch.linalg.solve(K[:, None], H)  # (C, V, 3, 3) = lambda [r1 r2 t]
    lam = 2 / (M[..., 0].norm(dim=-1) + M[..., 1].norm(dim=-1))
    lam = lam * torch.where(M[..., 2, 2] < 0, -1.0, 1.0)
    M = M * lam[..., None, None]
    R = torch.stack([M[..., 0], M[..., 1], torch.cross(M[..., 0], M[..., 1], dim=-1)], -1)
    U, _, Vh = torch.linalg.svd(R)
    R = U @ Vh
    R = R * torch.where(torch.linalg.det(R) < 0, -1.0, 1.0)[..., None, None]
    return torch.cat([rotation_to_rodrigues(R), M[..., 2]], -1)


def _distortion_least_squares(obj, img, mask, intr, pose) -> torch.Tensor:
    """(k1, k2, p1, p2, k3) by linear least squares, K and poses fixed (eq. cal-dist-ls).

    The distorted pixel is linear in the coefficients: u_d - u = fx * [x r^2, x r^4,
    2xy, r^2 + 2x^2, x r^6] . d, and likewise for v. One (5 x 5) normal system per camera.
    """
    R = rodrigues(pose[..., :3])
    Xc = obj @ R.transpose(-1, -2) + pose[..., None, 3:]
    x, y = Xc[..., 0] / Xc[..., 2], Xc[..., 1] / Xc[..., 2]  # (C, V, N)
    r2 = x * x + y * y
    fx, fy = intr[:, 0, None, None], intr[:, 1, None, None]
    cols_u = torch.stack([x * r2, x * r2**2, 2 * x * y, r2 + 2 * x * x, x * r2**3], -1)
    cols_v = torch.stack([y * r2, y * r2**2, r2 + 2 * y * y, 2 * x * y, y * r2**3], -1)
    cols_u, cols_v = cols_u * fx[..., None], cols_v * fy[..., None]
    ideal_u, ideal_v = fx * x + intr[:, 2, None, None], fy * y + intr[:, 3, None, None]
    m = mask.to(obj.dtype)
    A = torch.cat([cols_u, cols_v], -2) * torch.cat([m, m], -1)[..., None]  # (C, V, 2N, 5)
    rhs = torch.cat([img[..., 0] - ideal_u, img[..., 1] - ideal_v], -1) * torch.cat([m, m], -1)
    AtA = torch.einsum("cvni,cvnj->cij", A, A)
    Atb = torch.einsum("cvni,cvn->ci", A, rhs)
    scale = AtA.diagonal(dim1=-2, dim2=-1).clamp_min(1e-300).sqrt()  # column equilibration
    d = torch.linalg.solve(AtA / scale[:, :, None] / scale[:, None, :], Atb / scale)
    return d / scale


def _zhang_batched(obj, img, mask, image_sizes):
    """Zhang's initialisation for C cameras: intrinsics (C, 9) and poses (C, V, 6)."""
    view_mask = mask.any(-1)
    # a fixed similarity per camera (centre of the image, scale 1/max(w, h)) keeps the
    # constraint matrix well conditioned; it preserves zero skew and square pixels
    size = torch.tensor(image_sizes, dtype=obj.dtype, device=obj.device)  # (C, 2)
    s = 1 / size.max(-1).values
    N = torch.zeros(len(size), 3, 3, dtype=obj.dtype, device=obj.device)
    N[:, 0, 0], N[:, 1, 1], N[:, 2, 2] = s, s, 1.0
    N[:, :2, 2] = -size / 2 * s[:, None]
    img_n = img * s[:, None, None, None] + N[:, None, None, :2, 2]
    H = homographies(obj[..., :2], img_n, mask)
    H = torch.where(view_mask[..., None, None], H, torch.eye(3, dtype=H.dtype, device=H.device))
    # board units (mm) make h1, h2 tiny next to h3; measure the board in its own size instead
    # (the constraints only use the directions of h1 and h2)
    extent = 1 / _normalizing_transform(obj[..., :2], mask)[..., 0, 0]  # (C, V)
    H_unit = torch.cat([H[..., :2] * extent[..., None, None], H[..., 2:]], -1)
    Kn, ratio, valid = _intrinsics_from_homographies(H_unit, view_mask)
    K = torch.linalg.solve(N, Kn)  # back to pixels
    pose = _poses_from_homographies(Kn, H)
    intr = intrinsics_vector(K, K.new_zeros(len(K), 5))
    intr[:, 4:] = _distortion_least_squares(obj, img, mask, intr, pose)
    return intr, pose, ratio, valid


def _check_degenerate(ratio, valid, names):
    for c in range(len(ratio)):
        if not bool(valid[c]) or float(ratio[c]) < DEGENERATE_RATIO:
            raise ValueError(
                f"{names[c]}degenerate views: the board poses do not determine the\n"
                f"intrinsics (conditioning {float(ratio[c]):.1e} < {DEGENERATE_RATIO:g}).\n"
                "Tilt the board: views that all face the camera give one constraint.")


# ------------------------------------------------------------------------ refinement


@dataclass
class CameraCalibration:
    """One camera's calibration, with OpenCV's conventions (see the module docstring)."""

    K: torch.Tensor  # (3, 3)
    dist: torch.Tensor  # (5,) k1, k2, p1, p2, k3
    rvecs: torch.Tensor  # (V, 3): one Rodrigues vector per view (board -> camera)
    tvecs: torch.Tensor  # (V, 3)
    rms: float  # sqrt(sum of squared point errors / number of points), pixels
    per_view_errors: torch.Tensor  # (V,) sqrt(view's sum / view's number of points)
    image_size: tuple[int, int]  # (width, height)
    iterations: int  # Levenberg–Marquardt iterations (0: the closed-form initialisation)


def _residual_fn(obj, img):
    """r(intrinsics (C, 9), poses (C, V, 6)) -> (C, V, 2N): the reprojection errors."""
    def residuals(intr, pose):
        proj = project(obj, pose, intr[:, None])
        return (proj - img).transpose(-1, -2).flatten(-2)  # (C, V, [u..., v...])
    return residuals


def _jacobian_fn(obj, img):
    """(intrinsics (C, 9), poses (C, V, 6)) -> the residuals of :func:`_residual_fn`, their
    derivatives by the intrinsics (C, V, 2N, 9) and by the poses (C, V, 2N, 6), in closed
    form (eq. cal-jacobian), in the layout of :func:`lib.calibration_lm.jacobian_blocks`."""
    def jacobian(intr, pose):
        proj, J_intr, J_pose = project_jacobian(obj, pose, intr[:, None])  # (C, V, N, 2, .)
        r = (proj - img).transpose(-1, -2).flatten(-2)
        return (r, J_intr.transpose(-3, -2).flatten(-3, -2),  # (C, V, [u..., v...], 9)
                J_pose.transpose(-3, -2).flatten(-3, -2))
    return jacobian


def _results(obj, img, mask, intr, pose, image_sizes, iterations, counts):
    err2 = ((project(obj, pose, intr[:, None]) - img) ** 2).sum(-1) * mask  # (C, V, N)
    out = []
    for c in range(len(intr)):
        n = mask[c].sum(-1)[: counts[c]]
        e = err2[c, : counts[c]].sum(-1)
        out.append(CameraCalibration(
            K=camera_matrix(intr[c]), dist=intr[c, 4:].clone(), rvecs=pose[c, : counts[c], :3],
            tvecs=pose[c, : counts[c], 3:], rms=math.sqrt(float(e.sum() / n.sum())),
            per_view_errors=torch.sqrt(e / n), image_size=tuple(image_sizes[c]),
            iterations=int(iterations[c])))
    return out


def _prepare(object_points, image_points, image_sizes, device, minimum_views):
    if not isinstance(object_points, (list, tuple)) or not isinstance(image_points,
                                                                      (list, tuple)):
        raise TypeError("object_points and image_points must be lists with one entry per "
                        "camera, each a list of (N, 3) / (N, 2) arrays, one per view")
    if len(object_points) != len(image_points) or not object_points:
        raise ValueError(f"object_points and image_points must list the same cameras (at "
                         f"least one), got {len(object_points)} and {len(image_points)}")
    C = len(object_points)
    if isinstance(image_sizes, (tuple, list)) and len(image_sizes) == 2 and all(
            isinstance(s, int) for s in image_sizes):
        image_sizes = [image_sizes] * C
    if not isinstance(image_sizes, (tuple, list)) or len(image_sizes) != C:
        raise ValueError(f"image_sizes must be one (width, height) or one per camera ({C})")
    sizes = [check_image_size(s, f"image_sizes[{c}]") for c, s in enumerate(image_sizes)]
    pairs = [check_pairs(o, i, f"object_points[{c}]", f"image_points[{c}]", device,
                         minimum_views)
             for c, (o, i) in enumerate(zip(object_points, image_points, strict=True))]
    obj, mask = pad_views([p[0] for p in pairs])
    img, _ = pad_views([p[1] for p in pairs])
    return obj, img, mask, sizes, [len(p[0]) for p in pairs]


MIN_VIEWS = 3


def zhang_init(object_points, image_points, image_size=None) -> CameraCalibration:
    """Zhang's closed-form calibration of one camera (eqs. cal-homography to cal-dist-ls).

    object_points: one (N, 3) array per view, on the plane z = 0; image_points: one (N, 2)
    per view; image_size (width, height) sets the normalisation (default: the extent of
    the points). Needs 3 views in general position. Returns a :class:`CameraCalibration`
    with ``iterations = 0``.
    """
    obj, img = check_pairs(object_points, image_points, minimum_views=MIN_VIEWS)
    if image_size is None:
        top = torch.cat(img).amax(0)
        image_size = (max(1, math.ceil(float(top[0]))), max(1, math.ceil(float(top[1]))))
    size = check_image_size(image_size)
    O, m = pad_views([obj])
    Im, _ = pad_views([img])
    intr, pose, ratio, valid = _zhang_batched(O, Im, m, [size])
    _check_degenerate(ratio, valid, [""])
    return _results(O, Im, m, intr, pose, [size], [0], [len(obj)])[0]


def calibrate_cameras(object_points, image_points, image_sizes, *, max_iterations: int = 100,
                      device=None) -> list[CameraCalibration]:
    """Calibrate C cameras at once: Zhang's initialisation, then one batched LM (eq. cal-lm).

    object_points[c][v] (N, 3) on z = 0 and image_points[c][v] (N, 2) are camera c's view v
    (cameras may have different numbers of views and views different numbers of points);
    image_sizes: one (width, height) for all or one per camera. device: where to compute
    (default: where the points are). Returns one :class:`CameraCalibration` per camera.
    """
    check_positive_int(max_iterations, "max_iterations")
    obj, img, mask, sizes, counts = _prepare(object_points, image_points, image_sizes, device,
                                             MIN_VIEWS)
    intr, pose, ratio, valid = _zhang_batched(obj, img, mask, sizes)
    names = [f"camera {c}: " if len(sizes) > 1 else "" for c in range(len(sizes))]
    _check_degenerate(ratio, valid, names)
    weights = torch.cat([mask, mask], -1).to(obj.dtype)
    fit = levenberg_marquardt(_residual_fn(obj, img), intr, pose, weights,
                              max_iterations=max_iterations, jacobian=_jacobian_fn(obj, img))
    return _results(obj, img, mask, fit.shared, fit.local, sizes, fit.iterations, counts)


def calibrate(object_points, image_points, image_size, *, max_iterations: int = 100,
              device=None) -> CameraCalibration:
    """Calibrate one camera, as ``cv2.calibrateCamera`` with its default flags.

    object_points: one (N, 3) array or tensor per view, on the plane z = 0 (board
    coordinates); image_points: one (N, 2) per view, pixels; image_size (width, height).
    Returns a :class:`CameraCalibration` (K, dist, rvecs, tvecs, rms, per_view_errors).
    """
    if not isinstance(object_points, (list, tuple, np.ndarray, torch.Tensor)):
        raise TypeError(f"object_points must be a list of (N, 3) arrays, one per view, got "
                        f"{type(object_points).__name__}")
    if not isinstance(image_points, (list, tuple, np.ndarray, torch.Tensor)):
        raise TypeError(f"image_points must be a list of (N, 2) arrays, one per view, got "
                        f"{type(image_points).__name__}")
    obj, img = check_pairs(object_points, image_points, device=device, minimum_views=MIN_VIEWS)
    return calibrate_cameras([obj], [img], [check_image_size(image_size)],
                             max_iterations=max_iterations)[0]


def solve_pnp(object_points, image_points, K, dist=None, *, max_iterations: int = 50):
    """Board poses from known intrinsics, as ``cv2.solvePnP`` for planar targets.

    object_points, image_points: lists over views of (N, 3) on z = 0 and (N, 2) pixels;
    K (3, 3) and dist (5,) shared by all views, or one per view ((V, 3, 3), (V, 5)).
    Points are undistorted, the pose is read off the homography (eq. cal-zhang-rt with
    K = I), and LM refines it with K and dist fixed. Returns rvecs, tvecs (V, 3).
    """
    obj, img = check_pairs(object_points, image_points)
    dev, V = obj[0].device, len(obj)
    ndim = lambda x: x.dim() if isinstance(x, torch.Tensor) else np.ndim(x)  # noqa: E731
    K = as_tensor(K, "K", (3, 3) if ndim(K) == 2 else (V, 3, 3), dev).expand(V, 3, 3)
    dist = (check_dist(dist, dev) if dist is None or ndim(dist) == 1
            else as_tensor(dist, "dist", (V, 5), dev)).expand(V, 5)
    intr = intrinsics_vector(K, dist)  # (V, 9): each view is its own problem
    O, m = pad_views([[o] for o in obj])  # (V, 1, N, 3)
    Im, _ = pad_views([[p] for p in img])
    xy = undistort_normalized((Im[:, 0] - intr[:, None, 2:4]) / intr[:, None, :2], intr[:, 4:])
    xy = xy[:, None]  # (V, 1, N, 2) normalised, undistorted
    H = homographies(O[..., :2], xy, m)
    eye = torch.eye(3, dtype=DTYPE, device=dev).expand(V, 3, 3)
    pose = _poses_from_homographies(eye, H)  # (V, 1, 6)
    weights = torch.cat([m, m], -1).to(DTYPE)
    fit = levenberg_marquardt(_residual_fn(O, Im), intr, pose, weights,
                              shared_free=torch.zeros(9, dtype=torch.bool, device=dev),
                              max_iterations=max_iterations, jacobian=_jacobian_fn(O, Im))
    return fit.local[:, 0, :3], fit.local[:, 0, 3:]


# The rest of chapter 10's API lives in the modules split off by idea; `from lib.calibration
# import calibrate_rig` works too. Resolved on first use: lib.calibration_rig imports this
# module, so importing it here at the top would be circular.
_ELSEWHERE = {name: "chessboard" for name in (
    "board_points", "board_views", "detect_corners", "random_board_poses", "render_chessboard")}
_ELSEWHERE |= {name: "calibration_rig" for name in (
    "calibrate_rig", "load_yaml", "save_yaml", "stereo_calibrate")}
_ELSEWHERE |= {name: "calibration_epipolar" for name in (
    "epipolar_lines", "rectify_map", "rectify_points", "stereo_rectify")}


def __getattr__(name: str):
    if name in _ELSEWHERE:
        return getattr(importlib.import_module(f".{_ELSEWHERE[name]}", __package__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
