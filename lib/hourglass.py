"""A small stacked hourglass that outputs detection heatmaps and tag maps (chapter 13).

Newell, Yang and Deng (ECCV 2016) built pose networks from *hourglasses*: a module that
pools down to a coarse resolution and upsamples back, adding at every resolution a skip
branch that kept the finer detail, so that each output pixel sees the whole person and
still knows where it is. Stacks of them refine each other's predictions, each stack
supervised. Associative embedding (Newell et al., NeurIPS 2017) adds a tag map per
joint next to each heatmap. This module holds a tiny version for 64 x 64 images:

* :class:`AENet`: stem (stride 2) -> ``stacks`` hourglasses -> per stack, K heatmaps and
  K tag maps at half the image resolution.
* :func:`pose_targets`: target heatmaps and tag-map joint coordinates from
  :class:`lib.people.People`.
* :func:`ae_training_loss`: heatmap MSE plus the weighted pull and push losses of
  :func:`lib.assoc_embed.ae_loss`, summed over stacks (intermediate supervision).
* :func:`flip_people`: horizontal flip of images and ground truth (left and right joints
  swap names), the usual augmentation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .assoc_embed import ae_loss
from .people import People
from .rle import render_heatmaps
from .validate import check_bool, check_int, check_real, check_tensor

# COCO's left/right keypoint pairs (eyes, ears, shoulders, elbows, wrists, hips, knees,
# ankles): a mirrored person's left wrist is where its right wrist was.
COCO_FLIP = (0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15)


class Residual(nn.Module):
    """Two 3x3 convolutions with batch norm and a skip (1x1 when the width changes)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(c_in), nn.ReLU(inplace=True),
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False))
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x):
        return self.skip(x) + self.body(x)


class Hourglass(nn.Module):
    """Pool, recurse, upsample, add the skip: (B, c, h, w) -> (B, c, h, w).

    depth levels of halving (h and w must be divisible by ``2 ** depth``); the
    width grows by ``grow`` channels per level down.
    """

    def __init__(self, depth: int, c: int, grow: int = 16):
        super().__init__()
        c2 = c + grow
        self.skip = Residual(c, c)  # full resolution, kept for the way up
        self.down = Residual(c, c2)
        self.inner = (Hourglass(depth - 1, c2, grow) if depth > 1
                      else Residual(c2, c2))  # the coarsest level
        self.up = Residual(c2, c)

    def forward(self, x):
        low = F.max_pool2d(x, 2)  # (B, c, h/2, w/2)
        low = self.up(self.inner(self.down(low)))
        return self.skip(x) + F.interpolate(low, scale_factor=2, mode="nearest")


class AENet(nn.Module):
    """Stacked hourglass with K heatmaps and K tag maps per stack.

    images (B, 3, S, S), S divisible by ``2 ** (depth + 1)`` -> heatmaps and tags, each
    (B, stacks, K, S/2, S/2). Stack s > 0 starts from stack s-1's features plus a 1x1
    projection of its predictions (Newell et al. 2016's intermediate supervision).
    coords: append the pixel coordinates x and y (in [-1, 1]) to the image as two more
    input channels (CoordConv), so that tags can depend on position directly; off by
    default, as in the original network (chapter 13, exercise 1).
    """

    def __init__(self, k: int = 17, width: int = 32, depth: int = 3, stacks: int = 2,
                 coords: bool = False):
        super().__init__()
        self.k, self.depth, self.stacks = (check_int(k, "k", minimum=1),
                                           check_int(depth, "depth", minimum=1),
                                           check_int(stacks, "stacks", minimum=1))
        check_int(width, "width", minimum=4)
        self.coords = check_bool(coords, "coords")
        self.stem = nn.Sequential(
            nn.Conv2d(3 + 2 * coords, width // 2, 5, stride=2, padding=2, bias=False),
            nn.BatchNorm2d(width // 2), nn.ReLU(inplace=True),
            Residual(width // 2, width))
        self.hourglasses = nn.ModuleList(Hourglass(depth, width) for _ in range(stacks))
        self.features = nn.ModuleList(
            nn.Sequential(Residual(width, width), nn.BatchNorm2d(width), nn.ReLU())
            for _ in range(stacks))
        self.heads = nn.ModuleList(nn.Conv2d(width, 2 * k, 1) for _ in range(stacks))
        self.merge_features = nn.ModuleList(nn.Conv2d(width, width, 1)
                                            for _ in range(stacks - 1))
        self.merge_preds = nn.ModuleList(nn.Conv2d(2 * k, width, 1)
                                         for _ in range(stacks - 1))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_tensor(images, "images", ndim=4)
        if images.shape[1] != 3 or images.shape[-1] % 2 ** (self.depth + 1) or (
                images.shape[-2] % 2 ** (self.depth + 1)):
            raise ValueError(f"images must have shape (B, 3, S, S') with sides "
                             f"divisible by {2 ** (self.depth + 1)}, got "
                             f"{tuple(images.shape)}")
        if self.coords:
            B, _, H, W = images.shape
            ys = torch.linspace(-1, 1, H, device=images.device, dtype=images.dtype)
            xs = torch.linspace(-1, 1, W, device=images.device, dtype=images.dtype)
            grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"))  # (2, H, W)
            images = torch.cat([images, grid.expand(B, 2, H, W)], 1)
        x = self.stem(images)  # (B, width, S/2, S/2)
        heatmaps, tags = [], []
        for s in range(self.stacks):
            f = self.features[s](self.hourglasses[s](x))
            out = self.heads[s](f)  # (B, 2K, S/2, S/2)
            heatmaps.append(out[:, :self.k])
            tags.append(out[:, self.k:])
            if s < self.stacks - 1:
                x = x + self.merge_features[s](f) + self.merge_preds[s](out)
        return torch.stack(heatmaps, 1), torch.stack(tags, 1)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The last stack's heatmaps and tags, (B, K, S/2, S/2) each, in eval mode."""
        was = self.training
        self.eval()
        try:
            heatmaps, tags = self(images)
        finally:
            self.train(was)
        return heatmaps[:, -1], tags[:, -1]


def to_map(xy: torch.Tensor, stride: int) -> torch.Tensor:
    """Image pixel coordinates -> heatmap pixel coordinates (centres at integers)."""
    return (xy + 0.5) / stride - 0.5


def to_image(xy: torch.Tensor, stride: int) -> torch.Tensor:
    """Heatmap pixel coordinates -> image pixel coordinates; inverts :func:`to_map`."""
    return (xy + 0.5) * stride - 0.5


def pose_targets(people: People, stride: int = 2, sigma: float = 1.0
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Training targets for a batch of rendered people (chapter 13, eq. ae-heat).

    Returns heatmaps (B, K, h, w), for each joint type the maximum over people of a
    Gaussian of width ``sigma`` (heatmap pixels) at every labelled joint (visibility
    > 0) inside the map, and joints (B, P, K, 3) as (x, y, visible) in heatmap pixels for
    :func:`lib.assoc_embed.ae_loss`. h = w = image size / stride.
    """
    if not isinstance(people, People):
        raise TypeError(f"people must be a lib.people.People, got "
                        f"{type(people).__name__}")
    check_int(stride, "stride", minimum=1)
    check_real(sigma, "sigma", minimum=0.0, strict=True)
    B, P, K, _ = people.joints.shape
    size = people.images.shape[-1] // stride
    xy = to_map(people.joints.float(), stride)
    labelled = people.visibility > 0
    inside = ((xy >= -0.5) & (xy <= size - 0.5)).all(-1)
    visible = labelled & inside
    maps = render_heatmaps(xy.reshape(B * P, K, 2), size, sigma,
                           visible.reshape(B * P, K)).view(B, P, K, size, size)
    heatmaps = maps.amax(1) if P else torch.zeros(B, K, size, size)
    return heatmaps, torch.cat([xy, visible[..., None].float()], -1)


def ae_training_loss(
    model: AENet,
    images: torch.Tensor,
    heatmaps: torch.Tensor,
    joints: torch.Tensor,
    *,
    heatmap_weight: float = 1000.0,
    pull_weight: float = 1.0,
    push_weight: float = 1.0,
    sigma: float = 1.0,
) -> torch.Tensor:
    """Sum over stacks of heatmap_weight * MSE + pull_weight * pull + push_weight *
    push (chapter 13, eq. ae-total with eqs. ae-heat, ae-pull and ae-push).

    images (B, 3, S, S); heatmaps (B, K, S/2, S/2) and joints (B, P, K, 3) from
    :func:`pose_targets`. The MSE is the mean over all heatmap pixels (most are 0, hence
    the large weight); pull and push are :func:`lib.assoc_embed.ae_loss` averaged over
    the batch. Returns a scalar.
    """
    pred_h, pred_t = model(images)  # (B, S, K, h, w) each
    total = images.new_zeros(())
    for s in range(pred_h.shape[1]):
        pull, push = ae_loss(pred_t[:, s], joints, sigma)
        total = total + heatmap_weight * F.mse_loss(pred_h[:, s], heatmaps) + (
            pull_weight * pull.mean() + push_weight * push.mean())
    return total


def flip_people(people: People) -> People:
    """Mirror images left to right; joints follow and COCO's left and right swap names.

    Only for COCO's 17 keypoints. Boxes and the id map are mirrored too.
    """
    if not isinstance(people, People):
        raise TypeError(f"people must be a lib.people.People, got "
                        f"{type(people).__name__}")
    if people.joints.shape[2] != len(COCO_FLIP):
        raise ValueError(f"flip_people needs COCO's {len(COCO_FLIP)} keypoints, got "
                         f"{people.joints.shape[2]}")
    W = people.images.shape[-1]
    flip = list(COCO_FLIP)
    joints = people.joints[:, :, flip].clone()
    joints[..., 0] = (W - 1 - joints[..., 0]) * people.present[..., None]
    boxes = people.boxes.clone()
    mirrored = W - 1 - boxes[..., 0] - boxes[..., 2]  # the old right edge
    boxes[..., 0] = torch.where(boxes[..., 2] > 0, mirrored, 0.0)
    return People(people.images.flip(-1), joints, people.visibility[:, :, flip],
                  people.present, people.area, boxes, people.id_map.flip(-1))


__all__ = [
    "AENet", "COCO_FLIP", "Hourglass", "Residual", "ae_training_loss", "flip_people",
    "pose_targets", "to_image", "to_map",
]
