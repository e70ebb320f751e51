"""Several cameras (chapter 10): N-camera rigs, stereo pairs, and the YAML files that later
steps read (epipolar geometry and rectification are in :mod:`lib.calibration_epipolar`).

A rig is a pose graph: every camera ``c`` has a pose ``(R_c, T_c)`` relative to a reference
camera (``X_c = R_c X_ref + T_c``; the reference has ``I, 0``) and every frame ``f`` a board
pose ``(R_f, t_f)`` in the reference camera. A corner ``X`` of frame ``f`` seen by camera
``c`` lands at ``project(R_c (R_f X + t_f) + T_c)`` (eq. cal-rig). :func:`calibrate_rig`
initialises the graph from per-view poses (:func:`lib.calibration.solve_pnp`), averaging
the relative poses of cameras that see the same frames, and refines all poses jointly with
the batched Levenberg–Marquardt of :mod:`lib.calibration_lm` (intrinsics fixed, as
``cv2.stereoCalibrate`` with ``CALIB_FIX_INTRINSIC``). :func:`stereo_calibrate` is the rig of
two, with the essential and fundamental matrices (eqs. cal-essential, cal-fundamental).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import cv2
import torch

from .calibration import CameraCalibration, solve_pnp
from .calibration_camera import (
    DTYPE,
    as_tensor,
    as_views,
    check_dist,
    check_image_size,
    distort,
    intrinsics_vector,
    pad_views,
    rodrigues,
    rotation_to_rodrigues,
)
from .calibration_epipolar import essential_matrix, fundamental_matrix
from .calibration_lm import levenberg_marquardt
from .validate import check_int, check_positive_int

# --------------------------------------------------------------------------- poses


def compose(R2, t2, R1, t1):
    """The pose ``x -> R2 (R1 x + t1) + t2``: (..., 3, 3), (..., 3) twice -> R, t."""
    return R2 @ R1, (R2 @ t1[..., None])[..., 0] + t2


def invert(R, t):
    """The pose ``x -> R^T (x - t)``, the inverse of ``x -> R x + t``."""
    Rt = R.transpose(-1, -2)
    return Rt, -(Rt @ t[..., None])[..., 0]


def mean_rotation(R: torch.Tensor) -> torch.Tensor:
    """The chordal L2 mean of rotations (V, 3, 3): the rotation nearest to their sum (SVD)."""
    U, _, Vh = torch.linalg.svd(R.sum(0))
    M = U @ Vh
    if torch.linalg.det(M) < 0:  # a reflection: flip the weakest direction
        U = U.clone()
        U[:, -1] = -U[:, -1]
        M = U @ Vh
    return M


def look_at(centre, target, down=(0.0, 1.0, 0.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """Pose (R, t), world -> camera, of a camera at ``centre`` looking at ``target``.

    OpenCV's camera axes: z along the line of sight, x to the right, y down, with y as close
    to the world direction ``down`` as the line of sight allows.
    """
    c = as_tensor(centre, "centre", (3,))
    z = as_tensor(target, "target", (3,)) - c
    if float(z.norm()) == 0:
        raise ValueError("target must differ from centre")
    z = z / z.norm()
    x = torch.linalg.cross(as_tensor(down, "down", (3,)), z)
    if float(x.norm()) < 1e-9:
        raise ValueError("down must not be parallel to the line of sight")
    x = x / x.norm()
    R = torch.stack([x, torch.linalg.cross(z, x), z])
    return R, -R @ c


def rotation_angle_deg(R_a: torch.Tensor, R_b: torch.Tensor) -> torch.Tensor:
    """Angle in degrees of the rotation taking R_b to R_a: (..., 3, 3) twice -> (...)."""
    return torch.rad2deg(rotation_to_rodrigues(R_a @ R_b.transpose(-1, -2)).norm(dim=-1))


# --------------------------------------------------------------------------- the rig


@dataclass
class RigCalibration:
    """Cameras and their poses relative to the reference: ``X_c = R[c] X_ref + T[c]``."""

    K: torch.Tensor  # (C, 3, 3)
    dist: torch.Tensor  # (C, 5)
    R: torch.Tensor  # (C, 3, 3), R[reference] = I
    T: torch.Tensor  # (C, 3), in the units of the board
    image_sizes: list  # C x (width, height)
    rms: float  # over every observed corner of every camera (OpenCV's definition)
    per_camera_rms: torch.Tensor  # (C,)
    reference: int = 0
    board_rvecs: torch.Tensor | None = None  # (F, 3) board poses in the reference camera
    board_tvecs: torch.Tensor | None = None  # (F, 3)
    iterations: int = 0


def _check_intrinsics(cameras, C: int, dev):
    """K (C, 3, 3) and dist (C, 5) from CameraCalibrations or (K, dist) pairs."""
    if not isinstance(cameras, (list, tuple)) or len(cameras) != C:
        raise ValueError(f"cameras must list one CameraCalibration or (K, dist) per camera "
                         f"({C}), got {cameras!r:.80}")
    Ks, ds, sizes = [], [], []
    for c, cam in enumerate(cameras):
        if isinstance(cam, CameraCalibration):
            K, d, size = cam.K, cam.dist, cam.image_size
        elif isinstance(cam, (tuple, list)) and len(cam) in (2, 3):
            K, d = cam[0], cam[1]
            size = check_image_size(cam[2], f"cameras[{c}][2]") if len(cam) == 3 else None
        else:
            raise TypeError(f"cameras[{c}] must be a CameraCalibration or a (K, dist) pair, "
                            f"got {type(cam).__name__}")
        Ks.append(as_tensor(K, f"cameras[{c}] K", (3, 3), dev))
        ds.append(check_dist(d, dev))
        sizes.append(size)
    return torch.stack(Ks), torch.stack(ds), sizes


def _rig_residuals(obj, img, intr, reference):
    """r(camera poses (1, 6(C-1)), board poses (1, F, 6)) -> (1, F, C 2N) (eq. cal-rig)."""
    C = intr.shape[0]

    def residuals(cams, boards):
        zero = cams.new_zeros(cams.shape[0], 6)
        poses = torch.cat([cams[:, : 6 * reference], zero, cams[:, 6 * reference:]], -1)
        poses = poses.unflatten(-1, (C, 6))  # (1, C, 6) reference -> camera
        R_f = rodrigues(boards[..., :3])  # (1, F, 3, 3) board -> reference
        X = obj @ R_f.transpose(-1, -2) + boards[..., None, 3:]  # (1, F, N, 3)
        R_c = rodrigues(poses[..., :3])[:, None]  # (1, 1, C, 3, 3)
        Xc = X[:, :, None] @ R_c.transpose(-1, -2) + poses[:, None, :, None, 3:]
        xy = Xc[..., :2] / Xc[..., 2:]  # (1, F, C, N, 2)
        proj = project_normalized(xy, intr)
        return (proj - img).transpose(-1, -2).flatten(-3)  # (1, F, C 2N)
    return residuals


def project_normalized(xy: torch.Tensor, intr: torch.Tensor) -> torch.Tensor:
    """Pixels of normalised points (..., C, N, 2) through C cameras' intrinsics (C, 9)."""
    xy = distort(xy, intr[:, 4:])
    return xy * intr[:, None, :2] + intr[:, None, 2:4]


def _initial_graph(poses: dict, C: int, F: int, reference: int):
    """Camera poses by a breadth-first walk from the reference; board poses from them.

    poses[(c, f)] = (R, t) board -> camera c. Each new camera's pose is the chordal mean
    (rotation) and mean (translation) of its estimates through every frame it shares with
    the cameras already placed.
    """
    placed = {reference: (torch.eye(3, dtype=DTYPE), torch.zeros(3, dtype=DTYPE))}
    while len(placed) < C:
        best, estimates = None, []
        for c in range(C):
            if c in placed:
                continue
            found = []
            for (p, f), (R_pf, t_pf) in poses.items():
                if p in placed and (c, f) in poses:
                    R_cf, t_cf = poses[(c, f)]
                    R_x, t_x = compose(R_cf, t_cf, *invert(R_pf, t_pf))  # camera p -> camera c
                    found.append(compose(R_x, t_x, *placed[p]))  # reference -> camera c
            if len(found) > len(estimates):
                best, estimates = c, found
        if best is None:
            missing = sorted(set(range(C)) - set(placed))
            raise ValueError(f"cameras {missing} share no frame with camera {reference} or any "
                             "camera linked to it: the rig's pose graph is not connected")
        Rs = torch.stack([e[0] for e in estimates])
        placed[best] = (mean_rotation(Rs), torch.stack([e[1] for e in estimates]).mean(0))
    boards = torch.zeros(F, 6, dtype=DTYPE)
    for f in range(F):
        seen = [(c, poses[(c, f)]) for c in range(C) if (c, f) in poses]
        if seen:
            est = [compose(*invert(*placed[c]), R, t) for c, (R, t) in seen]
            boards[f, :3] = rotation_to_rodrigues(mean_rotation(torch.stack([e[0] for e in est])))
            boards[f, 3:] = torch.stack([e[1] for e in est]).mean(0)
    cams = torch.stack([torch.cat([rotation_to_rodrigues(placed[c][0]), placed[c][1]])
                        for c in range(C)])
    return cams, boards


def calibrate_rig(object_points, image_points, cameras, *, reference: int = 0,
                  max_iterations: int = 100, device=None) -> RigCalibration:
    """Poses of C calibrated cameras relative to one of them, refined jointly (eq. cal-rig).

    object_points: one (N_f, 3) board array per frame (z = 0); image_points[c][f]: camera
    c's (N_f, 2) corners of frame f, or None where camera c did not see the board;
    cameras: one :class:`CameraCalibration` or (K, dist) per camera (kept fixed). Every
    camera must be linked to the reference through frames seen by two cameras. device:
    where the joint refinement runs (default: the CPU, where the initial graph is built).
    """
    cpu = torch.device("cpu")
    dev = torch.device(device) if device is not None else cpu
    obj = as_views(object_points, "object_points", 3, cpu)
    F = len(obj)
    if not isinstance(image_points, (list, tuple)) or len(image_points) < 2:
        raise ValueError("image_points must list the corners of at least 2 cameras")
    C = len(image_points)
    check_int(reference, "reference", minimum=0, maximum=C - 1)
    check_positive_int(max_iterations, "max_iterations")
    Ks, dists, sizes = _check_intrinsics(cameras, C, cpu)
    intr = intrinsics_vector(Ks, dists)
    seen = {}
    for c, cam in enumerate(image_points):
        if not isinstance(cam, (list, tuple)) or len(cam) != F:
            raise ValueError(f"image_points[{c}] must have one entry per frame ({F}), got "
                             f"{len(cam) if isinstance(cam, (list, tuple)) else cam!r}")
        for f, p in enumerate(cam):
            if p is None:
                continue
            p = as_tensor(p, f"image_points[{c}][{f}]", (-1, 2), cpu)
            if len(p) != len(obj[f]):
                raise ValueError(f"image_points[{c}][{f}] must have as many points as "
                                 f"object_points[{f}] ({len(obj[f])}), got {len(p)}")
            seen[(c, f)] = p
    if not seen:
        raise ValueError("no camera saw the board in any frame")
    # 1. every view's board pose, all in one batched solve (each with its camera's K, dist)
    keys = list(seen)
    rv, tv = solve_pnp([obj[f] for _, f in keys], [seen[k] for k in keys],
                       Ks[[c for c, _ in keys]], dists[[c for c, _ in keys]])
    poses = {k: (rodrigues(rv[i]), tv[i]) for i, k in enumerate(keys)}
    # 2. the pose graph's initial value, 3. joint refinement
    cams, boards = _initial_graph(poses, C, F, reference)
    O, _ = pad_views([obj])  # (1, F, N, 3)
    N = O.shape[2]
    img = torch.zeros(F, C, N, 2, dtype=DTYPE)
    mask = torch.zeros(F, C, N, dtype=torch.bool)
    for (c, f), p in seen.items():
        img[f, c, : len(p)], mask[f, c, : len(p)] = p, True
    weights = torch.cat([mask, mask], -1).flatten(-2).to(DTYPE)[None]  # (1, F, C 2N)
    shared = torch.cat([cams[:reference], cams[reference + 1:]]).flatten()[None]
    O, img, mask, weights, intr = (x.to(dev) for x in (O, img, mask, weights, intr))
    residual_fn = _rig_residuals(O, img, intr, reference)
    fit = levenberg_marquardt(residual_fn, shared.to(dev), boards[None].to(dev), weights,
                              max_iterations=max_iterations)
    residuals = residual_fn(fit.shared, fit.local)[0]
    sq = torch.where(weights[0] > 0, residuals**2, 0.0).unflatten(-1, (C, 2 * N)).sum(-1)
    counts = mask.sum(-1)  # (F, C)
    cams = fit.shared[0].unflatten(0, (C - 1, 6))
    cams = torch.cat([cams[:reference], cams.new_zeros(1, 6), cams[reference:]])
    return RigCalibration(
        K=Ks.to(dev), dist=dists.to(dev), R=rodrigues(cams[:, :3]), T=cams[:, 3:],
        image_sizes=sizes,
        rms=math.sqrt(float(sq.sum() / counts.sum())),
        per_camera_rms=torch.sqrt(sq.sum(0) / counts.sum(0).clamp_min(1)),
        reference=reference, board_rvecs=fit.local[0, :, :3], board_tvecs=fit.local[0, :, 3:],
        iterations=int(fit.iterations[0]))


# --------------------------------------------------------------------------- stereo


@dataclass
class StereoCalibration:
    """A calibrated pair: ``X_2 = R X_1 + T``; E and F as ``cv2.stereoCalibrate``."""

    R: torch.Tensor  # (3, 3)
    T: torch.Tensor  # (3,)
    E: torch.Tensor  # (3, 3) = [T]_x R
    F: torch.Tensor  # (3, 3) = K2^-T E K1^-1, scaled to F[2, 2] = 1
    rms: float  # over the corners of both cameras
    per_view_errors: torch.Tensor  # (V, 2)
    rvecs: torch.Tensor  # (V, 3) board poses in camera 1
    tvecs: torch.Tensor  # (V, 3)
    rig: RigCalibration


def stereo_calibrate(object_points, image_points_1, image_points_2, camera_1,
                     camera_2, *, max_iterations: int = 100, device=None) -> StereoCalibration:
    """Relative pose of two calibrated cameras, as ``cv2.stereoCalibrate`` with
    ``CALIB_FIX_INTRINSIC``: the rig of two (eq. cal-rig) plus E and F.

    object_points: one (N, 3) board array per view; image_points_1/2: each camera's (N, 2)
    corners of the same views; camera_1/2: a :class:`CameraCalibration` or (K, dist);
    device: where the refinement runs (default: the CPU).
    """
    rig = calibrate_rig(object_points, [image_points_1, image_points_2], [camera_1, camera_2],
                        max_iterations=max_iterations, device=device)
    if rig.board_rvecs is None:  # pragma: no cover - calibrate_rig always sets them
        raise RuntimeError("no board poses")
    R, T = rig.R[1], rig.T[1]
    O = as_views(object_points, "object_points", 3, rig.R.device)
    errs = []
    for c in range(2):
        R_c, T_c = rig.R[c], rig.T[c]
        pts = (image_points_1, image_points_2)[c]
        row = []
        for f, X in enumerate(O):
            Rf, tf = compose(R_c, T_c, rodrigues(rig.board_rvecs[f]), rig.board_tvecs[f])
            Xc = X @ Rf.T + tf
            proj = project_normalized((Xc[:, :2] / Xc[:, 2:])[None],
                                      intrinsics_vector(rig.K[c], rig.dist[c])[None])[0]
            p = as_tensor(pts[f], "image points", (-1, 2), rig.R.device)
            row.append(torch.sqrt(((proj - p) ** 2).sum(-1).mean()))
        errs.append(torch.stack(row))
    return StereoCalibration(R=R, T=T, E=essential_matrix(R, T),
                             F=fundamental_matrix(rig.K[0], rig.K[1], R, T), rms=rig.rms,
                             per_view_errors=torch.stack(errs, -1), rvecs=rig.board_rvecs,
                             tvecs=rig.board_tvecs, rig=rig)


# --------------------------------------------------------------------------- YAML files


def _as_rig(result) -> RigCalibration:
    if isinstance(result, RigCalibration):
        return result
    if isinstance(result, StereoCalibration):
        return result.rig
    if isinstance(result, CameraCalibration):
        return RigCalibration(K=result.K[None], dist=result.dist[None],
                              R=torch.eye(3, dtype=DTYPE)[None], T=torch.zeros(1, 3, dtype=DTYPE),
                              image_sizes=[result.image_size], rms=result.rms,
                              per_camera_rms=torch.tensor([result.rms], dtype=DTYPE))
    raise TypeError(f"result must be a CameraCalibration, StereoCalibration or "
                    f"RigCalibration, got {type(result).__name__}")


def save_yaml(path, result) -> None:
    """Write a calibration as an OpenCV YAML file (``cv2.FileStorage``).

    One node per camera, ``camera_<c>``: ``image_width``, ``image_height``,
    ``camera_matrix`` (3 x 3), ``distortion_coefficients`` (5 x 1: k1, k2, p1, p2, k3),
    ``R`` (3 x 3) and ``T`` (3 x 1) from the reference camera to this one, and ``rms``; at the
    top ``camera_count``, ``reference_camera`` and ``rms``. A single camera is a rig of one.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or a path, got {type(path).__name__}")
    rig = _as_rig(result)
    fs = cv2.FileStorage(os.fspath(path), cv2.FILE_STORAGE_WRITE)
    if not fs.isOpened():
        raise ValueError(f"path: cannot write {os.fspath(path)!r}")
    try:
        fs.write("camera_count", len(rig.K))
        fs.write("reference_camera", rig.reference)
        fs.write("rms", float(rig.rms))
        for c in range(len(rig.K)):
            fs.startWriteStruct(f"camera_{c}", cv2.FileNode_MAP)
            if rig.image_sizes[c] is not None:
                fs.write("image_width", int(rig.image_sizes[c][0]))
                fs.write("image_height", int(rig.image_sizes[c][1]))
            fs.write("camera_matrix", rig.K[c].cpu().numpy())
            fs.write("distortion_coefficients", rig.dist[c].cpu().numpy()[:, None])
            fs.write("R", rig.R[c].cpu().numpy())
            fs.write("T", rig.T[c].cpu().numpy()[:, None])
            fs.write("rms", float(rig.per_camera_rms[c]))
            fs.endWriteStruct()
    finally:
        fs.release()


def load_yaml(path) -> RigCalibration:
    """Read a file written by :func:`save_yaml` (board poses are not stored: None)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or a path, got {type(path).__name__}")
    if not os.path.isfile(path):
        raise ValueError(f"path: no such file {os.fspath(path)!r}")
    fs = cv2.FileStorage(os.fspath(path), cv2.FILE_STORAGE_READ)
    try:
        count = fs.getNode("camera_count")
        if count.empty():
            raise ValueError(f"path: {os.fspath(path)!r} has no camera_count: not a calibration")
        Ks, ds, Rs, Ts, sizes, rms = [], [], [], [], [], []
        for c in range(int(count.real())):
            node = fs.getNode(f"camera_{c}")
            mat = lambda key, n=node: torch.from_numpy(n.getNode(key).mat()).to(DTYPE)  # noqa: E731
            Ks.append(mat("camera_matrix"))
            ds.append(mat("distortion_coefficients").flatten())
            Rs.append(mat("R"))
            Ts.append(mat("T").flatten())
            w = node.getNode("image_width")
            sizes.append(None if w.empty() else (int(w.real()),
                                                 int(node.getNode("image_height").real())))
            rms.append(node.getNode("rms").real())
        return RigCalibration(K=torch.stack(Ks), dist=torch.stack(ds), R=torch.stack(Rs),
                              T=torch.stack(Ts), image_sizes=sizes,
                              rms=fs.getNode("rms").real(),
                              per_camera_rms=torch.tensor(rms, dtype=DTYPE),
                              reference=int(fs.getNode("reference_camera").real()))
    finally:
        fs.release()
