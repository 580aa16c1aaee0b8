"""Detectors on hand-made embeddings: "images" [N, D, 1, 1] through a flattening encoder."""

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal
from sklearn.covariance import LedoitWolf
from torch import nn

from medad.augment.tta import tta_view
from medad.detectors.embedding import EmbeddingDetector
from medad.detectors.gaussian import LikelihoodDetector, MahalanobisDetector
from medad.detectors.knn import NearestNeighbourDetector
from medad.detectors.registry import DETECTORS, applicable_detectors, build_detector
from medad.methods.registry import METHODS
from medad.models.resnet import ResNetEncoder
from tolerance import tolerance

EMBEDDING = sorted(name for name, cls in DETECTORS.items() if issubclass(cls, EmbeddingDetector))


class CountingFlatten(nn.Module):
    """Embedding = the flattened image; counts forward calls and records the train/eval mode."""

    def __init__(self):
        super().__init__()
        self.calls = 0
        self.modes: set[bool] = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.modes.add(self.training)
        return x.flatten(1)


def as_images(z: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(z, dtype=torch.float32)[:, :, None, None]


def gaussian_cloud(n: int, d: int = 4, seed: int = 0, centre: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(d, d)) + 2 * np.eye(d)
    return rng.normal(size=(n, d)) @ A.T + centre


@pytest.fixture
def data():
    train = gaussian_cloud(200, seed=0)
    test = gaussian_cloud(10, seed=1)
    return train, test


def test_mahalanobis_matches_closed_form(data):
    train, test = data
    det = MahalanobisDetector().fit(as_images(train), nn.Flatten())
    lw = LedoitWolf().fit(train.astype(np.float32).astype(np.float64))
    diff = test - lw.location_
    expected = np.einsum("nd,de,ne->n", diff, np.linalg.inv(lw.covariance_), diff)
    np.testing.assert_allclose(det.score(as_images(test), nn.Flatten()).scores.numpy(), expected, rtol=1e-5)


def _mahalanobis_scores(train: np.ndarray, test: np.ndarray) -> np.ndarray:
    return MahalanobisDetector().fit(as_images(train), nn.Flatten()).score(as_images(test), nn.Flatten()).scores.numpy()


def test_mahalanobis_is_invariant_to_similarity_maps(data):
    train, test = data
    Q, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(4, 4)))
    moved = _mahalanobis_scores(5.0 * train @ Q.T + 7.0, 5.0 * test @ Q.T + 7.0)
    np.testing.assert_allclose(moved, _mahalanobis_scores(train, test), rtol=1e-4)


def test_mahalanobis_is_nearly_invariant_to_affine_maps():
    # Ledoit-Wolf shrinkage (~0.005 here) is what breaks exact invariance under general affine maps
    train, test = gaussian_cloud(2000, seed=0), gaussian_cloud(10, seed=1)
    A = np.random.default_rng(3).normal(size=(4, 4)) + 3 * np.eye(4)
    moved = _mahalanobis_scores(train @ A.T + 7.0, test @ A.T + 7.0)
    np.testing.assert_allclose(moved, _mahalanobis_scores(train, test), rtol=0.05)


def test_mahalanobis_normalize_uses_unit_vectors(data):
    train, test = data
    det = MahalanobisDetector(normalize=True).fit(as_images(train), nn.Flatten())
    unit = lambda z: z / np.linalg.norm(z, axis=1, keepdims=True)  # noqa: E731
    scaled = det.score(as_images(3.0 * test), nn.Flatten()).scores
    assert torch.allclose(det.score(as_images(test), nn.Flatten()).scores, scaled, rtol=1e-4)
    # the detector normalises the float32 embeddings in float64: so does the reference (a float32 mean of 200
    # unit vectors is off by up to ~1e-5, and a component of this mean is 3e-4)
    expected = torch.as_tensor(unit(train.astype(np.float32).astype(np.float64)).mean(0))
    torch.testing.assert_close(det.mean[0], expected, **tolerance(torch.float64, terms=len(train) + train.shape[1]))


@pytest.mark.parametrize("k", [1, 3])
def test_nnd_is_minus_max_cosine(data, k):
    train, test = data
    det = NearestNeighbourDetector(k=k).fit(as_images(train), nn.Flatten())
    unit = lambda z: z / np.linalg.norm(z, axis=1, keepdims=True)  # noqa: E731
    sims = unit(test) @ unit(train).T
    expected = -np.sort(sims, axis=1)[:, -k:].mean(1)
    # the detector: float32 embeddings (rounded from float64), normalised (d squares each) and a d-term dot
    np.testing.assert_allclose(det.score(as_images(test), nn.Flatten()).scores.numpy(), expected,
                               **tolerance(torch.float32, terms=3 * train.shape[1]))


def test_lh_is_negative_log_density_with_shrunk_covariance(data):
    train, test = data
    det = LikelihoodDetector().fit(as_images(train), nn.Flatten())
    unit = lambda z: z / np.linalg.norm(z, axis=1, keepdims=True)  # noqa: E731
    lw = LedoitWolf().fit(unit(train.astype(np.float32).astype(np.float64)))
    expected = -multivariate_normal(lw.location_, lw.covariance_).logpdf(unit(test))
    np.testing.assert_allclose(det.score(as_images(test), nn.Flatten()).scores.numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("name", EMBEDDING)
def test_outliers_score_higher_than_inliers(name):
    train = gaussian_cloud(100, seed=0, centre=10.0)  # away from the origin, so directions differ too
    inliers = gaussian_cloud(10, seed=1, centre=10.0)
    outliers = gaussian_cloud(10, seed=2, centre=10.0) * np.array([-1.0, 1.0, -1.0, 1.0])
    det = build_detector(name).fit(as_images(train), nn.Flatten())
    inlier_scores = det.score(as_images(inliers), nn.Flatten()).scores
    outlier_scores = det.score(as_images(outliers), nn.Flatten()).scores
    assert outlier_scores.min() > inlier_scores.max()


def test_scores_average_the_per_view_scores_against_same_view_statistics():
    gen = torch.Generator().manual_seed(0)
    train, test = torch.rand(12, 1, 4, 4, generator=gen), torch.rand(5, 1, 4, 4, generator=gen)
    det = NearestNeighbourDetector(tta=2, tta_seed=7).fit(train, nn.Flatten())
    assert det.bank.shape == (3, 12, 16)
    per_view = []
    for k in range(3):
        bank = nn.functional.normalize(tta_view(train, k, 7).flatten(1), dim=1)
        query = nn.functional.normalize(tta_view(test, k, 7).flatten(1), dim=1)
        per_view.append(-(query @ bank.T).max(1).values)
    expected = torch.stack(per_view).mean(0).double()
    assert torch.allclose(det.score(test, nn.Flatten()).scores, expected, atol=1e-6)


@pytest.mark.parametrize("name", EMBEDDING)
def test_state_dict_round_trip(name):
    gen = torch.Generator().manual_seed(0)
    train, test = torch.rand(20, 1, 4, 4, generator=gen), torch.rand(6, 1, 4, 4, generator=gen)
    det = build_detector(name, {"tta": 1}).fit(train, nn.Flatten())
    fresh = build_detector(name, {"tta": 1})
    fresh.load_state_dict(det.state_dict())
    assert torch.equal(fresh.score(test, nn.Flatten()).scores, det.score(test, nn.Flatten()).scores)
    wrong_views = build_detector(name, {"tta": 0})
    wrong_views.load_state_dict(det.state_dict())
    with pytest.raises(ValueError, match="fitted with 2 views"):
        wrong_views.score(test, nn.Flatten())


def test_unfitted_detector_raises():
    with pytest.raises(RuntimeError, match="not fitted"):
        MahalanobisDetector().score(torch.rand(2, 4, 1, 1), nn.Flatten())


def test_cache_embeds_each_image_set_once(data):
    train, test = (as_images(z) for z in data)
    encoder = CountingFlatten().train()
    cache: dict = {}
    detectors = [build_detector(name, {"batch_size": 64}) for name in EMBEDDING]
    for det in detectors:
        det.fit(train, encoder, cache)
    assert encoder.calls == 4  # 200 images in batches of 64
    for det in detectors:
        det.score(test, encoder, cache)
    assert encoder.calls == 5
    build_detector("nnd", {"tta": 2, "batch_size": 64}).fit(train, encoder, cache)  # views 1, 2 are new
    assert encoder.calls == 5 + 2 * 4
    build_detector("nnd", {"tta": 2, "tta_seed": 1, "batch_size": 64}).fit(train, encoder, cache)
    assert encoder.calls == 13 + 2 * 4
    assert encoder.modes == {False} and encoder.training  # eval while embedding, mode restored after


def test_encoder_must_return_pooled_embeddings():
    with pytest.raises(ValueError, match=r"pooled embeddings \[N, D\]"):
        MahalanobisDetector().fit(torch.rand(4, 1, 3, 3), nn.Identity())


def test_layer_embeds_the_stage_mean():
    encoder = ResNetEncoder(in_channels=1, width=4).eval()
    train, test = torch.rand(40, 1, 32, 32), torch.rand(6, 1, 32, 32)
    with torch.no_grad():
        stage1 = encoder.feature_maps(train, ("layer1",))["layer1"].mean(dim=(2, 3))
        stage1_test = encoder.feature_maps(test, ("layer1",))["layer1"].mean(dim=(2, 3))
    on_layer1 = MahalanobisDetector(layer="layer1").fit(train, encoder)
    on_means = MahalanobisDetector().fit(stage1[:, :, None, None], nn.Flatten())
    torch.testing.assert_close(on_layer1.mean, on_means.mean)  # 4 channels of layer1, not 32 of layer4
    torch.testing.assert_close(on_layer1.score(test, encoder).scores,
                               on_means.score(stage1_test[:, :, None, None], nn.Flatten()).scores)
    # layer4's mean is the encoder's own pooled output
    torch.testing.assert_close(MahalanobisDetector(layer="layer4").fit(train, encoder).score(test, encoder).scores,
                               MahalanobisDetector().fit(train, encoder).score(test, encoder).scores)


def test_layer_needs_a_resnet_and_a_known_stage():
    with pytest.raises(ValueError, match="needs a ResNet encoder"):
        MahalanobisDetector(layer="layer2").fit(torch.rand(4, 1, 3, 3), nn.Flatten())
    with pytest.raises(ValueError, match="layer1"):
        MahalanobisDetector(layer="layer5")


def test_cache_keeps_layers_apart():
    encoder, images, cache = ResNetEncoder(in_channels=1, width=4), torch.rand(8, 1, 32, 32), {}
    det1 = build_detector("nnd", {"layer": "layer1"}).fit(images, encoder, cache)
    det4 = build_detector("nnd", {}).fit(images, encoder, cache)
    assert det1.bank.shape[-1] == 4 and det4.bank.shape[-1] == 32


def test_the_catalog_names_every_class_by_its_own_name():
    for table in (DETECTORS, METHODS):
        assert all(cls.name == name for name, cls in table.items())


def test_registry():
    assert set(DETECTORS) == {"mahalanobis", "nnd", "lh", "padim", "patchcore", "cosine",
                              "ae", "memae", "ae_u", "msssim_ae", "ddad", "igd", "fanogan", "dae", "intensity",
                              "stats"}
    assert EMBEDDING == ["cosine", "lh", "mahalanobis", "nnd"]
    assert applicable_detectors("nnd")[0] == "nnd" and set(applicable_detectors("nnd")) == set(EMBEDDING)
    known = ("ae, ae_u, cosine, dae, ddad, fanogan, igd, intensity, lh, mahalanobis, memae, msssim_ae, nnd, padim, "
             "patchcore, stats")
    with pytest.raises(ValueError, match=f"known detectors: {known}"):
        build_detector("nope")
    with pytest.raises(ValueError):
        build_detector("nnd", {"k": 0})
    with pytest.raises(ValueError, match="at least k training images"):
        build_detector("nnd", {"k": 5}).fit(torch.rand(3, 2, 1, 1), nn.Flatten())
