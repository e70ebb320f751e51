"""lib/people.py: the stick-figure renderer (its ground truth agrees with the pixels), its
determinism and ranges, the re-exported metrics, and bad input."""

import pytest
import torch

import lib.oks
import lib.people
from lib.people import COCO_KEYPOINTS, COCO_SKELETON, bbox_size, render_people

# ------------------------------------------------------------------------------ renderer


def test_constants_are_cocos():
    assert len(COCO_KEYPOINTS) == 17 and COCO_KEYPOINTS[0] == "nose"
    assert COCO_KEYPOINTS[15:] == ("left_ankle", "right_ankle")
    assert len(COCO_SKELETON) == 19
    assert all(0 <= a < 17 and 0 <= b < 17 for a, b in COCO_SKELETON)


def test_metrics_are_re_exported_not_copied():
    for name in ("oks", "oks_ap", "greedy_match", "average_precision", "pck",
                 "mean_joint_error", "bbox_size", "OksAP", "COCO_SIGMAS"):
        assert getattr(lib.people, name) is getattr(lib.oks, name)


def test_render_shapes_dtypes_and_ranges():
    d = render_people(7, size=48, people=(1, 3), occluders=1.0, seed=3)
    assert d.images.shape == (7, 3, 48, 48) and d.images.dtype == torch.float32
    assert 0 <= d.images.min() and d.images.max() <= 1
    assert d.joints.shape == (7, 3, 17, 2) and d.visibility.shape == (7, 3, 17)
    assert d.present.shape == (7, 3) and d.present.dtype == torch.bool
    assert d.area.shape == (7, 3) and d.boxes.shape == (7, 3, 4)
    assert d.id_map.shape == (7, 48, 48) and d.id_map.dtype == torch.long
    assert set(d.visibility.unique().tolist()) <= {0, 1, 2}
    counts = d.present.sum(1)
    assert counts.min() >= 1 and counts.max() <= 3
    assert (d.present[:, 0]).all()  # slots are filled from the first
    assert len(d) == 7 and len(d[2:5]) == 3 and d[1].images.shape == (1, 3, 48, 48)


def test_render_is_deterministic_given_the_seed():
    a = render_people(5, people=(1, 2), occluders=0.5, seed=11)
    b = render_people(5, people=(1, 2), occluders=0.5, seed=11)
    c = render_people(5, people=(1, 2), occluders=0.5, seed=12)
    g = render_people(5, people=(1, 2), occluders=0.5, seed=torch.Generator().manual_seed(11))
    assert torch.equal(a.images, b.images) and torch.equal(a.joints, b.joints)
    assert torch.equal(a.images, g.images)
    assert not torch.equal(a.images, c.images)


def test_visible_joints_lie_on_their_own_figure_and_hidden_ones_do_not():
    """The ground truth agrees with the pixels: a joint marked visible (2) is on a pixel
    that its own person owns in id_map; a hidden one (1) is on a pixel someone or
    something else owns; an unlabelled one (0) is outside the image."""
    d = render_people(64, size=64, people=(1, 4), occluders=0.7, seed=5)
    ij = d.joints.round().long()
    inside = ((d.joints >= -0.5) & (d.joints <= 63.5)).all(-1) & d.present[..., None]
    b, p, k = torch.nonzero(inside, as_tuple=True)
    owner = d.id_map[b, ij[b, p, k, 1].clamp(0, 63), ij[b, p, k, 0].clamp(0, 63)]
    v = d.visibility[b, p, k]
    assert (v > 0).all()
    assert (owner[v == 2] == p[v == 2]).all()
    assert (owner[v == 1] != p[v == 1]).all()
    assert (v == 1).sum() > 20 and (v == 2).sum() > 1000  # both kinds occur
    assert (d.visibility[~inside] == 0).all()


def test_single_person_without_occluders_is_fully_visible_and_boxed():
    d = render_people(32, size=64, scale=(0.6, 0.7), seed=2)
    inside = ((d.joints >= -0.5) & (d.joints <= 63.5)).all(-1)
    assert (d.visibility[inside] == 2).all()
    x, y, w, h = d.boxes[..., 0], d.boxes[..., 1], d.boxes[..., 2], d.boxes[..., 3]
    j = d.joints[..., 0, :, :]  # (B, K, 2), the one person
    lab = d.visibility[:, 0] > 0
    assert ((j[..., 0] >= x[:, :1] - 0.5) | ~lab).all()
    assert ((j[..., 0] <= (x + w)[:, :1] + 0.5) | ~lab).all()
    assert ((j[..., 1] >= y[:, :1] - 0.5) | ~lab).all()
    assert ((j[..., 1] <= (y + h)[:, :1] + 0.5) | ~lab).all()
    # area = the covered pixels: between the box's tenth and the whole box
    assert ((d.area > 0.1 * w * h) & (d.area < w * h)).all()
    assert torch.equal(bbox_size(d.boxes), torch.maximum(w, h))


def test_person_count_range_is_covered():
    d = render_people(200, size=32, people=(2, 4), seed=0, chunk=64)
    assert set(d.present.sum(1).tolist()) == {2, 3, 4}


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("call, error, match", [
    (lambda: render_people(2.0), TypeError, "n"),
    (lambda: render_people(-1), ValueError, "n"),
    (lambda: render_people(2, size=8), ValueError, "size"),
    (lambda: render_people(2, size="64"), TypeError, "size"),
    (lambda: render_people(2, people=(3, 1)), ValueError, "people"),
    (lambda: render_people(2, people=0), ValueError, "people"),
    (lambda: render_people(2, people="2"), TypeError, "people"),
    (lambda: render_people(2, scale=(0.5, 2.0)), ValueError, "scale"),
    (lambda: render_people(2, thickness=(0.1, float("nan"))), ValueError, "thickness"),
    (lambda: render_people(2, occluders=float("inf")), ValueError, "occluders"),
    (lambda: render_people(2, seed=-1), ValueError, "seed"),
    (lambda: render_people(2, seed="a"), TypeError, "seed"),
])
def test_bad_input_is_refused_by_name(call, error, match):
    with pytest.raises(error, match=match):
        call()
