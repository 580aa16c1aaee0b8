"""Small heads put on top of an encoder only for a training loss."""

from __future__ import annotations

from torch import Tensor, nn


class ProjectionHead(nn.Module):
    """SimCLR-style MLP: ``layers - 1`` blocks of Linear-BN-ReLU, then a final Linear.

    With the default ``layers=2`` this is Linear-BN-ReLU-Linear (Chen et al. 2020).

    >>> import torch
    >>> ProjectionHead(512, 512, out_dim=128)(torch.rand(4, 512)).shape
    torch.Size([4, 128])
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int = 128, layers: int = 2):
        super().__init__()
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        blocks: list[nn.Module] = []
        dim = in_dim
        for _ in range(layers - 1):
            blocks += [nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(True)]
            dim = hidden_dim
        blocks.append(nn.Linear(dim, out_dim))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
