"""Nearest-neighbour search over a bank of L2-normalised embeddings (cosine = inner product).

One job: given a bank ``[m, d]`` and queries ``[n, d]``, return the k largest inner products of
every query, ``[n, k]`` in descending order. Three ways, all giving the same numbers on banks
where the exact ones apply (tested):

- ``faiss``: faiss' exact ``IndexFlatIP`` (Johnson et al., "Billion-scale similarity
  search with GPUs", 2019), multi-threaded BLAS blocks with a bounded top-k heap;
- ``faiss-ivf``: faiss' inverted-file index ``IndexIVFFlat`` — approximate, for banks of
  millions: k-means (on at most 64 rows per cell) into ``nlist`` ≈ √m cells, a query visits the
  ``nprobe`` nearest cells;
- ``torch`` (the detectors' default): chunked matrix products and ``topk`` on the bank's device
  (CUDA included); at 1M x 512 on 2 cores 30 ms per query against faiss flat's 64 ms, with no
  second copy of the bank (``benchmarks/knn_scale.py``).

faiss runs on the CPU (the ``faiss-cpu`` wheel); a bank on CUDA is searched with ``torch``.

>>> import torch
>>> bank = torch.nn.functional.normalize(torch.eye(3), dim=-1)
>>> NeighbourIndex(bank).search(torch.tensor([[1.0, 0.1, 0.0]]), k=2).round(decimals=3)
tensor([[1.0000, 0.1000]])
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from medad.runtime import batches

Search = Literal["faiss", "faiss-ivf", "torch"]
CHUNK_ELEMENTS = 1 << 24  # similarities held in memory at once by the torch searches: queries x bank
IVF_TRAIN_POINTS = 64  # per cell: faiss-ivf's k-means sees at most 64 x nlist bank rows


class NeighbourIndex:
    """An index over the rows of ``bank [m, d]`` (normalised by the caller) answering top-k
    inner-product queries; ``nprobe`` is the cells a ``faiss-ivf`` query visits."""

    def __init__(self, bank: Tensor, search: Search = "faiss", nprobe: int = 16):
        if bank.ndim != 2 or len(bank) == 0:
            raise ValueError(f"a neighbour bank must be a non-empty [m, d] matrix, got {tuple(bank.shape)}")
        self.search_kind: Search = "torch" if bank.is_cuda else search
        self.bank = bank
        self.index = None
        if self.search_kind != "torch":
            import faiss  # a dependency of medad; imported here so that importing medad stays fast

            faiss.omp_set_num_threads(torch.get_num_threads())
            data = np.ascontiguousarray(bank.detach().cpu().numpy(), dtype=np.float32)
            m, d = data.shape
            if self.search_kind == "faiss":
                self.index = faiss.IndexFlatIP(d)
            else:
                nlist = max(1, min(m // 39, round(math.sqrt(m))))  # faiss wants >= 39 points per cell
                self.index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
                self.index.cp.max_points_per_centroid = IVF_TRAIN_POINTS  # k-means on a subsample
                self.index.cp.seed = 0
                self.index.train(data)
                self.index.nprobe = min(nprobe, nlist)
            self.index.add(data)

    def __len__(self) -> int:
        return len(self.bank)

    def search(self, query: Tensor, k: int) -> Tensor:
        """The ``k`` largest inner products of each row of ``query [n, d]`` with the bank, ``[n, k]``,
        descending, in the query's dtype and device."""
        if not 1 <= k <= len(self):
            raise ValueError(f"k={k} neighbours need 1 <= k <= {len(self)} (the bank size)")
        if self.index is None or torch.onnx.is_in_onnx_export():  # faiss is not part of an exported graph
            q = query.to(self.bank.device, self.bank.dtype)
            chunk = max(1, CHUNK_ELEMENTS // len(self.bank))
            parts = [(part @ self.bank.T).topk(k, dim=-1).values for part in batches(q, chunk)]
            sims = torch.cat(parts) if parts else q.new_zeros(0, k)
            return sims.to(query.device, query.dtype)
        data = np.ascontiguousarray(query.detach().cpu().numpy(), dtype=np.float32)
        sims, _ = self.index.search(data, k)
        return torch.from_numpy(sims).to(query.device, query.dtype)
