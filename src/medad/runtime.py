"""Device choice, seeding and thread settings: the few process-wide switches medad touches.

>>> resolve_device("cpu").type
'cpu'
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from medad.distributed import launched


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; asking for CUDA without it is an error. Under
    ``torchrun`` an unnumbered CUDA device is this process's GPU, ``cuda:LOCAL_RANK``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but no CUDA device is available; use --device cpu or auto")
    if name == "cuda" and launched():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU for a module with neither)."""
    tensor = next(module.parameters(), None)
    if tensor is None:
        tensor = next(module.buffers(), None)
    return torch.device("cpu") if tensor is None else tensor.device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so that two CPU runs give the same numbers."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


def set_threads(threads: int | None) -> None:
    """Limit torch's intra-op threads (``None`` keeps torch's default)."""
    if threads is not None:
        torch.set_num_threads(threads)


def batches(x: torch.Tensor, size: int, dim: int = 0) -> tuple[torch.Tensor, ...]:
    """``x.split(size, dim)``, or ``(x,)`` while a graph is being exported (``torch.onnx``), where
    the batch is symbolic and the caller of the graph feeds the batches itself.

    >>> [len(b) for b in batches(torch.zeros(5, 2), 2)]
    [2, 2, 1]
    """
    return (x,) if torch.onnx.is_in_onnx_export() else x.split(size, dim)
