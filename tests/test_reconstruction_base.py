"""The reconstruction-detector base: build from the input shape, train, reduce maps, save/load."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from medad.detectors.reconstruction import ReconstructionDetector
from medad.train.networks import train_network


class TinyAE(ReconstructionDetector):
    """A 1x1-conv 'autoencoder': enough to exercise the base class."""

    name = "tiny"

    def build(self, channels: int, size: int) -> None:
        self.net = nn.Sequential(nn.Conv2d(channels, 4, 1), nn.ReLU(), nn.Conv2d(4, channels, 1))

    def train_networks(self, images: Tensor, encoder: nn.Module | None, unlabeled: Tensor | None) -> None:
        p = self.params
        train_network(self.net, images, lambda x: (self.net(x) - x).pow(2).mean(),
                      epochs=p.epochs, lr=p.lr, batch_size=p.batch_size, seed=p.seed)

    def anomaly_map(self, x: Tensor) -> Tensor:
        return (self.net(x) - x).pow(2).mean(1)


def _data() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    normals = 0.5 + 0.05 * torch.randn(32, 2, 8, 8, generator=g)
    odd = normals[:4].clone()
    odd[:, :, 2:5, 2:5] = 1.0
    return normals, odd


def test_fit_score_and_reduction() -> None:
    normals, odd = _data()
    det = TinyAE(epochs=30, lr=1e-2, batch_size=8).fit(normals, None)
    out = det.score(torch.cat([normals[:4], odd]), None)
    assert out.maps.shape == (8, 8, 8) and out.scores.shape == (8,)
    assert out.scores[4:].min() > out.scores[:4].max()  # the bright square reconstructs worse
    assert torch.allclose(out.scores.float(), out.maps.flatten(1).mean(1))
    det.params.reduction = "max"
    assert torch.allclose(det.score(odd, None).scores.float(), det.score(odd, None).maps.flatten(1).amax(1))


def test_fit_is_seeded_and_state_dict_rebuilds_the_network() -> None:
    normals, odd = _data()
    a = TinyAE(epochs=2, batch_size=8).fit(normals, None)
    b = TinyAE(epochs=2, batch_size=8).fit(normals, None)
    assert torch.equal(a.score(odd, None).scores, b.score(odd, None).scores)
    fresh = TinyAE(epochs=2)
    fresh.load_state_dict(a.state_dict())
    assert fresh.input_shape.tolist() == [2, 8]
    assert torch.equal(fresh.score(odd, None).scores, a.score(odd, None).scores)


def test_errors() -> None:
    normals, _ = _data()
    with pytest.raises(RuntimeError, match="not fitted"):
        TinyAE().score(normals, None)
    det = TinyAE(epochs=1, batch_size=8).fit(normals, None)
    with pytest.raises(ValueError, match="fitted on"):
        det.score(torch.rand(2, 2, 16, 16), None)
    with pytest.raises(ValueError, match="square"):
        TinyAE().fit(torch.rand(4, 1, 8, 6), None)
    with pytest.raises(FloatingPointError, match="loss became"):
        bad = normals.clone()
        bad[0, 0, 0, 0] = float("inf")
        TinyAE(epochs=1, batch_size=32).fit(bad, None)
