"""Denoising autoencoder: the loss by hand, each corruption does what it says, decoder shapes."""

import pytest
import torch

from sslsearch.errors import ConfigError
from sslsearch.methods import method_config
from sslsearch.methods.base import Step, Task
from sslsearch.methods.dae import Config, Method, corrupt, dae_loss
from sslsearch.parts.networks import MLPEncoder, ResNet, SmallCNN

STEP = Step(step=0, total_steps=1, epoch=0, steps_per_epoch=1)


def test_loss_hand_computed() -> None:
    # Differences 0, 2, 0, 3 over 4 entries: (0 + 4 + 0 + 9) / 4.
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    x_hat = torch.tensor([[[[1.0, 0.0], [3.0, 1.0]]]])
    assert dae_loss(x, x_hat).item() == pytest.approx(13 / 4)
    # A mean over every entry of every sample: two samples, 2 features, errors 1,1 and 0,2.
    rows = torch.tensor([[1.0, 1.0], [0.0, 2.0]], dtype=torch.float64)
    assert dae_loss(rows, torch.zeros_like(rows)).item() == pytest.approx((1 + 1 + 0 + 4) / 4)
    assert dae_loss(x, x).item() == 0


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
def test_masking_zeroes_exactly_that_fraction_of_pixels_in_all_channels(fraction: float) -> None:
    torch.manual_seed(0)
    x = torch.randn(16, 3, 10, 10) + 5  # no entry is 0 before masking
    got = corrupt(x, "masking", noise_fraction=fraction)
    masked = got == 0  # 16 x 3 x 10 x 10
    assert torch.equal(masked[:, 0], masked[:, 1]) and torch.equal(masked[:, 0], masked[:, 2])
    per_image = masked[:, 0].flatten(1).sum(dim=1)
    assert per_image.tolist() == [round(fraction * 100)] * 16
    assert torch.equal(got[~masked], x[~masked]), "unmasked pixels must be left as they are"
    # Different images, different positions.
    assert not torch.equal(masked[0], masked[1])


def test_masking_rows_counts_features() -> None:
    torch.manual_seed(0)
    x = torch.rand(8, 20) + 1
    got = corrupt(x, "masking", noise_fraction=0.25)
    assert (got == 0).sum(dim=1).tolist() == [5] * 8


def test_salt_and_pepper_sets_that_fraction_to_the_channel_extremes() -> None:
    torch.manual_seed(1)
    x = torch.rand(32, 2, 8, 8) * torch.tensor([1.0, 10.0]).view(1, 2, 1, 1)
    got = corrupt(x, "salt_pepper", noise_fraction=0.25)
    changed = (got != x).any(dim=1)  # 32 x 8 x 8: a pixel is corrupted in both channels or neither
    low = x.amin(dim=(0, 2, 3)).view(1, 2, 1, 1)
    high = x.amax(dim=(0, 2, 3)).view(1, 2, 1, 1)
    salt = (got == high).all(dim=1)
    pepper = (got == low).all(dim=1)
    # Exactly 16 of 64 pixels per image (an original extreme can coincide with its own value).
    corrupted = salt | pepper | changed
    assert (corrupted.flatten(1).sum(dim=1) >= 16).all()
    assert (changed.flatten(1).sum(dim=1) <= 16).all()
    assert torch.equal(got[~corrupted.unsqueeze(1).expand_as(x)],
                       x[~corrupted.unsqueeze(1).expand_as(x)])
    # Both salt and pepper, about half each (a fair coin over 512 corrupted pixels).
    share = salt[changed].float().mean().item()
    assert 0.4 < share < 0.6, share
    assert torch.equal(got[changed.unsqueeze(1).expand_as(x)].unique().sort().values,
                       torch.cat([low.flatten(), high.flatten()]).unique().sort().values)


def test_gaussian_adds_noise_of_that_std() -> None:
    torch.manual_seed(2)
    x = torch.randn(64, 1, 16, 16)
    noise = corrupt(x, "gaussian", noise_std=0.3) - x
    assert noise.mean().abs().item() < 0.01
    assert noise.std().item() == pytest.approx(0.3, rel=0.02)
    assert torch.equal(corrupt(x, "gaussian", noise_std=0.0), x)


def test_zero_fraction_is_the_identity() -> None:
    x = torch.randn(4, 1, 6, 6)
    assert torch.equal(corrupt(x, "masking", noise_fraction=0.0), x)
    assert torch.equal(corrupt(x, "salt_pepper", noise_fraction=0.0), x)


@pytest.mark.parametrize("size", [8, 28, 32])
def test_decoder_reconstructs_the_input_shape_small_cnn(size: int) -> None:
    backbone = SmallCNN(3, width=4, image_size=size)
    method = Method(Config(decoder_dim=8), backbone, Task("image", 10))
    x = torch.randn(4, 3, size, size)
    assert method.reconstruct(x).shape == x.shape
    out = method(x, x, torch.zeros(4, dtype=torch.long), STEP)
    out["loss"].backward()
    assert backbone.features[0].weight.grad is not None


def test_decoder_from_a_resnet_pooled_vector() -> None:
    backbone = ResNet(18, in_channels=1, image_size=28)
    method = Method(Config(decoder_dim=8), backbone, Task("image", 10))
    x = torch.randn(2, 1, 28, 28)
    assert method.reconstruct(x).shape == x.shape


def test_tabular_decoder_and_learning() -> None:
    torch.manual_seed(0)
    method = Method(Config(noise="masking", noise_fraction=0.2, decoder_dim=16),
                    MLPEncoder(6, width=16), Task("tabular", 2))
    opt = torch.optim.Adam(method.parameters(), lr=1e-2)
    x = torch.randn(64, 2) @ torch.randn(2, 6)  # rows on a 2-d plane: masked entries recoverable
    y = torch.zeros(64, dtype=torch.long)
    first = method(x, x, y, STEP)["loss"].item()
    for _ in range(60):
        loss = method(x, x, y, STEP)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


@pytest.mark.parametrize("params,match", [({"noise": "speckle"}, "noise must be one of"),
                                          ({"noise_std": -0.1}, "noise_std"),
                                          ({"noise_fraction": 1.0}, "noise_fraction"),
                                          ({"decoder_dim": 1}, "decoder_dim")])
def test_config_rejects_bad_values(params: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        method_config("dae", params)
