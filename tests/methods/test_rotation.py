"""Rotation prediction: the turns and their labels for every angle, the loss by hand."""

import math

import pytest
import torch

from sslsearch.errors import ConfigError
from sslsearch.methods import method_config
from sslsearch.methods.base import Step, Task
from sslsearch.methods.rotation import Config, Method, rotate, rotated_copies, rotation_loss
from sslsearch.parts.networks import MLPEncoder, SmallCNN

# A 3×3 image with values 0..8 and its counter-clockwise turns, written out by hand.
IMAGE = [[0, 1, 2],
         [3, 4, 5],
         [6, 7, 8]]
TURNED = {
    0: IMAGE,
    1: [[2, 5, 8],  # 90°: the top row becomes the left column, read bottom-up
        [1, 4, 7],
        [0, 3, 6]],
    2: [[8, 7, 6],  # 180°
        [5, 4, 3],
        [2, 1, 0]],
    3: [[6, 3, 0],  # 270° (90° clockwise): the top row becomes the right column
        [7, 4, 1],
        [8, 5, 2]],
}


def _image() -> torch.Tensor:
    return torch.tensor(IMAGE, dtype=torch.float32).view(1, 1, 3, 3)


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_each_angle_turns_counter_clockwise(k: int) -> None:
    got = rotate(_image(), torch.tensor([k]))
    assert got.tolist() == [[TURNED[k]]]


def test_each_sample_gets_its_own_angle_all_channels_alike() -> None:
    x = _image().repeat(4, 2, 1, 1) * torch.tensor([1.0, -1.0]).view(1, 2, 1, 1)  # 4 x 2 x 3 x 3
    got = rotate(x, torch.tensor([3, 0, 2, 1]))
    for i, k in enumerate([3, 0, 2, 1]):
        assert got[i, 0].tolist() == TURNED[k]
        assert (-got[i, 1]).tolist() == TURNED[k]


def test_four_quarter_turns_are_the_identity_and_compose() -> None:
    x = torch.randn(5, 3, 6, 6)
    ones = torch.ones(5, dtype=torch.long)
    y = x
    for turns in range(1, 5):
        y = rotate(y, ones)
        assert torch.equal(y, rotate(x, torch.full((5,), turns % 4)))
    assert torch.equal(y, x)


def test_tabular_rows_shift_by_quarters() -> None:
    x = torch.arange(8.0).view(1, 8).repeat(4, 1)
    got = rotate(x, torch.arange(4))
    assert got.tolist() == [[0, 1, 2, 3, 4, 5, 6, 7], [6, 7, 0, 1, 2, 3, 4, 5],
                            [4, 5, 6, 7, 0, 1, 2, 3], [2, 3, 4, 5, 6, 7, 0, 1]]


def test_rejects_non_square_images_and_tiny_rows() -> None:
    with pytest.raises(ValueError, match="square"):
        rotate(torch.zeros(1, 1, 3, 4), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="features"):
        rotate(torch.zeros(1, 3), torch.zeros(1, dtype=torch.long))


@pytest.mark.parametrize("r", [1, 2, 3, 4])
def test_copies_carry_their_labels_and_views(r: int) -> None:
    g = torch.Generator().manual_seed(r)
    n = 6
    x1, x2 = torch.randn(n, 1, 5, 5, generator=g), torch.randn(n, 1, 5, 5, generator=g)
    images, labels = rotated_copies(x1, x2, r, generator=g)
    assert images.shape == (r * n, 1, 5, 5) and labels.shape == (r * n,)
    assert labels.dtype == torch.long and labels.min() >= 0 and labels.max() <= 3
    angles = labels.view(r, n)  # copy-major
    for i in range(n):
        assert len(set(angles[:, i].tolist())) == r, "an image's angles must be distinct"
        for j in range(r):
            source = x1 if j % 2 == 0 else x2  # copies alternate between the two views
            k = int(angles[j, i])
            want = torch.rot90(source[i], k, dims=(-2, -1))
            assert torch.equal(images[j * n + i], want), (i, j, k)
    if r == 4:
        assert all(sorted(angles[:, i].tolist()) == [0, 1, 2, 3] for i in range(n))


def test_angles_are_uniform() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(4000, 1, 2, 2)
    _, labels = rotated_copies(x, x, 1, generator=g)
    counts = torch.bincount(labels, minlength=4).float() / 4000
    assert torch.allclose(counts, torch.full((4,), 0.25), atol=0.03), counts


def test_loss_hand_computed() -> None:
    # Uniform logits: −log(1/4) whatever the label.
    assert rotation_loss(torch.zeros(3, 4), torch.tensor([0, 2, 3])).item() == pytest.approx(
        math.log(4))
    # Logits (2, 0, 0, 0): label 0 costs −log(e²/(e²+3)), label 1 costs −log(1/(e²+3)).
    logits = torch.tensor([[2.0, 0, 0, 0], [2.0, 0, 0, 0]], dtype=torch.float64)
    e2 = math.exp(2)
    want = (-math.log(e2 / (e2 + 3)) - math.log(1 / (e2 + 3))) / 2
    assert rotation_loss(logits, torch.tensor([0, 1])).item() == pytest.approx(want, rel=1e-12)


def test_linear_or_mlp_head() -> None:
    backbone = SmallCNN(1, width=4, image_size=8)
    linear = Method(Config(head_hidden_dim=0), backbone, Task("image", 10))
    assert [type(m).__name__ for m in linear.head] == ["Linear"]
    assert linear.head[0].out_features == 4
    deep = Method(Config(head_hidden_dim=16), SmallCNN(1, width=4, image_size=8), Task("image", 10))
    assert [type(m).__name__ for m in deep.head] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]


def test_forward_learns_the_angle_on_tabular_rows() -> None:
    # A row whose first feature is large: the shift is visible, so a few steps cut the loss.
    torch.manual_seed(0)
    method = Method(Config(rotations_per_image=4), MLPEncoder(8, width=16), Task("tabular", 2))
    opt = torch.optim.Adam(method.parameters(), lr=1e-2)
    x = torch.randn(32, 8) * 0.1
    x[:, 0] += 3
    step = Step(step=0, total_steps=1, epoch=0, steps_per_epoch=1)
    first = method(x, x, torch.zeros(32, dtype=torch.long), step)["loss"].item()
    for _ in range(30):
        out = method(x, x, torch.zeros(32, dtype=torch.long), step)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert out["loss"].item() < 0.5 * first
    assert out["rotation_acc"].item() > 0.9


@pytest.mark.parametrize("params,match", [({"rotations_per_image": 0}, "rotations_per_image"),
                                          ({"rotations_per_image": 5}, "rotations_per_image"),
                                          ({"head_hidden_dim": -1}, "head_hidden_dim")])
def test_config_rejects_bad_values(params: dict[str, int], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        method_config("rotation", params)
