"""COCO's keypoint metrics: OKS, OKS AP (cocoeval's matching and interpolation), PCK.

Chapter 12 evaluates single-person pose estimators with them, chapter 13 multi-person ones.

* :func:`oks`: the object keypoint similarity, as ``cocoeval.computeOks`` defines it
  (chapter 12, eq. 1), broadcast over batches.
* :func:`greedy_match`, :func:`average_precision` and :func:`oks_ap`: COCO's keypoint AP
  averaged over the OKS thresholds 0.50:0.05:0.95, with cocoeval's greedy matching by
  score and its 101-point interpolated precision (``evaluate`` + ``accumulate``).
* :func:`pck`, :func:`mean_joint_error` and :func:`bbox_size`: the simpler pose metrics.

The sigmas are COCO's ``kpt_oks_sigmas`` for its 17 keypoints (the order of
:data:`lib.people.COCO_KEYPOINTS`): COCO measured them as the spread of repeated human
annotations relative to the person's scale. Any other skeleton passes its own ``sigmas``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .validate import check_int, check_real, check_tensor

# cocoeval.Params.setKpParams: kpt_oks_sigmas = [.26, .25, ...] / 10.
COCO_SIGMAS = torch.tensor(
    [0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07,
     0.87, 0.87, 0.89, 0.89], dtype=torch.float64) / 10.0
# cocoeval: iouThrs = linspace(.5, .95, 10); recThrs = linspace(0, 1, 101); maxDets = [20]
COCO_OKS_THRESHOLDS = torch.linspace(0.5, 0.95, 10, dtype=torch.float64)
COCO_RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def _check_joints(x, name, k=None):
    check_tensor(x, name, min_ndim=2, dtypes=(torch.float32, torch.float64, torch.float16,
                                               torch.bfloat16))
    if x.shape[-1] != 2 or (k is not None and x.shape[-2] != k):
        want = f"(..., {k if k is not None else 'K'}, 2)"
        raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} must be finite (no NaN or inf)")
    return x


def _check_visibility(visibility, gt):
    check_tensor(visibility, "visibility")
    if visibility.shape != gt.shape[:-1]:
        raise ValueError(f"visibility must have shape {tuple(gt.shape[:-1])}, "
                         f"got {tuple(visibility.shape)}")


def _check_sigmas(sigmas, k):
    check_tensor(sigmas, "sigmas", ndim=1)
    if sigmas.shape[0] != k or not (sigmas > 0).all():
        raise ValueError(f"sigmas must hold {k} positive values, got shape "
                         f"{tuple(sigmas.shape)}")
    return sigmas


def oks(
    pred: torch.Tensor,
    gt: torch.Tensor,
    visibility: torch.Tensor,
    area: torch.Tensor,
    sigmas: torch.Tensor = COCO_SIGMAS,
) -> torch.Tensor:
    """COCO's object keypoint similarity (``cocoeval.computeOks``), broadcast over batches.

    OKS = mean over the labelled keypoints (visibility > 0) of
    exp(-d_k^2 / (2 s^2 (2 sigma_k)^2)), with d_k the distance between predicted and
    true keypoint k, s^2 = area (the object's area plus 2.2e-16, as in cocoeval) and
    sigma_k the per-keypoint constant. pred (..., K, 2), gt (..., K, 2),
    visibility (..., K), area (...) -> (...), shapes broadcast (e.g. pred[:, None] against
    gt[None] gives the (D, G) matrix of cocoeval). NaN where no keypoint is labelled
    (cocoeval then measures the distance to a box; :func:`oks_ap` drops such people).
    """
    _check_joints(pred, "pred")
    _check_joints(gt, "gt", pred.shape[-2])
    check_tensor(visibility, "visibility", min_ndim=1)
    check_tensor(area, "area")
    if not (torch.isfinite(area).all() and (area >= 0).all()):
        raise ValueError("area must be finite and non-negative")
    k = gt.shape[-2]
    sigmas = _check_sigmas(sigmas, k).to(gt.device, torch.float64)
    d2 = ((pred.double() - gt.double()) ** 2).sum(-1)  # (..., K)
    e = d2 / (2 * sigmas) ** 2 / (area.double()[..., None] + np.spacing(1)) / 2
    labelled = (visibility > 0).to(e.device)
    return (torch.exp(-e) * labelled).sum(-1) / labelled.sum(-1)


def greedy_match(similarity: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """cocoeval's matching: the ground truth each detection matches, at each threshold.

    similarity (D, G): OKS of each detection (rows sorted by score, best first) with each
    ground truth; thresholds (T,). Each detection in turn takes the still unmatched ground
    truth of highest similarity that reaches the threshold (the last one among ties, as
    cocoeval's ``>=`` comparison does). Greedy, not optimal: a high-scoring detection may
    take the ground truth that a later one needed. Returns (T, D) int64: the index of the
    matched ground truth, -1 for none.
    """
    D, G = similarity.shape
    T = thresholds.shape[0]
    t_eff = thresholds.double().clamp(max=1 - 1e-10)  # cocoeval: iou = min([t, 1 - 1e-10])
    sim = similarity.double()
    gt_taken = torch.zeros(T, G, dtype=torch.bool)
    match = torch.full((T, D), -1, dtype=torch.long)
    if G == 0:  # nothing to match: every detection is a false positive
        return match
    rows = torch.arange(T)
    for d in range(D):
        ok = ~gt_taken & (sim[d][None] >= t_eff[:, None])  # (T, G)
        value = torch.where(ok, sim[d][None], -1.0)
        m = G - 1 - value.flip(-1).argmax(-1)  # last index of the maximum
        hit = ok.any(-1)
        match[hit, d] = m[hit]
        gt_taken[rows[hit], m[hit]] = True
    return match


def average_precision(scores: np.ndarray, matched: np.ndarray, n_gt: int) -> float:
    """cocoeval.accumulate for one threshold: 101-point interpolated AP.

    scores (N,) of every detection of every image, in image order; matched (N,) bool;
    n_gt the number of ground truths. Detections are ranked by score (stable mergesort,
    so ties keep image order), precision is made non-increasing from the right, and read
    at recall 0, 0.01, ..., 1 (0 beyond the largest recall reached).
    """
    if len(scores) == 0:
        return 0.0  # cocoeval: no detection, precision 0 at every recall point
    order = np.argsort(-scores, kind="mergesort")
    tp = np.cumsum(matched[order]).astype(float)
    fp = np.cumsum(~matched[order]).astype(float)
    recall = tp / n_gt
    precision = tp / (fp + tp + np.spacing(1))
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.searchsorted(recall, COCO_RECALL_POINTS, side="left")
    q = np.where(idx < len(precision), precision[np.minimum(idx, len(precision) - 1)], 0.0)
    return float(q.mean())


@dataclass
class OksAP:
    """Keypoint AP as COCO reports it: ``ap`` is the mean of ``per_threshold``."""

    ap: float
    per_threshold: torch.Tensor  # (T,) AP at each OKS threshold
    thresholds: torch.Tensor  # (T,)
    recall: torch.Tensor  # (T,) the largest recall reached

    @property
    def ap50(self) -> float:
        return self._at(0.5)

    @property
    def ap75(self) -> float:
        return self._at(0.75)

    def _at(self, t: float) -> float:
        i = (self.thresholds - t).abs().argmin()
        if abs(self.thresholds[i].item() - t) > 1e-9:
            raise ValueError(f"no threshold {t} among {self.thresholds.tolist()}")
        return float(self.per_threshold[i])


def oks_ap(
    pred: torch.Tensor,
    scores: torch.Tensor,
    gt: torch.Tensor,
    visibility: torch.Tensor,
    area: torch.Tensor,
    *,
    pred_valid: torch.Tensor | None = None,
    gt_valid: torch.Tensor | None = None,
    sigmas: torch.Tensor = COCO_SIGMAS,
    thresholds: torch.Tensor = COCO_OKS_THRESHOLDS,
    max_dets: int = 20,
) -> OksAP:
    """COCO keypoint AP over a set of images (cocoeval ``evaluate`` + ``accumulate``).

    Multi-person: pred (N, D, K, 2) detections with scores (N, D); gt (N, G, K, 2) with
    visibility (N, G, K) and area (N, G); pred_valid (N, D) and gt_valid (N, G) mark the
    real entries of padded tensors (default: all). Single-person: pred (N, K, 2),
    scores (N,), gt (N, K, 2), visibility (N, K), area (N,). Per image the ``max_dets``
    best-scoring detections are matched greedily (:func:`greedy_match`) at each OKS
    threshold; AP per threshold is :func:`average_precision`. Ground truths with no
    labelled keypoint are dropped (cocoeval marks them "ignore": they count neither as
    misses nor, here, as targets; cocoeval would also let a detection lying on such a
    person be ignored instead of counting as a false positive). Area range "all" only.
    """
    single = pred.dim() == 3
    if single:
        pred, gt, visibility = pred[:, None], gt[:, None], visibility[:, None]
        check_tensor(scores, "scores", ndim=1)
        check_tensor(area, "area", ndim=1)
        scores, area = scores[:, None], area[:, None]
    check_tensor(pred, "pred", ndim=4)
    check_tensor(gt, "gt", ndim=4)
    check_tensor(scores, "scores", ndim=2)
    check_tensor(visibility, "visibility", ndim=3)
    check_tensor(area, "area", ndim=2)
    N, D = pred.shape[:2]
    G = gt.shape[1]
    if scores.shape != (N, D):
        raise ValueError(f"scores must have shape {(N, D)}, got {tuple(scores.shape)}")
    if gt.shape[0] != N or visibility.shape != gt.shape[:3] or area.shape != (N, G):
        raise ValueError(
            f"gt (N, G, K, 2), visibility (N, G, K) and area (N, G) must agree with N={N}, "
            f"got {tuple(gt.shape)}, {tuple(visibility.shape)}, {tuple(area.shape)}")
    if not torch.isfinite(scores).all():
        raise ValueError("scores must be finite (no NaN or inf)")
    check_int(max_dets, "max_dets", minimum=1)
    check_tensor(thresholds, "thresholds", ndim=1)
    if thresholds.numel() == 0 or not ((thresholds > 0) & (thresholds <= 1)).all():
        raise ValueError("thresholds must hold values in (0, 1]")
    pred_valid = torch.ones(N, D, dtype=torch.bool) if pred_valid is None else pred_valid
    gt_valid = torch.ones(N, G, dtype=torch.bool) if gt_valid is None else gt_valid
    for name, m, shape in (("pred_valid", pred_valid, (N, D)), ("gt_valid", gt_valid, (N, G))):
        check_tensor(m, name, dtypes=(torch.bool,))
        if m.shape != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(m.shape)}")
    similarity = oks(pred[:, :, None], gt[:, None], visibility[:, None], area[:, None],
                     sigmas).cpu()  # (N, D, G)
    gt_keep = (gt_valid & (visibility > 0).any(-1)).cpu()
    thresholds = thresholds.double().cpu()
    all_scores, all_matched, n_gt = [], [], int(gt_keep.sum())
    if n_gt == 0:
        raise ValueError("no ground-truth person has a labelled keypoint: AP is undefined")
    scores, pred_valid = scores.double().cpu(), pred_valid.cpu()
    if D == 1 and G == 1 and max_dets >= 1:  # one detection, one person: no choice to make
        sim = similarity[:, 0, 0]  # (N,)
        has = pred_valid[:, 0]
        hit = has & gt_keep[:, 0]
        matched = hit[None] & (sim[None] >= thresholds.clamp(max=1 - 1e-10)[:, None])
        s, m = scores[has, 0].numpy(), matched[:, has].numpy()
        per_t = torch.tensor([average_precision(s, m[t], n_gt) for t in range(len(thresholds))],
                             dtype=torch.float64)
        return OksAP(float(per_t.mean()), per_t, thresholds,
                     torch.tensor(m.sum(1) / n_gt, dtype=torch.float64))
    for i in range(N):
        dets = torch.nonzero(pred_valid[i]).flatten()
        dets = dets[torch.sort(scores[i, dets], descending=True, stable=True).indices]
        dets = dets[:max_dets]
        sim = similarity[i][dets][:, gt_keep[i]]  # (D_i, G_i)
        all_scores.append(scores[i, dets].numpy())
        all_matched.append((greedy_match(sim, thresholds) >= 0).numpy())
    s = np.concatenate(all_scores)
    m = np.concatenate(all_matched, axis=1) if all_matched else np.zeros((len(thresholds), 0))
    per_t = torch.tensor([average_precision(s, m[t].astype(bool), n_gt)
                          for t in range(len(thresholds))], dtype=torch.float64)
    recall = torch.tensor(m.sum(1) / n_gt, dtype=torch.float64)
    return OksAP(float(per_t.mean()), per_t, thresholds, recall)


def pck(pred: torch.Tensor, gt: torch.Tensor, visibility: torch.Tensor,
        norm: torch.Tensor, alpha: float = 0.1) -> float:
    """Percentage of correct keypoints: the fraction of labelled joints within alpha * norm.

    pred, gt (..., K, 2); visibility (..., K) (labelled if > 0); norm (...) a length per
    instance (e.g. the longer side of the person's box).
    """
    _check_joints(pred, "pred")
    _check_joints(gt, "gt", pred.shape[-2])
    _check_visibility(visibility, gt)
    check_real(alpha, "alpha", minimum=0, strict=True)
    check_tensor(norm, "norm")
    if norm.shape != gt.shape[:-2]:
        raise ValueError(f"norm must have shape {tuple(gt.shape[:-2])}, got {tuple(norm.shape)}")
    if not (norm > 0).all():
        raise ValueError("norm must be positive")
    labelled = visibility > 0
    hit = (pred - gt).norm(dim=-1) <= alpha * norm[..., None]
    return float((hit & labelled).sum() / labelled.sum())


def mean_joint_error(pred: torch.Tensor, gt: torch.Tensor, visibility: torch.Tensor) -> float:
    """Mean Euclidean distance (pixels) between pred and gt (..., K, 2) over labelled joints."""
    _check_joints(pred, "pred")
    _check_joints(gt, "gt", pred.shape[-2])
    _check_visibility(visibility, gt)
    labelled = visibility > 0
    if not labelled.any():
        raise ValueError("visibility marks no joint as labelled: the mean is undefined")
    return float(((pred - gt).norm(dim=-1) * labelled).sum() / labelled.sum())


def bbox_size(boxes: torch.Tensor) -> torch.Tensor:
    """The longer side of boxes (..., 4) (x, y, w, h): the usual PCK normaliser."""
    check_tensor(boxes, "boxes", min_ndim=1)
    if boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape (..., 4), got {tuple(boxes.shape)}")
    return boxes[..., 2:].amax(-1)


__all__ = [
    "COCO_OKS_THRESHOLDS", "COCO_RECALL_POINTS", "COCO_SIGMAS", "OksAP",
    "average_precision", "bbox_size", "greedy_match", "mean_joint_error", "oks", "oks_ap",
    "pck",
]
