"""Synthetic people: 2-D stick figures with COCO's 17 keypoints and their ground truth.

Chapters 12 (RLE pose regression) and 13 (associative embedding) train on these images
and score them with COCO's metrics from :mod:`lib.oks` (re-exported here).

* :func:`render_people`: ``n`` RGB images of ``size`` x ``size`` pixels, each with one to
  ``people`` stick figures (random pose, scale, position, limb thickness; optional
  occluding rectangles), and their ground truth: joints, COCO visibility flags,
  identities (the person slot of each joint, and a per-pixel id map), areas and boxes.
  Deterministic given ``seed``; batched (a few thousand 64 x 64 images per second).
* :func:`plot_people`: an image with its skeletons drawn on a matplotlib axis.

Why COCO's 17 keypoints rather than a simpler body: OKS weighs each keypoint's error by a
per-keypoint constant that COCO measured from repeated human annotations (its
``kpt_oks_sigmas``). With COCO's own keypoints these constants apply as they are, so our
AP is computed exactly as COCO computes it; a simpler body would need sigmas we invented.

Conventions. Coordinates are (x, y) in pixels with the centre of pixel (row i, column j)
at (j, i): an image spans [-0.5, size - 0.5] on both axes. Visibility follows COCO: 0 = not
labelled (outside the image), 1 = labelled but hidden (under an occluder or a person drawn
later), 2 = labelled and visible. A figure faces the camera, so the person's left side is
on the image's right; left limbs are drawn orange, right limbs blue, the trunk and head
green (colour makes left and right tellable apart, as shading and context do in photos).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from .oks import (  # noqa: F401  (re-exported, see __all__)
    COCO_OKS_THRESHOLDS,
    COCO_SIGMAS,
    OksAP,
    average_precision,
    bbox_size,
    greedy_match,
    mean_joint_error,
    oks,
    oks_ap,
    pck,
)
from .validate import check_int, check_real

COCO_KEYPOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
# COCO's person skeleton (the "skeleton" of its keypoint annotations, made 0-based).
COCO_SKELETON = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7),
    (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
)
K = len(COCO_KEYPOINTS)

_LEFT, _RIGHT, _TRUNK = (0.95, 0.55, 0.10), (0.15, 0.45, 0.95), (0.30, 0.85, 0.30)
_PALETTE = torch.tensor([_LEFT, _RIGHT, _TRUNK])
# What a figure is drawn with, in painting order: segments between joints, a neck, the
# head disk, then dots for the eyes and ears (they replace COCO_SKELETON's face edges).
# _KIND: the colour of each stroke (0 left, 1 right, 2 trunk and head).
_SEGMENTS = ((5, 11), (6, 12), (5, 6), (11, 12), (11, 13), (13, 15), (12, 14), (14, 16),
             (5, 7), (7, 9), (6, 8), (8, 10))
_KIND = torch.tensor([0, 1, 2, 2, 0, 0, 1, 1, 0, 0, 1, 1] + [2, 2] + [0, 1, 0, 1])
# Body proportions, as fractions of the body height (ankle to the top of the head).
_TORSO, _NECK, _HEAD_R = 0.30, 0.11, 0.085
_SHOULDER, _HIP = 0.11, 0.07
_UPPER_ARM, _FOREARM, _THIGH, _SHIN = 0.17, 0.15, 0.23, 0.21


@dataclass
class People:
    """A batch of rendered images and their ground truth (B images, P person slots).

    images (B, 3, H, W) float in [0, 1]; joints (B, P, K, 2) pixel coordinates (x, y);
    visibility (B, P, K) int64 in {0, 1, 2} (COCO's flags); present (B, P) bool, False
    for the empty slots of images with fewer than P people; area (B, P) the number of
    pixels the figure covers (COCO's "area", which scales OKS); boxes (B, P, 4) the
    figure's box (x, y, w, h); id_map (B, H, W) int64, the slot of the person seen at
    each pixel, -1 for background and occluders. A joint's identity is its slot p.
    """

    images: torch.Tensor
    joints: torch.Tensor
    visibility: torch.Tensor
    present: torch.Tensor
    area: torch.Tensor
    boxes: torch.Tensor
    id_map: torch.Tensor

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device) -> People:
        """The same batch on ``device``."""
        return People(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def __getitem__(self, index) -> People:
        """Select images (an int, a slice or an index tensor), keeping every field's rank."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return People(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


# ------------------------------------------------------------------------------ poses


def _uniform(gen: torch.Generator, shape, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=gen, dtype=torch.float64)


def _random_poses(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Joints (n, K, 2) of figures of height 1 with the pelvis at the origin, y down,
    and the centre of each head (n, 2)."""
    lean = _uniform(gen, n, -0.25, 0.25)  # trunk angle from vertical
    up = torch.stack([torch.sin(lean), -torch.cos(lean)], -1)  # (n, 2), y points down
    side = torch.stack([torch.cos(lean), torch.sin(lean)], -1)  # towards the person's left

    def turn(u, v, angle):  # direction at `angle` from u towards v
        return torch.cos(angle)[:, None] * u + torch.sin(angle)[:, None] * v

    j = torch.zeros(n, K, 2, dtype=torch.float64)
    neck = _TORSO * up
    j[:, 11], j[:, 12] = _HIP * side, -_HIP * side
    j[:, 5], j[:, 6] = neck + _SHOULDER * side, neck - _SHOULDER * side
    for s, (sh, el, wr) in ((1.0, (5, 7, 9)), (-1.0, (6, 8, 10))):
        raise_ = _uniform(gen, n, -0.2, 2.6)  # upper arm: 0 hangs down, pi/2 horizontal
        bend = raise_ + _uniform(gen, n, -0.6, 1.8)  # elbow flexion
        j[:, el] = j[:, sh] + _UPPER_ARM * turn(-up, s * side, raise_)
        j[:, wr] = j[:, el] + _FOREARM * turn(-up, s * side, bend)
    for s, (hp, kn, an) in ((1.0, (11, 13, 15)), (-1.0, (12, 14, 16))):
        spread = _uniform(gen, n, -0.15, 0.55) - lean * s  # legs roughly vertical
        knee = spread + _uniform(gen, n, -0.35, 0.35)
        j[:, kn] = j[:, hp] + _THIGH * turn(-up, s * side, spread)
        j[:, an] = j[:, kn] + _SHIN * turn(-up, s * side, knee)
    tilt = lean + _uniform(gen, n, -0.3, 0.3)
    head_up = torch.stack([torch.sin(tilt), -torch.cos(tilt)], -1)
    head_side = torch.stack([torch.cos(tilt), torch.sin(tilt)], -1)
    head = neck + (_NECK + _HEAD_R) * head_up
    j[:, 0] = head - 0.15 * _HEAD_R * head_up  # nose: just below the centre
    j[:, 1] = head + 0.25 * _HEAD_R * head_up + 0.42 * _HEAD_R * head_side  # left eye
    j[:, 2] = head + 0.25 * _HEAD_R * head_up - 0.42 * _HEAD_R * head_side
    j[:, 3] = head + 0.05 * _HEAD_R * head_up + 0.95 * _HEAD_R * head_side  # left ear
    j[:, 4] = head + 0.05 * _HEAD_R * head_up - 0.95 * _HEAD_R * head_side
    return j, head


# ------------------------------------------------------------------------------ drawing


def _segment_alpha(xs, ys, a, b, width):
    """Coverage (n, S, H, W) of segments a -> b (n, S, 2) of widths (n, 1), anti-aliased:
    1 within width/2 of the segment, 0 beyond width/2 + 1, linear in between."""
    ax, ay = a[..., 0, None, None], a[..., 1, None, None]
    abx, aby = (b - a)[..., 0, None, None], (b - a)[..., 1, None, None]
    dx, dy = xs - ax, ys - ay  # (n, S, H, W)
    t = ((dx * abx + dy * aby) / (abx**2 + aby**2).clamp_min(1e-9)).clamp(0, 1)
    d = torch.sqrt((dx - t * abx) ** 2 + (dy - t * aby) ** 2)
    return (width[..., None, None] / 2 + 0.5 - d).clamp(0, 1)


def _disk_alpha(xs, ys, centre, radius):
    """Coverage (n, S, H, W) of disks at centre (n, S, 2) of radius (n, S)."""
    d = torch.sqrt((xs - centre[..., 0, None, None]) ** 2
                   + (ys - centre[..., 1, None, None]) ** 2)
    return (radius[..., None, None] + 0.5 - d).clamp(0, 1)


def _over(alphas):
    """Painter's algorithm for strokes (n, S, H, W) drawn in order: the weight of each
    stroke in the final colour, a_s * prod_{s' > s} (1 - a_s'), and the figure's coverage
    1 - prod_s (1 - a_s)."""
    through = torch.cumprod((1 - alphas).flip(1), 1).flip(1)  # prod over s' >= s
    after = torch.cat([through[:, 1:], torch.ones_like(through[:, :1])], 1)
    return alphas * after, 1 - through[:, 0]


def _render_chunk(n, size, people, scale, thickness, occluders, gen, device):
    P_max = people[1]
    H = W = size
    ys = torch.arange(H, dtype=torch.float32, device=device)[:, None]  # pixel centres
    xs = torch.arange(W, dtype=torch.float32, device=device)[None, :]
    grid = torch.stack(torch.broadcast_tensors(xs, ys), -1)  # (H, W, 2) as (x, y)

    # background: a smooth colour gradient plus pixel noise
    corner = _uniform(gen, (n, 3, 2, 2), 0.0, 0.45).float()
    canvas = torch.nn.functional.interpolate(corner, size=(H, W), mode="bilinear",
                                             align_corners=True).to(device)
    canvas = canvas + 0.03 * torch.randn(n, 3, H, W, generator=gen).to(device)

    count = torch.randint(people[0], people[1] + 1, (n,), generator=gen)
    present = torch.arange(P_max)[None] < count[:, None]  # (n, P)
    joints = torch.zeros(n, P_max, K, 2)
    owner = torch.full((n, H, W), -1, dtype=torch.long, device=device)
    cover = torch.zeros(n, P_max, H, W, device=device)  # each figure's own coverage
    hidden_by_later = torch.zeros(n, P_max, K, dtype=torch.bool)
    order = torch.argsort(torch.rand(n, P_max, generator=gen), dim=1)  # left-to-right slots
    for p in range(P_max):
        pose, head = _random_poses(n, gen)
        height = _uniform(gen, n, *scale) * size
        # place: the figure's box centred in its horizontal slot (jittered), fully inside
        # vertically when it fits; multi-person images put the slots side by side
        lo, hi = pose.min(1).values, pose.max(1).values  # (n, 2) of a height-1 figure
        lo = torch.minimum(lo, head - _HEAD_R)
        hi = torch.maximum(hi, head + _HEAD_R)
        slots = count.double()
        slot = order[:, p].double().clamp(max=slots - 1)
        cx = (slot + 0.5 + _uniform(gen, n, -0.25, 0.25)) / slots * size
        cy = size / 2 + _uniform(gen, n, -0.5, 0.5) * (size - (hi - lo)[:, 1] * height).abs()
        offset = torch.stack([cx, cy], -1) - (lo + hi) / 2 * height[:, None] - 0.5
        xy = pose * height[:, None, None] + offset[:, None]
        head_xy = head * height[:, None] + offset
        joints[:, p] = xy.float()
        on = present[:, p].to(device)

        width = (_uniform(gen, (n, 1), *thickness) * height[:, None]).float().to(device)
        shade = _uniform(gen, (n, 1), 0.8, 1.15).float().to(device)
        xy_d, head_d = xy.float().to(device), head_xy.float().to(device)
        h_d = height.float().to(device)[:, None]
        ends = torch.tensor(_SEGMENTS, device=device)  # (S1, 2) joint pairs
        neck_base = (xy_d[:, 5] + xy_d[:, 6]) / 2
        seg_a = torch.cat([xy_d[:, ends[:, 0]], neck_base[:, None]], 1)  # (n, S1 + 1, 2)
        seg_b = torch.cat([xy_d[:, ends[:, 1]], head_d[:, None]], 1)
        centres = torch.cat([head_d[:, None], xy_d[:, 1:5]], 1)  # head, eyes, ears
        radii = torch.cat([_HEAD_R * h_d, (0.022 * h_d).clamp(min=0.6).expand(n, 4)], 1)
        alphas = torch.cat([_segment_alpha(xs, ys, seg_a, seg_b, width),
                            _disk_alpha(xs, ys, centres, radii)], 1)  # (n, S, H, W)
        alphas = alphas * present[:, p].to(device)[:, None, None, None]
        weights, own = _over(alphas)
        palette = _PALETTE.to(device)[None] * shade[..., None]  # (n, 3 kinds, 3 rgb)
        by_kind = torch.stack([weights[:, _KIND == c].sum(1) for c in range(3)], 1)
        canvas = canvas * (1 - own[:, None]) + torch.einsum("nkhw,nkc->nchw", by_kind,
                                                            palette.clamp(0, 1))
        cover[:, p] = own
        # joints of earlier people under this figure are hidden
        hidden_by_later[:, :p] |= _sample(own, joints[:, :p].to(device)).cpu() > 0.5
        owner = torch.where(own > 0.5, torch.full_like(owner, p), owner)

    occluded = torch.zeros(n, P_max, K, dtype=torch.bool)
    n_occ = torch.poisson(torch.full((n,), float(occluders)), generator=gen).long().clamp(max=3)
    for r in range(int(n_occ.max()) if n else 0):
        on = (n_occ > r).float().to(device)
        wh = _uniform(gen, (n, 2), 0.15, 0.35) * size
        x0y0 = _uniform(gen, (n, 2), 0, 1) * (size - wh)
        inside = ((grid[None] >= x0y0.float().to(device)[:, None, None] - 0.5)
                  & (grid[None] <= (x0y0 + wh).float().to(device)[:, None, None] - 0.5))
        alpha = inside.all(-1).float() * on[:, None, None]
        colour = _uniform(gen, (n, 3), 0.15, 0.6).float().to(device)
        canvas = canvas * (1 - alpha[:, None]) + colour[:, :, None, None] * alpha[:, None]
        owner = torch.where(alpha > 0.5, torch.full_like(owner, -1), owner)
        occluded |= _sample(alpha, joints.to(device)).cpu() > 0.5

    inside = ((joints >= -0.5) & (joints <= size - 0.5)).all(-1)
    visibility = torch.where(occluded | hidden_by_later, 1, 2) * inside * present[..., None]
    joints = joints * present[..., None, None]
    area = cover.sum((-2, -1)).cpu()
    boxes = _boxes(cover > 0.5).cpu()
    return People(canvas.clamp(0, 1), joints.to(device), visibility.long().to(device),
                  present.to(device), area.to(device), boxes.to(device), owner)


def _sample(maps, points):
    """maps (n, H, W), points (n, P, K, 2) -> the map at the nearest pixel (n, P, K)."""
    n, H, W = maps.shape
    ij = points.round().long()
    x, y = ij[..., 0].clamp(0, W - 1), ij[..., 1].clamp(0, H - 1)
    inside = (ij[..., 0] == x) & (ij[..., 1] == y)
    return maps[torch.arange(n, device=maps.device)[:, None, None], y, x] * inside


def _boxes(mask):
    """mask (n, P, H, W) bool -> boxes (n, P, 4) (x, y, w, h) of the pixels set, 0 if none."""
    n, P, H, W = mask.shape
    cols, rows = mask.any(-2), mask.any(-1)  # (n, P, W), (n, P, H)
    ar_w = torch.arange(W, device=mask.device).float()
    ar_h = torch.arange(H, device=mask.device).float()
    x0 = torch.where(cols, ar_w, float(W)).amin(-1)
    x1 = torch.where(cols, ar_w, -1.0).amax(-1)
    y0 = torch.where(rows, ar_h, float(H)).amin(-1)
    y1 = torch.where(rows, ar_h, -1.0).amax(-1)
    box = torch.stack([x0 - 0.5, y0 - 0.5, x1 - x0 + 1, y1 - y0 + 1], -1)
    return box * mask.flatten(-2).any(-1)[..., None]


def _check_range(value, name, low, high, integer=False):
    if not isinstance(value, tuple) or len(value) != 2:
        raise TypeError(f"{name} must be a (low, high) tuple, got {type(value).__name__}")
    check = (lambda v, nm: check_int(v, nm, minimum=low, maximum=high)) if integer else (
        lambda v, nm: check_real(v, nm, minimum=low, maximum=high))
    lo, hi = check(value[0], f"{name}[0]"), check(value[1], f"{name}[1]")
    if lo > hi:
        raise ValueError(f"{name} must have low <= high, got {value}")
    return value


def render_people(
    n: int,
    *,
    size: int = 64,
    people: int | tuple[int, int] = 1,
    scale: tuple[float, float] = (0.6, 0.85),
    thickness: tuple[float, float] = (0.05, 0.085),
    occluders: float = 0.0,
    seed: int | torch.Generator = 0,
    device: torch.device | str | None = None,
    chunk: int = 64,
) -> People:
    """Render ``n`` images of stick figures with COCO's 17 keypoints; see :class:`People`.

    size: the images are size x size pixels (16 to 512). people: the number of figures
    per image, or a (min, max) range drawn uniformly per image; figures stand side by side
    in random order and may overlap (the later one hides the earlier one's joints).
    scale: the range of body heights as fractions of ``size``. thickness: the range of
    limb widths as fractions of the body height. occluders: the mean number (Poisson, at
    most 3) of grey rectangles painted over each image; joints under them get visibility
    1. seed: an int or a ``torch.Generator``: the same seed and chunk give the same
    images on every device (the random draws happen on the CPU, chunk by chunk). chunk:
    images rendered at once (memory is about chunk x 30 x size^2 floats).
    """
    check_int(n, "n", minimum=0)
    check_int(size, "size", minimum=16, maximum=512)
    if isinstance(people, int) and not isinstance(people, bool):
        people = (people, people)
    people = _check_range(people, "people", 1, 64, integer=True)
    scale = _check_range(scale, "scale", 0.05, 1.0)
    thickness = _check_range(thickness, "thickness", 0.005, 0.5)
    check_real(occluders, "occluders", minimum=0.0, maximum=3.0)
    check_int(chunk, "chunk", minimum=1)
    if isinstance(seed, torch.Generator):
        gen = seed
    else:
        gen = torch.Generator().manual_seed(check_int(seed, "seed", minimum=0))
    device = torch.device("cpu" if device is None else device)
    parts = [_render_chunk(min(chunk, n - s), size, people, scale, thickness, occluders,
                           gen, device) for s in range(0, n, chunk)]
    if not parts:
        parts = [_render_chunk(0, size, people, scale, thickness, occluders, gen, device)]
    return People(**{f.name: torch.cat([getattr(p, f.name) for p in parts])
                     for f in fields(People)})


# ------------------------------------------------------------------------------ plotting


def plot_people(ax, image: torch.Tensor, joints: torch.Tensor | None = None,
                visibility: torch.Tensor | None = None, colors=None, size: float = 10):
    """Show image (3, H, W) on ax with skeletons joints (P, K, 2) (COCO_SKELETON).

    Visible joints are filled dots, hidden ones (visibility 1) hollow, unlabelled ones
    (0) are not drawn. colors: one matplotlib colour per person.
    """
    ax.imshow(image.permute(1, 2, 0).cpu().clamp(0, 1).numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    if joints is None:
        return ax
    joints = joints.detach().cpu()
    if joints.dim() == 2:
        joints = joints[None]
    vis = (torch.full(joints.shape[:2], 2) if visibility is None
           else visibility.cpu().reshape(joints.shape[:2]))
    colors = colors or ["white", "yellow", "magenta", "cyan", "red", "lime"]
    for p in range(joints.shape[0]):
        c = colors[p % len(colors)]
        for a, b in COCO_SKELETON:
            if vis[p, a] > 0 and vis[p, b] > 0:
                ax.plot(*joints[p, [a, b]].T, color=c, lw=0.8, alpha=0.8)
        for v, face in ((2, c), (1, "none")):
            sel = vis[p] == v
            ax.scatter(*joints[p, sel].T, s=size, facecolors=face, edgecolors=c, lw=0.8)
    lo, hi = -0.5, image.shape[-1] - 0.5
    ax.set_xlim(lo, hi)
    ax.set_ylim(image.shape[-2] - 0.5, lo)
    return ax


__all__ = [
    "COCO_KEYPOINTS", "COCO_SKELETON", "People", "plot_people", "render_people",
    # COCO's metrics live in lib.oks; re-exported so that `from lib.people import oks_ap`
    # keeps working
    "COCO_OKS_THRESHOLDS", "COCO_SIGMAS", "OksAP", "average_precision", "bbox_size",
    "greedy_match", "mean_joint_error", "oks", "oks_ap", "pck",
]
