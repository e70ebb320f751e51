"""lib/rle.py: the RealNVP flow (a density: integrates to 1, change of variables through an
explicit inverse and autograd Jacobians), the RLE loss (closed-form Laplace/Gaussian NLL
without the flow, torch.distributions as the oracle, mmpose's variant, gradients), the
heatmap helpers, the pose network's heads, the label noise, and bad input."""

import math

import pytest
import torch
from torch import nn
from torch.distributions import Laplace, MultivariateNormal, Normal

from lib.rle import (
    PoseNet,
    RealNVP,
    heatmap_argmax,
    log_normaliser,
    noisy_labels,
    pose_loss,
    render_heatmaps,
    rle_loss,
    soft_argmax,
    to_pixels,
    to_unit,
)


def lively_flow(seed=0, dtype=torch.float32, **kw):
    """A RealNVP far from the identity: default PyTorch init instead of the tiny one, so
    that the tests see real coupling layers (the shipped init starts near a shift)."""
    torch.manual_seed(seed)
    flow = RealNVP(**kw).to(dtype)
    for m in flow.modules():
        if isinstance(m, nn.Linear):
            m.reset_parameters()
    return flow


class NoFlow:
    """log G = 0 everywhere: removes the flow term from the RLE loss."""

    def log_prob(self, z):
        return z.new_zeros(z.shape[:-1])


class Mirrored:
    """The density of -z under ``flow``: mmpose and the official code feed (mu - x) / sigma,
    the paper and we feed (x - mu) / sigma."""

    def __init__(self, flow):
        self.flow = flow

    def log_prob(self, z):
        return self.flow.log_prob(-z)


def batch(seed=0, B=4, K=5, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(B, K, 2, generator=g, dtype=dtype)
    sigma = torch.rand(B, K, 2, generator=g, dtype=dtype) + 0.2
    target = mu + sigma * torch.randn(B, K, 2, generator=g, dtype=dtype) * 1.5
    return mu, sigma, target


# ------------------------------------------------------------------------------ the flow


def test_flow_density_integrates_to_one_on_a_grid():
    flow = lively_flow(1)
    with torch.no_grad():
        samples = flow.sample(20000, torch.Generator().manual_seed(0))
        assert samples.abs().max() < 12  # the grid below holds all the mass we can see
        ax = torch.linspace(-12, 12, 241)  # cells of 0.1 x 0.1
        xy = torch.stack(torch.meshgrid(ax, ax, indexing="xy"), -1).reshape(-1, 2)
        cell = (ax[1] - ax[0]) ** 2
        mass = flow.log_prob(xy).exp().sum() * cell
    # the tail beyond |x| = 12 held none of 20000 samples (mass < 3e-4 with 99.7%
    # confidence); the grid-sum error, measured by halving the cell, is below 1e-3
    assert mass.item() == pytest.approx(1.0, abs=1e-3)


def test_inverse_undoes_forward():
    flow = lively_flow(2)
    x = torch.randn(100, 2) * 3
    with torch.no_grad():
        z, _ = flow(x)
        torch.testing.assert_close(flow.inverse(z), x, rtol=0, atol=1e-5)


def test_log_prob_is_the_change_of_variables_through_autograd_jacobians():
    """log G(x) = log N(f(x)) + log |det df/dx| with the Jacobian from autograd (not from
    the layers' own log-det sums), and = log N(z) - log |det d f^{-1}/dz| at x = f^{-1}(z)."""
    flow = lively_flow(3, dtype=torch.float64)
    std_normal = MultivariateNormal(torch.zeros(2, dtype=torch.float64),
                                    torch.eye(2, dtype=torch.float64))
    x = torch.randn(6, 2, dtype=torch.float64) * 2
    for xi in x:
        jac = torch.autograd.functional.jacobian(lambda v: flow(v)[0], xi)
        want = std_normal.log_prob(flow(xi)[0]) + torch.linalg.slogdet(jac)[1]
        torch.testing.assert_close(flow.log_prob(xi), want, rtol=0, atol=1e-10)
    z = torch.randn(6, 2, dtype=torch.float64)
    for zi in z:
        jac = torch.autograd.functional.jacobian(flow.inverse, zi)
        want = std_normal.log_prob(zi) - torch.linalg.slogdet(jac)[1]
        torch.testing.assert_close(flow.log_prob(flow.inverse(zi)), want, rtol=0, atol=1e-10)


def test_flow_shapes_init_and_sampling():
    flow = RealNVP()
    assert flow.mask.tolist() == [[1, 0], [0, 1]] * 3  # keep x, then y, ...
    assert len(flow.s) == len(flow.t) == 6 and flow.s[0][0].out_features == 64
    assert flow.log_prob(torch.zeros(3, 4, 2)).shape == (3, 4)
    # the shipped init is nearly a shift: the density is close to a unit Gaussian's shape
    x = torch.randn(1000, 2)
    z, log_det = flow(x)
    assert log_det.abs().max() < 0.2
    a = flow.sample(5, torch.Generator().manual_seed(4))
    b = flow.sample(5, torch.Generator().manual_seed(4))
    assert a.shape == (5, 2) and torch.equal(a, b)
    assert RealNVP(dim=4, layers=3).log_prob(torch.randn(7, 4)).shape == (7,)


# ------------------------------------------------------------------------------ the loss


@pytest.mark.parametrize("q, dist", [("laplace", Laplace), ("gaussian", Normal)])
def test_without_the_flow_rle_is_the_closed_form_nll(q, dist):
    """log G = 0: sum_c log sigma_c - sum_c log Q(x_bar_c) is -log of the Laplace/Gaussian
    density of the target with location mu and scale sigma (torch.distributions)."""
    mu, sigma, target = batch(1, dtype=torch.float64)
    want = -dist(mu, sigma).log_prob(target).sum(-1).mean()
    got = rle_loss(mu, sigma, target, NoFlow(), q=q)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


def test_without_q_a_gaussian_flow_gives_the_gaussian_nll():
    """residual=False with G = N(0, I): the loss is -log N(target; mu, diag sigma^2)."""
    mu, sigma, target = batch(2, dtype=torch.float64)
    std_normal = MultivariateNormal(torch.zeros(2, dtype=torch.float64),
                                    torch.eye(2, dtype=torch.float64))
    got = rle_loss(mu, sigma, target, std_normal, residual=False)
    want = -Normal(mu, sigma).log_prob(target).sum(-1).mean()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


def test_weight_selects_joints_and_the_mean_is_over_b_times_k():
    mu, sigma, target = batch(3)
    flow = lively_flow(0)
    per_joint = torch.stack([torch.stack([
        rle_loss(mu[b:b + 1, k:k + 1], sigma[b:b + 1, k:k + 1], target[b:b + 1, k:k + 1], flow)
        for k in range(5)]) for b in range(4)])  # (B, K), one joint at a time
    weight = torch.tensor([[1.0, 0, 1, 1, 0]] * 4)
    got = rle_loss(mu, sigma, target, flow, weight=weight)
    torch.testing.assert_close(got, (per_joint * weight).sum() / 20, rtol=1e-5, atol=1e-6)
    got_bool = rle_loss(mu, sigma, target, flow, weight=weight.bool())
    torch.testing.assert_close(got_bool, got, rtol=0, atol=0)


def test_mmposes_rle_loss_is_ours_plus_the_direct_likelihood_term():
    """mmpose's RLELoss (transcribed below from its forward()) broadcasts log sigma (B, K, 2)
    against log phi (B, K, 1) and adds log(2 sigma) + |error| per coordinate, so it counts
    log sigma and log phi twice: per joint it is rle_loss(residual=True) +
    rle_loss(residual=False), summed over K and averaged over B."""
    mu, sigma, target = batch(4, dtype=torch.float64)
    flow = lively_flow(5, dtype=torch.float64)
    B, K = mu.shape[:2]
    error = (mu - target) / (sigma + 1e-9)  # mmpose: (pred - target) / (sigma + 1e-9)
    log_phi = flow.log_prob(error.reshape(-1, 2)).reshape(B, K, 1)
    nf_loss = torch.log(sigma) - log_phi
    loss_q = torch.log(sigma * 2) + torch.abs(error)
    mmpose = ((nf_loss + loss_q) / B).sum()
    mirrored = Mirrored(flow)
    ours = K * (rle_loss(mu, sigma, target, mirrored)
                + rle_loss(mu, sigma, target, mirrored, residual=False))
    torch.testing.assert_close(ours, mmpose, rtol=1e-7, atol=0)  # the 1e-9 in mmpose's sigma


def test_gradients_reach_mu_sigma_and_the_flow():
    mu, sigma, target = batch(5, dtype=torch.float64)
    mu.requires_grad_(True)
    sigma.requires_grad_(True)
    flow = lively_flow(6, dtype=torch.float64, hidden=8, layers=2)
    loss = rle_loss(mu, sigma, target, flow)
    loss.backward()
    assert mu.grad.abs().sum() > 0 and sigma.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in flow.parameters())
    # and they are the right gradients (finite differences, float64)
    assert torch.autograd.gradcheck(lambda m, s: rle_loss(m, s, target, flow), (mu, sigma))


@pytest.mark.parametrize("q, exact", [
    # the integral of Q G for G = N(0, I) factorises over the two coordinates:
    # Laplace: (E_{z ~ N(0, 1)} exp(-|z|) / 2)^2 = (exp(1/2) Phi(-1))^2
    ("laplace", (math.exp(0.5) * 0.5 * math.erfc(1 / math.sqrt(2))) ** 2),
    # Gaussian: (integral of N(z; 0, 1)^2)^2 = (1 / (2 sqrt(pi)))^2
    ("gaussian", 1 / (4 * math.pi)),
])
def test_log_normaliser_is_the_integral_of_q_times_g(q, exact):
    std_normal = MultivariateNormal(torch.zeros(2), torch.eye(2))
    n = 200_000
    got = log_normaliser(std_normal, q=q, n=n, generator=torch.Generator().manual_seed(0))
    # G(z) = N(z; 0, I) <= 1 / (2 pi) on samples of Q: its relative spread is below 1.2
    # (measured: 0.8 for the Laplace, 0.6 for the Gaussian), so 200000 samples give the
    # mean to 0.3% (1 SE); allow 4 SE
    assert got.item() == pytest.approx(math.log(exact), abs=4 * 1.2 / math.sqrt(n))


def test_log_normaliser_reaches_the_flow_and_removes_the_gauge():
    """The gradient reaches the flow's parameters, and the exact NLL punishes a flow that
    contracts: the integral of Q G_c grows towards Q(0)^2 = 1/4 as G_c = c^2 G(c x)
    concentrates, so log s (= -log_normaliser) falls by what eq. 12 gains."""
    flow = lively_flow(7, hidden=8, layers=2)
    gen = torch.Generator().manual_seed(1)
    value = log_normaliser(flow, n=4096, generator=gen)
    value.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in flow.parameters())

    class Contracted:  # G_c(x) = c^2 G(c x) for the standard normal G
        def __init__(self, c):
            self.c = c

        def log_prob(self, z):
            return 2 * math.log(self.c) + MultivariateNormal(
                torch.zeros(2), torch.eye(2)).log_prob(self.c * z)

    values = [log_normaliser(Contracted(c), n=100_000,
                             generator=torch.Generator().manual_seed(2)).item()
              for c in (1.0, 4.0, 16.0)]
    assert values[0] < values[1] < values[2] < math.log(0.25)


def test_rle_logs_head_adds_the_normaliser_to_the_rle_loss():
    torch.manual_seed(3)
    model = PoseNet("rle_logs", num_joints=4, image_size=32, width=4).eval()
    images, joints = torch.rand(3, 3, 32, 32), torch.rand(3, 4, 2) * 31
    vis = torch.tensor([[2, 1, 0, 2]] * 3)
    w = (vis > 0).float()
    torch.manual_seed(4)
    got = pose_loss(model, images, joints, vis)
    out = model(images)
    torch.manual_seed(4)  # the same Monte Carlo samples
    want = rle_loss(out.mu, out.sigma, to_unit(joints, 32), model.flow, weight=w)
    want = want + w.mean() * log_normaliser(model.flow)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------ heatmaps


def test_render_heatmaps_and_argmax():
    joints = torch.tensor([[[3.0, 5.0], [0.0, 0.0], [7.3, 2.6]]])
    maps = render_heatmaps(joints, (8, 10), sigma=1.5, visible=torch.tensor([[1, 0, 1]]))
    assert maps.shape == (1, 3, 8, 10)
    assert maps[0, 0, 5, 3] == 1.0 and maps[0, 1].abs().max() == 0  # invisible: empty
    d2 = (torch.arange(10.0)[None] - 7.3) ** 2 + (torch.arange(8.0)[:, None] - 2.6) ** 2
    torch.testing.assert_close(maps[0, 2], torch.exp(-d2 / (2 * 1.5**2)), rtol=0, atol=1e-6)
    coords, peak = heatmap_argmax(maps)
    assert coords[0, 0].tolist() == [3.0, 5.0] and coords[0, 2].tolist() == [7.0, 3.0]
    assert peak[0, 0] == 1.0


def test_soft_argmax_is_the_expectation_under_the_softmax():
    g = torch.Generator().manual_seed(7)
    p = torch.rand(2, 3, 6, 9, generator=g)
    p = p / p.sum((-2, -1), keepdim=True)
    ys, xs = torch.meshgrid(torch.arange(6.0), torch.arange(9.0), indexing="ij")
    want = torch.stack([(p * xs).sum((-2, -1)), (p * ys).sum((-2, -1))], -1)
    torch.testing.assert_close(soft_argmax(p.log()), want, rtol=0, atol=1e-5)
    # a log-Gaussian heatmap: the softmax is a sampled Gaussian, the mean sub-pixel exact
    true = torch.tensor([[[20.37, 11.81]]])
    dx2 = (torch.arange(40.0) - true[..., 0, None]) ** 2  # (1, 1, 40)
    dy2 = (torch.arange(30.0) - true[..., 1, None]) ** 2  # (1, 1, 30)
    log_gauss = -(dx2[..., None, :] + dy2[..., :, None]) / (2 * 1.5**2)  # (1, 1, 30, 40)
    torch.testing.assert_close(soft_argmax(log_gauss), true, rtol=0, atol=1e-4)


def test_unit_coordinates():
    x = torch.tensor([-0.5, 31.5, 63.5])
    torch.testing.assert_close(to_unit(x, 64), torch.tensor([-0.5, 0.0, 0.5]))
    torch.testing.assert_close(to_pixels(to_unit(x, 64), 64), x)


# ------------------------------------------------------------------------------ network, data


@pytest.mark.parametrize("head", ["l1", "laplace", "rle", "rle_logs", "heatmap", "integral"])
def test_pose_net_heads_train_and_predict(head):
    torch.manual_seed(0)
    model = PoseNet(head, num_joints=3, image_size=32, width=4)
    images = torch.rand(6, 3, 32, 32)
    joints = torch.rand(6, 3, 2) * 31
    vis = torch.tensor([[2, 1, 0]] * 6)
    out = model(images)
    if head in ("l1", "laplace", "rle", "rle_logs"):
        assert out.mu.shape == (6, 3, 2) and out.heatmaps is None
        assert (out.sigma is None) == (head == "l1")
        assert (model.flow is None) == (head not in ("rle", "rle_logs"))
        if head != "l1":
            assert (out.sigma > 0).all() and (out.sigma < 1.001).all()
    else:
        assert out.heatmaps.shape == (6, 3, 8, 8) and out.mu is None
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    losses = []
    for _ in range(25):
        loss = pose_loss(model, images, joints, vis)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert math.isfinite(losses[-1]) and losses[-1] < losses[0]
    pred, score = model.predict(images)
    assert pred.shape == (6, 3, 2) and score.shape == (6,) and model.training
    # an unlabelled joint does not enter the loss
    moved = joints.clone()
    moved[:, 2] += 100
    with torch.no_grad():
        model.eval()
        losses = []
        for j in (moved, joints):
            torch.manual_seed(5)  # the same Monte Carlo samples for "rle_logs"
            losses.append(pose_loss(model, images, j, vis))
        assert losses[0] == losses[1]


def test_regression_losses_are_the_laplace_nll_and_rle():
    """pose_loss of the "laplace" head is the Laplace NLL with the head's sigma
    (torch.distributions), of the "rle" head rle_loss with the model's flow, of the "l1"
    head the L1 distance; all in unit coordinates, over the labelled joints."""
    torch.manual_seed(1)
    images = torch.rand(3, 3, 32, 32)
    joints = torch.rand(3, 4, 2) * 31
    vis = torch.tensor([[2, 1, 0, 2]] * 3)
    w = (vis > 0).float()
    target = to_unit(joints, 32)
    for head in ("l1", "laplace", "rle"):
        model = PoseNet(head, num_joints=4, image_size=32, width=4).eval()
        out = model(images)
        if head == "laplace":
            nll = -Laplace(out.mu, out.sigma).log_prob(target).sum(-1)
            want = (nll * w).mean()
        elif head == "rle":
            want = rle_loss(out.mu, out.sigma, target, model.flow, weight=w)
        else:
            want = ((out.mu - target).abs().sum(-1) * w).mean()
        torch.testing.assert_close(pose_loss(model, images, joints, vis), want,
                                   rtol=1e-6, atol=1e-6)  # float32, two summation orders


def test_noisy_labels_have_the_mixture_spread_and_are_seeded():
    joints = torch.zeros(20000, 3, 2)
    scale = torch.tensor([0.5, 1.0, 2.0])
    noisy = noisy_labels(joints, scale, outlier=0.1, outlier_scale=3.0, seed=1)
    std = noisy.std(dim=(0, 2))
    want = scale * math.sqrt(0.9 + 0.1 * 9)  # variance of the scale mixture
    # 40000 draws of a heavy-tailed variable: the std estimate is good to about 2%
    torch.testing.assert_close(std, want, rtol=0.03, atol=0)
    assert torch.equal(noisy, noisy_labels(joints, scale, seed=1))
    per_instance = noisy_labels(joints[:4], torch.ones(4, 3), seed=2)
    assert per_instance.shape == (4, 3, 2)
    assert torch.equal(noisy_labels(joints, scale * 0), joints)


# ------------------------------------------------------------------------------ bad input

MU, SIG, TGT = batch(9)
FLOW = RealNVP()


@pytest.mark.parametrize("call, error, match", [
    (lambda: RealNVP(dim=1), ValueError, "dim"),
    (lambda: RealNVP(hidden=0), ValueError, "hidden"),
    (lambda: RealNVP(layers=2.0), TypeError, "layers"),
    (lambda: FLOW.log_prob(torch.zeros(4, 3)), ValueError, "x"),
    (lambda: FLOW.log_prob(torch.zeros(4, 2, dtype=torch.long)), TypeError, "x"),
    (lambda: FLOW.inverse([0.0, 1.0]), TypeError, "z"),
    (lambda: FLOW.sample(-1), ValueError, "n"),
    (lambda: rle_loss(MU.tolist(), SIG, TGT, FLOW), TypeError, "mu"),
    (lambda: rle_loss(MU[0], SIG, TGT, FLOW), ValueError, "mu"),
    (lambda: rle_loss(MU, SIG[:, :3], TGT, FLOW), ValueError, "sigma"),
    (lambda: rle_loss(MU, SIG, TGT[..., :1], FLOW), ValueError, "target"),
    (lambda: rle_loss(MU, SIG.half(), TGT, FLOW), TypeError, "sigma"),
    (lambda: rle_loss(MU, -SIG, TGT, FLOW), ValueError, "sigma"),
    (lambda: rle_loss(MU, SIG * float("nan"), TGT, FLOW), ValueError, "sigma"),
    (lambda: rle_loss(MU, SIG, TGT * float("inf"), FLOW), ValueError, "target"),
    (lambda: rle_loss(MU[..., :1], SIG[..., :1], TGT[..., :1], FLOW), ValueError, "mu"),
    (lambda: rle_loss(MU[:0], SIG[:0], TGT[:0], FLOW), ValueError, "mu"),
    (lambda: rle_loss(MU, SIG, TGT, "flow"), TypeError, "flow"),
    (lambda: rle_loss(MU, SIG, TGT, FLOW, residual="yes"), TypeError, "residual"),
    (lambda: rle_loss(MU, SIG, TGT, FLOW, q="cauchy"), ValueError, "q"),
    (lambda: rle_loss(MU, SIG, TGT, FLOW, weight=torch.ones(4)), ValueError, "weight"),
    (lambda: rle_loss(MU, SIG, TGT, FLOW, weight=torch.ones(3, 5)), ValueError, "weight"),
    (lambda: log_normaliser("flow"), TypeError, "flow"),
    (lambda: log_normaliser(FLOW, q="cauchy"), ValueError, "q"),
    (lambda: log_normaliser(FLOW, n=0), ValueError, "n"),
    (lambda: log_normaliser(FLOW, n=1.5), TypeError, "n"),
    (lambda: render_heatmaps(torch.zeros(1, 2, 3), 8), ValueError, "joints"),
    (lambda: render_heatmaps(torch.zeros(1, 2, 2), 0), ValueError, "size"),
    (lambda: render_heatmaps(torch.zeros(1, 2, 2), 8, sigma=0.0), ValueError, "sigma"),
    (lambda: heatmap_argmax(torch.zeros(2, 8, 8)), ValueError, "heatmaps"),
    (lambda: heatmap_argmax(torch.zeros(1, 2, 0, 8)), ValueError, "heatmaps"),
    (lambda: soft_argmax(torch.zeros(1, 2, 8, 8), beta=0), ValueError, "beta"),
    (lambda: soft_argmax(torch.zeros(1, 2, 8, 8), beta="1"), TypeError, "beta"),
    (lambda: PoseNet("hourglass"), ValueError, "head"),
    (lambda: PoseNet(image_size=4), ValueError, "image_size"),
    (lambda: PoseNet("l1", image_size=32)(torch.zeros(1, 3, 64, 64)), ValueError, "images"),
    (lambda: noisy_labels(torch.zeros(4, 3, 2), torch.ones(5)), ValueError, "scale"),
    (lambda: noisy_labels(torch.zeros(4, 3, 2), -torch.ones(3)), ValueError, "scale"),
    (lambda: noisy_labels(torch.zeros(4, 3, 2), torch.ones(3), outlier=2.0), ValueError,
     "outlier"),
    (lambda: noisy_labels(torch.zeros(4, 3, 2), torch.ones(3), seed=-2), ValueError, "seed"),
])
def test_bad_input_is_refused_by_name(call, error, match):
    with pytest.raises(error, match=match):
        call()
