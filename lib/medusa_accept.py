"""How a verifier accepts drafted tokens: Medusa's greedy and typical acceptance, and the exact
speculative sampling rule that leaves the target distribution unchanged.

Chapter 9 (equation numbers refer to it). Cai et al. (2024), "Medusa" (its reference code's
``evaluate_posterior``); Leviathan, Kalman & Matias (2023), "Fast inference from
transformers via speculative decoding"; Chen et al. (2023), "Accelerating large language
model decoding with speculative sampling".

Shapes: L candidate paths, D their depth (column 0 is the root), V vocabulary, B drafts,
n drafted tokens each.

* :func:`greedy_accept` (eq. 13): the longest prefix of a path that equals the base model's
  argmax at every step; the output is then exactly greedy decoding.
* :func:`typical_accept` (eq. 14) with :func:`typical_threshold`: keep a candidate while its
  probability exceeds min(epsilon, delta exp(-H)); faster, but no longer the base's
  distribution.
* :func:`speculative_sample` (eqs. 3-4): accept a draft token with probability
  min(1, p/q), otherwise resample from norm(max(0, p - q)): exactly the target's
  distribution, whatever the draft.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .validate import check_long_tensor, check_tensor


def typical_threshold(probs: torch.Tensor, posterior_threshold: float = 0.09,
                      posterior_alpha: float = 0.3) -> torch.Tensor:
    """min(epsilon, delta exp(-H(p))) (eq. 14) for each distribution: (..., V) -> (...).

    H is the entropy in nats, with 0 log 0 = 0 (Medusa's code adds 1e-5 inside
    the log). Since H >= -log max p, the threshold is below delta max p: the most
    likely token always passes when delta < 1.
    """
    entropy = torch.special.entr(probs).sum(-1)
    scaled = posterior_alpha * torch.exp(-entropy)
    return torch.clamp(scaled, max=posterior_threshold)


def greedy_accept(predicted: torch.Tensor, candidates: torch.Tensor,
                  valid: torch.Tensor) -> torch.Tensor:
    """Accepted candidates per path (eq. 13): the longest prefix of argmaxes.

    predicted (L, D + 1): the base's argmax token after each node of each
    root-to-leaf path (one argmax per tree node, gathered along the paths);
    candidates (L, D + 1): the paths' tokens, column 0 the root; valid (L, D + 1):
    False on padding. Returns (L,) long: how many of candidates[:, 1:] each path
    keeps.
    """
    match = (candidates[:, 1:] == predicted[:, :-1]) & valid[:, 1:]
    return match.long().cumprod(dim=1).sum(dim=1)


def typical_accept(logits: torch.Tensor, candidates: torch.Tensor,
                   valid: torch.Tensor, temperature: float,
                   posterior_threshold: float = 0.09, posterior_alpha: float = 0.3
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Typical acceptance (eq. 14): keep candidates while p_T > min(eps, d e^-H).

    logits (L, D + 1, V): the base's logits after each node of each path;
    candidates and valid as in :func:`greedy_accept`; p_T = softmax(logits / T).
    Returns the accepted count per path (L,) and the log-likelihood of each path's
    accepted part (L,), which breaks ties between paths of equal length.
    """
    probs = torch.softmax(logits[:, :-1].float() / temperature, -1)  # (L, D, V)
    tokens = candidates[:, 1:].clamp_min(0)
    p_cand = probs.gather(-1, tokens[..., None])[..., 0]  # (L, D)
    threshold = typical_threshold(probs, posterior_threshold, posterior_alpha)
    keep = ((p_cand > threshold) & valid[:, 1:]).long().cumprod(dim=1)
    loglik = (torch.log(p_cand.clamp_min(1e-30)) * keep).sum(dim=1)
    return keep.sum(dim=1), loglik


# --------------------------------------------------------------- speculative sampling


@dataclass
class SpeculativeResult:
    """tokens (B, n + 1): the accepted draft tokens then one token from the target (padded
    with -1); num_tokens (B,): accepted + 1, between 1 and n + 1."""

    tokens: torch.Tensor
    num_tokens: torch.Tensor


def _check_probs(p, name: str) -> None:
    check_tensor(p, name, ndim=3, dtypes=(torch.float32, torch.float64))
    if not torch.isfinite(p).all() or (p < 0).any():
        raise ValueError(f"{name} must hold finite non-negative probabilities")
    if not torch.allclose(p.sum(-1), torch.ones((), dtype=p.dtype), rtol=0, atol=1e-4):
        raise ValueError(f"every row of {name} must sum to 1 (within 1e-4)")


def speculative_sample(p: torch.Tensor, q: torch.Tensor, draft: torch.Tensor,
                       generator: torch.Generator | None = None) -> SpeculativeResult:
    """The exact draft-and-verify rule (eqs. 3-4), for a batch of B independent drafts.

    p (B, n + 1, V): the target's distributions after the prefix and after each draft token
    (one verification pass); q (B, n, V): the draft's distributions; draft (B, n): the
    tokens drawn from q. Draft token i is accepted with probability min(1, p_i(x) / q_i(x));
    at the first rejection, a token is drawn from norm(max(0, p_i - q_i)); if all n are
    accepted, a bonus token is drawn from p_n. The output then has exactly the target's
    distribution, whatever q is (the chapter's proof; the test's chi-square check).
    """
    _check_probs(p, "p")
    _check_probs(q, "q")
    check_long_tensor(draft, "draft", ndim=2)
    b, n, v = q.shape
    if b < 1 or n < 1 or v < 1:
        raise ValueError(f"q must hold at least one draft of at least one token over a "
                         f"non-empty vocabulary, got shape {tuple(q.shape)}")
    if p.shape != (b, n + 1, v) or draft.shape != (b, n):
        raise ValueError(f"p must be (B, n + 1, V) = {(b, n + 1, v)} and draft (B, n) = "
                         f"{(b, n)} to match q {tuple(q.shape)}; got p {tuple(p.shape)}, "
                         f"draft {tuple(draft.shape)}")
    if p.dtype != q.dtype or p.device != q.device or draft.device != q.device:
        raise ValueError("p, q and draft must share a device, and p and q a dtype")
    check_long_tensor(draft, "draft", low=0, high=v)
    q_x = q.gather(-1, draft[..., None])[..., 0]  # (B, n)
    if (q_x <= 0).any():
        raise ValueError("draft holds a token that q gives probability 0: it cannot have "
                         "been drawn from q")
    p_x = p[:, :n].gather(-1, draft[..., None])[..., 0]
    u = torch.rand(b, n, dtype=p.dtype, device=p.device, generator=generator)
    accept = u < (p_x / q_x).clamp(max=1.0)  # eq. (3)
    n_acc = accept.long().cumprod(dim=1).sum(dim=1)  # (B,)
    rows = torch.arange(b, device=p.device)
    p_next = p[rows, n_acc]  # (B, V): where the first rejection (or the bonus) happened
    q_next = torch.where((n_acc < n)[:, None], q[rows, n_acc.clamp(max=n - 1)],
                         torch.zeros_like(p_next))
    residual = (p_next - q_next).clamp_min(0.0)  # eq. (4); equals p_n for the bonus token
    mass = residual.sum(-1, keepdim=True)
    residual = torch.where(mass > 0, residual / mass.clamp_min(1e-30), p_next)
    last = torch.multinomial(residual, 1, generator=generator)[:, 0]
    tokens = torch.full((b, n + 1), -1, dtype=torch.long, device=p.device)
    keep = torch.arange(n, device=p.device) < n_acc[:, None]
    tokens[:, :n] = torch.where(keep, draft, tokens[:, :n])
    tokens[rows, n_acc] = last
    return SpeculativeResult(tokens, n_acc + 1)
