"""Nearest-neighbour search: faiss (exact) and torch agree on small banks, faiss-ivf finds
(almost) the same neighbours, and S_NND gives the same scores whichever search it uses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medad.detectors.neighbours import NeighbourIndex
from medad.detectors.registry import build_detector
from tolerance import tolerance


def _bank(m: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(m, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.mark.parametrize("k", [1, 5])
def test_faiss_flat_equals_brute_force(k: int) -> None:
    bank, query = _bank(500, 32, 0), _bank(40, 32, 1)
    exact = (query @ bank.T).topk(k, dim=-1).values
    for search in ("faiss", "torch"):
        found = NeighbourIndex(bank, search).search(query, k)
        assert found.shape == (40, k) and torch.allclose(found, exact, atol=1e-5), search
    with pytest.raises(ValueError, match="bank size"):
        NeighbourIndex(bank).search(query, 501)
    with pytest.raises(ValueError, match="non-empty"):
        NeighbourIndex(bank[:0])


def test_faiss_ivf_is_close_to_exact_and_exact_with_every_cell_visited() -> None:
    bank, query = _bank(4000, 16, 2), _bank(100, 16, 3)
    exact = NeighbourIndex(bank, "faiss").search(query, 1)
    approx = NeighbourIndex(bank, "faiss-ivf", nprobe=8).search(query, 1)
    # the flat index (BLAS) and the inverted lists (faiss' own loops) sum the 16 products of unit vectors
    # in different orders: the same neighbour's similarity may differ by up to the float32 bound
    tol = tolerance(torch.float32, terms=16)["atol"]
    assert (approx <= exact + tol).all()  # never better than the true nearest neighbour
    assert (approx > exact - tol).float().mean() >= 0.7  # usually the same one (random data: the worst case)
    every_cell = NeighbourIndex(bank, "faiss-ivf", nprobe=10_000).search(query, 1)
    assert torch.allclose(every_cell, exact, atol=1e-5)


def test_nnd_scores_are_the_same_with_every_search() -> None:
    normals = torch.rand(60, 1, 4, 4, generator=torch.Generator().manual_seed(4))
    test = torch.rand(10, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    scores = {}
    for search in ("faiss", "torch", "faiss-ivf"):
        det = build_detector("nnd", {"k": 3, "search": search, "nprobe": 100}).fit(normals, nn.Flatten())
        scores[search] = det.score(test, nn.Flatten()).scores
        fresh = build_detector("nnd", {"k": 3, "search": search, "nprobe": 100})
        fresh.load_state_dict(det.state_dict())  # the index is rebuilt from the saved bank
        assert torch.allclose(fresh.score(test, nn.Flatten()).scores, scores[search])
    assert torch.allclose(scores["faiss"], scores["torch"], atol=1e-5)
    assert torch.allclose(scores["faiss-ivf"], scores["torch"], atol=1e-5)  # one cell: exact
