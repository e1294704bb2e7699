"""DARe, the Distribution Alignment Regulariser (Tomer & Sharma, "Representation Learning
Algorithms", the paper that proposes it): a VAE-inspired contrastive method. The head ``g``
predicts a diagonal Gaussian ``N(μ, σ²I)`` per view from ``f(x)``; the projections are
reparameterised samples ``z = μ + σ⊙ε``, and the loss is a contrastive term on ``z`` plus ``λ_D``
times the Jensen-Shannon divergence between the two views' Gaussians (docs/methods.md settles
what the paper leaves open: the decoupled cross-view contrastive term, the KL with its −1, the
moment-matched JSD midpoint)."""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from sslsearch.methods.base import Method as BaseMethod
from sslsearch.methods.base import Step, Task, check_temperature
from sslsearch.methods.simclr import nt_xent_loss
from sslsearch.parts import ops
from sslsearch.parts.distributed import rows_like
from sslsearch.parts.networks import Backbone, mlp
from sslsearch.parts.ops import fp32_loss

CONTRASTIVE = ("decoupled", "ntxent")

# log σ² is clamped to this range before it is exponentiated. Without it a head that drifts far
# (early training, a large learning rate) overflows exp() to inf in σ²/σ² ratios and 1/σ² (float32
# overflows at exp(88)) and the loss turns NaN; σ between e^-5 ≈ 0.007 and e^5 ≈ 150 is far wider
# than anything the loss favours on normalised-cosine projections. Outside the range the clamp
# passes no gradient, which only stops a runaway head, not ordinary learning.
LOGVAR_MIN = -10.0
LOGVAR_MAX = 10.0


@dataclasses.dataclass(frozen=True)
class Config:
    temperature: float = 0.2  # τ of the contrastive term (the paper does not give it)
    lambda_jsd: float = 0.01  # λ_D, weight of the JSD alignment term (the paper does not give it)
    contrastive: str = "decoupled"  # L_con: "decoupled" (the paper's formula) or "ntxent" (SimCLR)
    proj_hidden_dim: int = 2048  # head g: Linear-BN-ReLU to this width, then Linear to 2·d
    proj_output_dim: int = 128  # d, the dimension of μ, log σ² and z (paper's sizes not given)

    def check(self) -> None:
        check_temperature(self.temperature)
        if self.lambda_jsd < 0:
            raise ValueError(f"lambda_jsd must be ≥ 0, found {self.lambda_jsd}")
        if self.contrastive not in CONTRASTIVE:
            raise ValueError(f"contrastive must be one of {', '.join(CONTRASTIVE)}, "
                             f"found {self.contrastive!r}")
        if self.proj_hidden_dim < 1 or self.proj_output_dim < 1:
            raise ValueError("proj_hidden_dim and proj_output_dim must be ≥ 1")


@fp32_loss
def gaussian_kl(mu1: Tensor, logvar1: Tensor, mu2: Tensor, logvar2: Tensor) -> Tensor:
    """Closed-form ``KL(N(μ₁, σ₁²I) ‖ N(μ₂, σ₂²I))`` of diagonal Gaussians, inputs of shape N × d.

    Per sample, summed over the d dimensions, **with** the −1 per dimension that the DARe paper's
    eq. (1) drops (docs/methods.md), so that KL(N ‖ N) = 0::

        KL_n = ½ Σ_d ( σ₁²/σ₂² + log(σ₂²/σ₁²) + (μ₂ − μ₁)²/σ₂² − 1 )

    Returns the mean of ``KL_n`` over the batch (per-sample sums, batch mean: the value of a single
    sample's KL, independent of N). Variances enter as log-variances, and ratios are formed as
    ``exp(logvar₁ − logvar₂)``, so no σ² is exponentiated on its own. Computed in float32 (float64
    kept) with autocast off (:func:`sslsearch.parts.ops.fp32_loss`).
    """
    ratio = torch.exp(logvar1 - logvar2)  # σ₁²/σ₂²: N x d
    mahalanobis = (mu2 - mu1).pow(2) * torch.exp(-logvar2)  # (μ₂ − μ₁)²/σ₂²: N x d
    per_dim = ratio + (logvar2 - logvar1) + mahalanobis - 1.0  # N x d
    return 0.5 * per_dim.sum(dim=1).mean()


@fp32_loss
def gaussian_jsd(mu1: Tensor, logvar1: Tensor, mu2: Tensor, logvar2: Tensor) -> Tensor:
    """Jensen-Shannon divergence of ``N(μ₁, σ₁²I)`` and ``N(μ₂, σ₂²I)`` (docs/methods.md).

    The JSD of two Gaussians has no closed form (the true midpoint ½(N₁ + N₂) is a mixture, not a
    Gaussian). docs/methods.md replaces the mixture by its moment-matched Gaussian, per dimension::

        N_m = N( (μ₁ + μ₂)/2,  (σ₁² + σ₂²)/2 + ((μ₁ − μ₂)/2)² )
        JSD = ½ KL(N₁ ‖ N_m) + ½ KL(N₂ ‖ N_m)

    with :func:`gaussian_kl` (per-sample sums over d, batch mean). ``σ_m²`` is the mixture's true
    variance: the average variance plus the spread of the means. An earlier version left the
    spread out, ``σ_m² = (σ₁² + σ₂²)/2``, and then each KL's ``(μ − μ_m)²/σ_m²`` term makes the
    penalty grow like Δ²/(8σ²) (Δ = |μ₁ − μ₂|, equal σ), while the true JSD is bounded by log 2 per
    dimension. With matched moments the Mahalanobis terms cancel against the variance ratios, and
    per dimension ``JSD = ½ (log σ_m² − ½ (log σ₁² + log σ₂²))``: half the log of σ_m² over the
    geometric mean of the two variances. It still grows without bound for far-apart means, like
    ``log(Δ/2σ)``. Against a Monte-Carlo estimate of the true JSD of two 1-D Gaussians of equal σ
    (10⁶ samples each, tests/methods/test_dare.py), by Δ/σ::

        Δ/σ              0.5      1        2        3        5        10
        true (MC)        0.0305   0.1118   0.3374   0.5272   0.6759   0.6931 (→ log 2)
        moment-matched   0.0303   0.1116   0.3466   0.5893   0.9905   1.6290
        without spread   0.0312   0.1250   0.5000   1.1250   3.1250   12.500

    so it tracks the true JSD closely up to 2σ (+3 %), is 12 % high at 3σ, passes log 2 at
    Δ = 2√3σ ≈ 3.5σ and overshoots beyond. Unequal variances are overestimated too, even at equal
    means: σ₂ = 2σ₁ gives 0.1116 against a true 0.0931 (+20 %; 0.1592 vs 0.1288 at Δ = σ₁).
    What is shipped is this moment-matched form. It is symmetric, ≥ 0, and 0 iff the two Gaussians
    are equal. ``log σ_m²`` is formed in log space, ``logaddexp(logaddexp(logvar₁, logvar₂) −
    log 2, log((μ₁ − μ₂)²/4))``, without exponentiating a variance on its own; the squared spread
    is floored at the dtype's smallest normal number before its log, so equal means give
    ``log σ_m² = log((σ₁² + σ₂²)/2)`` and a zero (not NaN) gradient through the spread. Computed
    in float32 (float64 kept) with autocast off (:func:`sslsearch.parts.ops.fp32_loss`).
    """
    mu_m = 0.5 * (mu1 + mu2)  # N x d
    log_avg_var = torch.logaddexp(logvar1, logvar2) - math.log(2.0)  # log((σ₁² + σ₂²)/2): N x d
    spread = (0.5 * (mu1 - mu2)).pow(2)  # ((μ₁ − μ₂)/2)²: N x d
    log_spread = torch.log(spread.clamp_min(torch.finfo(spread.dtype).tiny))  # N x d
    logvar_m = torch.logaddexp(log_avg_var, log_spread)  # log σ_m²: N x d
    return 0.5 * gaussian_kl(mu1, logvar1, mu_m, logvar_m) + 0.5 * gaussian_kl(
        mu2, logvar2, mu_m, logvar_m)


def _decoupled_direction(logits: Tensor) -> Tensor:
    """``mean_i [ −logits_ii + log Σ_{j≠i} exp(logits_ij) ]`` for an N × N logit matrix."""
    n = logits.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=logits.device)
    positives = logits.diagonal()  # N
    negatives = logits.masked_fill(eye, float("-inf"))  # N x N, the positive left out
    return (torch.logsumexp(negatives, dim=1) - positives).mean()


@fp32_loss
def decoupled_contrastive_loss(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """The DARe paper's ``L_con``: cross-view contrastive loss with the positive LEFT OUT of the
    denominator (the decoupled contrastive loss of Yeh et al., 2022), z1, z2 of shape N × d.

    With ``s_ij = sim(z1_i, z2_j)`` the cosine similarity (z1 anchors, z2 candidates)::

        ℓ(z1→z2) = 1/N Σ_i −log( exp(s_ii/τ) / Σ_{j≠i} exp(s_ij/τ) )
        L = ½ [ ℓ(z1→z2) + ℓ(z2→z1) ]

    Two choices beyond the paper's formula, which sums over i in one direction only:

    - the mean over i, not the sum, keeps the loss's scale (and so the weight λ_D of the JSD
      against it) independent of the batch size;
    - symmetrised over the two views: the views are exchangeable, so the one-direction loss would
      depend on which view is called "1"; averaging both directions uses every sample as an anchor
      twice, as NT-Xent does.

    Unlike NT-Xent the loss is not bounded below by 0: it tends to ``log(N−1) − 1/τ`` when the
    positives align and the negatives are orthogonal. N must be ≥ 2: with N = 1 the denominator is
    empty (log 0) and the loss is +∞, so a ``ValueError`` is raised. Computed in float32 (float64
    kept) with autocast off (:func:`sslsearch.parts.ops.fp32_loss`).
    """
    n = z1.shape[0]
    if n < 2:
        raise ValueError(f"the decoupled contrastive loss needs a batch of at least 2, found {n}")
    u1 = torch.nn.functional.normalize(z1, dim=1)  # N x d
    u2 = torch.nn.functional.normalize(z2, dim=1)  # N x d
    logits = u1 @ u2.T / temperature  # logits: N x N, s_ij/τ
    return 0.5 * (_decoupled_direction(logits) + _decoupled_direction(logits.T))


@fp32_loss
def dare_loss(z1: Tensor, z2: Tensor, mu1: Tensor, logvar1: Tensor, mu2: Tensor, logvar2: Tensor,
              temperature: float, lambda_jsd: float, contrastive: str = "decoupled"
              ) -> tuple[Tensor, Tensor, Tensor]:
    """``L_DARe = L_con(z₁, z₂) + λ_D · JSD(N(μ₁, σ₁²I), N(μ₂, σ₂²I))`` (docs/methods.md).

    ``z`` are the reparameterised samples ``μ + σ⊙ε`` of each view, all tensors N × d,
    log-variances ``logvar = log σ²``. ``L_con`` is :func:`decoupled_contrastive_loss`
    (``contrastive="decoupled"``) or SimCLR's :func:`~sslsearch.methods.simclr.nt_xent_loss`
    (``"ntxent"``); the JSD is :func:`gaussian_jsd`. Returns ``(total, contrastive term,
    jsd term)``, the terms unweighted. Computed in float32 (float64 kept) with autocast off
    (:func:`sslsearch.parts.ops.fp32_loss`).
    """
    if contrastive == "decoupled":
        con = decoupled_contrastive_loss(z1, z2, temperature)
    elif contrastive == "ntxent":
        con = nt_xent_loss(z1, z2, temperature)
    else:
        raise ValueError(f"contrastive must be one of {', '.join(CONTRASTIVE)}, "
                         f"found {contrastive!r}")
    jsd = gaussian_jsd(mu1, logvar1, mu2, logvar2)
    return con + lambda_jsd * jsd, con, jsd


class Method(BaseMethod):
    """DARe: a Gaussian head, reparameterised projections, contrastive + λ_D·JSD loss.

    Several workers: the noise ε is drawn for the GLOBAL batch and each worker keeps its rows
    (sample i gets the same ε whatever the number of workers); μ, log σ² and the samples z of
    every worker are gathered with their gradients, so the contrastive term's negatives are the
    global batch's, and every worker computes the same global loss
    (:mod:`sslsearch.parts.distributed`); BatchNorm sees the global batch.
    """

    def __init__(self, cfg: Config, backbone: Backbone, task: Task) -> None:
        super().__init__(cfg, backbone, task)
        # g: an MLP trunk (Linear-BN-ReLU) then ONE linear layer to 2·d, split into μ and log σ²
        # (the same as two linear outputs sharing the trunk, in one matmul).
        self.projector = mlp([backbone.out_dim, cfg.proj_hidden_dim, 2 * cfg.proj_output_dim])

    def gaussian(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(μ, log σ²) of ``g(f(x))``, in float32, log σ² clamped to [LOGVAR_MIN, LOGVAR_MAX]."""
        # float32 even under bf16 autocast: σ = exp(½ log σ²) and the sample z = μ + σ⊙ε are
        # formed outside the loss (which upcasts its own inputs: ops.fp32_loss), and ε is drawn
        # in μ's dtype.
        out = ops.at_least_fp32(self.projector(self.backbone(x)))  # N x 2d
        mu, logvar = out.chunk(2, dim=1)  # N x d each
        return mu, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)

    def forward(self, x1: Tensor, x2: Tensor, y: Tensor, step: Step) -> dict[str, Tensor]:
        mu1, logvar1 = self.gaussian(x1)
        mu2, logvar2 = self.gaussian(x2)
        # Reparameterisation z = μ + σ⊙ε: gradients reach μ and log σ² through the sample. ε comes
        # from the global RNG, which the loop checkpoints, so a resumed run draws the same ε.
        # ε for the global batch, this worker's rows (one process: torch.randn_like(μ)).
        eps1 = self.group.sharded(lambda n: torch.randn_like(rows_like(mu1, n)), mu1.shape[0])
        eps2 = self.group.sharded(lambda n: torch.randn_like(rows_like(mu2, n)), mu2.shape[0])
        z1 = mu1 + torch.exp(0.5 * logvar1) * eps1  # N x d
        z2 = mu2 + torch.exp(0.5 * logvar2) * eps2  # N x d
        z1, z2, mu1, mu2, logvar1, logvar2 = (self.group.gather(t) for t in (
            z1, z2, mu1, mu2, logvar1, logvar2))  # global N x d each
        total, con, jsd = dare_loss(z1, z2, mu1, logvar1, mu2, logvar2, self.cfg.temperature,
                                    self.cfg.lambda_jsd, self.cfg.contrastive)
        # logvar: the mean log σ², to see whether σ shrinks to the clamp (noise switched off).
        logvar = 0.5 * (logvar1.mean() + logvar2.mean())
        return {"loss": total, "contrastive": con, "jsd": jsd, "logvar": logvar.detach()}

    def embed(self, x: Tensor) -> Tensor:
        """μ, the deterministic embedding (no sampling noise in the collapse diagnostics)."""
        return self.gaussian(x)[0]
