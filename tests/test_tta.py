import pytest
import torch
from torch import nn

from medad.augment.tta import tta_view, tta_views
from medad.detectors.knn import NearestNeighbourDetector


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
        assert torch.allclose(tta_view(x[order], k, seed=1), full[order], atol=1e-6)
        assert torch.allclose(tta_view(x[3:4], k, seed=1), full[3:4], atol=1e-6)


def test_scores_of_a_subset_equal_scores_in_the_full_batch():
    train, test = _images(10, seed=1), _images(7, seed=2)
    det = NearestNeighbourDetector(tta=2, batch_size=3).fit(train, nn.Flatten())
    full = det.score(test, nn.Flatten()).scores
    order = torch.tensor([6, 0, 3])
    assert torch.allclose(det.score(test[order], nn.Flatten()).scores, full[order], atol=1e-6)


def test_invalid_view_counts():
    with pytest.raises(ValueError, match="n_views"):
        tta_views(_images(), n_views=0, seed=0)
    with pytest.raises(ValueError, match="view index"):
        tta_view(_images(), -1, seed=0)
