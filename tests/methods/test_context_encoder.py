"""Context encoder: the losses by hand, each mask covers exactly what it says, the adversarial
term's parts and gradients, forward/backward on images and rows."""

import math

import pytest
import torch
import torch.nn.functional as F

from sslsearch.errors import ConfigError
from sslsearch.methods import method_config
from sslsearch.methods.base import Step, Task
from sslsearch.methods.context_encoder import (
    Config,
    Method,
    context_encoder_loss,
    context_mask,
    discriminator_loss,
    masked_mse,
)
from sslsearch.parts.networks import MLPEncoder, ResNet, SmallCNN

STEP = Step(step=0, total_steps=1, epoch=0, steps_per_epoch=1)


def test_loss_hand_computed() -> None:
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    x_hat = torch.tensor([[[[0.0, 5.0], [3.0, 1.0]]]])
    mask = torch.tensor([[[[True, False], [False, True]]]])
    # Masked errors 1 and 3 (the unmasked 2 → 5 is ignored): (1 + 9) / 2 masked entries.
    assert masked_mse(x, x_hat, mask).item() == pytest.approx(5.0)
    assert context_encoder_loss(x, x_hat, mask).item() == pytest.approx(5.0)
    # A pixel mask counts every channel: 2 channels, the second with errors 2 and 0 → (1+9+4+0)/4.
    x2 = torch.cat([x, torch.zeros_like(x)], dim=1).double()
    x2_hat = torch.cat([x_hat, torch.tensor([[[[2.0, 7.0], [7.0, 0.0]]]])], dim=1).double()
    assert masked_mse(x2, x2_hat, mask).item() == pytest.approx(14 / 4)
    assert masked_mse(x, x_hat, torch.zeros_like(mask)).item() == 0  # nothing dropped
    # The adversarial term: λ = 0.1, logits 0 and ln 3 → softplus(−0) = ln 2, softplus(−ln 3) =
    # ln 4/3; (1 − λ)·5 + λ·(ln 2 + ln 4/3)/2.
    logits = torch.tensor([0.0, math.log(3.0)])
    want = 0.9 * 5 + 0.1 * (math.log(2) + math.log(4 / 3)) / 2
    assert context_encoder_loss(x, x_hat, mask, 0.1, logits).item() == pytest.approx(want)
    # D's loss: softplus(−ln 3) on the real logit + softplus(−ln 3) on the fake one.
    real, fake = torch.tensor([math.log(3.0)]), torch.tensor([-math.log(3.0)])
    assert discriminator_loss(real, fake).item() == pytest.approx(2 * math.log(4 / 3))


@pytest.mark.parametrize("size,first,last", [(28, 7, 20), (8, 2, 5), (32, 8, 23)])
def test_central_square_is_exactly_the_middle_quarter(size: int, first: int, last: int) -> None:
    mask = context_mask((3, 2, size, size), "central", 0.25)
    assert mask.shape == (3, 1, size, size) and mask.dtype == torch.bool
    want = torch.zeros(size, size, dtype=torch.bool)
    want[first:last + 1, first:last + 1] = True
    for m in mask[:, 0]:
        assert torch.equal(m, want)
    assert mask[0].sum().item() == size * size // 4  # 196 px at 28, 16 at 8, 256 at 32


def test_central_rectangle_at_other_fractions() -> None:
    # f = 0.1 at 28 px: round(√0.1·28) = 9 rows, from (28 − 9) // 2 = 9: rows 9-17 (81 px).
    mask = context_mask((1, 1, 28, 28), "central", 0.1)[0, 0]
    assert mask.sum().item() == 81
    assert mask.any(dim=1).nonzero().flatten().tolist() == list(range(9, 18))
    assert mask.any(dim=0).nonzero().flatten().tolist() == list(range(9, 18))
    # Non-square images: √f of each side, 12 of 24 rows and 4 of 8 columns at f = ¼.
    mask = context_mask((1, 1, 24, 8), "central", 0.25)[0, 0]
    assert mask.any(dim=1).nonzero().flatten().tolist() == list(range(6, 18))
    assert mask.any(dim=0).nonzero().flatten().tolist() == list(range(2, 6))


def _is_union_of_blocks(mask: torch.Tensor, side: int) -> bool:
    """Every masked pixel lies in a side × side square that is masked entirely."""
    m = mask.float().unsqueeze(0).unsqueeze(0)  # 1 x 1 x H x W
    full = (F.avg_pool2d(m, side, stride=1) > 1 - 1e-6).float()  # squares wholly inside the mask
    covered = F.conv_transpose2d(full, torch.ones(1, 1, side, side)) > 0
    return torch.equal(covered[0, 0], mask)


@pytest.mark.parametrize("size,fraction", [(28, 0.25), (28, 0.1), (28, 0.5), (32, 0.25), (8, 0.25)])
def test_random_blocks_cover_the_fraction_in_squares(size: int, fraction: float) -> None:
    g = torch.Generator().manual_seed(0)
    mask = context_mask((64, 1, size, size), "random_blocks", fraction, generator=g)[:, 0]
    side = round(size / 4)
    counts = mask.flatten(1).sum(dim=1).float()
    # Each image within half a block (1/32 of the area) of the target, and so the batch (at
    # f = 0.1 of 28 px, 78 px, two 49-px blocks are closer than one: the batch is at 0.12).
    target = round(fraction * size * size)
    assert ((counts - target).abs() <= side * side / 2).all(), counts
    assert counts.mean().item() / size**2 == pytest.approx(fraction, abs=1 / 32)
    assert all(_is_union_of_blocks(m, side) for m in mask)
    assert not torch.equal(mask[0], mask[1])  # different images, different blocks
    again = context_mask((64, 1, size, size), "random_blocks", fraction,
                         generator=torch.Generator().manual_seed(0))[:, 0]
    assert torch.equal(mask, again), "the same generator seed must give the same mask"


def test_random_pixels_exact_count_and_seeded() -> None:
    mask = context_mask((16, 3, 28, 28), "random_pixels", 0.3,
                        generator=torch.Generator().manual_seed(1))
    assert mask.shape == (16, 1, 28, 28)
    assert mask.flatten(1).sum(dim=1).tolist() == [round(0.3 * 784)] * 16
    assert not torch.equal(mask[0], mask[1])
    again = context_mask((16, 3, 28, 28), "random_pixels", 0.3,
                         generator=torch.Generator().manual_seed(1))
    assert torch.equal(mask, again)


@pytest.mark.parametrize("mask", ["central", "random_blocks", "random_pixels"])
def test_rows_mask_that_many_random_features(mask: str) -> None:
    got = context_mask((8, 20), mask, 0.25, generator=torch.Generator().manual_seed(0))
    assert got.shape == (8, 20) and got.sum(dim=1).tolist() == [5] * 8
    assert not torch.equal(got[0], got[1])
    assert context_mask((4, 3), mask, 0.1).sum(dim=1).tolist() == [1] * 4  # at least one


def test_masked_input_is_zero_exactly_on_the_region() -> None:
    torch.manual_seed(0)
    method = Method(Config(mask="central", mask_fraction=0.25, decoder_dim=8),
                    SmallCNN(1, width=4, image_size=8), Task("image", 10))
    seen: list[torch.Tensor] = []
    method.backbone.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    x = torch.randn(2, 1, 8, 8) + 5  # no entry is 0 before masking
    method(x, x, torch.zeros(2, dtype=torch.long), STEP)
    region = context_mask((4, 1, 8, 8), "central", 0.25)
    assert torch.equal(seen[0] == 0, region)


def test_without_the_adversarial_term_there_is_no_discriminator() -> None:
    method = Method(Config(decoder_dim=8), SmallCNN(1, width=4, image_size=8), Task("image", 10))
    assert method.discriminator is None
    assert not any(name.startswith("discriminator") for name, _ in method.named_parameters())
    out = method(torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8), torch.zeros(4), STEP)
    assert set(out) == {"loss", "rec_rel"}


def test_adversarial_term_each_player_gets_only_its_own_gradient() -> None:
    cfg = Config(mask="random_blocks", adversarial=True, adv_weight=0.1, decoder_dim=8,
                 discriminator_dim=4)
    torch.manual_seed(0)
    method = Method(cfg, SmallCNN(1, width=4, image_size=8), Task("image", 10))
    assert method.discriminator is not None
    d_params = list(method.discriminator.parameters())
    g_params = [p for name, p in method.named_parameters() if not name.startswith("discrimin")]
    x1, x2 = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    torch.manual_seed(1)
    out = method(x1, x2, torch.zeros(4), STEP)
    assert set(out) == {"loss", "rec_rel", "rec_loss", "disc_loss"}
    assert all(torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    d_grads = [p.grad.clone() for p in d_params if p.grad is not None]
    g_grads = [p.grad.clone() if p.grad is not None else None for p in g_params]
    assert len(d_grads) == len(d_params) and all(g.abs().sum() > 0 for g in d_grads)
    # By hand, the same mask (the same RNG draw): D's gradient is L_D's alone, the encoder-
    # decoder's is that of (1 − λ)·L_rec + λ·L_adv alone.
    method.zero_grad()
    torch.manual_seed(1)
    x = torch.cat([x1, x2])
    mask = context_mask(tuple(x.shape), cfg.mask, cfg.mask_fraction)
    x_hat = method.reconstruct(x.masked_fill(mask, 0.0))
    inpainted = torch.where(mask, x_hat, x)
    d = method.discriminator
    l_d = discriminator_loss(d(x).squeeze(1), d(inpainted.detach()).squeeze(1))
    want_d = torch.autograd.grad(l_d, d_params)
    l_g = context_encoder_loss(x, x_hat, mask, 0.1, d(inpainted).squeeze(1))
    want_g = torch.autograd.grad(l_g, g_params, allow_unused=True)
    for got, want in zip(d_grads, want_d, strict=True):
        torch.testing.assert_close(got, want)
    assert sum(w is not None for w in want_g) > 0
    for got_g, want_g1 in zip(g_grads, want_g, strict=True):
        assert (got_g is None) == (want_g1 is None)
        if got_g is not None:
            torch.testing.assert_close(got_g, want_g1)
    assert out["disc_loss"].item() == pytest.approx(l_d.item(), rel=1e-5)


@pytest.mark.parametrize("mask", ["central", "random_blocks", "random_pixels"])
@pytest.mark.parametrize("size", [8, 28])
def test_forward_backward_images(mask: str, size: int) -> None:
    backbone = SmallCNN(3, width=4, image_size=size)
    method = Method(Config(mask=mask, decoder_dim=8), backbone, Task("image", 10))
    x = torch.randn(4, 3, size, size)
    assert method.reconstruct(x).shape == x.shape
    out = method(x, x.flip(-1), torch.zeros(4, dtype=torch.long), STEP)
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert backbone.features[0].weight.grad is not None
    assert torch.equal(method.embed(x), backbone(x))


def test_resnet_with_the_adversarial_term() -> None:
    backbone = ResNet(18, in_channels=1, image_size=28)
    method = Method(Config(adversarial=True, decoder_dim=8, discriminator_dim=4), backbone,
                    Task("image", 10))
    x = torch.randn(2, 1, 28, 28)
    out = method(x, x, torch.zeros(2, dtype=torch.long), STEP)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()


@pytest.mark.parametrize("adversarial", [False, True])
def test_tabular_rows(adversarial: bool) -> None:
    torch.manual_seed(0)
    method = Method(Config(adversarial=adversarial, decoder_dim=16, discriminator_dim=8),
                    MLPEncoder(6, width=16), Task("tabular", 2))
    x = torch.randn(16, 6)
    out = method(x, x + 0.1, torch.zeros(16, dtype=torch.long), STEP)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(p.grad is not None for p in method.backbone.parameters())


@pytest.mark.parametrize("params,match", [({"mask": "ring"}, "mask must be one of"),
                                          ({"mask_fraction": 0.0}, "mask_fraction"),
                                          ({"mask_fraction": 1.0}, "mask_fraction"),
                                          ({"adv_weight": 0.0}, "adv_weight"),
                                          ({"adv_weight": 1.0}, "adv_weight"),
                                          ({"decoder_dim": 1}, "decoder_dim"),
                                          ({"discriminator_dim": 0}, "discriminator_dim")])
def test_config_rejects_bad_values(params: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        method_config("context_encoder", params)
