"""lib/assoc_embed.py and lib/hourglass.py: the pull/push loss against a loop over
people and against the official code's formula, its shift invariance and gradients; NMS
against SciPy's maximum filter; grouping that recovers every person from ground-truth
maps with separated tags, and its behaviour with no detections, one person and too many
people; the grouping score on hand-made cases; the network's shapes; and bad input."""

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from lib.assoc_embed import (
    COCO_GROUPING_ORDER,
    ae_loss,
    group_by_tags,
    grouping_accuracy,
    heatmap_nms,
    ideal_tags,
    top_candidates,
)
from lib.hourglass import AENet, ae_training_loss, flip_people, pose_targets
from lib.people import render_people


def random_case(B=3, P=5, K=4, H=7, W=9, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    tags = torch.randn(B, K, H, W, generator=g, dtype=dtype) * 2
    x = torch.rand(B, P, K, generator=g, dtype=dtype) * W - 0.5
    y = torch.rand(B, P, K, generator=g, dtype=dtype) * H - 0.5
    v = (torch.rand(B, P, K, generator=g) < 0.6).to(dtype) * 2  # COCO's flag 2
    v[0, 1] = 0  # a person with no visible joint: ignored
    v[1, 1:] = 0  # an image with one person: push 0
    v[2] = 0  # an image with nobody
    v[2, -1, -1] = 1  # ... but one hidden-but-labelled joint (flag 1 counts)
    return tags, torch.stack([x, y, v], -1)


def loop_ae_loss(tags, joints, sigma):
    """The definition, one image and one person at a time (the spec of ae_loss)."""
    pulls, pushes = [], []
    for b in range(tags.shape[0]):
        means, spreads = [], []
        for p in range(joints.shape[1]):
            h = []
            for k in range(tags.shape[1]):
                x, y, v = joints[b, p, k].tolist()
                if v > 0:
                    h.append(tags[b, k, round(y), round(x)].item())
            if h:
                mean = sum(h) / len(h)
                means.append(mean)
                spreads.append(sum((t - mean) ** 2 for t in h) / len(h))
        n = len(means)
        pulls.append(sum(spreads) / n if n else 0.0)
        pairs = [math.exp(-(a - c) ** 2 / (2 * sigma**2))
                 for i, a in enumerate(means) for j, c in enumerate(means) if i != j]
        pushes.append(sum(pairs) / len(pairs) if pairs else 0.0)
    f64 = torch.float64
    return torch.tensor(pulls, dtype=f64), torch.tensor(pushes, dtype=f64)


def official_ae_loss(tags, joints):
    """pose-ae-train / HigherHRNet's singleTagLoss ("exp" type), transcribed: pull is
    the mean over people of mean (h - hbar)^2; push = 0.5 * sum over ordered pairs of
    distinct people of exp(-(hbar_n - hbar_m)^2) / (N (N - 1))."""
    pulls, pushes = [], []
    for b in range(tags.shape[0]):
        means, pull = [], 0.0
        for p in range(joints.shape[1]):
            vis = joints[b, p, :, 2] > 0
            if not vis.any():
                continue
            xy = joints[b, p, vis, :2].round().long()
            h = tags[b, vis.nonzero().flatten(), xy[:, 1], xy[:, 0]]
            means.append(h.mean())
            pull = pull + ((h - h.mean()) ** 2).mean()
        n = len(means)
        if n < 2:
            pushes.append(torch.tensor(0.0, dtype=tags.dtype))
        else:
            m = torch.stack(means)
            push = torch.exp(-((m[:, None] - m[None]) ** 2)).sum() - n
            pushes.append(push / ((n - 1) * n) * 0.5)
        pulls.append(pull / n if n else torch.tensor(0.0, dtype=tags.dtype))
    return torch.stack(pulls), torch.stack(pushes)


# ------------------------------------------------------------------------- ae_loss


@pytest.mark.parametrize("sigma", [1.0, 0.5, 2.5])
@pytest.mark.parametrize("shape", [(3, 5, 4, 7, 9), (3, 2, 1, 1, 1),
                                   (3, 8, 17, 16, 16)])
def test_ae_loss_equals_the_loop_definition(sigma, shape):
    B, P, K, H, W = shape
    tags, joints = random_case(B, P, K, H, W, seed=P * K)
    pull, push = ae_loss(tags, joints, sigma)
    pull_ref, push_ref = loop_ae_loss(tags, joints, sigma)
    # float64 on both sides: agreement to rounding (a few ulps of values of order 1)
    torch.testing.assert_close(pull, pull_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(push, push_ref, rtol=1e-12, atol=1e-12)
    assert push[1] == 0 and pull[2] == 0 and push[2] == 0  # one person; one joint


def test_ae_loss_is_the_official_formula_up_to_its_constants():
    """The official push is exp(-d^2) (sigma = 1/sqrt(2) here) times 0.5."""
    tags, joints = random_case(B=3, P=6, K=17, H=12, W=12, seed=3)
    pull, push = ae_loss(tags, joints, sigma=1 / math.sqrt(2))
    pull_off, push_off = official_ae_loss(tags, joints)
    torch.testing.assert_close(pull, pull_off, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(0.5 * push, push_off, rtol=1e-12, atol=1e-12)


def test_ae_loss_only_depends_on_differences_of_tags():
    tags, joints = random_case(seed=4)
    for c in (-7.0, 0.25, 1e3):
        a, b = ae_loss(tags, joints), ae_loss(tags + c, joints)
        # float64, tags of order 10 shifted by up to 1e3: error ~ 1e3 * 2^-52 * 10
        torch.testing.assert_close(a[0], b[0], rtol=0, atol=1e-9)
        torch.testing.assert_close(a[1], b[1], rtol=0, atol=1e-9)


def test_ae_loss_gradients_and_dtypes():
    tags, joints = random_case(B=3, P=3, K=3, H=4, W=5, seed=5)
    tags.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: ae_loss(t, joints, 0.8), (tags,))
    pull, push = ae_loss(tags.detach().half(), joints.float())
    assert pull.dtype == torch.float32 and push.dtype == torch.float32
    pull64, _ = ae_loss(tags.detach().half().double(), joints)
    # fp16 tags read exactly, then fp32 arithmetic: relative error ~ 1e-6
    torch.testing.assert_close(pull.double(), pull64, rtol=1e-5, atol=1e-6)


def test_ae_loss_rewards_the_right_tags():
    """Tags equal to the person index: pull 0, push exp(-1/2) for neighbours."""
    B, P, K, H, W = 1, 3, 4, 8, 8
    tags = torch.zeros(B, K, H, W)
    joints = torch.zeros(B, P, K, 3)
    for p in range(P):
        for k in range(K):
            joints[0, p, k] = torch.tensor([2 * p + 1, k + 1, 2])
            tags[0, k, k + 1, 2 * p + 1] = p
    pull, push = ae_loss(tags, joints, 1.0)
    want = (4 * math.exp(-0.5) + 2 * math.exp(-2.0)) / 6  # 6 ordered pairs
    assert pull.item() == 0
    assert push.item() == pytest.approx(want, rel=1e-6)


# ------------------------------------------------------------------------------ NMS


@pytest.mark.parametrize("kernel", [1, 3, 5])
def test_nms_keeps_the_maxima_of_scipys_maximum_filter(kernel):
    g = torch.Generator().manual_seed(kernel)
    h = torch.rand(2, 3, 11, 13, generator=g)
    kept = heatmap_nms(h, kernel)
    want = h.numpy() == ndimage.maximum_filter(h.numpy(), size=(1, 1, kernel, kernel),
                                               mode="constant", cval=-np.inf)
    assert torch.equal(kept, h * torch.from_numpy(want))


def test_top_candidates_reads_positions_and_tags():
    h = torch.zeros(1, 2, 5, 6)
    t = torch.arange(60.0).view(1, 2, 5, 6)
    h[0, 0, 3, 4], h[0, 0, 1, 2], h[0, 1, 0, 5] = 0.9, 0.7, 0.5
    s, xy, tag = top_candidates(h, t, 2)
    assert s[0, 0].tolist() == pytest.approx([0.9, 0.7])
    assert xy[0, 0].tolist() == [[4, 3], [2, 1]] and xy[0, 1, 0].tolist() == [5, 0]
    assert tag[0, 0].tolist() == [22.0, 8.0] and tag[0, 1, 0].item() == 30 + 5
    assert top_candidates(h, t, 100)[0].shape == (1, 2, 30)  # capped at H * W


# ------------------------------------------------------------------------ grouping


def truth_maps(people, sigma=1.0, spacing=3.0):
    """Ground-truth heatmaps at image resolution and ideal tag maps with person p's
    tag spacing * p."""
    heatmaps, joints = pose_targets(people, stride=1, sigma=sigma)
    tags = spacing * ideal_tags(joints, heatmaps.shape[-1])
    return heatmaps, tags, joints


def test_ideal_tags_is_the_nearest_persons_tag():
    joints = torch.tensor([[[[1.0, 1.0, 2.0]], [[6.0, 1.0, 2.0]], [[3.0, 3.0, 0.0]]]])
    t = ideal_tags(joints, (3, 8), means=torch.tensor([[5.0, 7.0, 9.0]]))
    assert t.shape == (1, 1, 3, 8)
    assert t[0, 0, 0].tolist() == [5.0] * 4 + [7.0] * 4  # x < 3.5 is nearer person 0
    assert (t != 9).all()  # person 2's joint is not visible


@pytest.mark.parametrize("seed", [0, 1])
def test_grouping_recovers_every_person_from_truth_maps(seed):
    people = render_people(16, size=64, people=(1, 4), seed=seed)
    # keep the images where joints of one type in different people are > 3 px apart,
    # so that no peak lies in another's 3 x 3 NMS window (overlapping people do not)
    _, _, joints = truth_maps(people)
    labelled = joints[..., 2] > 0
    P = joints.shape[1]
    d = (joints[:, :, None, :, :2] - joints[:, None, :, :, :2]).norm(dim=-1)
    pair = labelled[:, :, None] & labelled[:, None] & ~torch.eye(P, dtype=bool)[
        None, :, :, None]
    apart = ~(pair & (d <= 3)).flatten(1).any(1)
    assert apart.sum() >= 10 and (people.present.sum(1)[apart] >= 3).sum() >= 3
    people = people[torch.nonzero(apart).flatten()]
    heatmaps, tags, joints = truth_maps(people)
    labelled = joints[..., 2] > 0
    g = group_by_tags(heatmaps, tags, 0.5, 1.0, 10, refine=False, fill_missing=False)
    assert torch.equal(g.count(), (labelled.any(-1)).sum(1))
    for b in range(len(people)):
        for p in torch.nonzero(labelled[b].any(-1)).flatten():
            m = torch.nonzero(g.valid[b] & (g.tags[b] == 3.0 * p)).flatten()
            assert len(m) == 1  # one group per person, with the person's tag
            assert torch.equal(g.detected[b, m[0]], labelled[b, p])
            # the Gaussian's peak is at the nearest pixel centre
            gt = joints[b, p, labelled[b, p], :2].round()
            assert torch.equal(g.joints[b, m[0], labelled[b, p]], gt)
    score = grouping_accuracy(g, joints[..., :2], people.visibility)
    assert score.accuracy == 1.0 and score.stray == 0 and score.joints == labelled.sum()


def test_grouping_with_no_detection_one_person_and_too_many_people():
    K, H = 17, 32
    empty = group_by_tags(torch.zeros(2, K, H, H), torch.randn(2, K, H, H), 0.1, 1.0, 5)
    assert empty.count().tolist() == [0, 0] and not empty.detected.any()
    assert empty.joints.shape == (2, 5, K, 2) and (empty.person_scores == 0).all()

    one = render_people(1, size=32, people=1, seed=3)
    hm, tags, joints = truth_maps(one)
    g = group_by_tags(hm, tags, 0.5, 1.0, 5)
    assert g.count().item() == 1
    assert torch.equal(g.detected[0, 0], joints[0, 0, :, 2] > 0)
    # refine moves a quarter pixel from the peak, which is within half a pixel
    err = (g.joints[0, 0] - joints[0, 0, :, :2]).norm(dim=-1)[joints[0, 0, :, 2] > 0]
    assert err.max() <= 0.5 * math.sqrt(2) + 0.25 * math.sqrt(2) + 1e-6

    many = render_people(1, size=128, people=6, seed=4, scale=(0.3, 0.4))
    hm, tags, joints = truth_maps(many)
    weights = torch.tensor([0.6, 1.0, 0.7, 0.9, 0.65, 0.8])  # person p's peak height
    slot = (tags / 3).round().long().clamp(0, 5)
    hm = hm * weights[slot]
    g = group_by_tags(hm, tags, 0.3, 1.0, 3, fill_missing=False)
    assert g.count().item() == 3
    kept = sorted((g.tags[0, g.valid[0]] / 3).round().long().tolist())
    assert kept == [1, 3, 5]  # the three highest-scoring people survive
    assert (g.person_scores[0, :2] >= g.person_scores[0, 1:3]).all()  # sorted


def test_grouping_separates_two_people_with_the_same_joints_by_tag_alone():
    """Two people at the same place, tags 0 and 5: detection cannot tell them apart,
    the tag can (candidates on different pixels of the same heatmap)."""
    K, H = 3, 10
    hm, tags = torch.zeros(1, K, H, H), torch.zeros(1, K, H, H)
    for k in range(K):
        hm[0, k, 2, 2 + 3 * k], tags[0, k, 2, 2 + 3 * k] = 0.9, 0.0
        hm[0, k, 7, 2 + 3 * k], tags[0, k, 7, 2 + 3 * k] = 0.8, 5.0
    g = group_by_tags(hm, tags, 0.1, 1.0, 4, refine=False, fill_missing=False)
    assert g.count().item() == 2
    assert g.joints[0, 0, :, 1].tolist() == [2, 2, 2]
    assert g.joints[0, 1, :, 1].tolist() == [7, 7, 7]


def test_grouping_accuracy_counts_splits_merges_and_strays():
    K = 2
    gt = torch.tensor([[[[0.0, 0], [0, 4]], [[8, 0], [8, 4]]]])  # 2 people, 2 joints
    vis = torch.full((1, 2, K), 2)
    from lib.assoc_embed import Grouping

    def grouping(people):
        M = len(people)
        j = torch.zeros(1, M, K, 2)
        d = torch.zeros(1, M, K, dtype=torch.bool)
        for m, person in enumerate(people):
            for k, xy in person.items():
                j[0, m, k], d[0, m, k] = torch.tensor(xy), True
        return Grouping(j, d.float(), d, d.float().mean(-1), torch.zeros(1, M),
                        torch.ones(1, M, dtype=torch.bool))

    right = grouping([{0: (0, 0), 1: (0, 4)}, {0: (8, 0), 1: (8, 4)}])
    assert grouping_accuracy(right, gt, vis).accuracy == 1.0
    swapped = grouping([{0: (0, 0), 1: (8, 4)}, {0: (8, 0), 1: (0, 4)}])
    assert grouping_accuracy(swapped, gt, vis).accuracy == 0.5
    merged = grouping([{0: (0, 0), 1: (8, 4.5)}])
    assert grouping_accuracy(merged, gt, vis).accuracy == 0.5
    stray = grouping([{0: (0, 0), 1: (4, 2)}])
    s = grouping_accuracy(stray, gt, vis)
    assert (s.accuracy, s.joints, s.stray) == (1.0, 1, 1)


# ------------------------------------------------------------------------- network


def test_network_shapes_targets_and_loss():
    people = render_people(4, size=64, people=(2, 3), seed=6)
    heatmaps, joints = pose_targets(people, stride=2, sigma=1.0)
    assert heatmaps.shape == (4, 17, 32, 32) and joints.shape == (4, 3, 17, 3)
    assert heatmaps.max() <= 1 and heatmaps.max() > 0.9
    torch.manual_seed(0)
    net = AENet(width=8, depth=2, stacks=2)
    h, t = net(people.images)
    assert h.shape == t.shape == (4, 2, 17, 32, 32)
    loss = ae_training_loss(net, people.images, heatmaps, joints)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in net.parameters())
    ph, pt = net.predict(people.images)
    assert ph.shape == (4, 17, 32, 32) and net.training  # mode restored


def test_flip_twice_is_identity_and_flips_the_targets():
    people = render_people(3, size=64, people=(1, 3), seed=7)
    twice = flip_people(flip_people(people))
    assert torch.equal(twice.images, people.images)
    torch.testing.assert_close(twice.joints, people.joints, rtol=0, atol=1e-5)
    assert torch.equal(twice.visibility, people.visibility)
    from lib.hourglass import COCO_FLIP
    h, _ = pose_targets(people, sigma=1.0)
    hf, _ = pose_targets(flip_people(people), sigma=1.0)
    torch.testing.assert_close(hf, h[:, list(COCO_FLIP)].flip(-1), rtol=0, atol=1e-5)


# ----------------------------------------------------------------------- bad input

T4 = torch.zeros(1, 2, 4, 4)
J4 = torch.tensor([[[[1.0, 1.0, 2.0], [2.0, 2.0, 0.0]]]])  # (1, 1, 2, 3)
NAN_T = T4.clone()
NAN_T[0, 0, 1, 1] = float("nan")
BAD = [
    (ae_loss, ([1.0], J4), TypeError, "tags"),
    (ae_loss, (T4[0], J4), ValueError, "tags"),
    (ae_loss, (T4.long(), J4), TypeError, "tags"),
    (ae_loss, (T4, J4[..., :2]), ValueError, "joints"),
    (ae_loss, (T4, J4[:, :, :1]), ValueError, "joints"),
    (ae_loss, (T4, J4.to("meta")), ValueError, "device"),
    (ae_loss, (T4, J4 * float("nan")), ValueError, "joints"),
    (ae_loss, (T4, J4 + torch.tensor([9.0, 0, 0])), ValueError, "off the 4 x 4 map"),
    (ae_loss, (NAN_T, J4), ValueError, "tags"),
    (ae_loss, (T4[..., :0], J4), ValueError, "empty"),
    (lambda: ae_loss(T4, J4, 0.0), (), ValueError, "sigma"),
    (lambda: ae_loss(T4, J4, "1"), (), TypeError, "sigma"),
    (lambda: ae_loss(T4, J4, float("inf")), (), ValueError, "sigma"),
    (heatmap_nms, (T4, 2), ValueError, "odd"),
    (heatmap_nms, (T4, 0), ValueError, "kernel"),
    (heatmap_nms, (T4, 1.0), TypeError, "kernel"),
    (group_by_tags, (T4, T4[:, :1]), ValueError, "same shape"),
    (group_by_tags, (T4, NAN_T), ValueError, "finite"),
    (group_by_tags, (T4[..., :0], T4[..., :0]), ValueError, "empty"),
    (group_by_tags, (T4, T4, "0.1"), TypeError, "detection_threshold"),
    (group_by_tags, (T4, T4, 0.1, 0.0), ValueError, "tag_threshold"),
    (group_by_tags, (T4, T4, 0.1, 1.0, 0), ValueError, "max_people"),
    (group_by_tags, (T4, T4, 0.1, 1.0, 2.5), TypeError, "max_people"),
    (lambda: group_by_tags(T4, T4, order=(0, 0)), (), ValueError, "order"),
    (lambda: group_by_tags(T4, T4, order=(0.0, 1.0)), (), TypeError, "order"),
    (lambda: group_by_tags(T4, T4, order="01"), (), TypeError, "order"),
    (lambda: grouping_accuracy("g", torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2)), (),
     TypeError, "grouping"),
    (lambda: group_by_tags(T4, T4, top_k=0), (), ValueError, "top_k"),
    (lambda: group_by_tags(T4, T4, refine="yes"), (), TypeError, "refine"),
    (top_candidates, (T4, T4, 0), ValueError, "k"),
    (pose_targets, (T4,), TypeError, "people"),
    (flip_people, ("people",), TypeError, "people"),
    (lambda: AENet(stacks=0), (), ValueError, "stacks"),
    (lambda: AENet(width=16, depth=3)(torch.zeros(1, 3, 60, 60)), (), ValueError,
     "divisible"),
    (lambda: AENet(width=16)(torch.zeros(1, 1, 64, 64)), (), ValueError, "images"),
]


@pytest.mark.parametrize("fn, args, error, words", BAD)
def test_bad_input_is_refused_with_the_argument_named(fn, args, error, words):
    with pytest.raises(error, match=words):
        fn(*args)


def test_grouping_accuracy_refuses_mismatched_truth():
    g = group_by_tags(T4, T4, 0.1, 1.0, 2)
    with pytest.raises(ValueError, match="gt_joints"):
        grouping_accuracy(g, torch.zeros(1, 1, 3, 2), torch.zeros(1, 1, 3))
    with pytest.raises(ValueError, match="gt_visibility"):
        grouping_accuracy(g, torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2))
    assert math.isnan(grouping_accuracy(g, torch.zeros(1, 1, 2, 2),
                                        torch.zeros(1, 1, 2)).accuracy)


def test_default_order_is_cocos_for_17_joints():
    assert sorted(COCO_GROUPING_ORDER) == list(range(17))
    assert COCO_GROUPING_ORDER[:7] == (0, 1, 2, 3, 4, 5, 6)
