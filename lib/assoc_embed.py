"""Associative embedding: detect joints with heatmaps, group them into people with tags.

Newell, Huang and Deng (NeurIPS 2017). A network outputs, for each of K joint types, a
detection heatmap and a *tag map*: one scalar per pixel. Joints of one person should
carry the same tag and different people different tags; nothing else about the tag
values is prescribed. Chapter 13 derives the pieces implemented here:

* :func:`ae_loss`: the pull and push losses (eqs. ae-mean, ae-pull, ae-push), vectorised
  over images, people and joints.
* :func:`heatmap_nms` and :func:`top_candidates`: local maxima of the heatmaps and the
  tags read at them.
* :func:`group_by_tags`: joints taken one type at a time in a fixed order and matched to
  the people found so far with the Hungarian algorithm
  (``scipy.optimize.linear_sum_assignment``) on tag distance plus score; a detection
  that matches nobody starts a new person (eq. ae-cost).
* :func:`grouping_accuracy`: the fraction of detected joints that end up with the right
  person, scored against ground truth.

The network that produces heatmaps and tags is in :mod:`lib.hourglass`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from .validate import check_bool, check_int, check_real, check_same, check_tensor

FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# The order in which joint types are grouped: head and torso first, then the limbs
# outwards (the official code's partOrder and mmpose's decode_keypoint_order, 0-based
# COCO indices: nose, eyes, ears, shoulders, hips, elbows, wrists, knees, ankles).
COCO_GROUPING_ORDER = (0, 1, 2, 3, 4, 5, 6, 11, 12, 7, 8, 9, 10, 13, 14, 15, 16)

# ------------------------------------------------------------------------ the loss


def _check_tags_and_joints(tags, joints):
    check_tensor(tags, "tags", ndim=4, dtypes=FLOATS)
    check_tensor(joints, "joints", ndim=4, dtypes=FLOATS)
    check_same("device", tags=tags, joints=joints)
    B, K, H, W = tags.shape
    if H * W == 0:
        raise ValueError(f"tags must not be empty, got shape {tuple(tags.shape)}")
    if joints.shape[0] != B or joints.shape[2] != K or joints.shape[3] != 3:
        raise ValueError(f"joints must have shape (B={B}, P, K={K}, 3) as (x, y, "
                         f"visible), got {tuple(joints.shape)}")
    if not torch.isfinite(joints).all():
        raise ValueError("joints must be finite (no NaN or inf)")
    visible = joints[..., 2] > 0
    x, y = joints[..., 0], joints[..., 1]
    outside = visible & ((x < -0.5) | (x > W - 0.5) | (y < -0.5) | (y > H - 0.5))
    if outside.any():
        b, p, k = (int(i) for i in torch.nonzero(outside)[0])
        raise ValueError(f"joints: visible joint {(b, p, k)} at ({x[b, p, k]:.1f}, "
                         f"{y[b, p, k]:.1f}) is off the {W} x {H} map")
    return visible


def gather_tags(tags: torch.Tensor, joints: torch.Tensor) -> torch.Tensor:
    """The tag of each joint read at its nearest pixel: h_k(x_nk) in eq. ae-mean.

    tags (B, K, H, W); joints (B, P, K, 3) as (x, y, visible) in tag-map pixels (pixel
    centres at integers). Returns (B, P, K); entries of invisible joints are tags read
    at a clamped position and must be masked by the caller.
    """
    B, K, H, W = tags.shape
    ix = joints[..., 0].round().long().clamp(0, W - 1)
    iy = joints[..., 1].round().long().clamp(0, H - 1)
    index = (iy * W + ix).permute(0, 2, 1)  # (B, K, P): flat pixel of each joint
    return tags.flatten(2).gather(2, index).permute(0, 2, 1)  # (B, P, K)


def ae_loss(
    tags: torch.Tensor, joints: torch.Tensor, sigma: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The grouping losses of associative embedding (eqs. ae-pull, ae-push).

    tags (B, K, H, W): one scalar tag map per joint type. joints (B, P, K, 3):
    (x, y, visible) of P person slots in tag-map pixels; a joint counts when
    visible > 0, and a person with no visible joint is ignored (so padded slots
    are harmless). With ``hbar_n`` the mean tag of person n over its visible
    joints:

    * pull (B,): mean over people of the mean over their visible joints of
      ``(h_k(x_nk) - hbar_n)^2``;
    * push (B,): mean over ordered pairs of distinct people of
      ``exp(-(hbar_n - hbar_m)^2 / (2 sigma^2))``, 0 with fewer than two people.

    Vectorised over images, people and joints; differentiable in ``tags``; on
    the device of its inputs. Computed in float32 at least.
    """
    visible = _check_tags_and_joints(tags, joints)
    sigma = check_real(sigma, "sigma", minimum=0.0, strict=True)
    dtype = torch.promote_types(tags.dtype, torch.float32)
    h = gather_tags(tags.to(dtype), joints)  # (B, P, K)
    if not torch.isfinite(h[visible]).all():
        raise ValueError("tags must be finite (NaN or inf) at the visible joints")
    m = visible.to(dtype)
    count = m.sum(-1)  # (B, P) visible joints of each person
    person = count > 0
    hbar = (h * m).sum(-1) / count.clamp(min=1)  # (B, P): eq. ae-mean
    spread = ((h - hbar[..., None]) ** 2 * m).sum(-1) / count.clamp(min=1)
    n = person.sum(-1).to(dtype)  # (B,) people per image
    pull = (spread * person).sum(-1) / n.clamp(min=1)  # eq. ae-pull
    P = joints.shape[1]
    distinct = ~torch.eye(P, dtype=torch.bool, device=tags.device)
    pairs = person[:, :, None] & person[:, None, :] & distinct  # (B, P, P)
    d2 = (hbar[:, :, None] - hbar[:, None, :]) ** 2
    push = (torch.exp(-d2 / (2 * sigma**2)) * pairs).sum((-2, -1))
    push = push / (n * (n - 1)).clamp(min=1)  # eq. ae-push
    return pull, push


def ideal_tags(joints: torch.Tensor, size: int | tuple[int, int],
               means: torch.Tensor | None = None) -> torch.Tensor:
    """Tag maps a perfect network could output: each pixel of map k carries the tag of
    the person whose joint k is nearest (a Voronoi partition per joint type).

    joints (B, P, K, 3) as (x, y, visible) in map pixels; size h or (h, w); means
    (B, P) the tag of each person (default: the slot index p). Pixels of a joint type
    nobody shows get person 0's tag. Returns (B, K, h, w).
    """
    check_tensor(joints, "joints", ndim=4, dtypes=FLOATS)
    if joints.shape[-1] != 3:
        raise ValueError(f"joints must have shape (B, P, K, 3), got "
                         f"{tuple(joints.shape)}")
    h, w = (size, size) if isinstance(size, int) else size
    check_int(h, "size", minimum=1)
    check_int(w, "size", minimum=1)
    B, P, K, _ = joints.shape
    if means is None:
        means = torch.arange(P, dtype=joints.dtype, device=joints.device).expand(B, P)
    check_tensor(means, "means", ndim=2, dtypes=FLOATS)
    if means.shape != (B, P):
        raise ValueError(f"means must have shape {(B, P)}, got {tuple(means.shape)}")
    ys = torch.arange(h, dtype=joints.dtype, device=joints.device)
    xs = torch.arange(w, dtype=joints.dtype, device=joints.device)
    dx2 = (xs - joints[..., 0, None]) ** 2  # (B, P, K, w)
    dy2 = (ys - joints[..., 1, None]) ** 2  # (B, P, K, h)
    d2 = dy2[..., :, None] + dx2[..., None, :]  # (B, P, K, h, w)
    d2 = torch.where(joints[..., 2, None, None] > 0, d2, torch.inf)
    owner = d2.argmin(1)  # (B, K, h, w)
    return means.gather(1, owner.flatten(1)).view(B, K, h, w)


# ---------------------------------------------------------------------- candidates


def _check_maps(heatmaps, tags):
    check_tensor(heatmaps, "heatmaps", ndim=4, dtypes=FLOATS)
    check_tensor(tags, "tags", ndim=4, dtypes=FLOATS)
    check_same("device", heatmaps=heatmaps, tags=tags)
    if heatmaps.shape != tags.shape:
        raise ValueError(f"heatmaps and tags must have the same shape (B, K, H, W), "
                         f"got {tuple(heatmaps.shape)} and {tuple(tags.shape)}")
    if heatmaps.shape[-1] * heatmaps.shape[-2] == 0:
        raise ValueError(f"heatmaps must not be empty, got shape "
                         f"{tuple(heatmaps.shape)}")
    if not (torch.isfinite(heatmaps).all() and torch.isfinite(tags).all()):
        raise ValueError("heatmaps and tags must be finite (no NaN or inf)")


def heatmap_nms(heatmaps: torch.Tensor, kernel: int = 3) -> torch.Tensor:
    """Keep each map's local maxima, zero the rest: (B, K, H, W) -> (B, K, H, W).

    A pixel survives when it equals the maximum of the ``kernel`` x ``kernel`` window
    around it (a max-pool with stride 1, as in the official code and mmpose). Plateaus
    keep all their pixels; the caller's top-k takes the first of them.
    """
    check_tensor(heatmaps, "heatmaps", ndim=4, dtypes=FLOATS)
    check_int(kernel, "kernel", minimum=1)
    if kernel % 2 == 0:
        raise ValueError(f"kernel must be odd, got {kernel}")
    pooled = F.max_pool2d(heatmaps, kernel, stride=1, padding=kernel // 2)
    return heatmaps * (pooled == heatmaps)


def top_candidates(
    heatmaps: torch.Tensor, tags: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The k highest pixels of each (already suppressed) heatmap and the tags there.

    heatmaps, tags (B, K, H, W) -> scores (B, K, k), xy (B, K, k, 2) as (x, y) pixel
    indices, candidate tags (B, K, k). k is capped at H * W.
    """
    _check_maps(heatmaps, tags)
    check_int(k, "k", minimum=1)
    W = heatmaps.shape[-1]
    k = min(k, heatmaps.shape[-1] * heatmaps.shape[-2])
    scores, index = heatmaps.flatten(2).topk(k, dim=-1)
    cand_tags = tags.flatten(2).gather(2, index)
    xy = torch.stack([index % W, torch.div(index, W, rounding_mode="floor")], -1)
    return scores, xy, cand_tags


# ------------------------------------------------------------------------ grouping


@dataclass
class Grouping:
    """People found by :func:`group_by_tags` in B images, padded to M = max_people.

    joints (B, M, K, 2) (x, y) in heatmap pixels; scores (B, M, K) the heatmap value of
    each joint (0 where none was found and none filled in); detected (B, M, K) bool,
    True for joints that came from a candidate (False for filled-in or missing ones);
    person_scores (B, M) the mean of the K joint scores; tags (B, M) the mean tag of
    the detected joints; valid (B, M) bool marks real people, sorted by score.
    """

    joints: torch.Tensor
    scores: torch.Tensor
    detected: torch.Tensor
    person_scores: torch.Tensor
    tags: torch.Tensor
    valid: torch.Tensor

    def count(self) -> torch.Tensor:
        """People found in each image, (B,)."""
        return self.valid.sum(-1)


def _group_one(vals, locs, tags_c, order, det_thr, tag_thr):
    """Grouping of one image (numpy): vals, tags_c (K, k), locs (K, k, 2).

    Returns a list of people, each a dict joint -> (x, y, score, tag).
    """
    people: list[dict[int, tuple]] = []
    for j in order:
        keep = vals[j] > det_thr
        if not keep.any():
            continue
        v, xy, t = vals[j][keep], locs[j][keep], tags_c[j][keep]
        matched = np.full(len(v), -1)
        if people:
            hbar = np.array([np.mean([q[3] for q in p.values()])
                             for p in people])
            dist = np.abs(t[:, None] - hbar[None, :])  # (detections, people)
            # eq. ae-cost: the rounded tag distance first, the score breaks ties
            cost = np.round(dist) * 100 - v[:, None]
            rows, cols = linear_sum_assignment(cost)  # rectangular is fine
            for r, c in zip(rows, cols, strict=True):
                if dist[r, c] < tag_thr:
                    matched[r] = c
        for r in range(len(v)):
            entry = (float(xy[r, 0]), float(xy[r, 1]), float(v[r]), float(t[r]))
            if matched[r] >= 0:
                people[matched[r]][j] = entry
            else:  # no person close enough in tag space: a new person
                people.append({j: entry})
    return people


def _refine(x, y, hm):
    """The official code's quarter-pixel step towards the higher neighbour."""
    H, W = hm.shape
    dx = 0.25 if hm[y, min(x + 1, W - 1)] > hm[y, max(x - 1, 0)] else -0.25
    dy = 0.25 if hm[min(y + 1, H - 1), x] > hm[max(y - 1, 0), x] else -0.25
    return x + dx, y + dy


def group_by_tags(
    heatmaps: torch.Tensor,
    tags: torch.Tensor,
    detection_threshold: float = 0.1,
    tag_threshold: float = 1.0,
    max_people: int = 30,
    *,
    order: tuple[int, ...] | None = None,
    top_k: int | None = None,
    nms_kernel: int = 3,
    refine: bool = True,
    fill_missing: bool = True,
) -> Grouping:
    """Detect joints and group them into people by their tags (chapter 13's algorithm).

    heatmaps, tags (B, K, H, W). For each image: suppress non-maxima
    (:func:`heatmap_nms`); keep the ``top_k`` (default ``max_people``) highest
    candidates of each joint type that exceed ``detection_threshold``; take the joint
    types in ``order`` (default: :data:`COCO_GROUPING_ORDER` for K = 17, else 0..K-1);
    the first type with candidates starts one person per candidate; every later type is
    matched to the people so far by the Hungarian algorithm on the cost
    ``round(|t - hbar_n|) * 100 - score`` (eq. ae-cost), and a match is accepted when
    the tag distance is below ``tag_threshold``; unmatched candidates start new people.
    Then, if ``fill_missing``, each missing joint of a person is placed where
    ``round(|tag - hbar_n|) * 100 - heatmap`` is lowest (mmpose's cost, searched here
    over the raw heatmap; mmpose searches the suppressed one); if
    ``refine``, joints move a quarter pixel towards the higher neighbour. People are
    ranked by the mean of their K joint scores and the best ``max_people`` kept.
    Returns a :class:`Grouping` with coordinates in heatmap pixels.
    """
    _check_maps(heatmaps, tags)
    B, K, H, W = heatmaps.shape
    detection_threshold = check_real(detection_threshold, "detection_threshold")
    tag_threshold = check_real(tag_threshold, "tag_threshold", minimum=0.0, strict=True)
    check_int(max_people, "max_people", minimum=1)
    top_k = max_people if top_k is None else check_int(top_k, "top_k", minimum=1)
    check_bool(refine, "refine")
    check_bool(fill_missing, "fill_missing")
    if order is None:
        coco = K == len(COCO_GROUPING_ORDER)
        order = COCO_GROUPING_ORDER if coco else tuple(range(K))
    if not isinstance(order, (tuple, list)) or any(
            isinstance(j, bool) or not isinstance(j, int) for j in order):
        raise TypeError(f"order must be a tuple of ints, got {order!r}")
    if sorted(order) != list(range(K)):
        raise ValueError(f"order must be a permutation of 0..{K - 1}, got {order!r}")

    suppressed = heatmap_nms(heatmaps.detach().float(), nms_kernel)
    scores, xy, cand = top_candidates(suppressed, tags.detach().float(), top_k)
    scores, xy, cand = scores.cpu().numpy(), xy.cpu().numpy(), cand.cpu().numpy()
    hm_np = heatmaps.detach().float().cpu().numpy()
    tag_np = tags.detach().float().cpu().numpy()

    M = max_people
    out_j = np.zeros((B, M, K, 2), np.float32)
    out_s = np.zeros((B, M, K), np.float32)
    out_d = np.zeros((B, M, K), bool)
    out_t = np.zeros((B, M), np.float32)
    out_v = np.zeros((B, M), bool)
    for b in range(B):
        people = _group_one(scores[b], xy[b], cand[b], order, detection_threshold,
                            tag_threshold)
        rows = []
        for p in people:
            j = np.zeros((K, 2), np.float32)
            s = np.zeros(K, np.float32)
            d = np.zeros(K, bool)
            hbar = float(np.mean([q[3] for q in p.values()]))
            for k, (x, y, v, _) in p.items():
                j[k], s[k], d[k] = (x, y), v, True
            for k in range(K):
                if not d[k] and fill_missing:
                    cost = np.round(np.abs(tag_np[b, k] - hbar)) * 100 - hm_np[b, k]
                    y, x = np.unravel_index(np.argmin(cost), (H, W))
                    j[k], s[k] = (x, y), hm_np[b, k, y, x]
                if refine and (d[k] or fill_missing):
                    j[k] = _refine(int(j[k, 0]), int(j[k, 1]), hm_np[b, k])
            rows.append((float(s.mean()), j, s, d, hbar))
        rows.sort(key=lambda r: -r[0])  # best people first; keep max_people
        for m, (_, j, s, d, hbar) in enumerate(rows[:M]):
            out_j[b, m], out_s[b, m], out_d[b, m], out_t[b, m] = j, s, d, hbar
            out_v[b, m] = True
    return Grouping(torch.from_numpy(out_j), torch.from_numpy(out_s),
                    torch.from_numpy(out_d), torch.from_numpy(out_s.mean(-1) * out_v),
                    torch.from_numpy(out_t), torch.from_numpy(out_v))


# ------------------------------------------------------------------------- scoring


@dataclass
class GroupingScore:
    """How well detected joints were grouped (see :func:`grouping_accuracy`)."""

    accuracy: float  # correct / joints, NaN if no detected joint lies on a true joint
    correct: int  # joints whose person is the one matched to their true owner
    joints: int  # detected joints lying within the radius of a true joint
    stray: int  # detected joints near no true joint of their type (detection errors)


def grouping_accuracy(
    grouping: Grouping,
    gt_joints: torch.Tensor,
    gt_visibility: torch.Tensor,
    radius: float = 2.0,
) -> GroupingScore:
    """The fraction of detected joints that were assigned to the right person.

    grouping: from :func:`group_by_tags` (coordinates in heatmap pixels); gt_joints
    (B, P, K, 2) in the same pixels; gt_visibility (B, P, K), a joint counts when > 0.
    Each detected joint takes the identity of the nearest true joint of its type within
    ``radius`` (none: it is stray, a detection error, and not counted). Found people
    are then matched one-to-one to true people so as to agree on the most joints
    (Hungarian algorithm); a joint is correct when its person is matched to its true
    owner. A person split in two therefore loses the joints of its smaller part, and
    two people merged into one lose the joints of one of them.
    """
    if not isinstance(grouping, Grouping):
        raise TypeError(f"grouping must be a Grouping from group_by_tags, got "
                        f"{type(grouping).__name__}")
    check_tensor(gt_joints, "gt_joints", ndim=4, dtypes=FLOATS)
    check_tensor(gt_visibility, "gt_visibility", ndim=3)
    check_real(radius, "radius", minimum=0.0, strict=True)
    B, M, K, _ = grouping.joints.shape
    if gt_joints.shape[0] != B or gt_joints.shape[2:] != (K, 2):
        raise ValueError(f"gt_joints must have shape (B={B}, P, K={K}, 2), got "
                         f"{tuple(gt_joints.shape)}")
    if gt_visibility.shape != gt_joints.shape[:3]:
        raise ValueError(f"gt_visibility must have shape {tuple(gt_joints.shape[:3])}, "
                         f"got {tuple(gt_visibility.shape)}")
    gt = gt_joints.detach().double().cpu()
    labelled = (gt_visibility > 0).cpu()
    det = grouping.detected & grouping.valid[..., None]  # (B, M, K)
    # distance of every detected joint to every true joint of its type: (B, M, P, K)
    d = (grouping.joints.double()[:, :, None] - gt[:, None]).norm(dim=-1)
    d = torch.where(labelled[:, None], d, torch.inf)
    nearest, owner = d.min(2)  # (B, M, K)
    hit = det & (nearest <= radius)
    correct = 0
    for b in range(B):
        agree = torch.zeros(M, gt.shape[1], dtype=torch.long)
        m, k = torch.nonzero(hit[b], as_tuple=True)
        agree.index_put_((m, owner[b, m, k]), torch.ones_like(m), accumulate=True)
        rows, cols = linear_sum_assignment(-agree.numpy())
        correct += int(agree[rows, cols].sum())
    joints = int(hit.sum())
    return GroupingScore(correct / joints if joints else float("nan"), correct, joints,
                         int((det & ~hit).sum()))


__all__ = [
    "COCO_GROUPING_ORDER", "Grouping", "GroupingScore", "ae_loss", "gather_tags",
    "group_by_tags", "grouping_accuracy", "heatmap_nms", "ideal_tags", "top_candidates",
]
