"""The camera model of chapter 10 and the checks of its inputs.

A pinhole camera with Brown–Conrady distortion, in OpenCV's conventions: a pose (``rvec``,
``tvec``) maps board coordinates to camera coordinates, ``X_cam = R(rvec) X + tvec``, with a
Rodrigues vector (eq. cal-rodrigues); ``K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``; the
distortion ``(k1, k2, p1, p2, k3)`` acts on normalised coordinates (eq. cal-dist); pixel
centres are at integer coordinates. :func:`project_points` equals ``cv2.projectPoints`` and
:func:`undistort_points` ``cv2.undistortPoints``. Internally an intrinsics vector
``(fx, fy, cx, cy, k1, k2, p1, p2, k3)`` and a pose vector ``(rvec, tvec)`` are what the
solver of :mod:`lib.calibration_lm` moves. Everything is float64, on any device.
"""

from __future__ import annotations

import numpy as np
import torch

from .validate import check_positive_int

DTYPE = torch.float64  # sub-pixel residuals against focal lengths of ~1e3: float32 is not enough


# ----------------------------------------------------------------------------- camera model


def skew(v: torch.Tensor) -> torch.Tensor:
    """The cross-product matrix ``[v]_x`` with ``[v]_x u = v x u``: (..., 3) -> (..., 3, 3)."""
    zero = torch.zeros_like(v[..., 0])
    x, y, z = v.unbind(-1)
    return torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).unflatten(-1, (3, 3))


def rodrigues(rvec: torch.Tensor) -> torch.Tensor:
    """Rotation matrices of rotation vectors (eq. cal-rodrigues): (..., 3) -> (..., 3, 3).

    ``R = I + a [r]_x + b [r]_x^2`` with ``a = sin(t)/t``, ``b = (1 - cos t)/t^2``, ``t = |r|``,
    and their Taylor series near ``t = 0``, so that the function and its derivatives are
    finite everywhere (the solver differentiates it at ``r = 0``).
    """
    t2 = (rvec**2).sum(-1)[..., None, None]
    small = t2 < 1e-8
    t2_safe = torch.where(small, torch.ones_like(t2), t2)
    t = torch.sqrt(t2_safe)
    a = torch.where(small, 1 - t2 / 6, torch.sin(t) / t)
    b = torch.where(small, 0.5 - t2 / 24, (1 - torch.cos(t)) / t2_safe)
    W = skew(rvec)
    eye = torch.eye(3, dtype=rvec.dtype, device=rvec.device)
    return eye + a * W + b * (W @ W)


def rotation_to_rodrigues(R: torch.Tensor) -> torch.Tensor:
    """The rotation vector of rotation matrices, the inverse of :func:`rodrigues`.

    (..., 3, 3) -> (..., 3), angle in [0, pi]. Through the unit quaternion, picking the
    best-conditioned of Shepperd's four formulas, so that angles near pi are exact too.
    """
    m = R
    tr = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    cands = torch.stack([  # 4 * (w, x, y, z) scaled by the component that is largest
        torch.stack([1 + tr, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0],
                     m[..., 1, 0] - m[..., 0, 1]], -1),
        torch.stack([m[..., 2, 1] - m[..., 1, 2], 1 + 2 * m[..., 0, 0] - tr,
                     m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]], -1),
        torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0],
                     1 + 2 * m[..., 1, 1] - tr, m[..., 1, 2] + m[..., 2, 1]], -1),
        torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0],
                     m[..., 1, 2] + m[..., 2, 1], 1 + 2 * m[..., 2, 2] - tr], -1),
    ], -2)  # (..., 4, 4)
    pick = torch.stack([tr, m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]], -1).argmax(-1)
    q = torch.take_along_dim(cands, pick[..., None, None], -2)[..., 0, :]
    q = q / q.norm(dim=-1, keepdim=True)
    q = q * torch.where(q[..., :1] < 0, -1.0, 1.0)  # w >= 0: angle in [0, pi]
    s = q[..., 1:].norm(dim=-1, keepdim=True)
    angle = 2 * torch.atan2(s, q[..., :1])
    scale = torch.where(s > 1e-12, angle / torch.where(s > 1e-12, s, 1.0), 2.0)
    return q[..., 1:] * scale


def distort(xy: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
    """Brown–Conrady distortion of normalised points (eq. cal-dist).

    xy (..., N, 2) undistorted normalised coordinates ``(X/Z, Y/Z)``; dist (..., 5) as
    (k1, k2, p1, p2, k3). Returns the distorted normalised coordinates (..., N, 2).
    """
    x, y = xy[..., 0], xy[..., 1]
    k1, k2, p1, p2, k3 = (dist[..., i, None] for i in range(5))
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return torch.stack([xd, yd], -1)


def project(X: torch.Tensor, pose: torch.Tensor, intr: torch.Tensor) -> torch.Tensor:
    """Pixels of points (eq. cal-project), batched: X (..., N, 3), pose (..., 6) as
    (rvec, tvec), intr (..., 9) as (fx, fy, cx, cy, k1, k2, p1, p2, k3) -> (..., N, 2)."""
    R = rodrigues(pose[..., :3])
    Xc = X @ R.transpose(-1, -2) + pose[..., None, 3:]  # camera coordinates (..., N, 3)
    xy = Xc[..., :2] / Xc[..., 2:]
    xy = distort(xy, intr[..., 4:])
    return xy * intr[..., None, :2] + intr[..., None, 2:4]


def project_jacobian(X: torch.Tensor, pose: torch.Tensor, intr: torch.Tensor):
    """:func:`project` and its derivatives by the chain rule (eq. cal-jacobian).

    X (..., N, 3), pose (..., 6) as (rvec, tvec), intr (..., 9) -> pixels (..., N, 2),
    d pixels / d intr (..., N, 2, 9) and d pixels / d pose (..., N, 2, 6). A rotation
    vector moved by d moves R X by -[R X]_x J d, with J the left Jacobian of the rotation
    (``I + b [r]_x + c [r]_x^2``, with Rodrigues' b and ``c = (1 - sin t / t) / t^2``,
    eq. cal-left-jacobian). Tested against forward-mode autograd.
    """
    r, t = pose[..., :3], pose[..., 3:]
    t2 = (r**2).sum(-1)[..., None, None]
    small = t2 < 1e-8
    t2_safe = torch.where(small, torch.ones_like(t2), t2)
    th = torch.sqrt(t2_safe)
    b = torch.where(small, 0.5 - t2 / 24, (1 - torch.cos(th)) / t2_safe)
    c = torch.where(small, 1 / 6 - t2 / 120, (1 - torch.sin(th) / th) / t2_safe)
    S = skew(r)
    eye = torch.eye(3, dtype=r.dtype, device=r.device)
    J_left = eye + b * S + c * (S @ S)  # (..., 3, 3)
    RX = X @ rodrigues(r).transpose(-1, -2)  # (..., N, 3)
    Xc = RX + t[..., None, :]
    z = Xc[..., 2]
    x, y = Xc[..., 0] / z, Xc[..., 1] / z  # (..., N)
    fx, fy = intr[..., 0, None], intr[..., 1, None]
    k1, k2, p1, p2, k3 = (intr[..., i, None] for i in range(4, 9))
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
    d_radial = k1 + r2 * (2 * k2 + 3 * k3 * r2)  # d radial / d r2
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    pixels = torch.stack([fx * xd + intr[..., 2, None], fy * yd + intr[..., 3, None]], -1)

    one, zero = torch.ones_like(x), torch.zeros_like(x)
    u_row = [xd, zero, one, zero, fx * x * r2, fx * x * r2 * r2, fx * 2 * x * y,
             fx * (r2 + 2 * x * x), fx * x * r2**3]  # d u / d (fx .. k3), eq. cal-dist-ls
    v_row = [zero, yd, zero, one, fy * y * r2, fy * y * r2 * r2, fy * (r2 + 2 * y * y),
             fy * 2 * x * y, fy * y * r2**3]
    J_intr = torch.stack([torch.stack(u_row, -1), torch.stack(v_row, -1)], -2)

    cross = 2 * x * y * d_radial + 2 * p1 * x + 2 * p2 * y  # d xd / dy = d yd / dx
    D = torch.stack([  # d (u, v) / d (x, y): the distortion's Jacobian, scaled by f
        torch.stack([fx * (radial + 2 * x * x * d_radial + 2 * p1 * y + 6 * p2 * x),
                     fx * cross], -1),
        torch.stack([fy * cross,
                     fy * (radial + 2 * y * y * d_radial + 6 * p1 * y + 2 * p2 * x)], -1),
    ], -2)  # (..., N, 2, 2)
    P = torch.stack([torch.stack([1 / z, zero, -x / z], -1),
                     torch.stack([zero, 1 / z, -y / z], -1)], -2)  # d (x, y) / d Xc
    dXc = torch.cat([-skew(RX) @ J_left[..., None, :, :],
                     eye.expand(*RX.shape, 3)], -1)  # d Xc / d (rvec, tvec): (..., N, 3, 6)
    return pixels, J_intr, D @ P @ dXc


def intrinsics_vector(K: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
    """(fx, fy, cx, cy, k1, k2, p1, p2, k3) of K (..., 3, 3) and dist (..., 5) -> (..., 9)."""
    return torch.cat([K[..., 0, 0, None], K[..., 1, 1, None], K[..., 0, 2, None],
                      K[..., 1, 2, None], dist], -1)


def camera_matrix(intr: torch.Tensor) -> torch.Tensor:
    """K (..., 3, 3) of an intrinsics vector (..., >= 4) starting (fx, fy, cx, cy)."""
    K = torch.zeros(*intr.shape[:-1], 3, 3, dtype=intr.dtype, device=intr.device)
    K[..., 0, 0], K[..., 1, 1] = intr[..., 0], intr[..., 1]
    K[..., 0, 2], K[..., 1, 2], K[..., 2, 2] = intr[..., 2], intr[..., 3], 1.0
    return K


# ------------------------------------------------------------------------- input checking


def as_tensor(x, name: str, shape: tuple, device=None) -> torch.Tensor:
    """A float64 tensor of ``shape`` (-1: any size) from an array or tensor, finite."""
    if isinstance(x, (list, tuple)):
        try:
            x = np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"{name} must hold numbers, got {x!r}") from None
    if isinstance(x, np.ndarray):
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
            raise TypeError(f"{name} must hold numbers, got dtype {x.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be an array or a tensor, got {type(x).__name__}")
    if x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{name} must be real numbers, got dtype {x.dtype}")
    x = x.to(device=device if device is not None else x.device, dtype=DTYPE)
    if len(shape) == 2 and x.dim() == 3 and x.shape[1] == 1:  # OpenCV's (N, 1, 2) layout
        x = x[:, 0]
    if x.dim() != len(shape) or any(s != -1 and s != n for s, n in zip(shape, x.shape,
                                                                         strict=True)):
        want = "(" + ", ".join("N" if s == -1 else str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} must be finite, got NaN or inf")
    return x


def as_views(points, name: str, width: int, device=None) -> list[torch.Tensor]:
    """A list of (N_i, width) float64 tensors, one per view, from a list or a (V, N, width)."""
    if isinstance(points, (np.ndarray, torch.Tensor)) and points.ndim == 3:
        points = list(points)
    if not isinstance(points, (list, tuple)):
        raise TypeError(f"{name} must be a list of (N, {width}) arrays, one per view, "
                        f"got {type(points).__name__}")
    views = [as_tensor(p, f"{name}[{i}]", (-1, width), device) for i, p in enumerate(points)]
    for i, v in enumerate(views):
        if len(v) < 4:
            raise ValueError(f"{name}[{i}] must have at least 4 points (a homography has 8 "
                             f"degrees of freedom), got {len(v)}")
    return views


def check_image_size(image_size, name: str = "image_size") -> tuple[int, int]:
    """(width, height) as two positive ints."""
    if not isinstance(image_size, (tuple, list)) or len(image_size) != 2:
        raise TypeError(f"{name} must be (width, height), got {image_size!r}")
    w, h = image_size
    return (check_positive_int(w, f"{name}[0] (width)"),
            check_positive_int(h, f"{name}[1] (height)"))


def check_pairs(object_points, image_points, name_obj="object_points",
                name_img="image_points", device=None, minimum_views=1):
    """Object and image points of the same views with the same counts; (N, 3) z = 0."""
    obj = as_views(object_points, name_obj, 3, device)
    img = as_views(image_points, name_img, 2, device)
    if len(obj) != len(img):
        raise ValueError(f"{name_obj} and {name_img} must have one entry per view each, got "
                         f"{len(obj)} and {len(img)} views")
    if len(obj) < minimum_views:
        raise ValueError(f"{name_obj}: calibration needs at least {minimum_views} views, got "
                         f"{len(obj)}")
    for i, (o, p) in enumerate(zip(obj, img, strict=True)):
        if len(o) != len(p):
            raise ValueError(f"{name_obj}[{i}] ({len(o)} points) and {name_img}[{i}] "
                             f"({len(p)}) must match")
        if bool((o[:, 2] != 0).any()):
            raise ValueError(f"{name_obj}[{i}] must lie on the plane z = 0 (a planar target)")
    return obj, img


def pad_views(views: list[list[torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad cameras x views x points to one tensor: (C, V, N, d) and a (C, V, N) bool mask."""
    C, V = len(views), max(len(v) for v in views)
    N, d = max(len(p) for v in views for p in v), views[0][0].shape[-1]
    ref = views[0][0]
    out = torch.zeros(C, V, N, d, dtype=ref.dtype, device=ref.device)
    mask = torch.zeros(C, V, N, dtype=torch.bool, device=ref.device)
    for c, cam in enumerate(views):
        for v, p in enumerate(cam):
            out[c, v, : len(p)], mask[c, v, : len(p)] = p, True
    return out, mask


def project_points(object_points, rvec, tvec, K, dist=None) -> torch.Tensor:
    """Pixels of 3D points seen by a camera, as ``cv2.projectPoints`` (eq. cal-project).

    object_points (N, 3); rvec, tvec (3,) the pose (object -> camera); K (3, 3); dist of 4
    or 5 coefficients (k1, k2, p1, p2[, k3]) or None. Returns (N, 2) float64 pixels.
    """
    X = as_tensor(object_points, "object_points", (-1, 3))
    dev = X.device
    r, t = as_tensor(rvec, "rvec", (3,), dev), as_tensor(tvec, "tvec", (3,), dev)
    K = as_tensor(K, "K", (3, 3), dev)
    d = check_dist(dist, dev)
    return project(X, torch.cat([r, t]), intrinsics_vector(K, d))


def check_dist(dist, device=None) -> torch.Tensor:
    """Distortion as a (5,) float64 tensor: None -> zeros, 4 coefficients -> k3 = 0."""
    if dist is None:
        return torch.zeros(5, dtype=DTYPE, device=device)
    d = as_tensor(dist, "dist", (-1,), device).flatten()
    if d.numel() not in (4, 5):
        raise ValueError(f"dist must have 4 or 5 coefficients (k1, k2, p1, p2[, k3]), got "
                         f"{d.numel()}")
    return torch.cat([d, d.new_zeros(5 - d.numel())])


def undistort_normalized(xy_d: torch.Tensor, dist: torch.Tensor,
                         iterations: int = 20) -> torch.Tensor:
    """Invert :func:`distort` by fixed-point iteration: (..., N, 2) -> (..., N, 2).

    ``x <- (x_d - tangential(x)) / radial(x)``, the iteration ``cv2.undistortPoints`` uses;
    it converges for the moderate distortion of ordinary lenses.
    """
    x = xy_d
    k1, k2, p1, p2, k3 = (dist[..., i, None] for i in range(5))
    for _ in range(iterations):
        u, v = x[..., 0], x[..., 1]
        r2 = u * u + v * v
        radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
        du = 2 * p1 * u * v + p2 * (r2 + 2 * u * u)
        dv = p1 * (r2 + 2 * v * v) + 2 * p2 * u * v
        x = torch.stack([(xy_d[..., 0] - du) / radial, (xy_d[..., 1] - dv) / radial], -1)
    return x


def undistort_points(image_points, K, dist=None, iterations: int = 20) -> torch.Tensor:
    """Normalised undistorted coordinates of pixels, as ``cv2.undistortPoints`` (P = None).

    image_points (N, 2) pixels; K (3, 3); dist (4 or 5,) or None -> (N, 2) float64.
    """
    p = as_tensor(image_points, "image_points", (-1, 2))
    K = as_tensor(K, "K", (3, 3), p.device)
    d = check_dist(dist, p.device)
    check_positive_int(iterations, "iterations")
    xy_d = (p - K[:2, 2]) / torch.stack([K[0, 0], K[1, 1]])
    return undistort_normalized(xy_d, d, iterations)
