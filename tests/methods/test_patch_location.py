"""Relative patch location: the label of every position against the patches' real offset, the
jitter's bounds, the grid's scaling and checks, the loss by hand, forward on images and rows."""

import math

import pytest
import torch

from sslsearch.errors import ConfigError
from sslsearch.methods import method_config
from sslsearch.methods.base import Step, Task
from sslsearch.methods.patch_location import (
    OFFSETS,
    Config,
    Method,
    chunk_pairs,
    crop,
    patch_location_loss,
    patch_pairs,
    scaled_grid,
)
from sslsearch.parts.networks import MLPEncoder, ResNet, SmallCNN

STEP = Step(step=0, total_steps=1, epoch=0, steps_per_epoch=1)

# The label order drawn in the module docstring: (row, column) offset of patch 2 from patch 1.
PICTURE = [[0, 1, 2],
           [3, None, 4],
           [5, 6, 7]]


def _coordinates(n: int, side: int) -> torch.Tensor:
    """N × 2 × side × side images whose pixel (r, c) holds r in channel 0 and c in channel 1."""
    r = torch.arange(side, dtype=torch.float32).view(side, 1).expand(side, side)
    c = torch.arange(side, dtype=torch.float32).view(1, side).expand(side, side)
    return torch.stack([r, c]).unsqueeze(0).repeat(n, 1, 1, 1)


def _corners(patches: torch.Tensor) -> torch.Tensor:
    """The (row, column) of each coordinate patch's top-left pixel: N × 2 (long)."""
    return patches[:, :, 0, 0].long()


def test_offsets_follow_the_picture() -> None:
    for row, labels in enumerate(PICTURE):
        for col, label in enumerate(labels):
            if label is not None:
                assert OFFSETS[label] == (row - 1, col - 1)


def test_crop_takes_each_samples_own_window() -> None:
    x = _coordinates(3, 10)
    got = crop(x, torch.tensor([0, 2, 7]), torch.tensor([5, 1, 0]), 3)
    assert got.shape == (3, 2, 3, 3)
    for i, (top, left) in enumerate([(0, 5), (2, 1), (7, 0)]):
        assert torch.equal(got[i], x[i, :, top:top + 3, left:left + 3])


@pytest.mark.parametrize("cell,gap,side", [(8, 0, 28), (8, 1, 28), (8, 2, 28), (9, 0, 28),
                                           (9, 1, 32), (3, 2, 28)])
def test_every_label_is_the_offset_of_patch_2(cell: int, gap: int, side: int) -> None:
    """Jitter 0: patch 2's corner is exactly ``OFFSETS[label] · (cell + gap)`` px from patch 1's,
    every patch is an unbroken cell × cell window, and all 8 labels occur."""
    g = torch.Generator().manual_seed(cell * 10 + gap)
    x = _coordinates(400, side)
    first, second, labels = patch_pairs(x, cell, gap, 0, generator=g)
    assert first.shape == second.shape == (400, 2, cell, cell)
    assert labels.dtype == torch.long and sorted(set(labels.tolist())) == list(range(8))
    for patches in (first, second):
        corner = _corners(patches)
        want = torch.stack([x[i, :, r:r + cell, c:c + cell] for i, (r, c) in
                            enumerate(corner.tolist())])
        assert torch.equal(patches, want)
    step = cell + gap
    delta = _corners(second) - _corners(first)
    for label in range(8):
        chosen = labels == label
        want = torch.tensor(OFFSETS[label]) * step
        assert (delta[chosen] == want).all(), (label, delta[chosen][:3])
    # Patch 1 is the centre cell of a grid that fits: at least one step from every border.
    corner1 = _corners(first)
    assert corner1.min() >= step and corner1.max() <= side - step - cell


def test_jitter_stays_within_its_bounds_and_reaches_them() -> None:
    cell, gap, jitter, side = 6, 2, 2, 28
    g = torch.Generator().manual_seed(0)
    x = _coordinates(4000, side)
    first, second, labels = patch_pairs(x, cell, gap, jitter, generator=g)
    step = cell + gap
    deviation = (_corners(second) - _corners(first)
                 - torch.tensor(OFFSETS)[labels] * step)  # the two jitters' difference
    assert deviation.abs().max() == 2 * jitter  # each patch by at most `jitter` per axis
    assert sorted(set(deviation.flatten().tolist())) == list(range(-2 * jitter, 2 * jitter + 1))
    # Patch 1, the centre cell of a grid whose corner lies in 0 .. side − 3·cell − 2·gap, moved
    # by ±jitter: from step − jitter to side − 2·cell − gap + jitter (never clamped here).
    corner1 = _corners(first)
    assert corner1.min() == step - jitter and corner1.max() == side - 2 * cell - gap + jitter
    # Patch 2 clamped to the image: border cells jittered outward stop at the border.
    corner2 = _corners(second)
    assert corner2.min() == 0 and corner2.max() == side - cell


def test_grid_that_does_not_fit_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        patch_pairs(torch.zeros(2, 1, 25, 25), 8, 1, 1)  # 3·8 + 2·1 = 26 px
    patch_pairs(torch.zeros(2, 1, 26, 26), 8, 1, 1)  # exactly fits (the jitter is clamped)


def test_lengths_scale_with_the_image_side() -> None:
    assert scaled_grid(8, 1, 1, 28) == (8, 1, 1)
    assert scaled_grid(8, 1, 1, 32) == (9, 1, 1)  # 9.1, 1.1, 1.1 floored: 31 px of 32
    assert scaled_grid(8, 1, 1, 8) == (2, 0, 0)  # the 8 px digits
    assert scaled_grid(9, 0, 0, 96) == (30, 0, 0)
    with pytest.raises(ValueError, match="side ≥ 4"):
        scaled_grid(8, 1, 1, 3)
    # Whatever fits 28 px fits every side after scaling.
    for cell, gap, jitter in [(8, 1, 1), (9, 0, 0), (8, 2, 2), (6, 2, 2)]:
        for side in range(-(-28 // cell), 100):
            c, g, _ = scaled_grid(cell, gap, jitter, side)
            assert 3 * c + 2 * g <= side


def test_tabular_chunks_are_the_grid_in_reading_order() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.arange(20.0).repeat(200, 1)  # 20 features: chunks of 2, features 18-19 unused
    first, second, labels = chunk_pairs(x, generator=g)
    assert sorted(set(labels.tolist())) == list(range(8))
    centre = [8.0, 9.0]  # chunk 4
    for i, label in enumerate(labels.tolist()):
        cell = label + (label >= 4)
        assert first[i].tolist() == [0.0] * 8 + centre + [0.0] * 10
        assert second[i].tolist() == [0.0] * 8 + [2.0 * cell, 2.0 * cell + 1] + [0.0] * 10
    with pytest.raises(ValueError, match="9 features"):
        chunk_pairs(torch.zeros(2, 8))


def test_loss_hand_computed() -> None:
    # Uniform logits: −log(1/8) whatever the label.
    assert patch_location_loss(torch.zeros(3, 8), torch.tensor([0, 4, 7])).item() == (
        pytest.approx(math.log(8)))
    # Logits (1, 0, ..., 0, 3): label 7 costs −log(e³/(e³+e+6)), label 0 −log(e/(e³+e+6)).
    logits = torch.tensor([[1.0, 0, 0, 0, 0, 0, 0, 3.0]] * 2, dtype=torch.float64)
    z = math.exp(3) + math.exp(1) + 6
    want = (-math.log(math.exp(3) / z) - math.log(math.exp(1) / z)) / 2
    got = patch_location_loss(logits, torch.tensor([7, 0]))
    assert got.dtype == torch.float64 and got.item() == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("params,match", [
    ({"cell_size": 0}, "cell_size"), ({"gap": -1}, "gap"), ({"jitter": -1}, "jitter"),
    ({"cell_size": 9, "gap": 1}, "cell_size"),  # 27 + 2 = 29 px > 28
    ({"cell_size": 8, "gap": 3}, "gap"),  # 24 + 6 = 30 px
    ({"jitter": 5}, "jitter"),  # 2·5 ≥ 8 + 1: patch 2 could pass patch 1
    ({"head_hidden_dim": -1}, "head_hidden_dim")])
def test_config_rejects_bad_values(params: dict[str, int], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        method_config("patch_location", params)


def test_config_accepts_the_grids_of_the_search_space() -> None:
    for params in [{"cell_size": 9, "gap": 0, "jitter": 0}, {"cell_size": 8, "gap": 2, "jitter": 2},
                   {"cell_size": 7, "gap": 1, "jitter": 3}]:
        assert method_config("patch_location", params).cell_size == params["cell_size"]


@pytest.mark.parametrize("resize", [True, False])
def test_forward_backward_on_images(resize: bool) -> None:
    torch.manual_seed(0)
    method = Method(Config(resize_patches=resize, head_hidden_dim=16),
                    SmallCNN(1, width=4, image_size=28), Task("image", 10))
    x = torch.randn(8, 1, 28, 28)
    out = method(x, x.flip(-1), torch.zeros(8, dtype=torch.long), STEP)
    assert set(out) == {"loss", "location_acc"} and out["loss"].ndim == 0
    out["loss"].backward()
    assert all(p.grad is not None for p in method.backbone.parameters())
    assert method.embed(x).shape == (8, method.backbone.out_dim)


def test_forward_on_a_resnet_at_32_px_native_patches() -> None:
    torch.manual_seed(0)
    method = Method(Config(head_hidden_dim=0, resize_patches=False), ResNet(18, 3, 32),
                    Task("image", 10))
    x = torch.randn(2, 3, 32, 32)  # 9 px patches: the CIFAR stem takes them down to 2 px
    method(x, x, torch.zeros(2, dtype=torch.long), STEP)["loss"].backward()


def test_forward_on_tabular_rows() -> None:
    torch.manual_seed(0)
    method = Method(Config(head_hidden_dim=16), MLPEncoder(20, width=16), Task("tabular", 2))
    x = torch.randn(8, 20)
    out = method(x, x + 0.1, torch.zeros(8, dtype=torch.long), STEP)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and 0 <= out["location_acc"].item() <= 1


def test_learns_positions_on_an_easy_task() -> None:
    """Images that are coordinate ramps (pixel value = its row in channel 0, its column in
    channel 1): each patch's mean says where it is, so a few steps teach the head the 8 positions.
    """
    torch.manual_seed(0)
    method = Method(Config(cell_size=8, gap=2, jitter=0, resize_patches=False, head_hidden_dim=32),
                    SmallCNN(2, width=4, image_size=14), Task("image", 10))
    opt = torch.optim.Adam(method.parameters(), lr=1e-2)
    x = _coordinates(16, 14) / 14  # cells of 4 px, gaps of 1 px at 14 px
    y = torch.zeros(16, dtype=torch.long)
    first = method(x, x, y, STEP)["loss"].item()
    for _ in range(25):
        out = method(x, x, y, STEP)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert out["loss"].item() < 0.3 * first
    assert out["location_acc"].item() > 0.9


def test_neighbours_are_distinct_and_each_at_its_labels_offset() -> None:
    """``neighbours=8``: every image's 8 second patches are its 8 distinct neighbours, each at
    ``OFFSETS[label]`` steps from that image's patch 1 (rows neighbour-major)."""
    cell, gap, side, n = 8, 2, 28, 50
    x = _coordinates(n, side)
    first, second, labels = patch_pairs(x, cell, gap, 0, generator=torch.Generator().manual_seed(0),
                                        neighbours=8)
    assert first.shape == (n, 2, cell, cell) and second.shape == (8 * n, 2, cell, cell)
    per_image = labels.view(8, n).T
    assert all(sorted(row.tolist()) == list(range(8)) for row in per_image)
    delta = _corners(second) - _corners(first).repeat(8, 1)
    assert torch.equal(delta, torch.tensor(OFFSETS)[labels] * (cell + gap))


def test_forward_with_several_neighbours_pairs_each_with_its_own_first_patch() -> None:
    torch.manual_seed(0)
    method = Method(Config(neighbours=3, head_hidden_dim=16), SmallCNN(1, width=4, image_size=28),
                    Task("image", 10))
    x = torch.randn(4, 1, 28, 28)
    out = method(x, x, torch.zeros(4, dtype=torch.long), STEP)
    out["loss"].backward()
    assert torch.isfinite(out["loss"])


def test_views_are_whole_images_unless_crop_views() -> None:
    """The trial's crop (0.3) is off for patch_location's views by default (patches are cut from
    the whole image, as in the paper), on with ``crop_views``; every other method keeps it."""
    from sslsearch.config import trial_config
    from sslsearch.data import load_dataset
    from sslsearch.trial.trial import augment_configs, build_method

    data = load_dataset("digits", device=torch.device("cpu"))
    for method, params, expected in [("patch_location", {}, 1.0),
                                     ("patch_location", {"crop_views": True}, 0.3),
                                     ("rotation", {}, 0.3)]:
        cfg = trial_config({"dataset": "digits", "method": method, "method_params": params,
                            "crop_min_scale": 0.3, "flip_p": 0.5})
        views = augment_configs(cfg, data.image_size, build_method(cfg, data))
        assert [v.crop_min_scale for v in views] == [expected, expected]
        assert all(v.flip_p == 0.5 for v in views)  # only the crop is the method's
