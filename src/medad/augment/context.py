"""CON2 context augmentations t_c and a check of the paper's two assumptions for a dataset.

A context augmentation puts every image into a second "context" without changing what it shows
(CON2 sec. 3.3): ``invert`` (x → 1 − x), ``flip`` (vertical mirror) and ``equalize`` (histogram
equalisation per image and channel). All act on batches ``[N, C, H, W]`` in ``[0, 1]``, image by
image, so a result never depends on the rest of the batch.

:func:`context_assumptions` measures, for a set of normal images, the two heuristics that make a
transform a good context (CON2 assumptions 1 and 2, eqs. 9-10): *distinctiveness* (originals and
transformed images are easy to tell apart) and *alignment* (pairwise distances survive the
transform). See ``docs/methods/con2.md``.

>>> import torch
>>> x = torch.rand(2, 1, 8, 8)
>>> sorted(CONTEXTS), torch.equal(CONTEXTS["flip"](CONTEXTS["flip"](x)), x)
(['equalize', 'flip', 'invert'], True)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.spatial.distance import pdist
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import Tensor, nn

from medad.runtime import module_device


def invert(x: Tensor) -> Tensor:
    """``1 − x`` (CON2 t_Invert). An involution; in float32 ``invert(invert(x))`` differs from ``x``
    by at most 2⁻²⁵ (the rounding of ``1 − x`` for ``x < 1/2``) and equals it on the 8-bit grid k/256.

    >>> invert(torch.tensor([0.0, 0.25, 1.0]))
    tensor([1.0000, 0.7500, 0.0000])
    """
    return 1.0 - x


def flip(x: Tensor) -> Tensor:
    """Vertical mirror (top row becomes bottom row); an exact involution.

    >>> flip(torch.arange(4.0).view(1, 1, 2, 2)).flatten().tolist()
    [2.0, 3.0, 0.0, 1.0]
    """
    return x.flip(-2)


def equalize(x: Tensor) -> Tensor:
    """Histogram equalisation of each image and channel on its exact pixel values (no binning).

    A pixel of value v becomes ``(c(v) − c_min) / (P − c_min)``, where ``c(v)`` counts the pixels of
    its channel with value ≤ v, ``P`` is the number of pixels and ``c_min`` the count of the
    smallest value. The output spans [0, 1] and its empirical CDF at every output level y is
    exactly ``c_min/P + y (1 − c_min/P)``: uniform apart from the pixels of the minimum, which stay
    at 0 (with all values distinct the output is the grid ``0, 1/(P−1), ..., 1``). Ties stay tied
    and distinct values stay distinct and ordered, so equalising twice gives bit-identical output
    (idempotent), while the original cannot be recovered (not an involution). A constant channel is
    returned unchanged. PIL / torchvision instead bin 8-bit values into 256 levels and quantise
    the result; on 8-bit images the two agree up to that rounding.

    >>> equalize(torch.tensor([0.1, 0.1, 0.3, 0.2]).view(1, 1, 2, 2)).flatten().tolist()
    [0.0, 0.0, 1.0, 0.5]
    """
    n, c, h, w = x.shape
    flat = x.reshape(n * c, h * w)
    ordered = flat.sort(dim=1).values.contiguous()
    count = torch.searchsorted(ordered, flat.contiguous(), right=True)  # pixels <= each value
    lowest = torch.searchsorted(ordered, ordered[:, :1].contiguous(), right=True)
    span = h * w - lowest
    out = (count - lowest).to(x.dtype) / span.clamp(min=1).to(x.dtype)
    return torch.where(span > 0, out, flat).reshape(n, c, h, w)


CONTEXTS: dict[str, Callable[[Tensor], Tensor]] = {"invert": invert, "flip": flip, "equalize": equalize}


def context_transform(name: str) -> Callable[[Tensor], Tensor]:
    """The context augmentation called ``name``; unknown names raise a ``ValueError`` listing the known ones.

    >>> context_transform("invert") is invert
    True
    """
    if name not in CONTEXTS:
        raise ValueError(f"unknown context {name!r}; known contexts: {', '.join(sorted(CONTEXTS))}")
    return CONTEXTS[name]


@torch.no_grad()
def context_features(
    images: Tensor, context: str, encoder: nn.Module | None = None, size: int = 16, batch_size: int = 128
) -> tuple[Tensor, Tensor]:
    """Features ``[N, D]`` (float32, CPU) of ``images`` and of ``t_c(images)``.

    Without ``encoder``: the images average-pooled to at most ``size`` x ``size`` pixels and
    flattened. With one: its pooled embeddings, computed in eval mode on its device in batches of
    ``batch_size`` (its train/eval mode is restored).

    >>> a, b = context_features(torch.rand(3, 1, 32, 32), "invert")
    >>> a.shape, torch.allclose(a + b, torch.ones_like(a))
    (torch.Size([3, 256]), True)
    """
    transform = context_transform(context)
    if encoder is None:
        pool = (min(size, images.shape[-2]), min(size, images.shape[-1]))
        return tuple(F.adaptive_avg_pool2d(v.float(), pool).flatten(1).cpu() for v in (images, transform(images)))
    device, was_training = module_device(encoder), encoder.training
    encoder.eval()
    try:
        pairs = []
        for batch in images.split(batch_size):
            batch = batch.to(device)
            pairs.append((encoder(batch).float().cpu(), encoder(transform(batch)).float().cpu()))
    finally:
        encoder.train(was_training)
    return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])


@dataclass(frozen=True)
class ContextAssumptions:
    """How well a context augmentation fits a dataset (both near 1 is good).

    ``distinctiveness``: cross-validated accuracy of telling ``x`` from ``t_c(x)`` (0.5 = chance);
    ``alignment``: Spearman correlation of pairwise distances before and after ``t_c``.
    """

    context: str
    distinctiveness: float
    alignment: float


def context_assumptions(
    images: Tensor,
    context: str,
    encoder: nn.Module | None = None,
    *,
    max_images: int = 256,
    folds: int = 5,
    size: int = 16,
    seed: int = 0,
) -> ContextAssumptions:
    """Measure CON2 assumption 1 (distinctiveness, eq. 9) and 2 (alignment, eq. 10) of ``context``.

    Features f are :func:`context_features` (pooled pixels, or ``encoder`` embeddings) of at most
    ``max_images`` images (a seeded random subset). *Distinctiveness* is the mean accuracy of a
    linear probe — standardised features, L2-regularised logistic regression (C = 1) — telling
    f(x) (class 0) from f(t_c(x)) (class 1), over ``folds`` cross-validation folds that keep
    both versions of an image in the same fold. *Alignment* is Spearman's ρ between the Euclidean
    distances ‖f(x_i) − f(x_j)‖ and ‖f(t_c x_i) − f(t_c x_j)‖ over all pairs i < j. On pixels,
    invert and flip preserve distances exactly (ρ = 1), so there alignment only tells equalize
    apart; with a trained encoder both measures describe its representation.

    >>> from medad.data.synthetic import make_phantoms
    >>> report = context_assumptions(make_phantoms(40, 32, seed=0)[0], "invert")
    >>> report.distinctiveness > 0.9, round(report.alignment, 6)
    (True, 1.0)
    """
    n = len(images)
    if n < 3:
        raise ValueError(f"context_assumptions needs at least 3 images, got {n}")
    if n > max_images:
        images = images[torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_images]]
        n = max_images
    a, b = context_features(images, context, encoder, size)
    features = torch.cat([a, b]).double().numpy()
    labels = np.repeat([0, 1], n)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    accuracy = cross_val_score(
        probe, features, labels, groups=np.tile(np.arange(n), 2), cv=GroupKFold(n_splits=min(folds, n))
    )
    rho = spearmanr(pdist(a.double().numpy()), pdist(b.double().numpy())).statistic
    return ContextAssumptions(context, float(accuracy.mean()), float(rho))


def save_context_grid(images: Tensor, path: str | Path, contexts: Sequence[str], scale: int = 3) -> Path:
    """PNG with one row per image: the image, then each of ``contexts`` applied to it.

    Images are enlarged ``scale`` times (nearest neighbour) and separated by white 2-px gaps.

    >>> import tempfile
    >>> out = save_context_grid(torch.rand(2, 1, 8, 8), Path(tempfile.mkdtemp()) / "c.png", ["invert"])
    >>> Image.open(out).size
    (54, 54)
    """
    x = images.detach().float().cpu().clamp(0, 1)
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x[:, :3]
    columns = [x, *(context_transform(name)(x) for name in contexts)]
    tiles = F.interpolate(torch.stack(columns, dim=1).flatten(0, 1), scale_factor=scale, mode="nearest")
    tiles = F.pad(tiles, (2, 0, 2, 0), value=1.0)  # gap above and left of every tile
    rows = tiles.view(len(x), len(columns), *tiles.shape[1:]).permute(2, 0, 3, 1, 4)  # [3, N, h, K, w]
    canvas = F.pad(rows.flatten(3, 4).flatten(1, 2), (0, 2, 0, 2), value=1.0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = (canvas.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(array).save(path, optimize=True)
    return path
