"""Every loss computes in float32 under bf16 autocast (``sslsearch.parts.ops.fp32_loss``).

Under autocast a matmul of float32 inputs still runs in bf16, so a loss is checked the only way
that catches it: the same float32 inputs, once plainly and once inside
``torch.autocast("cpu", dtype=torch.bfloat16)``, must give the same value to float32 rounding.
The losses are discovered: every function decorated with ``fp32_loss`` needs a case here, and
every method module must register at least one, so a new method's loss cannot be left out.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from sslsearch import methods
from sslsearch.methods.base import Step, Task
from sslsearch.parts import ops
from sslsearch.parts.networks import MLPEncoder

N, D, K = 32, 64, 48  # batch, embedding width, prototypes / queue length

Args = tuple[tuple[Any, ...], dict[str, Any]]


def _z(g: torch.Generator, n: int = N, d: int = D) -> torch.Tensor:
    return torch.randn(n, d, generator=g)


def _unit(g: torch.Generator, n: int = N, d: int = D) -> torch.Tensor:
    return F.normalize(_z(g, n, d), dim=1)


def _mixed(g: torch.Generator) -> torch.Tensor:
    perm = torch.randperm(N, generator=g)
    eye = torch.eye(N)
    return 0.7 * eye + 0.3 * eye[perm]


def _gaussians(g: torch.Generator) -> tuple[torch.Tensor, ...]:
    return _z(g), _z(g) - 1, 2 * _z(g), _z(g)  # μ₁, log σ₁², μ₂, log σ₂²


def _sinkhorn_codes(g: torch.Generator) -> torch.Tensor:
    return torch.softmax(_z(g, N, K) / 0.05, dim=1)


# name -> cases: (case id, inputs from a generator). Every loss at a small τ, where bf16 hurts most.
CASES: dict[str, list[tuple[str, Callable[[torch.Generator], Args]]]] = {
    "sslsearch.parts.ops.soft_cross_entropy": [
        ("mixed", lambda g: ((_z(g, N, N) / 0.1, _mixed(g)), {})),
    ],
    "sslsearch.methods.simclr.nt_xent_loss": [
        ("tau0.1", lambda g: ((_z(g), _z(g), 0.1), {})),
    ],
    "sslsearch.methods.npair.npair_loss": [
        ("onehot", lambda g: ((_z(g), _z(g), 0.1), {})),
        ("mixed", lambda g: ((_z(g), _z(g), 0.1, _mixed(g)), {})),
    ],
    "sslsearch.methods.imix.imix_moco_loss": [
        ("queue", lambda g: ((_z(g), _z(g), _unit(g, K), 0.1, _mixed(g)), {})),
    ],
    "sslsearch.methods.imix.imix_byol_loss": [
        ("lam", lambda g: ((_z(g), _z(g), torch.randperm(N, generator=g), torch.tensor(0.7)),
                           {})),
    ],
    "sslsearch.methods.supcon.supcon_loss": [
        ("labels", lambda g: ((_z(g), _z(g), torch.randint(0, 5, (N,), generator=g), 0.1), {})),
    ],
    "sslsearch.methods.triplet.triplet_loss": [
        ("hardest", lambda g: ((_z(g), _z(g), 0.5), {"mining": "hardest"})),
        ("semihard", lambda g: ((_z(g), _z(g), 0.5), {"mining": "semihard"})),
        ("labels", lambda g: ((_z(g), _z(g), 0.5, torch.randint(0, 5, (N,), generator=g)), {})),
    ],
    "sslsearch.methods.moco.moco_loss": [
        ("queue", lambda g: ((_z(g), _z(g), _unit(g, K), 0.1), {})),
    ],
    "sslsearch.methods.byol.byol_loss": [
        ("plain", lambda g: ((_z(g), _z(g)), {})),
    ],
    "sslsearch.methods.simsiam.simsiam_loss": [
        ("plain", lambda g: ((_z(g), _z(g), _z(g), _z(g)), {})),
    ],
    "sslsearch.methods.swav.sinkhorn": [
        ("eps0.05", lambda g: ((_unit(g) @ _unit(g, K).T, 0.05, 3), {})),
    ],
    "sslsearch.methods.swav.swav_loss": [
        ("tau0.1", lambda g: ((_unit(g) @ _unit(g, K).T, _unit(g) @ _unit(g, K).T,
                               _sinkhorn_codes(g), _sinkhorn_codes(g), 0.1), {})),
    ],
    "sslsearch.methods.barlow.barlow_twins_terms": [
        ("plain", lambda g: ((_z(g), _z(g), 0.0051), {})),
    ],
    "sslsearch.methods.barlow.barlow_twins_loss": [
        ("plain", lambda g: ((_z(g), _z(g), 0.0051), {})),
    ],
    "sslsearch.methods.vicreg.vicreg_loss": [
        ("plain", lambda g: ((_z(g), _z(g)), {})),
    ],
    "sslsearch.methods.dare.gaussian_kl": [
        ("plain", lambda g: (_gaussians(g), {})),
    ],
    "sslsearch.methods.dare.gaussian_jsd": [
        ("plain", lambda g: (_gaussians(g), {})),
    ],
    "sslsearch.methods.dare.decoupled_contrastive_loss": [
        ("tau0.1", lambda g: ((_z(g), _z(g), 0.1), {})),
    ],
    "sslsearch.methods.rotation.rotation_loss": [
        ("logits", lambda g: ((_z(g, N, 4) / 0.1, torch.randint(0, 4, (N,), generator=g)), {})),
    ],
    "sslsearch.methods.dae.dae_loss": [
        ("plain", lambda g: ((_z(g), _z(g)), {})),
    ],
    "sslsearch.methods.context_encoder.masked_mse": [
        ("mask", lambda g: ((_z(g), _z(g), torch.rand(N, D, generator=g) < 0.25), {})),
    ],
    "sslsearch.methods.context_encoder.context_encoder_loss": [
        ("rec", lambda g: ((_z(g), _z(g), torch.rand(N, D, generator=g) < 0.25), {})),
        ("adv", lambda g: ((_z(g), _z(g), torch.rand(N, D, generator=g) < 0.25, 0.1,
                            _z(g, N, 1).squeeze(1) / 0.1), {})),
    ],
    "sslsearch.methods.context_encoder.discriminator_loss": [
        ("logits", lambda g: ((_z(g, N, 1).squeeze(1) / 0.1, _z(g, N, 1).squeeze(1) / 0.1), {})),
    ],
    "sslsearch.methods.patch_location.patch_location_loss": [
        ("logits", lambda g: ((_z(g, N, 8) / 0.1, torch.randint(0, 8, (N,), generator=g)), {})),
    ],
    "sslsearch.methods.dare.dare_loss": [
        ("decoupled", lambda g: ((_z(g), _z(g), *_gaussians(g), 0.1, 0.01), {})),
        ("ntxent", lambda g: ((_z(g), _z(g), *_gaussians(g), 0.1, 0.01),
                              {"contrastive": "ntxent"})),
    ],
}

PARAMS = [pytest.param(name, build, id=f"{name.rsplit('.', 2)[-2]}.{name.rsplit('.', 1)[-1]}"
                       f"[{case}]") for name, cases in CASES.items() for case, build in cases]


def _resolve(name: str) -> Callable[..., Any]:
    module, attr = name.rsplit(".", 1)
    fn: Callable[..., Any] = getattr(importlib.import_module(module), attr)
    return fn


def _tensors(out: Any) -> list[torch.Tensor]:
    return list(out) if isinstance(out, tuple) else [out]


@pytest.mark.parametrize("name,build", PARAMS)
def test_loss_is_float32_under_bf16_autocast(name: str, build: Callable[[torch.Generator], Args]
                                             ) -> None:
    fn = _resolve(name)
    args, kwargs = build(torch.Generator().manual_seed(0))
    plain = _tensors(fn(*args, **kwargs))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = _tensors(fn(*args, **kwargs))
    assert len(plain) == len(under)
    for want, got in zip(plain, under, strict=True):
        assert got.dtype == torch.float32, name
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def _registered() -> dict[str, Callable[..., Any]]:
    for name in methods.available():
        methods.get(name)  # importing a module registers its losses
    return ops.fp32_losses()


def test_every_registered_loss_has_a_case_here() -> None:
    registered = set(_registered())
    assert registered == set(CASES), (
        f"fp32_loss functions without a case in CASES: {sorted(registered - set(CASES))}; "
        f"cases of functions not (or no longer) decorated: {sorted(set(CASES) - registered)}")


@pytest.mark.parametrize("method", methods.available())
def test_every_method_module_registers_a_loss(method: str) -> None:
    module = f"{methods.__name__}.{method}."
    assert any(name.startswith(module) for name in _registered()), (
        f"{method}: decorate its loss with sslsearch.parts.ops.fp32_loss")


# ------------------------------------------------------------------------------- the decorator


def test_decorator_keeps_signature_and_docstring() -> None:
    from sslsearch.methods.vicreg import vicreg_loss

    assert vicreg_loss.__name__ == "vicreg_loss"
    assert vicreg_loss.__doc__ and "VICReg" in vicreg_loss.__doc__
    assert list(inspect.signature(vicreg_loss).parameters) == [
        "z1", "z2", "sim_coeff", "std_coeff", "cov_coeff"]


def test_decorator_upcasts_half_keeps_float64_and_integers() -> None:
    seen: dict[str, Any] = {}

    @ops.fp32
    def probe(a: torch.Tensor, b: torch.Tensor, *, c: torch.Tensor, d: torch.Tensor,
              scale: float) -> torch.Tensor:
        seen.update(a=a.dtype, b=b.dtype, c=c.dtype, d=d.dtype,
                    autocast=torch.is_autocast_enabled("cpu"), matmul=(a @ a.T).dtype)
        return a.sum() * scale

    with torch.autocast("cpu", dtype=torch.bfloat16):
        probe(torch.ones(2, 2, dtype=torch.bfloat16), torch.ones(2, dtype=torch.float64),
              c=torch.ones(2, dtype=torch.float16), d=torch.arange(3), scale=2.0)
    assert seen == {"a": torch.float32, "b": torch.float64, "c": torch.float32,
                    "d": torch.int64, "autocast": False, "matmul": torch.float32}
    assert torch.is_autocast_enabled("cpu") is False  # restored on the way out


def test_float64_inputs_stay_float64() -> None:
    from sslsearch.methods.simclr import nt_xent_loss

    z = torch.randn(4, 3, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert nt_xent_loss(z, z.flip(0), 0.5).dtype == torch.float64


# ------------------------------------------------------------------------ the methods' forward


def _narrow(cfg: Any) -> Any:
    """``cfg`` with every head width (fields named ``*dim``, ``*dims``) at 32: fast on a CPU."""
    small: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name.endswith("dim") and isinstance(value, int):
            small[f.name] = 32
        elif f.name.endswith("dims") and isinstance(value, tuple):
            small[f.name] = (32,) * len(value)
    return dataclasses.replace(cfg, **small)


STEP = Step(step=0, total_steps=10, epoch=1, steps_per_epoch=10)


@pytest.mark.parametrize("name", methods.available())
def test_forward_under_bf16_autocast_gives_a_float32_loss(name: str) -> None:
    """The whole forward under autocast (backbone and heads in bf16): every output is float32,
    finite, and close to the float32 forward. Only the network's bf16 matmuls differ (measured
    with these 32-wide heads: relative 2e-4 to 4e-3, Barlow 1.2e-2; SimSiam's loss of 0.025 is off
    by 1.7e-3)."""
    module = methods.get(name)
    cfg = _narrow(module.Config())
    torch.manual_seed(0)
    method = module.Method(cfg, MLPEncoder(in_features=10, width=32), Task("tabular", 4))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 10, generator=g)
    x1, x2 = x + 0.1 * torch.randn(16, 10, generator=g), x + 0.1 * torch.randn(16, 10, generator=g)
    y = torch.randint(0, 4, (16,), generator=g)
    torch.manual_seed(2)  # i-Mix's λ, π and DARe's ε come from the global RNG
    plain = method(x1, x2, y, STEP)
    torch.manual_seed(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = method(x1, x2, y, STEP)
    assert set(plain) == set(under)
    for key, value in under.items():
        assert value.dtype == torch.float32 and torch.isfinite(value), (key, value)
    torch.testing.assert_close(under["loss"], plain["loss"], rtol=2e-2, atol=5e-3)
    under["loss"].backward()

