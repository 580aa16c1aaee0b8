"""The patch-position pretext task (CCD eq. 4) shared by CCD and PMSACL."""

from __future__ import annotations

import pytest
import torch

from medad.methods.pretext import (
    NEIGHBOURS,
    PatchPositionHead,
    crop,
    frozen_running_stats,
    patch_position_loss,
    random_crops,
    sample_patch_pairs,
)


def _coordinate_image(n: int, size: int) -> torch.Tensor:
    """Channel 0 holds the row index, channel 1 the column index of every pixel."""
    rows = torch.arange(size).view(1, size, 1).expand(n, size, size)
    cols = torch.arange(size).view(1, 1, size).expand(n, size, size)
    return torch.stack([rows, cols], 1).float()


@pytest.mark.parametrize("jitter", [0, 3])
def test_neighbour_sits_where_its_label_says(jitter):
    images = _coordinate_image(64, 40)
    g = torch.Generator().manual_seed(0)
    p1, p2, label = sample_patch_pairs(images, patch_size=8, jitter=jitter, generator=g)
    corner1 = p1[:, :, 0, 0]  # (row, col) of each patch's top-left pixel
    corner2 = p2[:, :, 0, 0]
    offset = (corner2 - corner1) - NEIGHBOURS[label] * (8 + jitter)
    assert offset.abs().max() <= jitter
    assert set(label.tolist()) == set(range(8))


def test_patches_stay_inside_the_image():
    images = _coordinate_image(200, 30)
    p1, p2, _ = sample_patch_pairs(images, patch_size=8, jitter=1, generator=torch.Generator().manual_seed(1))
    assert p1.min() >= 0 and p2.min() >= 0 and p1.max() <= 29 and p2.max() <= 29


def test_too_small_images_are_a_clear_error():
    with pytest.raises(ValueError, match="at least 28 px"):
        sample_patch_pairs(torch.rand(2, 1, 20, 20), patch_size=8, jitter=1)


def test_crop_matches_slicing():
    images = torch.rand(3, 2, 10, 10)
    corners = torch.tensor([[0, 0], [2, 5], [6, 1]])
    out = crop(images, corners, 4)
    for i, (r, c) in enumerate(corners.tolist()):
        assert torch.equal(out[i], images[i, :, r : r + 4, c : c + 4])


def test_loss_is_learnable_on_images_whose_position_is_visible():
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 6 * 6, 16))
    head = PatchPositionHead(16, 32)
    images = _coordinate_image(64, 32) / 32
    opt = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=1e-2)
    first = None
    for _ in range(150):
        loss, accuracy = patch_position_loss(encoder, head, images, patch_size=6, jitter=0)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first and accuracy > 0.9


def test_random_crops_are_slices_of_the_images() -> None:
    torch.manual_seed(0)
    rows = torch.arange(40.0).view(1, 1, 40, 1).expand(5, 1, 40, 40)
    cols = torch.arange(40.0).view(1, 1, 1, 40).expand(5, 1, 40, 40)
    out = random_crops(torch.cat([rows, cols], 1), 16)
    assert out.shape == (5, 2, 16, 16)
    top, left = out[:, 0, 0, 0].long(), out[:, 1, 0, 0].long()
    assert torch.equal(out[:, 0], top.view(-1, 1, 1) + torch.arange(16.0).view(1, 16, 1).expand(5, 16, 16))
    assert torch.equal(out[:, 1], left.view(-1, 1, 1) + torch.arange(16.0).view(1, 1, 16).expand(5, 16, 16))
    with pytest.raises(ValueError, match="crops of 48 px"):
        random_crops(torch.rand(2, 1, 40, 40), 48)




def test_patches_leave_the_batchnorm_running_statistics_alone():
    encoder = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(1),
                                  torch.nn.LazyLinear(8))
    encoder(torch.rand(2, 1, 6, 6))  # materialise the lazy layer
    before = encoder[1].running_mean.clone()
    patch_position_loss(encoder, PatchPositionHead(8), torch.rand(4, 1, 24, 24) + 3, patch_size=6, jitter=0)
    assert torch.equal(encoder[1].running_mean, before) and encoder[1].momentum == 0.1
    with frozen_running_stats(encoder):
        encoder(torch.rand(4, 1, 6, 6) + 5)
    assert torch.equal(encoder[1].running_mean, before)
