"""lib/oks.py: COCO's OKS and OKS AP against hand computation on small cases (cocoeval's
formula, greedy matching, tie rule and 101-point interpolation), the single-person fast
path against the general matching, PCK, mean error, and bad input."""

import math

import numpy as np
import pytest
import torch

from lib.oks import (
    COCO_OKS_THRESHOLDS,
    COCO_SIGMAS,
    average_precision,
    bbox_size,
    greedy_match,
    mean_joint_error,
    oks,
    oks_ap,
    pck,
)


def test_constants_are_cocoevals():
    # cocoeval's kpt_oks_sigmas: .26 for the nose ... 1.07 for the hips, /10
    assert COCO_SIGMAS.shape == (17,) and COCO_SIGMAS.dtype == torch.float64
    assert COCO_SIGMAS[0].item() == pytest.approx(0.026, rel=1e-15)
    assert COCO_SIGMAS[11].item() == pytest.approx(0.107, rel=1e-15)
    assert COCO_OKS_THRESHOLDS.tolist() == pytest.approx([0.5 + 0.05 * i for i in range(10)])


# ------------------------------------------------------------------------------ OKS


def test_oks_by_hand():
    """cocoeval: e = d^2 / (2 sigma)^2 / (area + eps) / 2, OKS = mean of exp(-e)."""
    gt = torch.rand(17, 2, generator=torch.Generator().manual_seed(0)) * 50
    vis = torch.full((17,), 2)
    area = torch.tensor(100.0)
    assert oks(gt, gt, vis, area).item() == pytest.approx(1.0)
    pred = gt.clone()
    pred[0] += torch.tensor([0.6, 0.8])  # the nose, 1 pixel off
    e_nose = 1.0 / (2 * 0.026) ** 2 / 100.0 / 2  # = 1.8491...
    assert oks(pred, gt, vis, area).item() == pytest.approx((16 + math.exp(-e_nose)) / 17)
    pred[11] += torch.tensor([3.0, 4.0])  # a hip, 5 pixels off
    e_hip = 25.0 / (2 * 0.107) ** 2 / 100.0 / 2
    want = (15 + math.exp(-e_nose) + math.exp(-e_hip)) / 17
    assert oks(pred, gt, vis, area).item() == pytest.approx(want)
    # unlabelled joints do not count: hide the hip and move it anywhere
    vis2 = vis.clone()
    vis2[11] = 0
    pred[11] += 1000
    assert oks(pred, gt, vis2, area).item() == pytest.approx((15 + math.exp(-e_nose)) / 16)
    # hidden-but-labelled (1) counts like visible (2): cocoeval uses vg > 0
    vis3 = vis2.clone()
    vis3[11] = 1
    assert oks(pred, gt, vis3, area).item() < want


def test_oks_broadcasts_to_the_detection_by_ground_truth_matrix():
    gen = torch.Generator().manual_seed(1)
    pred, gt = torch.rand(3, 17, 2, generator=gen) * 40, torch.rand(2, 17, 2, generator=gen) * 40
    vis = torch.randint(0, 3, (2, 17), generator=gen)
    area = torch.tensor([300.0, 500.0])
    matrix = oks(pred[:, None], gt[None], vis[None], area[None])
    assert matrix.shape == (3, 2)
    for i in range(3):
        for j in range(2):
            assert matrix[i, j] == oks(pred[i], gt[j], vis[j], area[j])
    assert torch.isnan(oks(pred[0], gt[0], torch.zeros(17), area[0]))  # nothing labelled


# ------------------------------------------------------------------------------ matching and AP


def test_greedy_match_is_greedy_by_score_and_takes_the_last_of_ties():
    # det 0 (best score) takes gt 0; det 1 then only has gt 1 at 0.1: unmatched at 0.5,
    # although the optimal assignment (0->1, 1->0) would match both
    sim = torch.tensor([[0.9, 0.8], [0.85, 0.1]])
    match = greedy_match(sim, torch.tensor([0.5, 0.05]))
    assert match.tolist() == [[0, -1], [0, 1]]
    # ties: cocoeval's `if ious[d, g] < iou: continue` lets the later equal gt win
    assert greedy_match(torch.tensor([[0.7, 0.7, 0.2]]), torch.tensor([0.5])).tolist() == [[1]]
    # a similarity of exactly the threshold matches; 1.0 matches at threshold 1.0
    assert greedy_match(torch.tensor([[0.5]]), torch.tensor([0.5])).tolist() == [[0]]
    assert greedy_match(torch.tensor([[1.0]]), torch.tensor([1.0])).tolist() == [[0]]
    assert greedy_match(torch.zeros(2, 0), torch.tensor([0.5])).tolist() == [[-1, -1]]


def test_average_precision_by_hand():
    # ranks T F T T of 4 ground truths: precision 1, .5, .67, .75 -> envelope 1, .75, .75,
    # .75 at recall .25, .25, .5, .75; 26 recall points <= .25 read 1, the 50 up to .75
    # read .75, the 25 above read 0
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    matched = np.array([True, False, True, True])
    assert average_precision(scores, matched, 4) == pytest.approx((26 + 50 * 0.75) / 101)
    # the same detections presented in another order give the same AP (ranked by score)
    perm = [2, 0, 3, 1]
    assert average_precision(scores[perm], matched[perm], 4) == pytest.approx(63.5 / 101)
    assert average_precision(np.array([]), np.array([], dtype=bool), 3) == 0.0
    # equal scores keep image order (stable mergesort): F T ranks worse than T F
    tf = average_precision(np.ones(2), np.array([True, False]), 2)
    ft = average_precision(np.ones(2), np.array([False, True]), 2)
    assert tf == pytest.approx(51 / 101) and ft == pytest.approx(51 * 0.5 / 101)


def single_person_case(score_of_worse):
    gen = torch.Generator().manual_seed(2)
    gt = torch.rand(2, 17, 2, generator=gen) * 40 + 10
    vis = torch.full((2, 17), 2)
    area = torch.tensor([400.0, 400.0])
    pred = gt.clone()
    pred[1] += 1.2  # image 1: every joint 1.7 px off
    return pred, torch.tensor([0.5, score_of_worse]), gt, vis, area


def test_oks_ap_single_person_by_hand():
    pred, scores, gt, vis, area = single_person_case(score_of_worse=0.1)
    x = oks(pred[1], gt[1], vis[1], area[1]).item()
    assert 0.7 < x < 0.75  # matched at the thresholds .50 ... .70, missed from .75
    result = oks_ap(pred, scores, gt, vis, area)
    # below x both images match: AP 1. Above, the perfect one ranks first: precision 1 at
    # recall .5 -> 51 of the 101 recall points read 1.
    per_t = [1.0] * 5 + [51 / 101] * 5
    assert result.per_threshold.tolist() == pytest.approx(per_t)
    assert result.ap == pytest.approx(sum(per_t) / 10)
    assert result.ap50 == 1.0 and result.ap75 == pytest.approx(51 / 101)
    assert result.recall.tolist() == pytest.approx([1.0] * 5 + [0.5] * 5)
    # if the bad one scores higher, the high thresholds lose half their AP: scores matter
    pred, scores, gt, vis, area = single_person_case(score_of_worse=0.9)
    worse = oks_ap(pred, scores, gt, vis, area)
    assert worse.per_threshold.tolist() == pytest.approx([1.0] * 5 + [25.5 / 101] * 5)


def test_single_person_fast_path_agrees_with_the_general_matching():
    """oks_ap skips the matching loop for one detection per image and one person; padding
    each image with an invalid second detection sends the same data down the general path."""
    gen = torch.Generator().manual_seed(4)
    gt = torch.rand(60, 17, 2, generator=gen) * 50
    vis = torch.randint(0, 3, (60, 17), generator=gen)
    vis[7] = 0  # a person with nothing labelled
    area = torch.rand(60, generator=gen) * 500 + 100
    pred = gt + torch.randn(60, 17, 2, generator=gen) * torch.rand(60, 1, 1, generator=gen) * 4
    scores = torch.rand(60, generator=gen)
    fast = oks_ap(pred, scores, gt, vis, area)
    pad = torch.stack([pred, pred + 100], 1)
    valid = torch.tensor([[True, False]] * 60)
    slow = oks_ap(pad, torch.stack([scores, scores], 1), gt[:, None], vis[:, None],
                  area[:, None], pred_valid=valid)
    assert torch.equal(fast.per_threshold, slow.per_threshold)
    assert torch.equal(fast.recall, slow.recall) and 0 < fast.ap < 1


def test_oks_ap_multi_person_duplicates_padding_and_max_dets():
    gen = torch.Generator().manual_seed(3)
    gt = torch.rand(1, 3, 17, 2, generator=gen) * 60
    vis = torch.full((1, 3, 17), 2)
    vis[0, 2] = 0  # a third person with no labelled keypoint: dropped
    area = torch.full((1, 3), 500.0)
    gt_valid = torch.ones(1, 3, dtype=torch.bool)
    # detections: gt 0 (score .9), gt 0 again (.8: a duplicate), gt 1 (.7), padding (.99)
    pred = torch.stack([gt[0, 0], gt[0, 0], gt[0, 1], gt[0, 1] + 100])[None]
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.99]])
    pred_valid = torch.tensor([[True, True, True, False]])
    r = oks_ap(pred, scores, gt, vis, area, pred_valid=pred_valid, gt_valid=gt_valid)
    # ranks T F T of 2 ground truths: precision 1, .5, .67 at recall .5, .5, 1
    assert r.per_threshold.tolist() == pytest.approx([(51 + 50 * 2 / 3) / 101] * 10)
    r1 = oks_ap(pred, scores, gt, vis, area, pred_valid=pred_valid, max_dets=1)
    assert r1.ap == pytest.approx(51 / 101)  # only the best detection is kept
    # an image with no detection at all: its ground truths are misses
    none = oks_ap(pred, scores, gt, vis, area, pred_valid=torch.zeros(1, 4, dtype=torch.bool))
    assert none.ap == 0.0


def test_pck_and_mean_error_by_hand():
    gt = torch.zeros(2, 3, 2)
    pred = gt.clone()
    pred[0, 0, 0] = 3.0  # 3 px
    pred[1, 2, 1] = 6.0  # 6 px
    vis = torch.tensor([[2, 2, 2], [2, 0, 2]])  # joint (1, 1) unlabelled
    norm = torch.tensor([40.0, 40.0])
    assert pck(pred, gt, vis, norm, alpha=0.1) == pytest.approx(4 / 5)  # 4 px threshold
    assert pck(pred, gt, vis, norm, alpha=0.2) == pytest.approx(1.0)
    assert mean_joint_error(pred, gt, vis) == pytest.approx(9 / 5)


# ------------------------------------------------------------------------------ bad input

G17 = torch.zeros(17, 2)
V17 = torch.full((17,), 2)
A = torch.tensor(100.0)
P1, S1 = torch.zeros(3, 17, 2), torch.ones(3)
GT1, V1, A1 = torch.ones(3, 17, 2), torch.full((3, 17), 2), torch.full((3,), 100.0)


@pytest.mark.parametrize("call, error, match", [
    (lambda: oks(G17.tolist(), G17, V17, A), TypeError, "pred"),
    (lambda: oks(torch.zeros(17, 3), G17, V17, A), ValueError, "pred"),
    (lambda: oks(torch.zeros(16, 2), G17, V17, A), ValueError, "gt"),
    (lambda: oks(G17.int(), G17, V17, A), TypeError, "pred"),
    (lambda: oks(G17 * float("nan"), G17, V17, A), ValueError, "pred"),
    (lambda: oks(G17, G17, V17, torch.tensor(-1.0)), ValueError, "area"),
    (lambda: oks(G17, G17, V17, A, torch.ones(5)), ValueError, "sigmas"),
    (lambda: oks(G17, G17, V17, A, -torch.ones(17)), ValueError, "sigmas"),
    (lambda: oks_ap(P1, torch.ones(4), GT1, V1, A1), ValueError, "scores"),
    (lambda: oks_ap(P1, S1 * float("nan"), GT1, V1, A1), ValueError, "scores"),
    (lambda: oks_ap(P1, S1, GT1[:2], V1[:2], A1[:2]), ValueError, "N=3"),
    (lambda: oks_ap(P1, S1, GT1, V1, A1, max_dets=0), ValueError, "max_dets"),
    (lambda: oks_ap(P1, S1, GT1, V1, A1, thresholds=torch.tensor([1.5])), ValueError,
     "thresholds"),
    (lambda: oks_ap(P1, S1, GT1, V1 * 0, A1), ValueError, "labelled keypoint"),
    (lambda: oks_ap(P1[:, None], S1[:, None], GT1[:, None], V1[:, None], A1[:, None],
                    pred_valid=torch.ones(3, 1)), TypeError, "pred_valid"),
    (lambda: pck(P1, GT1, V1, torch.ones(3), alpha=0), ValueError, "alpha"),
    (lambda: pck(P1, GT1, V1, torch.zeros(3)), ValueError, "norm"),
    (lambda: mean_joint_error(P1, GT1[:, :5], V1), ValueError, "gt"),
    (lambda: mean_joint_error(P1, GT1, V1[:, :5]), ValueError, "visibility"),
    (lambda: mean_joint_error(P1, GT1, V1 * 0), ValueError, "labelled"),
    (lambda: pck(P1, GT1, V1[:2], torch.ones(3)), ValueError, "visibility"),
    (lambda: pck(P1, GT1, V1, torch.ones(2)), ValueError, "norm"),
    (lambda: pck(P1, GT1, V1, [1.0, 1.0, 1.0]), TypeError, "norm"),
    (lambda: bbox_size(torch.ones(3, 3)), ValueError, "boxes"),
    (lambda: bbox_size([1.0, 2.0, 3.0, 4.0]), TypeError, "boxes"),
])
def test_bad_input_is_refused_by_name(call, error, match):
    with pytest.raises(error, match=match):
        call()
