"""PaDiM: streamed statistics, distances against numpy, localisation of a pasted defect, persistence."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medad.detectors.padim import PadimDetector, PositionMoments, patch_embeddings, select_channels
from medad.detectors.registry import applicable_detectors, build_detector
from medad.linalg import shrunk_covariance, spd_inverse
from medad.models.resnet import ResNetEncoder
from tolerance import tolerance

LAYERS = ("layer1", "layer2", "layer3")


class Identity2d(nn.Module):
    """A fake encoder whose only "layer" is the input itself, to fit PaDiM on hand-made features."""

    def __init__(self, channels: int):
        super().__init__()
        self.layer_channels = {"layer1": channels}

    def feature_maps(self, x: torch.Tensor, layers=("layer1",)) -> dict[str, torch.Tensor]:
        return {"layer1": x}


@pytest.fixture(scope="module")
def encoder() -> ResNetEncoder:
    torch.manual_seed(0)
    return ResNetEncoder(1, width=4, stem="cifar").to(memory_format=torch.channels_last).eval()


@pytest.fixture(scope="module")
def normals() -> torch.Tensor:
    """Smooth random textures at 16 px: a "normal" class with some variability."""
    noise = torch.rand(40, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    return 0.3 + 0.4 * F.interpolate(noise, size=16, mode="bilinear", align_corners=False)


def all_embeddings(images: torch.Tensor, encoder: nn.Module, index: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Every training vector at once, ``[P, N, d]`` float64 — the naive computation of the statistics.

    The features are computed in the detector's batches of ``batch_size``: a convolution's float32
    rounding can depend on the batch size (oneDNN picks kernels by shape and CPU), and the
    covariances amplify that by their condition number (up to ~600 here), so features from other
    batches would test the CPU's kernels, not the streamed statistics."""
    with torch.no_grad():
        f = torch.cat([patch_embeddings(b, encoder, LAYERS, index) for b in images.split(batch_size)])
    return f.flatten(2).permute(2, 0, 1).double()


def test_patch_embeddings_select_from_the_nearest_upsampled_concatenation(encoder, normals):
    index = torch.tensor([1, 3, 4, 11, 12, 27])
    with torch.no_grad():
        maps = encoder.feature_maps(normals[:3], LAYERS)
        full = torch.cat([F.interpolate(maps[n], size=(16, 16), mode="nearest") for n in LAYERS], dim=1)
        got = patch_embeddings(normals[:3], encoder, LAYERS, index)
    assert torch.equal(got, full[:, index])
    with pytest.raises(ValueError, match="out of range"):
        patch_embeddings(normals[:1], encoder, LAYERS, torch.tensor([28]))


@pytest.mark.parametrize("covariance", ["ledoit_wolf", "identity"])
def test_streamed_statistics_equal_the_all_at_once_ones(encoder, normals, covariance):
    det = PadimDetector(d=20, covariance=covariance, batch_size=7).fit(normals, encoder)
    X = all_embeddings(normals, encoder, det.index, det.params.batch_size)  # the detector's own features
    if covariance == "ledoit_wolf":
        mean, cov, _ = shrunk_covariance(X)
    else:
        mean = X.mean(1)
        cov = torch.stack([torch.cov(x.T) for x in X]) + 0.01 * torch.eye(20, dtype=torch.float64)
    assert torch.allclose(det.mean.reshape(-1, 20).double(), mean, rtol=1e-5, atol=1e-6)
    expected = spd_inverse(cov)
    got = det.precision.reshape(-1, 20, 20).double()
    assert ((got - expected).abs().amax((1, 2)) / expected.abs().amax((1, 2))).max() < 1e-5

    moments = PositionMoments()  # the float64 path itself, far from the origin (cancellation)
    far = 1000.0 + X
    for part in far.split(9, dim=1):
        moments.update(part)
    reference = shrunk_covariance(far)[1] if covariance == "ledoit_wolf" else cov
    assert torch.allclose(moments.mean(), far.mean(1), rtol=1e-12)
    assert torch.allclose(moments.covariance(covariance), reference, rtol=1e-7, atol=1e-9)


def test_distance_equals_numpy_mahalanobis_at_positions(encoder, normals):
    det = PadimDetector(d=12, seed=3).fit(normals, encoder)
    X = all_embeddings(normals, encoder, det.index, det.params.batch_size).numpy()
    tests = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        features = patch_embeddings(tests, encoder, LAYERS, det.index)
    dist = det.distance_map(features).numpy()
    d = X.shape[-1]
    for i, j in [(0, 0), (5, 11), (15, 15)]:
        mean, cov, _ = shrunk_covariance(torch.from_numpy(X[i * 16 + j]))
        diff = features[:, :, i, j].double().numpy() - mean.numpy()
        expected = np.sqrt(np.einsum("nd,nd->n", diff, np.linalg.solve(cov.numpy(), diff.T).T))
        # the detector works in float32 with μ and Σ⁻¹ stored as float32: x − μ, a d-term product
        # and a d-term sum round q = (x − μ)ᵀ Σ⁻¹ (x − μ) by up to γ_{2d+4} (|x − μ| + |μ|)ᵀ |Σ⁻¹| |x − μ|
        # (mixed signs in Σ⁻¹ cancel); the square root halves the relative error
        abs_precision = np.abs(np.linalg.inv(cov.numpy()))
        reach = np.einsum("nd,de,ne->n", np.abs(diff) + np.abs(mean.numpy()), abs_precision, np.abs(diff)) / expected**2
        rtol = tolerance(torch.float32, terms=2 * d + 4, scale=float(reach.max()))["atol"] / 2
        assert rtol < 1e-3  # far below any formula error
        np.testing.assert_allclose(dist[:, i, j], expected, rtol=rtol)


@pytest.mark.parametrize("covariance", ["ledoit_wolf", "identity"])
def test_pasted_square_gets_the_highest_map_values_and_a_higher_score(covariance):
    noise = torch.rand(37, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    images = 0.3 + 0.4 * F.interpolate(noise, size=32, mode="bilinear", align_corners=False)
    torch.manual_seed(0)
    encoder = ResNetEncoder(1, width=8, stem="cifar").eval()
    det = PadimDetector(d=40, covariance=covariance).fit(images[:36], encoder)
    square = torch.zeros(32, 32, dtype=torch.bool)
    square[12:20, 12:20] = True
    # the deepest features (layer3) come on a 4-px grid: allow one cell around the square
    near = F.max_pool2d(square[None].float(), 9, stride=1, padding=4)[0].bool()
    defect = images[36:].clone()
    defect[..., square] = 1.0
    out = det.score(torch.cat([images[36:], defect]), encoder)
    m = out.maps[1]
    assert near.view(-1)[m.argmax()]
    assert m[square].max() > m[~near].max() and m[square].mean() > 2 * m[~near].mean()
    assert out.scores[1] > 2 * out.scores[0]


def test_state_dict_round_trip_gives_identical_maps(encoder, normals):
    det = PadimDetector(d=15, seed=5).fit(normals[:20], encoder)
    fresh = PadimDetector(d=15, seed=99)  # the loaded channel index wins over the seed
    fresh.load_state_dict(det.state_dict())
    assert torch.equal(fresh.index, det.index)
    assert torch.equal(fresh.score(normals[20:], encoder).maps, det.score(normals[20:], encoder).maps)


def test_seed_fixes_the_channel_subset(encoder, normals):
    a = PadimDetector(d=10, seed=1).fit(normals[:8], encoder).index
    b = PadimDetector(d=10, seed=1).fit(normals[8:16], encoder).index
    c = PadimDetector(d=10, seed=2).fit(normals[:8], encoder).index
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a, select_channels(28, 10, seed=1)) and a.unique().numel() == 10
    assert torch.equal(PadimDetector(d=500).fit(normals[:4], encoder).index, torch.arange(28))


def test_max_and_mean_reduction(encoder, normals):
    out_max = PadimDetector(d=10).fit(normals[:20], encoder).score(normals[20:], encoder)
    out_mean = PadimDetector(d=10, reduction="mean").fit(normals[:20], encoder).score(normals[20:], encoder)
    assert torch.equal(out_max.maps, out_mean.maps)
    assert torch.allclose(out_max.scores, out_max.maps.amax((1, 2)).double())
    assert torch.allclose(out_mean.scores, out_mean.maps.mean((1, 2)).double())
    assert (out_max.scores > out_mean.scores).all()


@pytest.mark.parametrize("d", [100, 224])
@pytest.mark.parametrize("covariance", ["ledoit_wolf", "identity"])
def test_per_position_covariances_are_inverted_accurately(d, covariance):
    gen = torch.Generator().manual_seed(d)
    mixing = torch.randn(d, d, generator=gen, dtype=torch.float64) / d**0.5
    n = 150  # fewer images than d=224: singular sample covariance, kept invertible by regularisation
    x = torch.randn(4, n, d, generator=gen, dtype=torch.float64) @ mixing + torch.randn(4, 1, d, generator=gen)
    x = x.float().double()  # the float32 features the detector below is fitted on, exactly
    moments = PositionMoments()
    for part in x.split(64, dim=1):
        moments.update(part)
    C = moments.covariance(covariance)
    eye = torch.eye(d, dtype=torch.float64)
    assert (C @ spd_inverse(C) - eye).abs().max() < 1e-8

    det = PadimDetector(layers=("layer1",), d=d, covariance=covariance, batch_size=64)
    det.fit(x.permute(1, 2, 0).reshape(n, d, 2, 2).float(), Identity2d(d))  # 4 positions on a 2x2 grid
    # the float64 inverse of the same covariance, stored as float32: each entry of Σ⁻¹ is off by up
    # to u |Σ⁻¹|, so Σ Σ⁻¹ − I by up to u |Σ||Σ⁻¹|; the product is taken in float64, where its own
    # d-term rounding is negligible (in float32 it is up to γ_d |Σ||Σ⁻¹| ~ 2e-3 here, CPU-dependent)
    reach = float((C.abs() @ spd_inverse(C).abs()).max())
    tol = tolerance(torch.float32, terms=1, scale=reach)["atol"] + 1e-8  # + the float64 inverse's error above
    assert tol < 1e-4  # far below the error of a wrong or misplaced inverse
    assert (C @ det.precision.reshape(4, d, d).double() - eye).abs().max() < tol


def test_encoder_mode_and_statistics_are_left_untouched(normals):
    encoder = ResNetEncoder(1, width=4, stem="cifar").train()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    PadimDetector(d=8).fit(normals[:6], encoder)
    assert encoder.training
    assert all(torch.equal(v, encoder.state_dict()[k]) for k, v in before.items())


def test_errors(encoder, normals):
    with pytest.raises(RuntimeError, match="not fitted"):
        PadimDetector().score(normals[:2], encoder)
    with pytest.raises(ValueError, match="feature_maps"):
        PadimDetector().fit(normals[:4], nn.Flatten())
    with pytest.raises(ValueError, match="at least 2 training images"):
        PadimDetector(d=8).fit(normals[:1], encoder)
    det = PadimDetector(d=8).fit(normals[:6], encoder)
    with pytest.raises(ValueError, match="size the detector was fitted on"):
        det.score(torch.rand(1, 1, 32, 32), encoder)
    with pytest.raises(ValueError):
        PadimDetector(reduction="median")


def test_registry_entry():
    assert isinstance(build_detector("padim", {"d": 50}), PadimDetector)
    assert applicable_detectors("padim") == ["padim", "mahalanobis", "nnd", "lh", "cosine"]
    assert applicable_detectors("mahalanobis") == ["mahalanobis", "nnd", "lh", "cosine"]
