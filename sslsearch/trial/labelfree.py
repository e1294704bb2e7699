"""Label-free measures of representation quality, to rank trials when there are no labels.

Three spectral metrics of frozen (backbone) features, each as its paper defines it:

- :func:`rankme`: RankMe (Garrido et al., 2023), the smoothed effective rank of the features.
- :func:`lidar`: LiDAR (Thilak et al., 2024), the same effective rank of the LDA matrix of a
  surrogate task whose classes are the images and whose samples are their augmented views.
- :func:`alpha_req`: α-ReQ (Agrawal et al., 2022), the power-law decay α of the covariance
  eigenspectrum; good values are near 1 (not monotone), so a search maximises
  :func:`alpha_req_score` = −|α − 1| instead of α.

Conventions (all three): the input is any real tensor; the computation runs in float64 on the
input's device (on CPU for MPS, which has no float64) under ``inference_mode``, with no host sync
of its own (no ``.item()``, no boolean indexing, no branch on a value), so a caller pays one sync
per epoch for all its metrics, as with :func:`sslsearch.trial.evaluation.collapse_diagnostics`. Each
returns a 0-dim float64 tensor; ``float(x)`` for logging. Non-finite input (a diverged trial) gives
NaN, not an exception. Shape errors raise ``ValueError``.

:data:`METRICS` names them for ``search.metric``: which input each needs (features or views) and
that "best" means the maximum of its objective.

Rank-type metrics compare runs of one method; whitening losses (Barlow Twins, VICReg) inflate them
(docs/methods.md). LiDAR and α-ReQ are invariant to translation and (α-ReQ) scale, so a constant
embedding plus tiny *isotropic* noise reads as healthy to them (the noise is all that is left once
centred); RankMe, uncentred, reads it as rank 1. Dimensional collapse (features in a subspace plus
tiny noise) reads as collapse to all three.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Literal, overload

import torch
from torch import Tensor

EPS = 1e-7
# The fewest validation images the metrics take (α-ReQ fits a slope through ≥ 2 eigenvalues).
MIN_SAMPLES = 3
"""The ε of ``p_k = λ_k/‖λ‖₁ + ε`` (RankMe's value, which LiDAR reuses)."""

LIDAR_DELTA = 1e-4
"""The δ of LiDAR's ``Σ_w + δ·I``."""


def _float64(x: Tensor) -> Tensor:
    """``x`` in float64 on its own device (on CPU for MPS, which has no float64)."""
    if x.device.type == "mps":
        x = x.cpu()
    return x.detach().to(torch.float64)


def _check(x: Tensor, what: str, ndim: int, layout: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != ndim:
        raise ValueError(f"{what} must be {ndim}-D ({layout}), got shape {tuple(x.shape)}")
    if x.is_complex():
        raise ValueError(f"{what} must be real, got dtype {x.dtype}")


def _finite_or_nan(value: Tensor, x: Tensor) -> Tensor:
    """``value``, or NaN where ``x`` holds a non-finite number (no host sync)."""
    return torch.where(torch.isfinite(x).all(), value, torch.full_like(value, math.nan))


@torch.inference_mode()
def smoothed_entropy_rank(values: Tensor, eps: float = EPS) -> Tensor:
    """``exp(−Σ_k p_k log p_k)`` with ``p_k = v_k/‖v‖₁ + ε``: the effective rank of a spectrum.

    The formula of RankMe (Garrido et al., 2023, eq. 1) over singular values, which LiDAR
    (Thilak et al., 2024) applies to eigenvalues. ``values`` (1-D, ≥ 0) are the spectrum;
    negative entries (round-off of a PSD matrix's eigenvalues) are clamped to 0. ε = 1e-7 as in
    both papers keeps ``log`` finite at zero values; it is added after normalising, so ``p``
    sums to 1 + kε and a spectrum of k equal values gives k(1 + O(kε·log k)), not exactly k.
    An all-zero spectrum gives ≈ 1 (every ``p_k = ε``). Returns a 0-dim tensor of ``values``'s
    dtype.
    """
    v = values.clamp_min(0)
    total = v.sum().clamp_min(torch.finfo(v.dtype).tiny)
    p = v / total + eps
    return torch.exp(-(p * torch.log(p)).sum())


@torch.inference_mode()
def rankme(features: Tensor, eps: float = EPS) -> Tensor:
    """RankMe (Garrido et al., 2023, "RankMe: Assessing the downstream performance of pretrained
    self-supervised representations by their rank"): the smoothed effective rank

        RankMe(Z) = exp(−Σ_k p_k log p_k),   p_k = σ_k(Z)/‖σ(Z)‖₁ + ε,   ε = 1e-7,

    over the min(n, d) singular values σ of the n × d feature matrix ``features``, **not**
    centred (as in the paper): 1 under complete collapse (a constant vector plus tiny noise),
    at most min(n, d); d for the identity, in general ≈ the number of equal singular values.
    Invariant to orthogonal maps of rows or features and to scale; not to translation.
    Returns a 0-dim float64 tensor on the input's device.
    """
    _check(features, "features", 2, "n samples × d features")
    n, d = features.shape
    if n < 1 or d < 1:
        raise ValueError(f"features must be non-empty, got shape {(n, d)}")
    z = _float64(features)
    s = singular_values(torch.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0))
    return _finite_or_nan(smoothed_entropy_rank(s, eps), z)


def singular_values(z: Tensor) -> Tensor:
    """The singular values of ``z`` (n × d, float64), largest first, as the square roots of the
    eigenvalues of the smaller Gram matrix (``z zᵀ`` or ``zᵀ z``): about 10× faster than an SVD
    on the CPU for the wide feature matrices here (1,024 × 3,136: 0.7 s against 7 s), accurate
    to ~1e-8 of the largest, which is all the smoothed entropy and the spectrum's slope can see."""
    gram = z @ z.T if z.shape[0] <= z.shape[1] else z.T @ z
    values: Tensor = torch.linalg.eigvalsh(gram).clamp_min(0.0).sqrt().flip(0)
    return values


def _inverse_sqrt_psd(m: Tensor) -> Tensor:
    """``m^{-1/2}`` of a symmetric positive-definite ``m`` by its eigendecomposition."""
    w, v = torch.linalg.eigh(m)
    out: Tensor = (v * w.clamp_min(torch.finfo(w.dtype).tiny).rsqrt()) @ v.T
    return out


def _lidar_views(views: Tensor) -> Tensor:
    """``views`` checked (n × q × d, n ≥ 2, q ≥ 2) and in float64."""
    _check(views, "views", 3, "n images × q augmented views × d features")
    n, q, d = views.shape
    if n < 2 or q < 2 or d < 1:
        raise ValueError("views must hold n ≥ 2 images (surrogate classes) of q ≥ 2 views each "
                         f"(n × q × d), got shape {(n, q, d)}")
    return _float64(views)


def _lidar_matrix64(e: Tensor, delta: float) -> Tensor:
    n, q, d = e.shape
    e = torch.nan_to_num(e, nan=0.0, posinf=0.0, neginf=0.0)
    means = e.mean(dim=1)                                    # μ_i, n × d
    between = means - means.mean(dim=0)                      # μ_i − μ
    sigma_b = between.T @ between / (n - 1)
    within = (e - means[:, None, :]).reshape(n * q, d)       # e_ij − μ_i
    sigma_w = within.T @ within / (n * (q - 1))
    sigma_w = sigma_w + delta * torch.eye(d, dtype=e.dtype, device=e.device)
    root = _inverse_sqrt_psd(sigma_w)
    out = root @ sigma_b @ root
    return (out + out.T) / 2                                 # symmetric up to round-off


@torch.inference_mode()
def lidar_matrix(views: Tensor, delta: float = LIDAR_DELTA) -> Tensor:
    """LiDAR's ``Σ_lidar = Σ_w^{-1/2} Σ_b Σ_w^{-1/2}`` (d × d) of ``views`` (n × q × d): see
    :func:`lidar` for the definitions. Float64, on the input's device."""
    return _lidar_matrix64(_lidar_views(views), delta)


@torch.inference_mode()
def lidar(views: Tensor, delta: float = LIDAR_DELTA, eps: float = EPS) -> Tensor:
    """LiDAR (Thilak et al., 2024, "LiDAR: Sensing Linear Probing Performance in Joint Embedding
    SSL Architectures"): the smoothed effective rank of the LDA matrix of the surrogate task whose
    classes are the n images and whose samples are each image's q augmented views.

    ``views[i, j]`` (n × q × d) is the feature vector of view j of image i. With class means
    ``μ_i = (1/q) Σ_j e_ij`` and their mean ``μ = (1/n) Σ_i μ_i``:

        Σ_b = 1/(n−1) Σ_i (μ_i − μ)(μ_i − μ)ᵀ                        (between-class)
        Σ_w = 1/(n(q−1)) Σ_i Σ_j (e_ij − μ_i)(e_ij − μ_i)ᵀ + δ·I     (within-class, δ = 1e-4)
        Σ_lidar = Σ_w^{-1/2} Σ_b Σ_w^{-1/2}
        LiDAR = exp(−Σ_k p_k log p_k),   p_k = λ_k(Σ_lidar)/‖λ‖₁ + ε,   ε = 1e-7.

    The paper writes Σ_b and Σ_w as expectations; these are their unbiased estimates. The
    normalisations only matter through δ (the entropy is scale-free): δ sets the within-class
    variance below which directions count as noise, so features should be on their natural
    scale (not rescaled per trial). Σ_b has rank ≤ n − 1, so LiDAR ≤ min(n − 1, d); n = 2
    images give ≈ 1. Invariant to translation, orthogonal maps of the features, and the order of
    images and of views. Returns a 0-dim float64 tensor on the input's device.
    """
    e = _lidar_views(views)
    n, q, d = e.shape
    spectrum = (_lidar_spectrum_lowrank(e, delta) if d > n * q
                else torch.linalg.eigvalsh(_lidar_matrix64(e, delta)))
    return _finite_or_nan(smoothed_entropy_rank(spectrum, eps), e)


def _lidar_spectrum_lowrank(e: Tensor, delta: float) -> Tensor:
    """The d eigenvalues of ``Σ_lidar`` without a d × d eigendecomposition, for d > n·q (wide
    backbone features, few views): exactly the dense path's, at O(d·(nq)²) instead of O(d³).

    ``Σ_b = B Bᵀ`` (B: d × n, the centred class means / √(n−1)) has rank ≤ n, so the non-zero
    eigenvalues of ``Σ_w^{-1/2} Σ_b Σ_w^{-1/2}`` are those of the n × n ``Bᵀ Σ_w^{-1} B``; with
    ``Σ_w = W Wᵀ + δI`` (W: d × nq, the centred views / √(n(q−1))), Woodbury gives
    ``Σ_w^{-1} = (I − W (δI + WᵀW)^{-1} Wᵀ) / δ``. The other d − n eigenvalues are 0 (they still
    count in the smoothed entropy, through ε)."""
    n, q, d = e.shape
    e = torch.nan_to_num(e, nan=0.0, posinf=0.0, neginf=0.0)
    means = e.mean(dim=1)
    b = (means - means.mean(dim=0)).T / math.sqrt(n - 1)               # B: d × n
    w = (e - means[:, None, :]).reshape(n * q, d).T / math.sqrt(n * (q - 1))  # W: d × nq
    inner = delta * torch.eye(n * q, dtype=e.dtype, device=e.device) + w.T @ w
    wb = w.T @ b                                                        # nq × n
    m = (b.T @ b - wb.T @ torch.linalg.solve(inner, wb)) / delta        # n × n
    small = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0.0)
    return torch.cat([small, small.new_zeros(d - n)])


def _covariance_spectrum64(z: Tensor) -> Tensor:
    n, d = z.shape
    z = torch.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0)
    s = singular_values(z - z.mean(dim=0))
    return s[: min(n - 1, d)].square() / max(n - 1, 1)


@torch.inference_mode()
def covariance_spectrum(features: Tensor) -> Tensor:
    """Eigenvalues of the covariance ``(Z − Z̄)ᵀ(Z − Z̄)/(n − 1)`` of ``features`` (n × d),
    descending: the min(n − 1, d) that the centring leaves possibly non-zero. Float64."""
    _check(features, "features", 2, "n samples × d features")
    return _covariance_spectrum64(_float64(features))


@torch.inference_mode()
def alpha_req(features: Tensor, k_min: int = 1, k_max: int | None = None) -> Tensor:
    """α-ReQ (Agrawal et al., 2022, "α-ReQ: Assessing Representation Quality in Self-Supervised
    Learning by measuring eigenspectrum decay"): the decay α of the power law ``λ_k ∝ k^{−α}``
    fitted to the eigenvalues λ_1 ≥ λ_2 ≥ … of the covariance of ``features`` (n × d, centred):

        α = −slope of the ordinary least-squares line of log λ_k against log k,
            over k ∈ [k_min, min(k_max, n − 1, d)] with λ_k numerically non-zero.

    Fitted range: by default the whole spectrum the data can have (centring leaves at most
    n − 1 non-zero eigenvalues, so k ≤ min(n − 1, d)), less the eigenvalues that are zero to
    working precision (λ_k ≤ λ_1·max(n, d)·ε_float64, numpy's ``matrix_rank`` rule applied to
    the Gram matrix the eigenvalues come from, :func:`singular_values`; their logarithm is
    round-off, not spectrum). The
    authors' library (reptrix) fits k ∈ [6, 100] with 1/k weights for wide ResNet features;
    backbones here are often narrower than 100, hence the whole spectrum by default; pass
    ``k_min``/``k_max`` (1-based, inclusive) to restrict it.

    α is scale-, translation- and rotation-invariant. Eigenvalues ``k^{-1}`` give α = 1 exactly;
    a white (isotropic) spectrum a small α (≈ 0.3 at n = 16·d: the sample spectrum's spread,
    0 only as n/d → ∞); dimensional collapse (a few large eigenvalues
    then a noise floor) a large α. Good values are near 1 and the metric is **not monotone**:
    maximise :func:`alpha_req_score` (= −|α − 1|), not α. Fewer than two non-zero eigenvalues
    in range (total or rank-1 collapse) give α = +inf (score −inf: the worst). Returns a 0-dim
    float64 tensor on the input's device.
    """
    _check(features, "features", 2, "n samples × d features")
    n, d = features.shape
    if n < MIN_SAMPLES or d < 2:
        raise ValueError("alpha_req needs n ≥ 3 samples and d ≥ 2 features (two covariance "
                         f"eigenvalues to fit a slope), got shape {(n, d)}")
    if k_min < 1 or (k_max is not None and k_max < k_min + 1):
        raise ValueError(f"the fitted range must be 1 ≤ k_min < k_max, got {k_min}, {k_max}")
    z = _float64(features)
    lam = _covariance_spectrum64(z)
    k = torch.arange(1, lam.numel() + 1, dtype=lam.dtype, device=lam.device)
    s = lam.sqrt()
    # Zero to working precision: through the Gram matrix (singular_values), an eigenvalue below
    # λ₁·max(n, d)·ε, i.e. σ below σ₁·√(max(n, d)·ε).
    keep = (s > s[0] * math.sqrt(max(n, d) * torch.finfo(lam.dtype).eps)) & (k >= k_min)
    if k_max is not None:
        keep &= k <= k_max
    w = keep.to(lam.dtype)
    x = torch.log(k)
    y = torch.where(keep, torch.log(lam.clamp_min(torch.finfo(lam.dtype).tiny)), 0.0)
    count = w.sum()
    x_bar = (w * x).sum() / count.clamp_min(1)
    y_bar = (w * y).sum() / count.clamp_min(1)
    sxx = (w * (x - x_bar) ** 2).sum()
    sxy = (w * (x - x_bar) * (y - y_bar)).sum()
    alpha = -sxy / sxx.clamp_min(torch.finfo(lam.dtype).tiny)
    alpha = torch.where(count >= 2, alpha, torch.full_like(alpha, math.inf))
    return _finite_or_nan(alpha, z)


@overload
def alpha_req_score(alpha: float) -> float: ...


@overload
def alpha_req_score(alpha: Tensor) -> Tensor: ...


def alpha_req_score(alpha: float | Tensor) -> float | Tensor:
    """α-ReQ as an objective to maximise: ``−|α − 1|`` (0 at the ideal α = 1, Agrawal et al.,
    2022; −inf for α = inf, NaN for NaN). A float for a float, a tensor for a tensor."""
    if isinstance(alpha, Tensor):
        return -(alpha - 1).abs()
    return -abs(alpha - 1)


def _identity(x: Tensor) -> Tensor:
    return x


@dataclasses.dataclass(frozen=True)
class LabelFreeMetric:
    """One label-free metric as a sweep's objective (``search.metric: <name>``).

    ``fn`` computes the raw metric, logged under ``name``, from the input ``needs`` names:
    ``"features"`` (n × d backbone features of the validation images) or ``"views"`` (n × q × d:
    q augmented views of each of n images). ``score`` maps the raw value to the objective, logged
    under ``objective_key``, whose best is its ``mode`` (always "max" here): the raw value itself
    for RankMe and LiDAR, ``−|α − 1|`` (key ``alpha_req_score``) for α-ReQ.
    """

    name: str
    needs: Literal["features", "views"]
    fn: Callable[[Tensor], Tensor]
    mode: Literal["max", "min"] = "max"
    score: Callable[[Tensor], Tensor] = _identity
    objective_key: str = ""

    def __post_init__(self) -> None:
        if not self.objective_key:
            object.__setattr__(self, "objective_key", self.name)

    def compute(self, x: Tensor) -> dict[str, Tensor]:
        """``{name: raw value, objective_key: objective}`` (one entry when they coincide)."""
        raw = self.fn(x)
        return {self.name: raw, self.objective_key: self.score(raw)}


METRICS: dict[str, LabelFreeMetric] = {
    m.name: m
    for m in (
        LabelFreeMetric("rankme", "features", rankme),
        LabelFreeMetric("lidar", "views", lidar),
        LabelFreeMetric("alpha_req", "features", alpha_req, score=alpha_req_score,
                        objective_key="alpha_req_score"),
    )
}
"""The label-free metrics by the name ``search.metric`` gives them."""
