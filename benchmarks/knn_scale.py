"""Benchmark: nearest-neighbour search at scale (issue 13 item 4) — per-query latency, index build
time, peak memory and recall@1 of each ``search`` of :class:`medad.detectors.neighbours.NeighbourIndex`.

Each search runs in its own process on the same seeded bank, so that its peak memory (max RSS,
bank included) is its own. The bank is L2-normalised embeddings around ``--clusters`` random
centres (embeddings of images cluster; ``--clusters 0`` gives unstructured Gaussian vectors, the
worst case for the approximate index); queries are new draws of the same mixture. Recall@1 is
against the exact ``faiss`` search.

    .venv/bin/python benchmarks/knn_scale.py                          # 1M x 512, 256 queries
    .venv/bin/python benchmarks/knn_scale.py --bank 20000 --queries 64   # smoke
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medad.detectors.neighbours import NeighbourIndex

SEARCHES = ("faiss", "torch", "faiss-ivf")


def embeddings(n: int, d: int, clusters: int, seed: int) -> torch.Tensor:
    """``[n, d]`` float32 unit vectors around ``clusters`` fixed centres (0: none), in blocks."""
    centres = F.normalize(torch.randn(max(clusters, 1), d, generator=torch.Generator().manual_seed(99)), dim=-1)
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(n, d)
    for start in range(0, n, 65536):
        block = out[start : start + 65536]
        noise = torch.randn(len(block), d, generator=g)
        if clusters:
            noise = centres[torch.randint(clusters, (len(block),), generator=g)] + 0.05 * noise
        block.copy_(F.normalize(noise, dim=-1))
    return out


def run_one(search: str, bank_size: int, dim: int, clusters: int, queries: int, batch: int, out: Path) -> None:
    bank, query = embeddings(bank_size, dim, clusters, 0), embeddings(queries, dim, clusters, 1)
    t0 = time.perf_counter()
    index = NeighbourIndex(bank, search)  # type: ignore[arg-type]
    built = time.perf_counter() - t0
    index.search(query[:batch], 1)  # warm-up
    t0 = time.perf_counter()
    top = torch.cat([index.search(part, 1) for part in query.split(batch)])
    seconds = time.perf_counter() - t0
    np.save(out / f"{search}.npy", top.numpy())
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"search": search, "build_s": built, "ms_per_query": 1000 * seconds / queries,
                      "max_rss_mb": rss_mb}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bank", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--clusters", type=int, default=1000, help="mixture centres of the bank (0 = none)")
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64, help="queries per search call (a scoring batch)")
    parser.add_argument("--searches", nargs="+", choices=SEARCHES, default=list(SEARCHES))
    parser.add_argument("--one", choices=SEARCHES, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        run_one(args.one, args.bank, args.dim, args.clusters, args.queries, args.batch, args.out)
        return
    print(f"bank {args.bank} x {args.dim} float32 ({args.bank * args.dim * 4 / 2**30:.2f} GiB, "
          f"{args.clusters} clusters), "
          f"{args.queries} queries in batches of {args.batch}, {torch.get_num_threads()} threads")
    print("| search | index build (s) | per query (ms) | peak RSS (MB) | recall@1 vs exact |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for search in args.searches:
            cmd = [sys.executable, __file__, "--one", search, "--out", tmp, "--bank", str(args.bank),
                   "--dim", str(args.dim), "--clusters", str(args.clusters), "--queries", str(args.queries),
                   "--batch", str(args.batch)]
            rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
        exact = np.load(Path(tmp) / "faiss.npy") if "faiss" in args.searches else None
        for row in rows:
            top = np.load(Path(tmp) / f"{row['search']}.npy")
            recall = "-" if exact is None else f"{np.mean(np.abs(top - exact) < 1e-5):.3f}"
            print(f"| {row['search']} | {row['build_s']:.2f} | {row['ms_per_query']:.2f} | "
                  f"{row['max_rss_mb']:.0f} | {recall} |")


if __name__ == "__main__":
    main()
