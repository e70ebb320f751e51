"""Synthetic eye crops with exact gaze labels: chapter 11's data.

:func:`render_eye` draws 36 x 60 grayscale crops (MPIIGaze's eye-image size) of a
model eye: a sphere whose iris and pupil are caps around the gaze direction, seen
through the opening between two eyelids, with random shape, tones and lighting,
and optional blinks and occluders. Every pixel is a function of the sampled
parameters, so the labels are exact and so is what a hard sample hides
(``Eyes.iris_visible``). :func:`render_eyes` samples gaze directions too.

Geometry, in pixels of the crop (x right, y down; an orthographic camera looking
along +z). The eyeball of radius R is centred at (cx, cy). The gaze from the eye
is g = -v with v = :func:`lib.gaze.pitchyaw_to_vector` of (pitch, yaw), that is
g = (-cos p sin y, -sin p, -cos p cos y), so the pupil centre is drawn at
(cx + R g_x, cy + R g_y), where GazeML draws UnityEyes' iris centre. A visible
point of the sphere has the normal n = (dx / R, dy / R, -sqrt(1 - (dx^2 + dy^2) /
R^2)); it is iris where the angle between n and g is below the iris's angular
radius, and pupil below the pupil's. The upper lid follows the pitch, as real
lids do. Edges are soft (a logistic ramp about a pixel wide), which anti-aliases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .gaze import pitchyaw_to_vector
from .validate import check_bool, check_int, check_real

HEIGHT, WIDTH = 36, 60
#: Default pitch range of :func:`render_eyes`, degrees.
PITCH_RANGE = (-30.0, 30.0)
#: Default yaw range of :func:`render_eyes`, degrees.
YAW_RANGE = (-40.0, 40.0)
_EDGE = 0.4  # pixels: the width of the logistic ramp at every edge
_CHUNK = 512  # crops rendered at once (bounds the memory of the per-pixel tensors)


@dataclass
class Eyes:
    """A batch of rendered eyes and their exact labels.

    images (N, 1, 36, 60) float32 in [0, 1]; pitchyaw (N, 2) radians, the labels;
    pupil_xy (N, 2) the pupil centre's (x, y) in pixels (pixel centres at
    j + 0.5); openness (N,) lid opening, about 1 open and below 0.3 in a blink;
    iris_visible (N,) the share of the iris's projected area that neither the
    lids nor an occluder hide; blink, occluded (N,) bool.
    """

    images: torch.Tensor
    pitchyaw: torch.Tensor
    pupil_xy: torch.Tensor
    openness: torch.Tensor
    iris_visible: torch.Tensor
    blink: torch.Tensor
    occluded: torch.Tensor

    def __len__(self) -> int:
        return len(self.images)


def _generator(seed) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    return torch.Generator().manual_seed(check_int(seed, "seed", minimum=0))


def _angles(x, name: str) -> torch.Tensor:
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        x = torch.tensor([float(x)])
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a float or a tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor (radians), got {x.dtype}")
    if x.dim() > 1:
        raise ValueError(f"{name} must be a scalar or 1-D, got shape {tuple(x.shape)}")
    x = x.reshape(-1)
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} must be finite (no NaN or inf)")
    if (x.abs() >= math.pi / 2).any():
        raise ValueError(f"{name} must lie strictly between -pi/2 and pi/2 radians "
                         "(an eye looking away from the camera shows no iris)")
    return x


def _params(n: int, blink: float, occlusion: float, lighting: bool,
            gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Every random number of n eyes, drawn on the CPU in one fixed order."""

    def u(lo, hi):
        return lo + (hi - lo) * torch.rand(n, generator=gen)

    p = {
        "cx": WIDTH / 2 + u(-2.0, 2.0), "cy": HEIGHT / 2 + u(-1.5, 1.5),
        "R": u(13.0, 16.0), "half_width": u(1.2, 1.4), "lid_tilt": u(-0.08, 0.08),
        "upper": u(0.55, 0.75), "lower": u(0.35, 0.5),
        "sclera": u(0.65, 0.9), "skin": u(0.35, 0.7), "iris": u(0.12, 0.45),
        "pupil": u(0.02, 0.08), "iris_sin": u(0.42, 0.52), "pupil_sin": u(0.12, 0.22),
        "stripes": torch.randint(9, 16, (n,), generator=gen).float(),
        "stripe_phase": u(0.0, 2 * math.pi),
    }
    p["blink"] = torch.rand(n, generator=gen) < blink
    p["openness"] = torch.where(p["blink"], u(0.0, 0.3), u(0.85, 1.1))
    p["occluded"] = torch.rand(n, generator=gen) < occlusion
    p["occ_angle"], p["occ_half"] = u(0.0, math.pi), u(2.5, 5.0)
    p["occ_dx"], p["occ_dy"] = u(-3.0, 3.0), u(-3.0, 3.0)
    p["occ_tone"] = torch.where(torch.rand(n, generator=gen) < 0.5, u(0.02, 0.2),
                                u(0.85, 1.0))
    p["occ_alpha"] = u(0.75, 1.0) * p["occluded"]
    light = {"lx": u(-0.7, 0.7), "ly": u(-0.7, 0.3), "gain": u(0.7, 1.2),
             "gx": u(-0.5, 0.5), "gy": u(-0.5, 0.5), "gamma": u(0.8, 1.25),
             "noise": u(0.005, 0.03), "glint": u(0.3, 0.7)}
    if not lighting:  # even light from the camera, no sensor noise
        light = {"lx": torch.zeros(n), "ly": torch.zeros(n), "gain": torch.ones(n),
                 "gx": torch.zeros(n), "gy": torch.zeros(n), "gamma": torch.ones(n),
                 "noise": torch.zeros(n), "glint": torch.full((n,), 0.5)}
    p.update(light)
    return p


def _soft(d: torch.Tensor) -> torch.Tensor:
    """Coverage of a pixel at signed distance d (pixels, positive inside)."""
    return torch.sigmoid(d / _EDGE)


def _render(p: dict[str, torch.Tensor], g: torch.Tensor, noise: torch.Tensor):
    """Images (n, 36, 60) and visible iris share (n,) of one chunk; see the module."""
    dev = g.device
    ys = torch.arange(HEIGHT, device=dev, dtype=torch.float32) + 0.5
    xs = torch.arange(WIDTH, device=dev, dtype=torch.float32) + 0.5
    P = {k: v[:, None, None] for k, v in p.items()}  # (n, 1, 1) each
    gx, gy, gz = (g[:, i, None, None] for i in range(3))
    R = P["R"]
    dx, dy = xs[None, None, :] - P["cx"], ys[None, :, None] - P["cy"]  # (n,1,W),(n,H,1)
    # eyelids: parabola-like arcs between the corners, lifted by the gaze's pitch
    a = P["half_width"] * R
    xl = dx * torch.cos(P["lid_tilt"]) + dy * torch.sin(P["lid_tilt"])
    yl = dy * torch.cos(P["lid_tilt"]) - dx * torch.sin(P["lid_tilt"])  # (n, H, W)
    t = (1 - (xl / a) ** 2).clamp_min(0) ** 0.75
    lift = R * gy  # g_y = -sin(pitch): negative when looking up
    y_up = -(P["openness"] * P["upper"] * R - 0.4 * lift) * t
    y_low = (P["openness"] * P["lower"] * R + 0.2 * lift) * t
    opening = _soft(yl - y_up) * _soft(y_low - yl) * _soft(a - xl.abs())
    # the eyeball: normals of the visible hemisphere and their angle to the gaze
    rho2 = (dx**2 + dy**2) / R**2
    on_ball = _soft(R * (1 - rho2.sqrt()))
    nx, ny, nz = dx / R, dy / R, -(1 - rho2).clamp_min(0).sqrt()
    phi = torch.acos((nx * gx + ny * gy + nz * gz).clamp(-1, 1))
    iris = _soft(R * (torch.asin(P["iris_sin"]) - phi)) * on_ball
    pupil = _soft(R * (torch.asin(P["pupil_sin"]) - phi))
    lx, ly = P["lx"], P["ly"]
    shade = 0.55 + 0.45 * (-(nx * lx + ny * ly + nz) / (1 + lx**2 + ly**2).sqrt())
    ix, iy = P["cx"] + R * gx, P["cy"] + R * gy  # projected iris centre
    psi = torch.atan2(ys[None, :, None] - iy, xs[None, None, :] - ix)
    texture = 1 + 0.1 * torch.sin(P["stripes"] * psi + P["stripe_phase"])
    limbus = 1 - 0.4 * (phi / torch.asin(P["iris_sin"])).clamp(max=1) ** 6
    iris_tone = P["iris"] * texture * limbus
    ball = P["sclera"] * (1 - iris) + iris * (iris_tone * (1 - pupil) + P["pupil"] * pupil)
    ball = ball * shade * (1 - 0.3 * torch.exp(-(yl - y_up).clamp_min(0) / 2.5))
    ball = on_ball * ball + (1 - on_ball) * 0.5 * P["sclera"]  # corners off the ball
    # the corneal glint: where the half-vector of light and camera meets the cornea
    hx, hy = -lx / 2, -ly / 2
    glint_x = P["cx"] + 0.45 * R * gx + 0.6 * R * hx
    glint_y = P["cy"] + 0.45 * R * gy + 0.6 * R * hy
    glint = torch.exp(-((xs[None, None, :] - glint_x) ** 2
                        + (ys[None, :, None] - glint_y) ** 2) / (2 * 0.8**2))
    ball = ball + P["glint"] * glint * iris
    # skin, lashes along the upper lid, the crease above it
    skin = P["skin"] * (1 + 0.15 * dy / HEIGHT)
    skin = skin * (1 - 0.6 * torch.exp(-((yl - y_up) / 1.0) ** 2) * (t > 0))
    skin = skin * (1 - 0.15 * torch.exp(-((yl - y_up + 0.35 * R) / 1.5) ** 2))
    img = opening * ball + (1 - opening) * skin
    # an occluder: a band (hair, a glasses frame, a glare) across the pupil
    ox, oy = ix + P["occ_dx"], iy + P["occ_dy"]
    d = ((xs[None, None, :] - ox) * -torch.sin(P["occ_angle"])
         + (ys[None, :, None] - oy) * torch.cos(P["occ_angle"]))
    occluder = P["occ_alpha"] * _soft(P["occ_half"] - d.abs())
    img = (1 - occluder) * img + occluder * P["occ_tone"]
    # lighting: gain, a gradient across the crop, gamma, sensor noise
    grad = 1 + P["gx"] * dx / WIDTH + P["gy"] * dy / HEIGHT
    img = (img * P["gain"] * grad).clamp(0, 1) ** P["gamma"]
    img = (img + P["noise"] * noise).clamp(0, 1)
    seen = (iris * opening * (1 - occluder)).sum((1, 2))
    return img, seen / iris.sum((1, 2)).clamp_min(1e-6)


def render_eye(pitch, yaw, *, blink: float = 0.0, occlusion: float = 0.0,
               lighting: bool = True, seed: int | torch.Generator = 0,
               device: torch.device | str | None = None) -> Eyes:
    """Render one eye per (pitch, yaw): crops (N, 1, 36, 60) with exact labels.

    pitch, yaw: floats or tensors of shape (N,) in radians, strictly between
    -pi/2 and pi/2. blink and occlusion: the probability that a crop shows a
    blink (lid opening 0 to 0.3 instead of 0.85 to 1.1) or an occluding band
    across the pupil. lighting=False gives even light and no noise (shape and
    tones stay random). seed: an int or a CPU ``torch.Generator``; the same seed
    renders the same eyes on any device, in chunks or not. device: where the
    crops are made (default: pitch's device, or the CPU for floats).
    """
    pitch, yaw = _angles(pitch, "pitch"), _angles(yaw, "yaw")
    if pitch.shape != yaw.shape:
        raise ValueError(f"pitch and yaw must have the same length, got "
                         f"{tuple(pitch.shape)} and {tuple(yaw.shape)}")
    if pitch.device != yaw.device:
        raise ValueError(f"pitch and yaw must be on one device, got {pitch.device} "
                         f"and {yaw.device}")
    blink = check_real(blink, "blink", minimum=0.0, maximum=1.0)
    occlusion = check_real(occlusion, "occlusion", minimum=0.0, maximum=1.0)
    check_bool(lighting, "lighting")
    gen = _generator(seed)
    dev = torch.device(device) if device is not None else pitch.device
    n = len(pitch)
    p = _params(n, blink, occlusion, lighting, gen)
    noise = torch.randn(n, HEIGHT, WIDTH, generator=gen)
    pitchyaw = torch.stack([pitch, yaw], -1).float().cpu()
    g = -pitchyaw_to_vector(pitchyaw)  # (n, 3): the gaze from the eye
    images, visible = [], []
    for s in range(0, n, _CHUNK):
        sl = slice(s, s + _CHUNK)
        chunk = {k: v[sl].to(dev) for k, v in p.items()}
        img, vis = _render(chunk, g[sl].to(dev), noise[sl].to(dev))
        images.append(img)
        visible.append(vis)
    pupil_xy = torch.stack([p["cx"] + p["R"] * g[:, 0], p["cy"] + p["R"] * g[:, 1]], -1)
    return Eyes(
        images=torch.cat(images)[:, None] if n else torch.zeros(0, 1, HEIGHT, WIDTH,
                                                                 device=dev),
        pitchyaw=pitchyaw.to(dev), pupil_xy=pupil_xy.to(dev),
        openness=p["openness"].to(dev),
        iris_visible=torch.cat(visible) if n else torch.zeros(0, device=dev),
        blink=p["blink"].to(dev), occluded=p["occluded"].to(dev),
    )


def sample_pitchyaw(n: int, pitch_range: tuple[float, float] = PITCH_RANGE,
                    yaw_range: tuple[float, float] = YAW_RANGE,
                    seed: int | torch.Generator = 0) -> torch.Tensor:
    """n gaze directions (n, 2) in radians, uniform in the ranges (given in degrees)."""
    check_int(n, "n", minimum=0)
    gen = _generator(seed)
    out = []
    for name, rng in (("pitch_range", pitch_range), ("yaw_range", yaw_range)):
        if not isinstance(rng, (tuple, list)) or len(rng) != 2:
            raise TypeError(f"{name} must be a pair (low, high) of degrees, got {rng!r}")
        lo = check_real(rng[0], f"{name}[0]", minimum=-89.0, maximum=89.0)
        hi = check_real(rng[1], f"{name}[1]", minimum=lo, maximum=89.0)
        out.append(torch.deg2rad(lo + (hi - lo) * torch.rand(n, generator=gen,
                                                             dtype=torch.float64)))
    return torch.stack(out, -1).float()


def render_eyes(n: int, *, blink: float = 0.0, occlusion: float = 0.0,
                pitch_range: tuple[float, float] = PITCH_RANGE,
                yaw_range: tuple[float, float] = YAW_RANGE, lighting: bool = True,
                seed: int | torch.Generator = 0,
                device: torch.device | str | None = None) -> Eyes:
    """n eyes with gaze drawn uniformly from the ranges (degrees), then rendered.

    The gaze and the eyes come from one generator (``seed``), so a seed fixes
    the whole data set. See :func:`render_eye` for the other arguments.
    """
    gen = _generator(seed)
    pitchyaw = sample_pitchyaw(n, pitch_range, yaw_range, gen)
    return render_eye(pitchyaw[:, 0], pitchyaw[:, 1], blink=blink, occlusion=occlusion,
                      lighting=lighting, seed=gen, device=device)
