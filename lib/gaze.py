"""Gaze as a direction: conversions, angular error, uncertainty losses, GazeNet.

Chapter 11. Reads top to bottom:

* :func:`pitchyaw_to_vector` and :func:`vector_to_pitchyaw`: (pitch, yaw) in
  radians and 3-D directions, with the formula of GazeML's and ETH-XGaze's
  ``pitchyaw_to_vector``, v = (cos p sin y, sin p, cos p cos y) (eq. 1).
  The gaze itself, from the eye to what it looks at, is g = -v in the normalised
  camera frame (x right, y down, z away from the camera): (0, 0) looks into the
  camera, positive pitch looks up and positive yaw towards the image's left
  (:mod:`lib.eyes` renders exactly this).
* :func:`angular_error`: the angle between two directions in degrees, as atan2 of
  the norm of the cross product and the dot product (eq. 4), accurate at
  0 and 180 degrees where the arccos of the cosine is not.
* Losses on angles: :func:`l1` (eq. 6), :func:`laplace_nll` with a predicted
  scale (eq. 7) and Gaze360's :func:`pinball` loss on the 10% and 90%
  quantiles (eq. 9).
* :class:`GazeNet`: a small CNN from 36 x 60 grayscale eye crops (MPIIGaze's
  size) to (pitch, yaw) and a Laplace scale per angle.

Equation numbers are those of chapter 11. ETH-XGaze and GazeML label the gaze g
with these angles too; Gaze360 stores (yaw, pitch) of g in an eye frame with x
left and y up, which after flipping x and y is the same g = -v.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .validate import check_int, check_real, check_same, check_tensor

FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# -------------------------------------------------------------------- input checks


def _check_shape(x, name: str, size: int) -> torch.Tensor:
    """A floating tensor (..., size)."""
    check_tensor(x, name, min_ndim=1, dtypes=FLOATS)
    if x.shape[-1] != size:
        raise ValueError(f"{name} must have shape (..., {size}), got {tuple(x.shape)}")
    return x


def _check_values(x: torch.Tensor, name: str, nonzero: bool) -> None:
    """Finite values and, for directions, no zero vector (reads the values)."""
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} must be finite (no NaN or inf)")
    if nonzero and (x == 0).all(-1).any():
        raise ValueError(f"{name} holds a zero vector, which has no direction")


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float32 for half-precision inputs (fp16 trigonometry loses degrees)."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


# -------------------------------------------------------------------- conversions


def pitchyaw_to_vector(pitchyaw: torch.Tensor) -> torch.Tensor:
    """(pitch, yaw), radians -> unit vectors v = (cos p sin y, sin p, cos p cos y).

    pitchyaw (..., 2) -> (..., 3), eq. (1), in pitchyaw's dtype
    (computed in float32 for half precision). v = R_y(yaw) R_x(-pitch) (0, 0, 1):
    tilt the forward axis by the pitch, then turn it about the vertical axis by
    the yaw. The gaze from the eye is -v (see the module's docstring).
    """
    _check_shape(pitchyaw, "pitchyaw", 2)
    _check_values(pitchyaw, "pitchyaw", nonzero=False)
    p, y = pitchyaw.to(_compute_dtype(pitchyaw)).unbind(-1)
    v = torch.stack([p.cos() * y.sin(), p.sin(), p.cos() * y.cos()], -1)
    return v.to(pitchyaw.dtype)


def vector_to_pitchyaw(v: torch.Tensor) -> torch.Tensor:
    """Directions (..., 3) of any non-zero length -> (pitch, yaw) (..., 2) radians.

    pitch = atan2(v_y, hypot(v_x, v_z)) in [-pi/2, pi/2] and yaw = atan2(v_x, v_z)
    in [-pi, pi] (eq. 2). atan2 rather than arcsin(v_y / norm(v)):
    arcsin has an infinite slope at pitch +-90 degrees, so it loses half the
    digits there, and it needs v normalised first. At the poles (v_x = v_z = 0)
    yaw is undefined: it is returned as 0 with a zero gradient instead of
    atan2(0, 0)'s NaN gradient. Raises ``ValueError`` for zero vectors.
    """
    _check_shape(v, "v", 3)
    _check_values(v, "v", nonzero=True)
    x, y, z = v.to(_compute_dtype(v)).unbind(-1)
    pole = (x == 0) & (z == 0)
    # the double-where trick: no NaN may reach a backward pass, even where unused
    x_safe = torch.where(pole, torch.zeros_like(x), x)
    z_safe = torch.where(pole, torch.ones_like(z), z)
    r = torch.where(pole, torch.zeros_like(x), torch.hypot(x_safe, z_safe))
    pitch, yaw = torch.atan2(y, r), torch.atan2(x_safe, z_safe)
    return torch.stack([pitch, yaw], -1).to(v.dtype)


# -------------------------------------------------------------------- the metric


def angular_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Angle between directions a and b, degrees: (..., 3), (..., 3) -> (...).

    atan2(norm(a x b), a . b) (eq. 4) is accurate to a few ulps (radians) at
    every angle, where arccos(a . b / (norm(a) norm(b))) (eq. 3) cannot
    resolve angles below about 0.02 degrees in float32, needs clipping into
    [-1, 1] and has an infinite slope at 0 and 180 degrees. Any non-zero lengths;
    a and b broadcast and live on one device. Half precision is computed and
    returned in float32. Raises ``ValueError`` for zero vectors.
    """
    _check_shape(a, "a", 3)
    _check_shape(b, "b", 3)
    try:
        torch.broadcast_shapes(a.shape, b.shape)
    except RuntimeError:
        raise ValueError(f"a and b must broadcast, got shapes {tuple(a.shape)} "
                         f"and {tuple(b.shape)}") from None
    check_same("device", a=a, b=b)
    _check_values(a, "a", nonzero=True)
    _check_values(b, "b", nonzero=True)
    dtype = _compute_dtype(a, b)
    a, b = torch.broadcast_tensors(a.to(dtype), b.to(dtype))
    (ax, ay, az), (bx, by, bz) = a.unbind(-1), b.unbind(-1)
    # the cross product term by term (no fused multiply-add): exactly 0 for a = b,
    # exactly antisymmetric, so the error is exactly 0 and exactly symmetric
    cross = torch.stack([ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx],
                        -1)
    sin_part = torch.linalg.vector_norm(cross, dim=-1)
    cos_part = (a * b).sum(-1)
    return torch.rad2deg(torch.atan2(sin_part, cos_part))


# -------------------------------------------------------------------- losses


def _check_loss_inputs(pred, target, **scales) -> None:
    check_tensor(pred, "pred", min_ndim=1, dtypes=FLOATS)
    check_tensor(target, "target", min_ndim=1, dtypes=FLOATS)
    if pred.shape != target.shape:
        raise ValueError(f"target must have the shape of pred {tuple(pred.shape)}, "
                         f"got {tuple(target.shape)}")
    if pred.numel() == 0:
        raise ValueError("pred must not be empty")
    for name, s in scales.items():
        check_tensor(s, name, dtypes=FLOATS)
        try:
            torch.broadcast_to(s, pred.shape)
        except RuntimeError:
            raise ValueError(f"{name} must broadcast to pred's shape "
                             f"{tuple(pred.shape)}, got {tuple(s.shape)}") from None
    check_same("device", pred=pred, target=target, **scales)
    for name, t in (("pred", pred), ("target", target), *scales.items()):
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} must be finite (no NaN or inf)")


def l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error: the mean of abs(target - pred) (eq. 6).

    pred, target (..., 2) (pitch, yaw) in radians, or any equal shapes -> a
    scalar. The maximum-likelihood loss of a Laplace error of a fixed scale.
    """
    _check_loss_inputs(pred, target)
    return (target - pred).abs().mean()


def laplace_nll(pred: torch.Tensor, target: torch.Tensor,
                scale: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of target under Laplace(pred, scale).

    Per element log(2 b) + abs(target - pred) / b (eq. 7), with
    b = scale > 0 in the angles' units, broadcast to pred's shape (..., 2).
    A scalar. For one sample the optimum over b is b = abs(target - pred); over
    samples alike, the mean absolute residual (eq. 8).
    """
    _check_loss_inputs(pred, target, scale=scale)
    if not (scale > 0).all():
        raise ValueError("scale must be positive")
    return (torch.log(2 * scale) + (target - pred).abs() / scale).mean()


def pinball(pred: torch.Tensor, target: torch.Tensor, sigma: torch.Tensor,
            tau: float = 0.1) -> torch.Tensor:
    """Gaze360's pinball loss: pred -+ sigma as the tau and 1 - tau quantiles.

    With rho_t(u) = max(t u, (t - 1) u) (eq. 9), the loss is
    mean rho_tau(target - (pred - sigma)) + mean rho_(1-tau)(target - (pred +
    sigma)), each mean over every element, as Gaze360's ``PinBallLoss`` computes
    it (tau = 0.1: the 10% and 90% quantiles, pred -+ b ln 5 for Laplace errors
    of scale b, eq. 10). sigma >= 0 broadcasts to pred's shape (Gaze360 predicts
    one sigma for both angles); pred, target (..., 2); 0 < tau < 0.5. A scalar.
    """
    _check_loss_inputs(pred, target, sigma=sigma)
    tau = check_real(tau, "tau", minimum=0.0, maximum=0.5, strict=True)
    if not (sigma >= 0).all():
        raise ValueError("sigma must be non-negative")

    def rho(u, t):
        return torch.maximum(t * u, (t - 1) * u)

    lower = rho(target - (pred - sigma), tau).mean()
    upper = rho(target - (pred + sigma), 1 - tau).mean()
    return lower + upper


# -------------------------------------------------------------------- the network


def _conv(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class GazeNet(nn.Module):
    """A small CNN: eye crops (B, 1, H, W) -> (pitchyaw (B, 2), scale (B, 2)).

    Three 3x3 convolutions of stride 2 with BatchNorm and ReLU (36 x 60 -> 5 x 8),
    then flatten (where the iris is matters, so no global pooling), a
    hidden layer and two linear heads: the angles in radians, and the Laplace
    scale b = softplus(.) + ``min_scale`` in radians, started near 0.1 rad. The
    L1 baseline trains the same network and ignores the scale. Images are floats
    in [0, 1], as :func:`lib.eyes.render_eye` makes them.
    """

    def __init__(self, width: int = 16, hidden: int = 128,
                 image_size: tuple[int, int] = (36, 60), min_scale: float = 1e-3):
        super().__init__()
        check_int(width, "width", minimum=1)
        check_int(hidden, "hidden", minimum=1)
        if (not isinstance(image_size, (tuple, list)) or len(image_size) != 2
                or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 8
                           for s in image_size)):
            raise ValueError(f"image_size must be (height, width), each an int >= 8, "
                             f"got {image_size!r}")
        self.min_scale = check_real(min_scale, "min_scale", minimum=0.0, strict=True)
        self.image_size = tuple(image_size)
        w = width
        self.features = nn.Sequential(_conv(1, w, 2), _conv(w, 2 * w, 2),
                                      _conv(2 * w, 4 * w, 2))
        h_out, w_out = (math.ceil(s / 8) for s in self.image_size)  # 3 stride-2 convs
        self.hidden = nn.Sequential(nn.Flatten(),
                                    nn.Linear(4 * w * h_out * w_out, hidden),
                                    nn.ReLU(inplace=True))
        self.angles = nn.Linear(hidden, 2)
        self.raw_scale = nn.Linear(hidden, 2)
        nn.init.zeros_(self.angles.bias)
        nn.init.xavier_uniform_(self.raw_scale.weight, gain=0.01)
        start = max(0.1 - self.min_scale, 1e-3)  # softplus^-1: scale starts at 0.1
        nn.init.constant_(self.raw_scale.bias, math.log(math.expm1(start)))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, 1, H, W) -> angles (B, 2) and scale (B, 2), radians."""
        check_tensor(images, "images", ndim=4, dtypes=(torch.float32, torch.float64))
        if images.shape[1:] != (1, *self.image_size):
            raise ValueError(f"images must have shape (B, 1, {self.image_size[0]}, "
                             f"{self.image_size[1]}), got {tuple(images.shape)}")
        f = self.hidden(self.features(images))  # (B, hidden)
        return self.angles(f), F.softplus(self.raw_scale(f)) + self.min_scale
