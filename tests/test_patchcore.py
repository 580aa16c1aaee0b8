"""PatchCore: patch features, greedy coreset, maps and eq. 7 against loops, a pasted defect, persistence."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medad.detectors.patchcore import PatchcoreDetector, greedy_coreset, nearest, patch_features
from medad.detectors.registry import applicable_detectors, build_detector
from medad.models.resnet import ResNetEncoder
from tolerance import tolerance

LAYERS = ("layer2", "layer3")


@pytest.fixture(scope="module")
def encoder() -> ResNetEncoder:
    torch.manual_seed(0)
    return ResNetEncoder(1, width=4, stem="cifar").eval()


@pytest.fixture(scope="module")
def normals() -> torch.Tensor:
    """Smooth random textures at 16 px."""
    noise = torch.rand(20, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    return 0.3 + 0.4 * F.interpolate(noise, size=16, mode="bilinear", align_corners=False)


def test_patch_features_average_neighbourhoods_and_upsample_deeper_maps(encoder, normals):
    with torch.no_grad():
        maps = encoder.feature_maps(normals[:2], LAYERS)
        f = patch_features(normals[:2], encoder, LAYERS, patch_size=3)
    l2, l3 = maps["layer2"], maps["layer3"]  # 8 x 8 and 4 x 4 at 16 px with the cifar stem
    assert f.shape == (2, l2.shape[1] + l3.shape[1], 8, 8)
    # an interior position of layer2: the plain mean of its 3 x 3 neighbours; a corner: of the 2 x 2 inside
    torch.testing.assert_close(f[:, :8, 3, 4], l2[:, :, 2:5, 3:6].mean(dim=(2, 3)))
    torch.testing.assert_close(f[:, :8, 0, 0], l2[:, :, :2, :2].mean(dim=(2, 3)))
    pooled3 = F.avg_pool2d(l3, 3, stride=1, padding=1, count_include_pad=False)
    torch.testing.assert_close(f[:, 8:], F.interpolate(pooled3, size=(8, 8), mode="bilinear", align_corners=False))
    with torch.no_grad():
        torch.testing.assert_close(patch_features(normals[:2], encoder, LAYERS, patch_size=1)[:, :8], l2)


def test_greedy_coreset_is_the_farthest_point_sequence():
    x = torch.randn(300, 5, generator=torch.Generator().manual_seed(0))
    chosen = greedy_coreset(x, 20, projection_dim=5, seed=3)  # no projection: D is not larger
    assert len(set(chosen.tolist())) == 20
    tol = tolerance(torch.float32, terms=5, scale=float(4 * x.norm(dim=1).max() ** 2))["atol"]
    for step in range(1, 20):  # each pick is the row farthest from the ones before it (up to rounding)
        dist = torch.cdist(x.double(), x[chosen[:step]].double()).min(dim=1).values ** 2
        assert dist[chosen[step]] >= dist.max() - tol
    torch.testing.assert_close(greedy_coreset(x, 20, projection_dim=5, seed=3), chosen)  # seeded


def test_greedy_coreset_covers_every_cluster_first():
    centres = torch.tensor([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0], [100.0, 100.0]])
    x = (centres[:, None] + torch.randn(4, 50, 2, generator=torch.Generator().manual_seed(0))).reshape(-1, 2)
    assert sorted({int(i) // 50 for i in greedy_coreset(x, 4, seed=0)}) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="coreset of 0 rows"):
        greedy_coreset(x, 0)


def test_nearest_matches_a_full_distance_matrix():
    g = torch.Generator().manual_seed(0)
    bank, query = torch.randn(50, 6, generator=g), torch.randn(30, 6, generator=g)
    dist, index = nearest(query, bank, k=3)
    full = torch.cdist(query, bank)
    torch.testing.assert_close(dist, full.sort(dim=1).values[:, :3])
    torch.testing.assert_close(full.gather(1, index), dist)


def distance_tolerance(test: torch.Tensor, bank: torch.Tensor, factor: float = 1.0) -> dict[str, float]:
    """The detector's float32 distances come from ``|a|^2 + |b|^2 - 2 a.b`` over D channels: its
    error in d^2 is up to gamma_D (|a| + |b|)^2, so in d up to that / 2d (d the smallest distance)."""
    patches = test.permute(0, 2, 3, 1).reshape(-1, test.shape[1]).double()
    reach = (patches.norm(dim=1).max() + bank.double().norm(dim=1).max()) ** 2
    d_min = torch.cdist(patches, bank.double()).min()
    return tolerance(torch.float32, terms=bank.shape[1], scale=factor * float(reach / (2 * d_min)))


def test_maps_and_scores_equal_a_brute_force_over_all_training_patches(encoder, normals):
    det = PatchcoreDetector(coreset_ratio=1.0, num_neighbors=0, sigma=0.0).fit(normals[:16], encoder)
    with torch.no_grad():
        train = patch_features(normals[:16], encoder, LAYERS, 3)
        test = patch_features(normals[16:], encoder, LAYERS, 3)
    bank = train.permute(0, 2, 3, 1).reshape(-1, train.shape[1])
    assert det.bank.shape == bank.shape
    # the reference in float64 from the same features (a sum of squared differences, no cancellation)
    grid = torch.stack([torch.cdist(t.flatten(1).T.double(), bank.double()).min(dim=1).values.reshape(8, 8)
                        for t in test])
    out = det.score(normals[16:], encoder)
    tol = distance_tolerance(test, bank)
    assert tol["atol"] < 1e-3  # still far below any formula error
    torch.testing.assert_close(out.scores, grid.flatten(1).max(dim=1).values, **tol)
    expected_maps = F.interpolate(grid[:, None], size=(16, 16), mode="bilinear")[:, 0]  # weights sum to 1
    torch.testing.assert_close(out.maps, expected_maps.float(), **tol)


def test_image_score_is_reweighted_as_eq_7(encoder, normals):
    det = PatchcoreDetector(coreset_ratio=0.5, num_neighbors=4).fit(normals[:16], encoder)
    plain = PatchcoreDetector(coreset_ratio=0.5, num_neighbors=0).fit(normals[:16], encoder)
    torch.testing.assert_close(det.bank, plain.bank)  # the re-weighting does not change the bank
    with torch.no_grad():
        test = patch_features(normals[16:], encoder, LAYERS, 3)
    bank = det.bank.double()
    expected = []
    for t in test:  # eq. 7 in float64 from the same features
        patches = t.flatten(1).T.double()
        nearest_d, nearest_i = torch.cdist(patches, bank).min(dim=1)
        worst = int(nearest_d.argmax())
        s_star, m_star = nearest_d[worst], bank[nearest_i[worst]]
        neighbours = torch.cdist(m_star[None], bank)[0].argsort()[:4]
        d_b = torch.linalg.vector_norm(patches[worst] - bank[neighbours], dim=1)
        expected.append((1 - torch.exp(s_star) / torch.exp(d_b).sum()) * s_star)
    expected = torch.stack(expected)
    # |d score / d s*| <= 1 + s* and sum_b |d score / d d_b| <= s*: the distance error times 1 + 2 s*
    tol = distance_tolerance(test, det.bank, factor=1 + 2 * float(expected.max()))
    torch.testing.assert_close(det.score(normals[16:], encoder).scores, expected, **tol)
    scores = det.score(normals[16:], encoder).scores
    assert (scores > 0).all() and (scores < plain.score(normals[16:], encoder).scores).all()


def test_pasted_square_gets_the_highest_map_values_and_a_higher_score():
    noise = torch.rand(37, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    images = 0.3 + 0.4 * F.interpolate(noise, size=32, mode="bilinear", align_corners=False)
    torch.manual_seed(0)
    encoder = ResNetEncoder(1, width=8, stem="cifar").eval()
    det = PatchcoreDetector().fit(images[:36], encoder)
    square = torch.zeros(32, 32, dtype=torch.bool)
    square[12:20, 12:20] = True
    near = F.max_pool2d(square[None].float(), 9, stride=1, padding=4)[0].bool()
    defect = images[36:].clone()
    defect[..., square] = 1.0
    out = det.score(torch.cat([images[36:], defect]), encoder)
    m = out.maps[1]
    assert near.view(-1)[m.argmax()]
    assert m[square].mean() > 2 * m[~near].mean()
    assert out.scores[1] > 2 * out.scores[0]


def test_state_dict_round_trip_gives_identical_maps(encoder, normals):
    det = PatchcoreDetector(coreset_ratio=0.3).fit(normals[:16], encoder)
    loaded = PatchcoreDetector(coreset_ratio=0.3)
    loaded.load_state_dict(det.state_dict())
    a, b = det.score(normals[16:], encoder), loaded.score(normals[16:], encoder)
    assert torch.equal(a.scores, b.scores) and torch.equal(a.maps, b.maps)


def test_errors(encoder, normals):
    with pytest.raises(RuntimeError, match="not fitted"):
        PatchcoreDetector().score(normals[:2], encoder)
    with pytest.raises(ValueError, match="feature_maps"):
        PatchcoreDetector().fit(normals[:4], nn.Flatten())
    with pytest.raises(ValueError, match="num_neighbors=9"):
        PatchcoreDetector(coreset_ratio=0.01).fit(normals[:2], encoder)  # 128 patches, 1 kept
    det = PatchcoreDetector().fit(normals[:6], encoder)
    with pytest.raises(ValueError, match="size fitted on"):
        det.score(torch.rand(1, 1, 32, 32), encoder)
    with pytest.raises(ValueError):
        PatchcoreDetector(coreset_ratio=0.0)


def test_registry_entry():
    assert isinstance(build_detector("patchcore", {"coreset_ratio": 0.5}), PatchcoreDetector)
    assert applicable_detectors("patchcore") == ["patchcore", "mahalanobis", "nnd", "lh", "cosine"]
