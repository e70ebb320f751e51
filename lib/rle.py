"""Residual log-likelihood estimation (RLE) for pose regression, and its two rivals.

Chapter 12 (equation numbers are that chapter's). Reads top to bottom:

* :class:`RealNVP`: a normalizing flow on R^d (d = 2 for a joint's (x, y) residual):
  affine coupling layers with alternating masks (eqs. 7 and 8);
  ``log_prob`` by the change of variables (eq. 6), ``sample`` by the inverse.
* :func:`rle_loss`: the RLE loss (eq. 11): with x_bar = (x - mu) / sigma, per joint
  sum_c log sigma_c - log G_phi(x_bar) - sum_c log Q(x_bar_c), Q a standard Laplace or
  Gaussian (the last term dropped with ``residual=False``); :func:`log_normaliser` the
  ``log s`` term that eq. 11 drops, by Monte Carlo.
* Heatmaps: :func:`render_heatmaps` (Gaussian targets), :func:`heatmap_argmax`
  (quantised to the heatmap grid, eq. 2) and :func:`soft_argmax` (eq. 3,
  differentiable, sub-pixel).
* :class:`PoseNet`: one small CNN backbone with one of five heads: ``"l1"`` regression,
  ``"laplace"``, ``"rle"`` and ``"rle_logs"`` regression (mu and sigma,
  :class:`RegressionHead`; the first is RLE without the flow, a heteroscedastic Laplace,
  the last RLE with the normaliser of :func:`log_normaliser`), ``"heatmap"`` (argmax
  decoding) and ``"integral"`` (soft-argmax decoding); :func:`pose_loss` is the loss of
  each head and :meth:`PoseNet.predict` its decoding to pixels and a per-person score.
* :func:`noisy_labels`: the chapter's heteroscedastic annotation noise.

Coordinates: heads work in unit coordinates u = (x + 0.5) / size - 0.5, in [-0.5, 0.5]
over the image (as the official RLE code normalises its targets); :func:`to_unit` and
:func:`to_pixels` convert. Pixel centres are at integer coordinates, as in
:mod:`lib.people`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .validate import check_bool, check_choice, check_int, check_real, check_tensor

FLOATS = (torch.float32, torch.float64)
HEADS = ("l1", "laplace", "rle", "rle_logs", "heatmap", "integral")
REGRESSION_HEADS = ("l1", "laplace", "rle", "rle_logs")
FLOW_HEADS = ("rle", "rle_logs")

# ------------------------------------------------------------------------------ the flow


def _mlp(dim: int, hidden: int, last: nn.Module | None) -> nn.Sequential:
    layers = [nn.Linear(dim, hidden), nn.LeakyReLU(), nn.Linear(hidden, hidden),
              nn.LeakyReLU(), nn.Linear(hidden, dim)]
    return nn.Sequential(*layers, *([last] if last is not None else []))


class RealNVP(nn.Module):
    """RealNVP flow (Dinh et al., 2017) with affine coupling layers, as RLE uses it.

    Layer i keeps the coordinates where ``mask[i]`` is 1 and transforms the others:
    y = m * x + (1 - m) * (x * exp(s(m * x)) + t(m * x))   (sampling direction, latent
    to data; eq. 7), whose ``log |det|`` is ``sum (1 - m) * s`` (eq. 8).
    s ends in tanh (bounded scales), t is linear; masks alternate between the two halves
    of the coordinates (for d = 2: keep x, then keep y, ...). The base density is a
    standard normal. Weights start small (Xavier with gain 0.01, as in the official RLE
    code and mmpose), so a new flow is close to a plain shift: a near-Gaussian density.
    """

    def __init__(self, dim: int = 2, hidden: int = 64, layers: int = 6):
        super().__init__()
        check_int(dim, "dim", minimum=2)
        check_int(hidden, "hidden", minimum=1)
        check_int(layers, "layers", minimum=1)
        self.dim = dim
        keep = torch.arange(dim) % 2 == 0
        masks = torch.stack([(keep if i % 2 == 0 else ~keep) for i in range(layers)])
        self.register_buffer("mask", masks.float())  # (layers, dim), 1 = kept
        self.s = nn.ModuleList(_mlp(dim, hidden, nn.Tanh()) for _ in range(layers))
        self.t = nn.ModuleList(_mlp(dim, hidden, None) for _ in range(layers))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight, gain=0.01)

    def _check(self, x, name):
        check_tensor(x, name, min_ndim=1, dtypes=FLOATS)
        if x.shape[-1] != self.dim:
            raise ValueError(f"{name} must have shape (..., {self.dim}), got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Data to latent: ``z = f(x)``, ``log |det df/dx|``. (..., d) -> (..., d), (...)."""
        self._check(x, "x")
        z, log_det = x, x.new_zeros(x.shape[:-1])
        for i in reversed(range(len(self.s))):  # undo the layers, last first
            m = self.mask[i]
            kept = m * z
            s, t = self.s[i](kept) * (1 - m), self.t[i](kept) * (1 - m)
            z = kept + (1 - m) * (z - t) * torch.exp(-s)
            log_det = log_det - s.sum(-1)
        return z, log_det

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """Latent to data: x = f^{-1}(z), the coupling layers in order. (..., d)."""
        self._check(z, "z")
        x = z
        for i in range(len(self.s)):
            m = self.mask[i]
            kept = m * x
            s, t = self.s[i](kept) * (1 - m), self.t[i](kept) * (1 - m)
            x = kept + (1 - m) * (x * torch.exp(s) + t)
        return x

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log G(x) = log N(f(x); 0, I) + log |det df/dx|`` (eq. 6). (..., d) -> (...)."""
        z, log_det = self(x)
        return -0.5 * (z**2).sum(-1) - 0.5 * self.dim * math.log(2 * math.pi) + log_det

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n samples (n, d): standard normal latents pushed through the inverse."""
        check_int(n, "n", minimum=0)
        p = self.mask
        z = torch.randn(n, self.dim, generator=generator, dtype=p.dtype).to(p.device)
        return self.inverse(z)


# ------------------------------------------------------------------------------ the loss

LOG_Q = {  # log-densities of the standard residual distributions Q, per coordinate
    "laplace": lambda z: -math.log(2.0) - z.abs(),
    "gaussian": lambda z: -0.5 * math.log(2 * math.pi) - 0.5 * z**2,
}


def rle_loss(
    mu: torch.Tensor,
    sigma: torch.Tensor,
    target: torch.Tensor,
    flow,
    residual: bool = True,
    q: str = "laplace",
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """RLE's negative log-likelihood (eq. 11), averaged over B * K joints.

    mu, sigma, target (B, K, 2), sigma > 0; flow: any object with ``log_prob(z)``
    mapping (..., 2) to (...). With x_bar = (target - mu) / sigma, the loss of joint
    (b, k) is sum_c log sigma_c - log G(x_bar) - sum_c log Q(x_bar_c), with Q the
    standard Laplace (``log Q(z) = -log 2 - |z|``) or Gaussian; ``residual=False`` drops the
    Q term (the flow alone models the density: RLE's "direct likelihood" variant).
    weight (B, K), e.g. 1 for labelled joints and 0 for the others, multiplies each
    joint's loss; the sum is divided by B * K. A scalar tensor.
    """
    check_tensor(mu, "mu", ndim=3, dtypes=FLOATS)
    for name, x in (("sigma", sigma), ("target", target)):
        check_tensor(x, name, ndim=3, dtypes=FLOATS)
        if x.shape != mu.shape:
            raise ValueError(f"{name} must have the shape of mu {tuple(mu.shape)}, "
                             f"got {tuple(x.shape)}")
    if mu.shape[-1] != 2:
        raise ValueError(f"mu must have shape (B, K, 2), got {tuple(mu.shape)}")
    if mu.numel() == 0:
        raise ValueError("mu must hold at least one joint")
    if not callable(getattr(flow, "log_prob", None)):
        raise TypeError(f"flow must have a callable log_prob, got {type(flow).__name__}")
    check_bool(residual, "residual")
    check_choice(q, "q", LOG_Q)
    if not (torch.isfinite(sigma).all() and (sigma > 0).all()):
        raise ValueError("sigma must be positive and finite")
    if not (torch.isfinite(mu).all() and torch.isfinite(target).all()):
        raise ValueError("mu and target must be finite (no NaN or inf)")
    if weight is not None:
        check_tensor(weight, "weight", ndim=2, dtypes=FLOATS + (torch.bool,))
        if weight.shape != mu.shape[:2]:
            raise ValueError(f"weight must have shape {tuple(mu.shape[:2])}, "
                             f"got {tuple(weight.shape)}")
    x_bar = (target - mu) / sigma  # (B, K, 2)
    nll = sigma.log().sum(-1) - flow.log_prob(x_bar)  # (B, K)
    if residual:
        nll = nll - LOG_Q[q](x_bar).sum(-1)
    if weight is not None:
        nll = nll * weight
    return nll.mean()


def _sample_q(q: str, n: int, generator: torch.Generator | None) -> torch.Tensor:
    """n samples (n, 2) of the standard Laplace or Gaussian Q, on the CPU."""
    if q == "gaussian":
        return torch.randn(n, 2, generator=generator)
    u = torch.rand(n, 2, generator=generator) - 0.5  # inverse CDF of the Laplace
    return -torch.sign(u) * torch.log1p(-2 * u.abs().clamp(max=0.5 - 1e-7))


def log_normaliser(flow, q: str = "laplace", n: int = 512,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """``log of the integral of Q G``, the ``-log s`` that eq. 11 drops (eq. 10).

    Monte Carlo: the integral of Q G is the mean of G(z) over samples z of Q, here n fresh
    samples per call (``generator`` seeds them), so the estimate is differentiable in the
    flow's parameters and no grid can be gamed. ``rle_loss(...) + w.mean() *
    log_normaliser(flow)`` (w the joints' weights) is then the exact negative
    log-likelihood of eq. 10, with no sigma-flow gauge (eq. 12). flow: any object with
    ``log_prob`` over (..., 2); the samples go to the device and dtype of the flow's
    parameters when it is a module. A scalar tensor; log(1/4) is its maximum for a Laplace Q.
    """
    if not callable(getattr(flow, "log_prob", None)):
        raise TypeError(f"flow must have a callable log_prob, got {type(flow).__name__}")
    check_choice(q, "q", LOG_Q)
    check_int(n, "n", minimum=1)
    z = _sample_q(q, n, generator)
    if isinstance(flow, nn.Module):  # sample where the flow lives
        ref = next(flow.parameters(), None)
        if ref is not None:
            z = z.to(ref.device, ref.dtype)
    log_g = flow.log_prob(z)  # (n,)
    return torch.logsumexp(log_g, 0) - math.log(n)


# ------------------------------------------------------------------------------ heatmaps


def render_heatmaps(joints: torch.Tensor, size: int | tuple[int, int], sigma: float = 1.0,
                    visible: torch.Tensor | None = None) -> torch.Tensor:
    """Gaussian target heatmaps ``exp(-|p - x_k|^2 / (2 sigma^2))``.

    joints (B, K, 2) in heatmap pixels (pixel centres at integers); size h or (h, w);
    visible (B, K) bool or 0/1: maps of other joints are all zero. -> (B, K, h, w).
    """
    check_tensor(joints, "joints", ndim=3, dtypes=FLOATS)
    if joints.shape[-1] != 2:
        raise ValueError(f"joints must have shape (B, K, 2), got {tuple(joints.shape)}")
    h, w = (size, size) if isinstance(size, int) else size
    check_int(h, "size", minimum=1)
    check_int(w, "size", minimum=1)
    check_real(sigma, "sigma", minimum=0, strict=True)
    ys = torch.arange(h, device=joints.device, dtype=joints.dtype)
    xs = torch.arange(w, device=joints.device, dtype=joints.dtype)
    gx = torch.exp(-((xs - joints[..., :1]) ** 2) / (2 * sigma**2))  # (B, K, w)
    gy = torch.exp(-((ys - joints[..., 1:]) ** 2) / (2 * sigma**2))  # (B, K, h)
    maps = gy[..., :, None] * gx[..., None, :]
    if visible is not None:
        maps = maps * visible.to(maps.dtype)[..., None, None]
    return maps


def _check_heatmaps(heatmaps):
    check_tensor(heatmaps, "heatmaps", ndim=4, dtypes=FLOATS + (torch.float16, torch.bfloat16))
    if heatmaps.shape[-1] * heatmaps.shape[-2] == 0:
        raise ValueError(f"heatmaps must not be empty, got shape {tuple(heatmaps.shape)}")


def heatmap_argmax(heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The cell of each map's maximum, as (x, y) heatmap coordinates, and the maximum.

    heatmaps (B, K, h, w) -> coords (B, K, 2), scores (B, K). The coordinate is always a
    cell centre: the quantisation of eq. 2.
    """
    _check_heatmaps(heatmaps)
    w = heatmaps.shape[-1]
    scores, idx = heatmaps.flatten(-2).max(-1)
    coords = torch.stack([idx % w, torch.div(idx, w, rounding_mode="floor")], -1)
    return coords.to(heatmaps.dtype), scores


def soft_argmax(heatmaps: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """The expected coordinate under softmax(beta * heatmap) over all cells (eq. 3):
    differentiable and sub-pixel. (B, K, h, w) -> (B, K, 2) as (x, y)."""
    _check_heatmaps(heatmaps)
    check_real(beta, "beta", minimum=0, strict=True)
    h, w = heatmaps.shape[-2:]
    p = torch.softmax(beta * heatmaps.flatten(-2).float(), -1).view(heatmaps.shape)
    xs = torch.arange(w, device=p.device, dtype=p.dtype)
    ys = torch.arange(h, device=p.device, dtype=p.dtype)
    x = (p.sum(-2) * xs).sum(-1)  # marginal over rows, then its mean
    y = (p.sum(-1) * ys).sum(-1)
    return torch.stack([x, y], -1).to(heatmaps.dtype)


def to_unit(xy: torch.Tensor, size: float) -> torch.Tensor:
    """Pixel coordinates -> unit coordinates in [-0.5, 0.5] over an image of ``size``."""
    return (xy + 0.5) / size - 0.5


def to_pixels(u: torch.Tensor, size: float) -> torch.Tensor:
    """Unit coordinates -> pixel coordinates (the inverse of :func:`to_unit`)."""
    return (u + 0.5) * size - 0.5


# ------------------------------------------------------------------------------ the network


class _NoFlow:
    """log G = 0 everywhere: :func:`rle_loss` without its flow term."""

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return z.new_zeros(z.shape[:-1])


_NO_FLOW = _NoFlow()


def _conv(c_in, c_out, stride=1):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class RegressionHead(nn.Module):
    """Features (B, C, h, w) -> mu (B, K, 2) in unit coordinates, and sigma (B, K, 2).

    A 1x1 convolution to a few channels, flatten (keeping where things are: a global
    average pool would throw that away), a hidden layer, then linear layers for mu and,
    with ``sigma=True``, for sigma = sigmoid(.) + 1e-4: in (0, 1) as in the official RLE
    code (units of the image size), floored so that log sigma stays finite.
    """

    def __init__(self, channels: int, feature_size: int, num_joints: int,
                 sigma: bool = True, hidden: int = 256, reduced: int = 8):
        super().__init__()
        self.num_joints = num_joints
        self.reduce = nn.Sequential(nn.Conv2d(channels, reduced, 1), nn.ReLU(inplace=True))
        flat = reduced * feature_size**2
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(inplace=True))
        self.mu = nn.Linear(hidden, 2 * num_joints)
        self.sigma = nn.Linear(hidden, 2 * num_joints) if sigma else None
        if sigma:  # start every sigma at 0.05 of the image (3 px at 64 x 64)
            nn.init.xavier_uniform_(self.sigma.weight, gain=0.01)
            nn.init.constant_(self.sigma.bias, math.log(0.05 / 0.95))

    def forward(self, feats):
        f = self.hidden(self.reduce(feats))
        mu = self.mu(f).view(-1, self.num_joints, 2)
        if self.sigma is None:
            return mu, None
        return mu, torch.sigmoid(self.sigma(f)).view(-1, self.num_joints, 2) + 1e-4


@dataclass
class PoseOutput:
    """mu (B, K, 2) unit coordinates (regression heads) or None; sigma (B, K, 2) or None;
    heatmaps (B, K, h, w) or None (heatmap heads)."""

    mu: torch.Tensor | None = None
    sigma: torch.Tensor | None = None
    heatmaps: torch.Tensor | None = None


class PoseNet(nn.Module):
    """A small CNN pose network: images (B, 3, S, S) -> :class:`PoseOutput`.

    Backbone: three 3x3 convolutions (two of stride 2) to features at stride 4, the same
    for every head. head: ``"l1"`` (mu), ``"laplace"``, ``"rle"`` and ``"rle_logs"`` (mu
    and sigma), ``"heatmap"`` and ``"integral"`` (K heatmaps at stride 4). ``flow`` is
    the RLE density model (a :class:`RealNVP`), part of the model for ``"rle"`` and
    ``"rle_logs"`` so that one optimizer trains both; it plays no part in
    :meth:`predict`.
    """

    def __init__(self, head: str = "rle", num_joints: int = 17, image_size: int = 64,
                 width: int = 16):
        super().__init__()
        check_choice(head, "head", HEADS)
        check_int(num_joints, "num_joints", minimum=1)
        check_int(image_size, "image_size", minimum=8)
        check_int(width, "width", minimum=1)
        self.head_name, self.num_joints, self.image_size = head, num_joints, image_size
        c = 2 * width
        self.backbone = nn.Sequential(_conv(3, width, 2), _conv(width, c, 2), _conv(c, c))
        self.stride = 4
        self.heatmap_size = math.ceil(image_size / 4)
        if head in REGRESSION_HEADS:
            self.head = RegressionHead(c, self.heatmap_size, num_joints, sigma=head != "l1")
        else:
            self.head = nn.Sequential(_conv(c, c), nn.Conv2d(c, num_joints, 1))
        self.flow = RealNVP() if head in FLOW_HEADS else None

    def forward(self, images: torch.Tensor) -> PoseOutput:
        check_tensor(images, "images", ndim=4, dtypes=FLOATS)
        if images.shape[1:] != (3, self.image_size, self.image_size):
            raise ValueError(f"images must have shape (B, 3, {self.image_size}, "
                             f"{self.image_size}), got {tuple(images.shape)}")
        feats = self.backbone(images)
        if self.head_name in REGRESSION_HEADS:
            mu, sigma = self.head(feats)
            return PoseOutput(mu=mu, sigma=sigma)
        return PoseOutput(heatmaps=self.head(feats))

    def heatmap_coords(self, xy: torch.Tensor) -> torch.Tensor:
        """Image pixels -> heatmap pixels (cell centres at integers)."""
        return (xy + 0.5) / self.stride - 0.5

    def image_coords(self, xy: torch.Tensor) -> torch.Tensor:
        """Heatmap pixels -> image pixels."""
        return (xy + 0.5) * self.stride - 0.5

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Joints (B, K, 2) in image pixels and a score per image (B,), in eval mode.

        Regression heads: mu (the flow is not used); the score of the RLE and Laplace heads
        is the mean of 1 - sigma over joints and coordinates (as mmpose), plain L1
        regression has no confidence (score 1). Heatmap heads: argmax ("heatmap") or soft-argmax
        ("integral", as trained); the score is the mean of the maps' maxima.
        """
        was = self.training
        self.eval()
        out = self(images)
        self.train(was)
        if out.mu is not None:
            joints = to_pixels(out.mu, self.image_size)
            if out.sigma is None:
                return joints, torch.ones(len(images), device=images.device)
            return joints, (1 - out.sigma).mean((1, 2))
        coords, peak = heatmap_argmax(out.heatmaps)
        if self.head_name == "integral":
            coords = soft_argmax(out.heatmaps)
        return self.image_coords(coords), peak.mean(1)


def pose_loss(model: PoseNet, images: torch.Tensor, joints: torch.Tensor,
              visibility: torch.Tensor, heatmap_sigma: float = 1.0) -> torch.Tensor:
    """The training loss of ``model``'s head on a batch; labelled joints only.

    joints (B, K, 2) image pixels, visibility (B, K). "l1": ``mean |mu - u|`` (unit
    coordinates); "rle": :func:`rle_loss` with the model's flow and a Laplace Q;
    "laplace": the same without the flow (G = 1: the Laplace NLL of eq. 5 with a learned
    sigma); "rle_logs": "rle" plus ``log s`` (:func:`log_normaliser`, its samples drawn
    from torch's global generator), the exact NLL of eq. 10; "heatmap": mean squared
    error to Gaussian targets of ``heatmap_sigma`` cells (eq. 13); "integral":
    ``mean |soft_argmax - target|`` in unit coordinates.
    """
    out = model(images)
    weight = (visibility > 0).to(images.dtype)  # (B, K)
    target = to_unit(joints, model.image_size)
    if model.head_name == "l1":
        return ((out.mu - target).abs().sum(-1) * weight).mean()
    if model.head_name in FLOW_HEADS:
        loss = rle_loss(out.mu, out.sigma, target, model.flow, weight=weight)
        if model.head_name == "rle_logs":  # the normaliser the paper drops, per joint
            loss = loss + weight.mean() * log_normaliser(model.flow)
        return loss
    if model.head_name == "laplace":
        return rle_loss(out.mu, out.sigma, target, _NO_FLOW, weight=weight)
    hm = out.heatmaps
    if model.head_name == "heatmap":
        want = render_heatmaps(model.heatmap_coords(joints), hm.shape[-2:], heatmap_sigma)
        return (((hm - want) ** 2).mean((-2, -1)) * weight).mean()
    xy = model.image_coords(soft_argmax(hm))
    return ((to_unit(xy, model.image_size) - target).abs().sum(-1) * weight).mean()


# ------------------------------------------------------------------------------ the data


def noisy_labels(joints: torch.Tensor, scale: torch.Tensor, outlier: float = 0.1,
                 outlier_scale: float = 3.0, seed: int | torch.Generator = 0
                 ) -> torch.Tensor:
    """Annotations with heteroscedastic, heavy-tailed noise: joints + scale * r * e.

    joints (..., K, 2) pixels; scale (..., K) (broadcast against joints[..., 0]) the noise
    of each joint in pixels; e ~ N(0, I) and r = ``outlier_scale`` with probability
    ``outlier``, else 1. The noise of a joint with scale s has the density
    (1 - outlier) N(0, s^2 I) + outlier N(0, (outlier_scale s)^2 I): neither Gaussian
    nor Laplace, and a different width for every joint.
    """
    check_tensor(joints, "joints", min_ndim=2, dtypes=FLOATS)
    check_tensor(scale, "scale", min_ndim=1, dtypes=FLOATS)
    if joints.shape[-1] != 2:
        raise ValueError(f"joints must have shape (..., K, 2), got {tuple(joints.shape)}")
    try:
        scale = torch.broadcast_to(scale, joints.shape[:-1])
    except RuntimeError:
        raise ValueError(f"scale must broadcast to joints[..., 0] {tuple(joints.shape[:-1])}, "
                         f"got {tuple(scale.shape)}") from None
    if not (torch.isfinite(scale).all() and (scale >= 0).all()):
        raise ValueError("scale must be finite and non-negative")
    check_real(outlier, "outlier", minimum=0, maximum=1)
    check_real(outlier_scale, "outlier_scale", minimum=0)
    gen = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(
        check_int(seed, "seed", minimum=0))
    e = torch.randn(joints.shape, generator=gen, dtype=joints.dtype)
    r = torch.where(torch.rand(joints.shape[:-1], generator=gen) < outlier, outlier_scale, 1.0)
    noise = (scale.cpu().to(joints.dtype) * r)[..., None] * e
    return joints + noise.to(joints.device)
