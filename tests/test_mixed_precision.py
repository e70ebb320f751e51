"""lib/mixed_precision.py: the emulation against PyTorch's casts and CPU autocast, the
training loop's recipes (master weights, fixed and dynamic scaling) against hand-written
steps and GradScaler's rule, determinism, bad input."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lib.floating_point import FORMATS, round_to_format
from lib.loss_scaling import DynamicLossScaler
from lib.mixed_precision import (
    MixedLinear,
    MixedRun,
    Recipe,
    Rounded,
    autoencoder_batches,
    mixed_mlp,
    reconstruction_loss,
    record_activation_grads,
    train_mixed,
)

F16, B16 = torch.float16, torch.bfloat16
WIDTHS = [12, 10, 3, 10, 12]  # not multiples of anything


def data(n=64, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.tanh(torch.randn(n, 3, generator=g) @ torch.randn(3, d, generator=g))


def run(recipe, steps=20, accumulation=1.0, seed=1, lr=1e-2, **kw):
    model = mixed_mlp(WIDTHS, seed=0)
    out = train_mixed(model, autoencoder_batches(data(), 16), reconstruction_loss, steps,
                      recipe, lr=lr, accumulation=accumulation, seed=seed, **kw)
    return model, out


# ----------------------------------------------------------------------------- the emulation


@pytest.mark.parametrize("dtype", [F16, B16])
def test_rounded_is_the_cast_both_ways(dtype):
    fmt = FORMATS["fp16" if dtype == F16 else "bf16"]
    x = (torch.randn(300) * 10.0 ** torch.randint(-9, 5, (300,))).requires_grad_()
    y = Rounded.apply(x, dtype)
    assert torch.equal(y, round_to_format(x.detach(), fmt))
    upstream = torch.randn(300) * 1e-7  # many of these underflow fp16
    (y * upstream).sum().backward()
    assert torch.equal(x.grad, round_to_format(upstream, fmt))


def test_mixed_linear_fp32_is_nn_linear_and_low_precision_outputs_are_representable():
    torch.manual_seed(0)
    layer = MixedLinear(7, 5)
    ref = nn.Linear(7, 5)
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(3, 7)
    assert torch.equal(layer(x), ref(x))
    layer.compute_dtype = F16
    y = layer(x)
    assert torch.equal(y, y.half().float())
    # one rounding of an exact product: products of fp16 numbers are exact in fp32
    xr, wr, br = x.half().double(), layer.weight.half().double(), layer.bias.half().double()
    exact = (xr @ wr.T + br).float().half().float()
    torch.testing.assert_close(y, exact, rtol=2**-10, atol=0)  # at most one fp16 ulp apart


def test_emulation_matches_cpu_autocast_bit_for_bit():
    """Activation gradients of the emulated FP16 model = those of PyTorch's CPU autocast."""
    x = data(32, 12)

    def grads(autocast):
        model = mixed_mlp(WIDTHS, None if autocast else F16, seed=3)
        rec = []
        hooks = record_activation_grads(model, rec)
        with torch.autocast("cpu", dtype=F16, enabled=autocast):
            out = model(x)
        (F.mse_loss(out.float(), x) * 1e-4).backward()
        for h in hooks:
            h.remove()
        return [g.half().float() for g in rec]

    for a, b in zip(grads(True), grads(False), strict=True):
        assert torch.equal(a, b)


def test_mixed_mlp_layout_and_seed():
    m = mixed_mlp(WIDTHS, F16, seed=5)
    linears = [l for l in m if isinstance(l, MixedLinear)]
    pairs = list(zip(WIDTHS, WIDTHS[1:], strict=False))
    assert [(l.in_features, l.out_features) for l in linears] == pairs
    assert sum(isinstance(l, nn.ReLU) for l in m) == len(WIDTHS) - 2
    assert all(l.compute_dtype == F16 for l in linears)
    assert all(torch.equal(p, q) for p, q in zip(
        m.parameters(), mixed_mlp(WIDTHS, seed=5).parameters(), strict=True))
    class Other(MixedLinear):
        pass

    other = mixed_mlp(WIDTHS, seed=5, layer=Other)
    assert sum(isinstance(l, Other) for l in other) == len(WIDTHS) - 1
    assert all(torch.equal(p, q) for p, q in zip(
        other.parameters(), m.parameters(), strict=True))
    state = torch.get_rng_state()
    mixed_mlp(WIDTHS)
    assert torch.equal(state, torch.get_rng_state())  # the caller's generator is untouched


# ------------------------------------------------------------------------------ the recipes


def test_fp32_run_by_hand():
    """Recipe() is plain Adam on the MSE: the same steps written out give the same bits."""
    model, out = run(Recipe(), steps=5)
    ref = mixed_mlp(WIDTHS, seed=0)
    opt = torch.optim.Adam(ref.parameters(), lr=1e-2, eps=1e-8)  # per-tensor loop
    batch_fn, gen = autoencoder_batches(data(), 16), torch.Generator().manual_seed(1)
    losses = []
    for _ in range(5):
        (x,) = batch_fn(gen)
        loss = F.mse_loss(ref(x), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert out.losses == losses
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), ref.parameters(),
                                                 strict=True))
    assert out.scales == [1.0] * 5 and out.skipped == [False] * 5


def test_loss_factor_with_matching_eps_leaves_fp32_training_unchanged():
    """Adam is invariant to a constant c in the loss when eps carries c too. A power of two
    scales every quantity exactly (chapter 2 relies on it: bit for bit); c = 1000 only up to
    rounding (the tolerance is a few fp32 ulps per step over 20 steps)."""
    _, a = run(Recipe(), accumulation=1.0)
    _, b = run(Recipe(), accumulation=1024.0)
    assert b.losses == a.losses
    _, c = run(Recipe(), accumulation=1000.0)
    torch.testing.assert_close(torch.tensor(c.losses), torch.tensor(a.losses),
                               rtol=1e-4, atol=0)


def test_same_seed_same_bits_and_batch_order_matters():
    _, a = run(Recipe(F16, True, "dynamic", growth_interval=3))
    _, b = run(Recipe(F16, True, "dynamic", growth_interval=3))
    _, c = run(Recipe(F16, True, "dynamic", growth_interval=3), seed=2)
    assert a.losses == b.losses and a.scales == b.scales
    assert a.losses != c.losses


def test_no_master_weights_keeps_weights_in_the_format():
    for dtype in (F16, B16):
        model, _ = run(Recipe(dtype, master_weights=False), steps=5)
        assert all(torch.equal(p, p.to(dtype).float()) for p in model.parameters())
    model, _ = run(Recipe(F16, master_weights=True), steps=5)
    assert not all(torch.equal(p, p.half().float()) for p in model.parameters())


def test_dynamic_scaling_follows_the_scaler_rule():
    """Scales and skips of the run obey eq. 11: a skip halves the scale, growth_interval
    good steps double it; the first scale is init_scale."""
    recipe = Recipe(F16, True, "dynamic", init_scale=2.0**40, growth_interval=4)
    _, out = run(recipe, steps=30, accumulation=1024.0)
    assert out.scales[0] == 2.0**40 and out.skipped[0]  # 2^40 overflows fp16 at once
    good = 0
    for k in range(len(out.scales) - 1):
        if out.skipped[k]:
            assert out.scales[k + 1] == out.scales[k] / 2
            good = 0
        else:
            good += 1
            expected = out.scales[k] * 2 if good == 4 else out.scales[k]
            good = 0 if good == 4 else good
            assert out.scales[k + 1] == expected
    assert not all(out.skipped)
    # the same trajectory as the library scaler driven by the same found_inf sequence
    scaler = DynamicLossScaler(2.0**40, growth_interval=4)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.0)
    for k, bad in enumerate(out.skipped):
        assert scaler.get_scale() == out.scales[k]
        opt.param_groups[0]["params"][0].grad = torch.tensor([math.inf if bad else 1.0])
        scaler.scale(torch.ones(()))
        scaler.step(opt)
        scaler.update()


def test_fixed_scale_skips_overflowing_steps_and_leaves_weights_alone():
    model, out = run(Recipe(F16, True, 2.0**40), steps=4, accumulation=1024.0)
    assert out.skipped == [True] * 4 and out.scales == [2.0**40] * 4
    untouched = mixed_mlp(WIDTHS, seed=0)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(),
                                                 untouched.parameters(), strict=True))


def test_fixed_scale_recovers_underflowing_gradients():
    """With the loss divided by 2^30 every fp16 activation gradient underflows; a fixed scale
    of 2^30 brings back the fp32 run up to fp16 rounding of the gradients (rtol: 5x the
    largest gap after 20 steps over batch orders 1-5, 4e-4; an unscaled run learns nothing)."""
    _, fp32 = run(Recipe(), accumulation=2.0**30)
    _, plain = run(Recipe(F16, True), accumulation=2.0**30)
    _, scaled = run(Recipe(F16, True, 2.0**30), accumulation=2.0**30)
    assert plain.losses[-1] > 0.99 * plain.losses[0]  # nothing learnt: every gradient is 0
    assert fp32.losses[-1] < 0.8 * fp32.losses[0]
    torch.testing.assert_close(scaled.losses[-1], fp32.losses[-1], rtol=2e-3, atol=0)


def test_record_at_keeps_one_gradient_per_linear_layer():
    _, out = run(Recipe(), steps=6, record_at=(0, 5))
    assert sorted(out.recorded) == [0, 5]
    shapes = [tuple(g.shape) for g in out.recorded[0]]
    assert shapes == [(16, w) for w in reversed(WIDTHS[1:])]  # backward order


def test_late_loss_is_the_mean_of_the_last_third():
    assert MixedRun(losses=[9.0, 9.0, 9.0, 1.0, 2.0, 3.0]).late_loss == 2.5
    assert MixedRun(losses=[4.0]).late_loss == 4.0


# ------------------------------------------------------------------------------ bad input

model0 = mixed_mlp(WIDTHS)
batches0 = autoencoder_batches(data(), 4)


@pytest.mark.parametrize("call, error, match", [
    (lambda: Recipe(torch.float64), ValueError, "dtype"),
    (lambda: Recipe("fp16"), ValueError, "dtype"),
    (lambda: Recipe(F16, master_weights="no"), TypeError, "master_weights"),
    (lambda: Recipe(None, master_weights=False), ValueError, "master_weights"),
    (lambda: Recipe(F16, loss_scale="auto"), ValueError, "loss_scale"),
    (lambda: Recipe(F16, loss_scale=0.0), ValueError, "loss_scale"),
    (lambda: Recipe(F16, loss_scale=-8), ValueError, "loss_scale"),
    (lambda: Recipe(F16, loss_scale=math.nan), ValueError, "loss_scale"),
    (lambda: Recipe(F16, loss_scale=math.inf), ValueError, "loss_scale"),
    (lambda: Recipe(F16, "dynamic", init_scale=0.0), TypeError, "master_weights"),
    (lambda: Recipe(F16, True, "dynamic", init_scale=0.0), ValueError, "init_scale"),
    (lambda: Recipe(F16, True, "dynamic", growth_interval=0), ValueError, "growth_interval"),
    (lambda: Recipe(F16, True, "dynamic", growth_interval=2.5), TypeError, "growth_interval"),
    (lambda: mixed_mlp([4]), ValueError, "widths"),
    (lambda: mixed_mlp("44"), TypeError, "widths"),
    (lambda: mixed_mlp([4, 0]), ValueError, r"widths\[1\]"),
    (lambda: mixed_mlp([4, 2.0]), TypeError, r"widths\[1\]"),
    (lambda: mixed_mlp([4, 4], seed=-1), ValueError, "seed"),
    (lambda: MixedLinear(3, 3, torch.int8), ValueError, "dtype"),
    (lambda: mixed_mlp([4, 4], layer=nn.Linear), TypeError, "layer"),
    (lambda: mixed_mlp([4, 4], layer="MixedLinear"), TypeError, "layer"),
    (lambda: train_mixed("model", batches0, reconstruction_loss, 3, Recipe()),
     TypeError, "model"),
    (lambda: train_mixed(model0, None, reconstruction_loss, 3, Recipe()), TypeError, "batch_fn"),
    (lambda: train_mixed(model0, batches0, 3, 3, Recipe()), TypeError, "loss_fn"),
    (lambda: train_mixed(model0, batches0, reconstruction_loss, 0, Recipe()),
     ValueError, "steps"),
    (lambda: train_mixed(model0, batches0, reconstruction_loss, 2.0, Recipe()),
     TypeError, "steps"),
    (lambda: train_mixed(model0, batches0, reconstruction_loss, 3, "fp16"),
     TypeError, "recipe"),
    (lambda: train_mixed(model0, batches0, reconstruction_loss, 3, Recipe(), lr=0.0),
     ValueError, "lr"),
    (lambda: train_mixed(model0, batches0, reconstruction_loss, 3, Recipe(), lr="1e-3"),
     TypeError, "lr"),
    (lambda: train_mixed(model0, batches0, reconstruction_loss, 3, Recipe(),
                         accumulation=math.nan), ValueError, "accumulation"),
    (lambda: train_mixed(model0, batches0, reconstruction_loss, 3, Recipe(), seed=-2),
     ValueError, "seed"),
    (lambda: train_mixed(model0, batches0, reconstruction_loss, 3, Recipe(),
                         record_at=[-1]), ValueError, "record_at"),
    (lambda: train_mixed(model0, batches0, reconstruction_loss, 3, Recipe(),
                         progress="yes"), TypeError, "progress"),
    (lambda: train_mixed(nn.Linear(3, 3), batches0, reconstruction_loss, 3,
                         Recipe(F16)), ValueError, "MixedLinear"),
    (lambda: autoencoder_batches(torch.zeros(5), 2), ValueError, "data"),
    (lambda: autoencoder_batches(torch.zeros(5, 3, dtype=torch.long), 2), ValueError, "data"),
    (lambda: autoencoder_batches(torch.zeros(0, 3), 2), ValueError, "data"),
    (lambda: autoencoder_batches(torch.zeros(5, 3), 0), ValueError, "batch"),
    (lambda: record_activation_grads(model0, ()), TypeError, "recorded"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()
