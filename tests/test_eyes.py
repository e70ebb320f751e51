"""lib.eyes: the synthetic eye renderer and its labels.

The oracle for the labels is the image itself: with the iris drawn in the sclera's tone
and a black pupil, the only black blob is the pupil, and its centroid must sit where the
labels say the gaze puts it.
"""

import math

import pytest
import torch

import lib.eyes as eyes
from lib.eyes import HEIGHT, WIDTH, render_eye, render_eyes, sample_pitchyaw
from lib.gaze import pitchyaw_to_vector


def test_shapes_range_and_labels():
    e = render_eyes(70, blink=0.3, occlusion=0.3, seed=1)
    assert len(e) == 70
    assert e.images.shape == (70, 1, HEIGHT, WIDTH) and e.images.dtype == torch.float32
    assert 0 <= e.images.min() and e.images.max() <= 1
    assert e.pitchyaw.shape == e.pupil_xy.shape == (70, 2)
    for t in (e.openness, e.iris_visible, e.blink, e.occluded):
        assert t.shape == (70,)
    assert ((0 <= e.iris_visible) & (e.iris_visible <= 1)).all()
    assert 0 < e.blink.sum() < 70 and 0 < e.occluded.sum() < 70
    deg = torch.rad2deg(e.pitchyaw)
    assert (deg[:, 0].abs() <= 30).all() and (deg[:, 1].abs() <= 40).all()


def test_a_seed_fixes_the_data_and_chunks_do_not_matter(monkeypatch):
    a = render_eyes(40, blink=0.2, occlusion=0.2, seed=5)
    b = render_eyes(40, blink=0.2, occlusion=0.2, seed=5)
    assert torch.equal(a.images, b.images) and torch.equal(a.pitchyaw, b.pitchyaw)
    assert not torch.equal(a.images, render_eyes(40, seed=6).images)
    monkeypatch.setattr(eyes, "_CHUNK", 7)
    c = render_eyes(40, blink=0.2, occlusion=0.2, seed=5)
    torch.testing.assert_close(c.images, a.images, rtol=0, atol=0)
    torch.testing.assert_close(c.iris_visible, a.iris_visible, rtol=0, atol=1e-6)


def test_the_pupil_is_drawn_where_the_labels_put_it():
    deg = torch.tensor([[p, y] for p in (-15.0, 0.0, 15.0) for y in (-30.0, 0.0, 30.0)])
    py = torch.deg2rad(deg)
    n = len(py)
    p = eyes._params(n, blink=0.0, occlusion=0.0, lighting=False,
                     gen=torch.Generator().manual_seed(0))
    p["openness"] = torch.full((n,), 1.1)  # wide open: the whole pupil shows
    p["iris"] = p["sclera"] / 1.1  # the iris in the sclera's tone (above 0.2) ...
    p["pupil"] = torch.zeros(n)  # ... and a black pupil: the only black blob
    p["glint"] = torch.zeros(n)
    g = -pitchyaw_to_vector(py)
    img, _ = eyes._render(p, g, torch.zeros(n, HEIGHT, WIDTH))
    dark = (0.15 - img).clamp_min(0)  # (n, H, W): weights of the pupil's pixels
    ys, xs = torch.arange(HEIGHT) + 0.5, torch.arange(WIDTH) + 0.5
    centroid = torch.stack([(dark * xs).sum((1, 2)), (dark * ys[:, None]).sum((1, 2))],
                           -1) / dark.sum((1, 2))[:, None]
    want = torch.stack([p["cx"] + p["R"] * g[:, 0], p["cy"] + p["R"] * g[:, 1]], -1)
    # the projected centre of a spherical cap of angular radius a tilted by t from the
    # camera lies R (1 - cos a) sin t from the projected cap centre: < 0.15 px for the
    # pupil (a < 12.7 deg, R < 16, t < 34 deg); the soft edges add about 0.1 px
    torch.testing.assert_close(centroid, want, rtol=0, atol=0.3)
    # and the public labels agree with the geometry
    e = render_eye(py[:, 0], py[:, 1], lighting=False, seed=torch.Generator().manual_seed(0))
    torch.testing.assert_close(e.pupil_xy, want, rtol=0, atol=1e-5)


def test_the_gaze_moves_the_pupil_the_way_the_convention_says():
    up = render_eye(math.radians(20), 0.0, lighting=False, seed=3)
    level = render_eye(0.0, 0.0, lighting=False, seed=3)
    left = render_eye(0.0, math.radians(20), lighting=False, seed=3)
    assert up.pupil_xy[0, 1] < level.pupil_xy[0, 1]  # positive pitch: up in the image
    assert left.pupil_xy[0, 0] < level.pupil_xy[0, 0]  # positive yaw: image left
    assert not torch.equal(up.images, level.images)


def test_blinks_and_occluders_hide_the_iris():
    kw = dict(seed=9)
    open_eyes = render_eyes(300, **kw)
    blinks = render_eyes(300, blink=1.0, **kw)
    occluded = render_eyes(300, occlusion=1.0, **kw)
    assert blinks.blink.all() and occluded.occluded.all() and not open_eyes.blink.any()
    assert (blinks.openness <= 0.3).all() and (open_eyes.openness >= 0.85).all()
    assert open_eyes.iris_visible.median() > 0.75
    assert blinks.iris_visible.median() < 0.3
    assert occluded.iris_visible.median() < open_eyes.iris_visible.median() - 0.2
    # the same gaze and eye, so the labels are untouched by what hides the iris
    assert torch.equal(blinks.pitchyaw, open_eyes.pitchyaw)


def test_lighting_off_is_noise_free_and_even():
    a = render_eye(0.1, 0.2, lighting=False, seed=4)
    b = render_eye(0.1, 0.2, lighting=False, seed=4)
    assert torch.equal(a.images, b.images)
    # no noise: the skin at the crop's top row is smooth (row to row changes are tiny)
    row = a.images[0, 0, 0]
    assert (row[1:] - row[:-1]).abs().max() < 0.02


def test_sample_pitchyaw_ranges():
    py = torch.rad2deg(sample_pitchyaw(500, (-10, 5), (20, 25), seed=2))
    assert (py[:, 0] >= -10).all() and (py[:, 0] <= 5).all()
    assert (py[:, 1] >= 20).all() and (py[:, 1] <= 25).all()
    assert torch.equal(sample_pitchyaw(5, seed=1), sample_pitchyaw(5, seed=1))
    assert sample_pitchyaw(0).shape == (0, 2)
    assert render_eyes(0).images.shape == (0, 1, HEIGHT, WIDTH)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_renders_the_same_eyes():
    a = render_eyes(20, blink=0.3, occlusion=0.3, seed=1)
    b = render_eyes(20, blink=0.3, occlusion=0.3, seed=1, device="cuda")
    torch.testing.assert_close(b.images.cpu(), a.images, rtol=0, atol=1e-4)


@pytest.mark.parametrize("call, error, match", [
    (lambda: render_eye([0.1], 0.0), TypeError, "pitch"),
    (lambda: render_eye(torch.tensor([1]), 0.0), TypeError, "pitch"),
    (lambda: render_eye(torch.zeros(2, 2), torch.zeros(2, 2)), ValueError, "pitch"),
    (lambda: render_eye(float("nan"), 0.0), ValueError, "pitch"),
    (lambda: render_eye(0.0, math.pi / 2), ValueError, "yaw"),
    (lambda: render_eye(torch.zeros(3), torch.zeros(2)), ValueError, "same length"),
    (lambda: render_eye(0.0, 0.0, blink=1.5), ValueError, "blink"),
    (lambda: render_eye(0.0, 0.0, occlusion="0.1"), TypeError, "occlusion"),
    (lambda: render_eye(0.0, 0.0, lighting="yes"), TypeError, "lighting"),
    (lambda: render_eye(0.0, 0.0, seed=-1), ValueError, "seed"),
    (lambda: render_eye(0.0, 0.0, seed=1.5), TypeError, "seed"),
    (lambda: render_eyes(-1), ValueError, "n"),
    (lambda: render_eyes(2.0), TypeError, "n"),
    (lambda: sample_pitchyaw(3, pitch_range=(10,)), TypeError, "pitch_range"),
    (lambda: sample_pitchyaw(3, pitch_range=(10, 5)), ValueError, "pitch_range"),
    (lambda: sample_pitchyaw(3, yaw_range=(0, 95)), ValueError, "yaw_range"),
])
def test_bad_input_is_refused_by_name(call, error, match):
    with pytest.raises(error, match=match):
        call()
