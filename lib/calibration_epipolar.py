"""Epipolar geometry and rectification of a calibrated stereo pair (chapter 10).

For two cameras with ``X_2 = R X_1 + T`` (eq. cal-relative): the essential and fundamental
matrices (eqs. cal-essential, cal-fundamental), epipolar lines (eq. cal-epipolar), and
Bouguet's rectification with its pixel maps (eq. cal-rectify), in the conventions of
``cv2.computeCorrespondEpilines``, ``cv2.stereoRectify`` and
``cv2.initUndistortRectifyMap``. The pair itself is calibrated by
:func:`lib.calibration_rig.stereo_calibrate`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .calibration_camera import (
    DTYPE,
    as_tensor,
    camera_matrix,
    check_dist,
    check_image_size,
    intrinsics_vector,
    project,
    rodrigues,
    rotation_to_rodrigues,
    skew,
    undistort_normalized,
)


def essential_matrix(R: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """``E = [T]_x R`` (eq. cal-essential): x_2^T E x_1 = 0 for normalised points."""
    return skew(T) @ R


def fundamental_matrix(K1, K2, R, T) -> torch.Tensor:
    """``F = K2^-T [T]_x R K1^-1`` (eq. cal-fundamental), scaled to F[2, 2] = 1 as OpenCV."""
    F = torch.linalg.inv(K2).T @ essential_matrix(R, T) @ torch.linalg.inv(K1)
    return F / F[2, 2]


def epipolar_lines(points, F) -> torch.Tensor:
    """Lines ``l = F x`` (eq. cal-epipolar) in the other image, as
    ``cv2.computeCorrespondEpilines(points, 1, F)``: (N, 2) undistorted pixels of image 1 ->
    (N, 3) lines (a, b, c), ``a x + b y + c = 0``, scaled to a^2 + b^2 = 1. For lines in
    image 1 of points of image 2, pass F^T."""
    p = as_tensor(points, "points", (-1, 2))
    F = as_tensor(F, "F", (3, 3), p.device)
    lines = torch.cat([p, torch.ones_like(p[:, :1])], -1) @ F.T
    return lines / lines[:, :2].norm(dim=-1, keepdim=True)


def stereo_rectify(K1, dist1, K2, dist2, image_size, R, T):
    """Bouguet's rectification (eq. cal-rectify), the rotations of ``cv2.stereoRectify``.

    Each camera turns by half the relative rotation (R1 = W r^T, R2 = W r with
    r = rodrigues(-rvec(R) / 2)), then both by W, which aligns the baseline with the x (or
    y) axis. Both get one new camera matrix: the mean focal length of the two, and the
    principal point that centres the rectified image. Returns R1, R2 (3, 3) and
    P1, P2 (3, 4), with P2's last column K_new (R2 T).
    """
    w, h = check_image_size(image_size)
    K1, K2 = as_tensor(K1, "K1", (3, 3)), as_tensor(K2, "K2", (3, 3))
    d1, d2 = check_dist(dist1), check_dist(dist2)
    R, T = as_tensor(R, "R", (3, 3)), as_tensor(T, "T", (3,))
    r_r = rodrigues(-rotation_to_rodrigues(R) / 2)
    t = r_r @ T
    idx = 0 if abs(float(t[0])) > abs(float(t[1])) else 1
    u = torch.zeros(3, dtype=DTYPE)
    u[idx] = 1.0 if float(t[idx]) > 0 else -1.0
    ww = torch.linalg.cross(t, u)
    nw = ww.norm()
    if float(nw) > 0:
        ww = ww * math.acos(abs(float(t[idx])) / float(t.norm())) / nw
    W = rodrigues(ww)
    R1, R2 = W @ r_r.T, W @ r_r
    f = float((K1[0, 0] + K1[1, 1] + K2[0, 0] + K2[1, 1]) / 4)
    # principal point: the rectified image of each image's centre, averaged over both
    centres = []
    for K, d, Rk in ((K1, d1, R1), (K2, d2, R2)):
        c = torch.tensor([[(w - 1) / 2, (h - 1) / 2]], dtype=DTYPE)
        xy = undistort_normalized((c - K[:2, 2]) / torch.stack([K[0, 0], K[1, 1]]), d)
        ray = Rk @ torch.cat([xy[0], torch.ones(1, dtype=DTYPE)])
        centres.append(f * ray[:2] / ray[2])
    cc = torch.tensor([(w - 1) / 2, (h - 1) / 2], dtype=DTYPE) - torch.stack(centres).mean(0)
    K_new = camera_matrix(torch.stack([torch.tensor(f, dtype=DTYPE)] * 2 + [cc[0], cc[1]]))
    P1 = torch.cat([K_new, torch.zeros(3, 1, dtype=DTYPE)], 1)
    P2 = torch.cat([K_new, (K_new @ (R2 @ T))[:, None]], 1)
    return R1, R2, P1, P2


def rectify_points(points, K, dist, R_rect, P) -> torch.Tensor:
    """Pixels (N, 2) of a raw image -> pixels of its rectified image (as cv2.undistortPoints
    with R and P)."""
    p = as_tensor(points, "points", (-1, 2))
    K, d = as_tensor(K, "K", (3, 3)), check_dist(dist)
    xy = undistort_normalized((p - K[:2, 2]) / torch.stack([K[0, 0], K[1, 1]]), d)
    ray = torch.cat([xy, torch.ones_like(xy[:, :1])], -1) @ as_tensor(R_rect, "R_rect",
                                                                      (3, 3)).T
    Kn = as_tensor(P, "P", (3, 4))[:, :3]
    return ray[:, :2] / ray[:, 2:] * torch.stack([Kn[0, 0], Kn[1, 1]]) + Kn[:2, 2]


def rectify_map(K, dist, R_rect, P, image_size) -> tuple[np.ndarray, np.ndarray]:
    """For every pixel of the rectified image, where to read the raw image: two (h, w)
    float32 maps for ``cv2.remap``, as ``cv2.initUndistortRectifyMap`` (eq. cal-rectify)."""
    w, h = check_image_size(image_size)
    K, d = as_tensor(K, "K", (3, 3)), check_dist(dist)
    Kn = as_tensor(P, "P", (3, 4))[:, :3]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=DTYPE), torch.arange(w, dtype=DTYPE),
                            indexing="ij")
    rays = torch.stack([(xs - Kn[0, 2]) / Kn[0, 0], (ys - Kn[1, 2]) / Kn[1, 1],
                        torch.ones_like(xs)], -1)
    X = rays @ as_tensor(R_rect, "R_rect", (3, 3))  # R^T applied to each ray
    pose = torch.zeros(6, dtype=DTYPE)
    pix = project(X.reshape(-1, 3), pose, intrinsics_vector(K, d)).reshape(h, w, 2)
    pix = pix.float().numpy()
    return pix[..., 0].copy(), pix[..., 1].copy()
