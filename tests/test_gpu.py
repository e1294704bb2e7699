"""The CUDA path of the pure-torch loop: bf16 autocast, on-device augmentation, resume on CUDA.

Marked `gpu` and skipped without CUDA (the default run deselects them). On a GPU machine::

    python -m pytest -m gpu tests/test_gpu.py
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from sslsearch.config import trial_config
from sslsearch.data import load_dataset
from sslsearch.methods.base import Step
from sslsearch.train import run
from sslsearch.trial.augment import AugmentConfig, Augmenter, augment
from sslsearch.trial.checkpoint import load_checkpoint
from sslsearch.trial.trial import (
    augment_configs,
    setup_trial,
    train_batches,
    train_step,
    trial_optimizer,
    two_views,
)
from tests.conftest import needs_fashion_mnist
from tests.methods.learning import FAST

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CUDA = {"device": "cuda", "backbone_width": 16, "batch_size": 128, "epochs": 3, "knn_k": 20,
        "probe_max_iter": 50, "crop_min_scale": 0.5, "flip_p": 0.0}


@contextlib.contextmanager
def no_host_sync() -> Iterator[None]:
    """Any op that waits for the GPU (``.item()``, ``nonzero``, a pageable copy) raises inside."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_augmentation_runs_on_the_device_per_sample_and_seeded() -> None:
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, device="cuda")
    cfg = AugmentConfig.for_image_size(32)
    mean, std = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)
    with no_host_sync():
        out = augment(x, cfg, torch.Generator("cuda").manual_seed(1), mean=mean, std=std)
        again = augment(x, cfg, torch.Generator("cuda").manual_seed(1), mean=mean, std=std)
    assert out.device.type == "cuda" and out.dtype == torch.float32 and out.shape == x.shape
    assert torch.equal(out, again)
    # Same image in every slot: different per-sample parameters give different views.
    same = x[:1].expand(64, -1, -1, -1).contiguous()
    views = augment(same, cfg, torch.Generator("cuda").manual_seed(2), mean=mean, std=std)
    distinct = {tuple(v.flatten()[:64].tolist()) for v in views}
    assert len(distinct) > 32


def test_compiled_augmentation_matches_eager() -> None:
    x = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8, device="cuda")
    cfg = AugmentConfig.for_image_size(32, blur_p=0.5, solarize_p=0.2)
    stats = {"mean": (0.5, 0.4, 0.3), "std": (0.25, 0.2, 0.3)}
    eager = augment(x, cfg, torch.Generator("cuda").manual_seed(3), **stats)
    compiled = Augmenter(cfg, compile=True, **stats)(x, torch.Generator("cuda").manual_seed(3))
    # Same draws; fused arithmetic may differ in the last bits only.
    torch.testing.assert_close(compiled, eager, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["simclr", "vicreg", "byol", "swav"])
def test_training_step_in_bf16_without_host_sync(method: str) -> None:
    cfg = trial_config({**CUDA, "method": method, "backbone": "resnet18",
                        "dataset": "digits", "image_size": 32})
    data = load_dataset("digits", device=torch.device("cuda"), image_size=32)
    trial = setup_trial(cfg, data, torch.device("cuda"))
    m = trial.method
    gen = torch.Generator("cuda").manual_seed(0)
    augs = augment_configs(cfg, data.image_size, m)
    opt = trial_optimizer(trial, 128)
    x, y = next(train_batches(trial, gen, 128))
    x1, x2 = two_views(trial, x, augs, gen)
    assert x1.is_contiguous(memory_format=torch.channels_last)
    with trial.autocast():
        feats = m.backbone(x1)
    assert feats.dtype == torch.bfloat16  # the convolutions ran in bf16
    for i in range(3):  # the first step may sync while cuDNN picks kernels; later ones must not
        step = Step(i, 10, 0, 10)
        ctx = no_host_sync() if i == 2 else contextlib.nullcontext()
        with ctx:
            x, y = next(train_batches(trial, gen, 128))
            x1, x2 = two_views(trial, x, augs, gen)
            out = train_step(trial, opt, x1, x2, y, step)
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    assert all(p.dtype == torch.float32 for p in m.parameters())  # master weights stay fp32


def test_resume_on_cuda_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    cfg = trial_config({**CUDA, "method": "simclr", "probe": False, "deterministic": True,
                        "method_params": {"proj_hidden_dim": 128}})
    data = load_dataset("digits", device=torch.device("cuda"))
    run(cfg, checkpoint_dir=tmp_path / "a", data=data)
    seen: list[float] = []
    run(cfg, report=lambda m, _: seen.append(m["epoch"]), checkpoint_dir=tmp_path / "b",
        data=data, stop=lambda: len(seen) == 2)
    run(cfg, report=lambda m, _: seen.append(m["epoch"]), checkpoint_dir=tmp_path / "b",
        data=data)
    assert seen == [1.0, 2.0, 3.0]
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    assert a is not None and b is not None
    assert "cuda_rng" in b  # the CUDA generator state travels with the checkpoint
    for key, value in a["model"].items():
        assert value.device.type == "cpu", key  # loadable on a machine without a GPU
        assert torch.equal(value, b["model"][key]), key


@needs_fashion_mnist()
@pytest.mark.parametrize("mode", [None, "default", "reduce-overhead"])
def test_learns_on_fashion_mnist_on_cuda(mode: str | None) -> None:
    # The default suite's CPU learning protocol (tests/methods/learning.py FAST), on CUDA in bf16,
    # compiled (reduce-overhead: CUDA graphs) in training, evaluation and the probe alike.
    cfg = trial_config({**FAST, "device": "cuda", "method": "simclr", "probe": True,
                        "method_params": {"proj_hidden_dim": 512},
                        "compile": mode is not None, "compile_mode": mode or "default"})
    final = run(cfg)
    assert final["val_knn_acc"] > final["init_knn_acc"] + 0.01, final
    assert final["probe_test_acc"] > final["raw_probe_test_acc"], final
