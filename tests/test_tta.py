import pytest
import torch
from torch import nn

from medad.augment.tta import tta_view, tta_views
from medad.detectors.knn import NearestNeighbourDetector
from tolerance import tolerance

# A view in another batch: affine_grid's batched product places each sample at [x, y, 1] . theta, 3 terms
# of at most scale + sin(10 deg) + shift < 1.5 in [-1, 1] (in px: W / 2 = 6 times that), which moves a
# bilinear sample by the coordinate error times a neighbour difference (<= 1); the image's mean and the
# contrast and brightness factors (<= 1.1) then scale the change by at most 3.3.
VIEW_TOLERANCE = tolerance(torch.float32, terms=3, scale=1.5 * 12 / 2 * 3.3)


def _images(n: int = 6, channels: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, channels, 12, 12, generator=torch.Generator().manual_seed(seed))


def test_view_zero_is_identity_and_others_are_mild_transforms():
    x = _images(channels=3)
    views = list(tta_views(x, n_views=4, seed=0))
    assert len(views) == 4 and views[0] is x
    for v in views[1:]:
        assert v.shape == x.shape and v.dtype == x.dtype
        assert 0.0 <= float(v.min()) and float(v.max()) <= 1.0
        assert not torch.equal(v, x)
        assert (v - x).abs().mean() < 0.3  # mild: still close to the original on average


def test_views_are_deterministic_and_depend_on_seed():
    x = _images()
    assert torch.equal(tta_view(x, 2, seed=3), tta_view(x, 2, seed=3))
    assert not torch.equal(tta_view(x, 2, seed=3), tta_view(x, 2, seed=4))
    assert not torch.equal(tta_view(x, 1, seed=3), tta_view(x, 2, seed=3))


def test_an_image_view_does_not_depend_on_the_rest_of_the_batch():
    x = _images(8)
    order = torch.tensor([5, 2, 7])
    for k in range(1, 4):
        full = tta_view(x, k, seed=1)
        torch.testing.assert_close(tta_view(x[order], k, seed=1), full[order], **VIEW_TOLERANCE)
        torch.testing.assert_close(tta_view(x[3:4], k, seed=1), full[3:4], **VIEW_TOLERANCE)


def test_scores_of_a_subset_equal_scores_in_the_full_batch():
    train, test = _images(10, seed=1), _images(7, seed=2)
    det = NearestNeighbourDetector(tta=2, batch_size=3).fit(train, nn.Flatten())
    full = det.score(test, nn.Flatten()).scores
    order = torch.tensor([6, 0, 3])
    # other batches: the 144-term products with the bank may be summed in another order, and a view's
    # pixels may move by VIEW_TOLERANCE, its unit embedding by 2 sqrt(144) times that over its norm
    views = torch.cat([tta_view(test, k, seed=det.params.tta_seed) for k in range(3)]).flatten(1)
    tol = tolerance(torch.float32, terms=144)
    tol["atol"] += 2 * 144**0.5 * VIEW_TOLERANCE["atol"] / float(views.norm(dim=1).min())
    torch.testing.assert_close(det.score(test[order], nn.Flatten()).scores, full[order], **tol)


def test_invalid_view_counts():
    with pytest.raises(ValueError, match="n_views"):
        tta_views(_images(), n_views=0, seed=0)
    with pytest.raises(ValueError, match="view index"):
        tta_view(_images(), -1, seed=0)
