"""Method ``none``: nothing is trained; with ``batchnorm: reestimate`` the BatchNorm statistics are
those of the training normals (the honest untrained floor of the benchmarks)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medad import AnomalyDetector
from medad.config import RunConfig
from medad.data.synthetic import make_phantoms
from medad.methods.none import reestimate_batchnorm
from medad.models.resnet import ResNetEncoder
from tolerance import tolerance


def test_reestimated_statistics_are_the_averages_over_the_images() -> None:
    torch.manual_seed(0)
    encoder = ResNetEncoder(1, width=4, stem="cifar").eval()
    images = torch.rand(12, 1, 16, 16) * 0.5 + 0.3
    weights = [p.clone() for p in encoder.parameters()]
    reestimate_batchnorm(encoder, images, batch_size=4)
    conv = encoder.conv1
    with torch.no_grad():  # what the first BatchNorm sees, here in float64
        first = F.conv2d(images.double(), conv.weight.double(), None, conv.stride, conv.padding)
        reach = float(conv.weight.abs().sum((1, 2, 3)).max() * images.max())
    # the encoder's float32 path: a convolution of 9 products a pixel, BatchNorm's mean over a batch of
    # 4 x 16 x 16 of them and the running average of 3 batch means; every term is at most sum |w| max x
    tol = tolerance(torch.float32, terms=9 + 4 * 16 * 16 + 3, scale=reach)
    torch.testing.assert_close(encoder.bn1.running_mean, first.mean((0, 2, 3)).float(), **tol)
    assert all(torch.equal(a, b) for a, b in zip(weights, encoder.parameters()))
    assert not encoder.training and encoder.bn1.momentum == 0.1


def test_fit_with_method_none_reestimates_only_when_asked() -> None:
    normals, _ = make_phantoms(16, 32, seed=0)
    base = {"data": {"image_size": 32}, "encoder": {"width": 4}, "train": {"progress": False},
            "method": {"name": "none"}, "detector": {"name": "mahalanobis"}}
    init = AnomalyDetector(RunConfig.model_validate(base)).fit(normals)
    assert torch.equal(init.encoder_.bn1.running_mean, torch.zeros(4))
    base["method"]["params"] = {"batchnorm": "reestimate"}
    fitted = AnomalyDetector(RunConfig.model_validate(base)).fit(normals)
    assert fitted.encoder_.bn1.running_mean.abs().sum() > 0
