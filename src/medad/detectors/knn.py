"""S_NND: negative cosine similarity to the nearest normal training embedding (CON2 eq. 12).

The search is :class:`~medad.detectors.neighbours.NeighbourIndex` (``search``: exact ``torch``
brute force by default — at 1M x 512 it was twice as fast as faiss' flat index and needs no copy
of the bank, docs/benchmarks.md —, ``faiss`` exact, ``faiss-ivf`` approximate for banks of millions).

>>> import torch
>>> from torch import nn
>>> normals = torch.rand(20, 1, 2, 2, generator=torch.Generator().manual_seed(0))
>>> det = NearestNeighbourDetector().fit(normals, nn.Flatten())
>>> round(float(det.score(normals[:1], nn.Flatten()).scores[0]), 5)  # its own nearest neighbour
-1.0
"""

from __future__ import annotations

from typing import Callable, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from medad.detectors.base import DetectorParams
from medad.detectors.embedding import EmbeddingDetector, EmbeddingParams
from medad.detectors.neighbours import CHUNK_ELEMENTS, NeighbourIndex, Search
from medad.runtime import batches


def reduce_cosine_similarities(z: Tensor, bank: Tensor, reduce: Callable[[Tensor], Tensor]) -> Tensor:
    """Cosine similarities of queries ``z`` (views, n, d) to a normalised ``bank`` (views, m, d), reduced
    over the bank axis by ``reduce`` ((views, chunk, m) -> (views, chunk)), in chunks of bounded memory.

    >>> bank = F.normalize(torch.eye(3)[None], dim=-1)
    >>> reduce_cosine_similarities(torch.tensor([[[2.0, 0.0, 0.0]]]), bank, lambda s: s.amax(-1))
    tensor([[1.]])
    """
    views, n_bank = bank.shape[:2]
    query = F.normalize(z.to(bank.dtype), dim=-1)
    chunk = max(1, CHUNK_ELEMENTS // (views * n_bank))
    return torch.cat([reduce(part @ bank.transpose(1, 2)) for part in batches(query, chunk, dim=1)], dim=1)


class NearestNeighbourParams(EmbeddingParams):
    k: int = Field(1, ge=1, description="average the k largest similarities (k = 1: CON2 eq. 12)")
    search: Search = Field("torch", description="torch (exact brute force on the bank's device; the fastest "
                           "exact search measured), faiss (exact flat index) or faiss-ivf (approximate, large banks)")
    nprobe: int = Field(16, ge=1, description="cells a faiss-ivf query visits (more = slower, closer to exact)")


class NearestNeighbourDetector(EmbeddingDetector):
    """``-max_x' cos(g(t(x)), g(t(x')))`` over the training images ``x'`` seen through the same view
    ``t`` (CON2 eq. 12); the L2-normalised training embeddings of every view are stored.

    With ``k > 1`` the score is minus the mean of the ``k`` largest similarities, the usual kNN
    extension of the nearest-neighbour distance.
    """

    name: ClassVar[str] = "nnd"
    Params: ClassVar[type[DetectorParams]] = NearestNeighbourParams
    params: NearestNeighbourParams
    statistics = ("bank",)

    def _fit(self, z: Tensor) -> dict[str, Tensor]:
        if z.shape[1] < self.params.k:
            raise ValueError(f"k={self.params.k} nearest neighbours need at least k training images, got {z.shape[1]}")
        return {"bank": F.normalize(z, dim=-1)}

    def _indexes(self) -> list[NeighbourIndex]:
        """One index per view over ``bank``, built at the first score after a fit or a load."""
        key = (self.bank.data_ptr(), tuple(self.bank.shape), self.bank.device, self.params.search, self.params.nprobe)
        if getattr(self, "_index_key", None) != key:
            self._index_cache = [NeighbourIndex(b, self.params.search, self.params.nprobe) for b in self.bank]
            self._index_key = key
        return self._index_cache

    def _score(self, z: Tensor) -> Tensor:
        query = F.normalize(z.to(self.bank.dtype), dim=-1)
        k = self.params.k
        return -torch.stack([index.search(q, k).mean(-1) for index, q in zip(self._indexes(), query)])
