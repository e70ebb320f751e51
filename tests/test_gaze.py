"""lib.gaze: conversions, the angular error, the losses and GazeNet.

Oracles: scipy's rotations (the conversion is a rotation of the forward axis, and the
angle between two directions is the angle of the smallest rotation between them),
torch.distributions.Laplace (the Laplace NLL), closed forms (exact angles, hand-computed
losses, the quantiles of a Laplace distribution for the pinball loss).
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation
from torch.distributions import Laplace

from lib.gaze import (
    GazeNet,
    angular_error,
    l1,
    laplace_nll,
    pinball,
    pitchyaw_to_vector,
    vector_to_pitchyaw,
)

F64 = torch.float64


def random_pitchyaw(n, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    pitch = (torch.rand(n, generator=g, dtype=F64) - 0.5) * math.pi * 0.999
    yaw = (torch.rand(n, generator=g, dtype=F64) - 0.5) * 2 * math.pi * 0.999
    return torch.stack([pitch, yaw], -1).to(dtype)


def wrap(angle):
    """Angle differences into [-pi, pi)."""
    return torch.remainder(angle + math.pi, 2 * math.pi) - math.pi


# ------------------------------------------------------------------------- conversions


def test_vector_is_the_rotated_forward_axis_as_scipy_computes_it():
    py = random_pitchyaw(200)
    # R_y(yaw) R_x(-pitch) applied to (0, 0, 1); scipy's upper case = intrinsic axes
    rot = Rotation.from_euler("YX", torch.stack([py[:, 1], -py[:, 0]], -1).numpy())
    want = torch.from_numpy(rot.apply([0.0, 0.0, 1.0]))
    torch.testing.assert_close(pitchyaw_to_vector(py), want, rtol=0, atol=1e-14)


def test_signs_of_the_convention():
    deg = torch.deg2rad(torch.tensor([[0.0, 0.0], [30.0, 0.0], [0.0, 30.0]], dtype=F64))
    v = pitchyaw_to_vector(deg)
    torch.testing.assert_close(v[0], torch.tensor([0.0, 0.0, 1.0], dtype=F64))
    assert v[1, 1] > 0 and v[1, 0] == 0  # pitch moves v along +y
    assert v[2, 0] > 0 and v[2, 1] == 0  # yaw moves v along +x
    torch.testing.assert_close(torch.linalg.vector_norm(pitchyaw_to_vector(
        random_pitchyaw(100)), dim=-1), torch.ones(100, dtype=F64), rtol=0, atol=1e-15)


def test_labels_of_eth_xgaze_and_gaze360_mean_our_angles():
    # The gaze g from the eye is -v. ETH-XGaze (normalization_example.py) labels g with
    # (arcsin(-g_y), arctan2(-g_x, -g_z)); Gaze360 (data_loader.py) labels g, expressed
    # in its eye frame (x left, y up, z away), with (atan2(g_x, -g_z), asin(g_y)) in
    # the order (yaw, pitch). Both must give back our (pitch, yaw).
    py = random_pitchyaw(500, seed=11)
    py = py[py[:, 0].abs() < 1.5]  # off the poles, where the yaw is defined
    g = -pitchyaw_to_vector(py)
    eth = torch.stack([torch.asin(-g[:, 1]), torch.atan2(-g[:, 0], -g[:, 2])], -1)
    h = g * torch.tensor([-1.0, -1.0, 1.0], dtype=F64)  # Gaze360's eye frame
    g360 = torch.stack([torch.atan2(h[:, 0], -h[:, 2]), torch.asin(h[:, 1])], -1)
    for labels in (eth, g360.flip(-1)):
        torch.testing.assert_close(labels[:, 0], py[:, 0], rtol=0, atol=1e-12)
        torch.testing.assert_close(wrap(labels[:, 1] - py[:, 1]),
                                   torch.zeros_like(py[:, 1]), rtol=0, atol=1e-12)
    # and Gaze360's run.py maps its labels back to g itself, in its frame
    yaw, pitch = g360.unbind(-1)
    back = torch.stack([pitch.cos() * yaw.sin(), pitch.sin(), -pitch.cos() * yaw.cos()],
                       -1)
    torch.testing.assert_close(back, h, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype, atol", [(F64, 1e-12), (torch.float32, 2e-6)])
def test_angles_round_trip(dtype, atol):
    # atol: a few units in the last place of the angles (atan2 is well conditioned)
    py = random_pitchyaw(1000, dtype=dtype)
    back = vector_to_pitchyaw(pitchyaw_to_vector(py))
    torch.testing.assert_close(back[:, 0], py[:, 0], rtol=0, atol=atol)
    torch.testing.assert_close(wrap(back[:, 1] - py[:, 1]), torch.zeros_like(py[:, 1]),
                               rtol=0, atol=atol)


def test_edge_angles_round_trip():
    edges = torch.tensor([[math.pi / 2, 0.3], [-math.pi / 2, -2.0], [0.0, math.pi],
                          [0.0, -math.pi], [1e-12, 1e-12], [-1.0, 0.0],
                          [math.pi / 2 - 1e-9, 1.0]], dtype=F64)
    v = pitchyaw_to_vector(edges)
    back = vector_to_pitchyaw(v)
    torch.testing.assert_close(back[:, 0], edges[:, 0], rtol=0, atol=1e-12)
    # the direction always comes back, even where the yaw is (nearly) undefined
    torch.testing.assert_close(pitchyaw_to_vector(back), v, rtol=0, atol=1e-12)
    off_pole = edges[:, 0].abs() < 1.5
    torch.testing.assert_close(wrap(back[off_pole, 1] - edges[off_pole, 1]),
                               torch.zeros(int(off_pole.sum()), dtype=F64),
                               rtol=0, atol=1e-12)


def test_poles_and_the_yaw_seam():
    v = torch.tensor([[0.0, 1.0, 0.0], [0.0, -3.0, 0.0], [0.0, 0.0, -1.0],
                      [-0.0, 0.0, -1.0]], dtype=F64)
    py = vector_to_pitchyaw(v)
    torch.testing.assert_close(py, torch.tensor(
        [[math.pi / 2, 0.0], [-math.pi / 2, 0.0], [0.0, math.pi], [0.0, -math.pi]],
        dtype=F64), rtol=0, atol=0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=3, max_size=3),
       st.floats(1e-3, 1e3))
def test_vectors_of_any_length_round_trip(xyz, length):
    v = torch.tensor(xyz, dtype=F64)
    if torch.linalg.vector_norm(v) < 1e-6:
        v = torch.tensor([0.0, 0.0, 1.0], dtype=F64)
    v = v / torch.linalg.vector_norm(v) * length
    back = pitchyaw_to_vector(vector_to_pitchyaw(v))
    torch.testing.assert_close(back, v / torch.linalg.vector_norm(v), rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype, atol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
def test_half_precision_conversions(dtype, atol):
    # atol: two units of the dtype's rounding (eps 2^-10 and 2^-7) of values in [-1, 1]
    py = random_pitchyaw(200).to(dtype)
    v = pitchyaw_to_vector(py)
    assert v.dtype == dtype
    torch.testing.assert_close(v.double(), pitchyaw_to_vector(py.double()), rtol=0,
                               atol=atol)
    assert vector_to_pitchyaw(v).dtype == dtype


def test_conversion_gradients_are_finite_at_the_poles():
    v = torch.tensor([[0.0, 1.0, 0.0], [0.0, -2.0, 0.0], [0.3, 0.1, 0.9]], dtype=F64,
                     requires_grad=True)
    vector_to_pitchyaw(v).sum().backward()
    assert torch.isfinite(v.grad).all()
    py = torch.tensor([[math.pi / 2, 0.2], [-math.pi / 2, 1.0]], dtype=F64,
                      requires_grad=True)
    pitchyaw_to_vector(py).sum().backward()
    assert torch.isfinite(py.grad).all()


def test_conversion_gradients_match_finite_differences():
    py = random_pitchyaw(5, seed=3).requires_grad_()
    assert torch.autograd.gradcheck(pitchyaw_to_vector, (py,))
    v = pitchyaw_to_vector(random_pitchyaw(5, seed=4)).mul(2.5).requires_grad_()
    assert torch.autograd.gradcheck(vector_to_pitchyaw, (v,))


# ------------------------------------------------------------------------- angular error


def test_angular_error_against_scipys_smallest_rotation():
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(50, 3, generator=g, dtype=F64), torch.randn(50, 3, generator=g,
                                                                  dtype=F64)
    want = [np.rad2deg(Rotation.align_vectors(b[i:i + 1].numpy(),
                                              a[i:i + 1].numpy())[0].magnitude())
            for i in range(50)]
    # float64 both ways; scipy goes through a rotation matrix and a quaternion
    torch.testing.assert_close(angular_error(a, b), torch.tensor(want, dtype=F64),
                               rtol=0, atol=1e-9)


def test_angular_error_symmetric_zero_and_straight():
    a = torch.randn(100, 3, generator=torch.Generator().manual_seed(6), dtype=F64)
    b = torch.randn(100, 3, generator=torch.Generator().manual_seed(7), dtype=F64)
    assert torch.equal(angular_error(a, b), angular_error(b, a))
    assert torch.equal(angular_error(a, a), torch.zeros(100, dtype=F64))
    torch.testing.assert_close(angular_error(a, 3 * a), torch.zeros(100, dtype=F64),
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(angular_error(a, -a), torch.full((100,), 180.0, dtype=F64),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("theta", [1e-7, 1e-5, 1e-3, 0.5, math.pi - 1e-3, math.pi - 1e-5])
def test_angular_error_is_accurate_near_0_and_180_in_float32(theta):
    a = torch.tensor([1.0, 0.0, 0.0])
    b = torch.tensor([math.cos(theta), math.sin(theta), 0.0])
    got = angular_error(a, b).item()
    # float32 inputs carry a relative rounding of 6e-8 in sin(theta) and cos(theta):
    # an angle error below 1e-7 rad (6e-6 degrees) absolute, 1e-6 relative
    assert got == pytest.approx(math.degrees(theta), rel=1e-6, abs=1e-5)


def test_angular_error_broadcasts_and_half_precision_is_computed_in_float32():
    a, b = torch.randn(4, 1, 3, dtype=F64), torch.randn(5, 3, dtype=F64)
    assert angular_error(a, b).shape == (4, 5)
    ah, bh = a.half(), b.half()
    got = angular_error(ah, bh)
    assert got.dtype == torch.float32
    # against float64 on the same (rounded) inputs: float32 arithmetic, 1e-4 degrees
    torch.testing.assert_close(got.double(), angular_error(ah.double(), bh.double()),
                               rtol=0, atol=1e-4)


def test_angular_error_gradients_are_finite_at_0_and_180():
    a = torch.tensor([[0.3, -0.2, 0.9], [1.0, 0.0, 0.0]], dtype=F64, requires_grad=True)
    for b in (a.detach().clone(), -a.detach().clone()):
        a.grad = None
        angular_error(a, b).sum().backward()
        assert torch.isfinite(a.grad).all()
    b = torch.randn(4, 3, dtype=F64)
    a = torch.randn(4, 3, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(angular_error, (a, b))


# ------------------------------------------------------------------------- losses


def test_l1_by_hand():
    pred = torch.tensor([[0.1, -0.2], [0.3, 0.0]], dtype=F64)
    target = torch.tensor([[0.0, 0.0], [0.5, -0.1]], dtype=F64)
    assert l1(pred, target).item() == pytest.approx((0.1 + 0.2 + 0.2 + 0.1) / 4, abs=1e-15)
    torch.testing.assert_close(l1(pred, target), torch.nn.functional.l1_loss(pred, target),
                               rtol=0, atol=1e-15)


def test_laplace_nll_by_hand_and_against_torch_distributions():
    one = torch.ones(1, 2, dtype=F64)
    # log(2 * 0.5) + 1 / 0.5 = 2 exactly
    assert laplace_nll(0 * one, one, 0.5 * one).item() == 2.0
    g = torch.Generator().manual_seed(8)
    pred, target = torch.randn(64, 2, generator=g, dtype=F64), torch.randn(64, 2, generator=g,
                                                                          dtype=F64)
    scale = torch.rand(64, 2, generator=g, dtype=F64) + 0.1
    want = -Laplace(pred, scale).log_prob(target).mean()
    torch.testing.assert_close(laplace_nll(pred, target, scale), want, rtol=1e-14, atol=0)
    # one scale per sample broadcasts over the two angles
    torch.testing.assert_close(laplace_nll(pred, target, scale[:, :1]),
                               laplace_nll(pred, target, scale[:, :1].expand(64, 2)),
                               rtol=0, atol=0)


def test_laplace_scale_optimum_is_the_mean_absolute_residual():
    g = torch.Generator().manual_seed(9)
    pred, target = torch.zeros(500, 2, dtype=F64), torch.randn(500, 2, generator=g,
                                                               dtype=F64)
    b = target.abs().mean().clone().requires_grad_()
    laplace_nll(pred, target, b).backward()
    assert abs(b.grad.item()) < 1e-12  # d/db (log 2b + mean|r| / b) = 0 at b = mean|r|


def test_pinball_by_hand():
    pred, sigma = torch.zeros(4, 1, dtype=F64), torch.ones(4, 1, dtype=F64)
    target = torch.tensor([[-2.0], [0.0], [0.5], [3.0]], dtype=F64)
    # lower quantile -1: u = y + 1 = (-1, 1, 1.5, 4), rho_0.1 = (0.9, 0.1, 0.15, 0.4)
    # upper quantile +1: u = y - 1 = (-3, -1, -0.5, 2), rho_0.9 = (0.3, 0.1, 0.05, 1.8)
    want = (0.9 + 0.1 + 0.15 + 0.4) / 4 + (0.3 + 0.1 + 0.05 + 1.8) / 4
    assert pinball(pred, target, sigma).item() == pytest.approx(want, abs=1e-15)
    # tau = 0.25: lower rho = (0.75, 0.25, 0.375, 1.0), upper = (0.75, 0.25, 0.125, 1.5)
    want = (0.75 + 0.25 + 0.375 + 1.0) / 4 + (0.75 + 0.25 + 0.125 + 1.5) / 4
    assert pinball(pred, target, sigma, tau=0.25).item() == pytest.approx(want, abs=1e-15)


def test_pinball_sigma_optimum_is_the_laplace_quantile():
    # For Laplace(0, b) targets and pred = 0 the loss is minimised by sigma = the 90%
    # quantile, b ln 5 (P(Y > q) = exp(-q / b) / 2 = 0.1).
    b, n = 0.7, 50_000
    torch.manual_seed(0)
    target = Laplace(torch.tensor(0.0, dtype=F64), b).sample((n, 1))
    sigmas = torch.linspace(0.8, 1.4, 301, dtype=F64)  # steps of 0.002
    losses = torch.stack([pinball(torch.zeros_like(target), target, s.reshape(1, 1))
                          for s in sigmas])
    best = sigmas[losses.argmin()].item()
    # the sample quantile's standard error is sqrt(0.09 / n) / f(q) = 3 b / sqrt(n)
    assert best == pytest.approx(b * math.log(5), abs=4 * 3 * b / math.sqrt(n) + 0.002)


def test_loss_gradients_are_finite_at_zero_residual():
    pred = torch.zeros(3, 2, dtype=F64, requires_grad=True)
    target = torch.zeros(3, 2, dtype=F64)
    scale = torch.full((3, 2), 0.1, dtype=F64, requires_grad=True)
    for loss in (l1(pred, target), laplace_nll(pred, target, scale),
                 pinball(pred, target, scale)):
        pred.grad = scale.grad = None
        loss.backward()
        assert torch.isfinite(pred.grad).all()


# ------------------------------------------------------------------------- GazeNet


def test_gazenet_shapes_and_starting_scale():
    torch.manual_seed(0)
    model = GazeNet().eval()
    angles, scale = model(torch.rand(5, 1, 36, 60))
    assert angles.shape == scale.shape == (5, 2)
    assert (scale > model.min_scale).all()
    # the raw scale's weights start near zero: the scale starts at softplus(bias) + min
    torch.testing.assert_close(scale, torch.full_like(scale, 0.1), rtol=0, atol=0.01)
    other = GazeNet(width=4, hidden=8, image_size=(20, 30))
    assert other(torch.rand(2, 1, 20, 30))[0].shape == (2, 2)


def test_gazenet_trains_on_a_fixed_batch():
    torch.manual_seed(0)
    model = GazeNet(width=4, hidden=16)
    x, y = torch.rand(8, 1, 36, 60), torch.randn(8, 2) * 0.3
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        angles, scale = model(x)
        loss = laplace_nll(angles, y, scale)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first - 0.5  # memorising 8 samples: the NLL falls by nats


# ------------------------------------------------------------------------- bad input

V = torch.randn(4, 3)
P = torch.randn(4, 2)
META = torch.zeros(4, 2, device="meta")
NET = GazeNet(width=2, hidden=4)


@pytest.mark.parametrize("call, error, match", [
    (lambda: pitchyaw_to_vector([0.1, 0.2]), TypeError, "pitchyaw"),
    (lambda: pitchyaw_to_vector(torch.tensor(0.1)), ValueError, "pitchyaw"),
    (lambda: pitchyaw_to_vector(torch.zeros(4, 3)), ValueError, r"pitchyaw.*\(\.\.\., 2\)"),
    (lambda: pitchyaw_to_vector(torch.zeros(4, 2, dtype=torch.long)), TypeError, "pitchyaw"),
    (lambda: pitchyaw_to_vector(torch.tensor([[float("nan"), 0.0]])), ValueError,
     "pitchyaw"),
    (lambda: vector_to_pitchyaw(torch.zeros(4, 2)), ValueError, r"v.*\(\.\.\., 3\)"),
    (lambda: vector_to_pitchyaw(torch.zeros(2, 3)), ValueError, "zero vector"),
    (lambda: vector_to_pitchyaw(torch.tensor([[float("inf"), 0.0, 1.0]])), ValueError, "v"),
    (lambda: vector_to_pitchyaw("up"), TypeError, "v"),
    (lambda: angular_error(V, P), ValueError, r"b.*\(\.\.\., 3\)"),
    (lambda: angular_error(V.numpy(), V), TypeError, "a"),
    (lambda: angular_error(V, torch.zeros(4, 3)), ValueError, "zero vector"),
    (lambda: angular_error(V, torch.randn(3, 3)), ValueError, "broadcast"),
    (lambda: angular_error(V, torch.zeros(4, 3, device="meta")), ValueError, "device"),
    (lambda: angular_error(V.int(), V), TypeError, "a"),
    (lambda: angular_error(V * float("nan"), V), ValueError, "finite"),
    (lambda: l1(P, P[:3]), ValueError, "target"),
    (lambda: l1(P.tolist(), P), TypeError, "pred"),
    (lambda: l1(P[:0], P[:0]), ValueError, "empty"),
    (lambda: l1(P, META), ValueError, "device"),
    (lambda: l1(P, P * float("inf")), ValueError, "target"),
    (lambda: l1(P.long(), P), TypeError, "pred"),
    (lambda: laplace_nll(P, P, torch.zeros(4, 2)), ValueError, "scale"),
    (lambda: laplace_nll(P, P, -torch.ones(1)), ValueError, "scale"),
    (lambda: laplace_nll(P, P, torch.ones(3)), ValueError, "scale"),
    (lambda: laplace_nll(P, P, 0.1), TypeError, "scale"),
    (lambda: laplace_nll(P, P, torch.full((4, 2), float("nan"))), ValueError, "scale"),
    (lambda: pinball(P, P, -torch.ones(4, 1)), ValueError, "sigma"),
    (lambda: pinball(P, P, torch.ones(4, 1), tau=0.5), ValueError, "tau"),
    (lambda: pinball(P, P, torch.ones(4, 1), tau=0.0), ValueError, "tau"),
    (lambda: pinball(P, P, torch.ones(4, 1), tau="0.1"), TypeError, "tau"),
    (lambda: pinball(P, P, torch.ones(4, 1), tau=float("nan")), ValueError, "tau"),
    (lambda: GazeNet(width=0), ValueError, "width"),
    (lambda: GazeNet(hidden=2.5), TypeError, "hidden"),
    (lambda: GazeNet(image_size=(4, 60)), ValueError, "image_size"),
    (lambda: GazeNet(image_size=36), ValueError, "image_size"),
    (lambda: GazeNet(min_scale=0.0), ValueError, "min_scale"),
    (lambda: NET(torch.rand(2, 3, 36, 60)), ValueError, "images"),
    (lambda: NET(torch.rand(1, 36, 60)), ValueError, "images"),
    (lambda: NET(torch.rand(2, 1, 36, 60).half()), TypeError, "images"),
])
def test_bad_input_is_refused_by_name(call, error, match):
    with pytest.raises(error, match=match):
        call()
