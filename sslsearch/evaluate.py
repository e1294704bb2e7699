"""Evaluation of frozen features: the online kNN monitor, the linear probe, collapse diagnostics.

All of it runs on the trial's device in large batches under ``inference_mode`` and returns tensors;
the caller decides when to pay the one host sync per epoch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslsearch.networks import frozen


@torch.inference_mode()
def extract(fn: Callable[[Tensor], Tensor], batches: Iterator[tuple[Tensor, Tensor]]
            ) -> tuple[Tensor, Tensor]:
    """Run ``fn`` over ``batches`` of ``(x, y)``; return ``(features float32, labels)``."""
    feats, labels = [], []
    for x, y in batches:
        feats.append(fn(x).float())
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)


@torch.inference_mode()
def knn_predict(train_feats: Tensor, train_labels: Tensor, query_feats: Tensor, num_classes: int,
                k: int = 200, temperature: float = 0.1, chunk: int = 1024) -> Tensor:
    """Weighted kNN (Wu et al., 2018; the monitor of lightly and solo-learn).

    Cosine similarity to the ``k`` nearest bank features (``k`` capped by the bank size), each
    neighbour voting for its class with weight ``exp(s/T)``; returns predicted labels.
    """
    bank = F.normalize(train_feats, dim=1)
    k = min(k, bank.shape[0])
    preds = []
    for start in range(0, query_feats.shape[0], chunk):
        q = F.normalize(query_feats[start:start + chunk], dim=1)
        sim = q @ bank.T  # sim: B x N_bank
        sim_w, idx = sim.topk(k, dim=1)  # B x k
        weights = (sim_w / temperature).exp()
        votes = torch.zeros(q.shape[0], num_classes, device=q.device, dtype=weights.dtype)
        votes.scatter_add_(1, train_labels[idx], weights)
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds)


def accuracy(pred: Tensor, target: Tensor) -> Tensor:
    return (pred == target).float().mean()


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    val_acc: float
    test_acc: float
    weight_decay: float  # chosen on the validation split


def linear_probe(backbone: nn.Module, train: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor],
                 test: tuple[Tensor, Tensor], num_classes: int, *, steps: int = 100,
                 weight_decays: tuple[float, ...] = (0.0, 1e-5, 1e-4, 1e-3, 1e-2),
                 seed: int = 0) -> ProbeResult:
    """A linear classifier on frozen, precomputed backbone features.

    Features are standardised with training statistics; one linear head per weight-decay candidate
    is trained at once (a batched einsum) with full-batch Adam for ``steps`` steps; the candidate
    with the best **validation** accuracy is chosen and its test accuracy only reported.
    """
    assert frozen(backbone), "the backbone must be frozen for the linear probe"
    x_tr, y_tr = train
    mean, std = x_tr.mean(0), x_tr.std(0) + 1e-6
    x_tr, x_va, x_te = ((x - mean) / std for x in (x_tr, val[0], test[0]))
    n_wd, dim = len(weight_decays), x_tr.shape[1]
    g = torch.Generator(device="cpu").manual_seed(seed)
    w = (torch.randn(n_wd, dim, num_classes, generator=g) * 0.01).to(x_tr.device)
    b = torch.zeros(n_wd, 1, num_classes, device=x_tr.device)
    w.requires_grad_(True)
    b.requires_grad_(True)
    wd = torch.tensor(weight_decays, device=x_tr.device).view(n_wd, 1, 1)
    opt = torch.optim.Adam([w, b], lr=0.01)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    with torch.enable_grad():
        for _ in range(steps):
            logits = torch.einsum("nd,kdc->knc", x_tr, w) + b  # logits: K x N x C
            ce = F.cross_entropy(logits.reshape(-1, num_classes), y_tr.repeat(n_wd))
            loss = ce * n_wd + (wd * w.pow(2)).sum() / 2  # each head's own CE + its own L2
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            sched.step()
    with torch.inference_mode():
        val_acc = (torch.einsum("nd,kdc->knc", x_va, w) + b).argmax(-1).eq(val[1]).float().mean(1)
        best = int(val_acc.argmax())
        test_pred = (x_te @ w[best] + b[best]).argmax(-1)
        test_acc = accuracy(test_pred, test[1])
    return ProbeResult(val_acc=float(val_acc[best]), test_acc=float(test_acc),
                       weight_decay=weight_decays[best])


@torch.inference_mode()
def collapse_diagnostics(z1: Tensor, z2: Tensor | None = None) -> dict[str, Tensor]:
    """Collapse signals of embeddings ``z1`` (N × d), and alignment when a second view is given.

    - ``embed_std``: mean over dimensions of the std of L2-normalised embeddings (Jing et al.;
      0 under collapse, about 1/√d when spread); ``embed_std_ratio`` = embed_std·√d (≈ 1 healthy).
    - ``effective_rank``: RankMe (Garrido et al., 2023), ``exp(−Σ p_k log p_k)`` with ``p`` the
      normalised singular values of the centred embeddings; 1 under full collapse, ≤ min(N, d).
    - ``uniformity``: ``log E exp(−2‖u − v‖²)`` over pairs of normalised embeddings (Wang & Isola).
    - ``alignment``: ``E‖u − u′‖²`` between the two views' normalised embeddings.
    """
    z1 = z1.float()
    n, d = z1.shape
    u = F.normalize(z1, dim=1)
    std = u.std(dim=0).mean()
    s = torch.linalg.svdvals(z1 - z1.mean(dim=0))
    p = s / s.sum().clamp_min(1e-12)
    rank = torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())
    sample = u[:1024]
    uniformity = torch.pdist(sample).pow(2).mul(-2).exp().mean().log()
    out = {
        "embed_std": std,
        "embed_std_ratio": std * math.sqrt(d),
        "effective_rank": rank,
        "effective_rank_ratio": rank / min(n, d),
        "uniformity": uniformity,
    }
    if z2 is not None:
        out["alignment"] = (u - F.normalize(z2.float(), dim=1)).pow(2).sum(1).mean()
    return out
