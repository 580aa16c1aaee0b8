"""The in-memory image collection every other module consumes.

Images are preprocessed once (decoded, converted to the configured channel layout, resized) and
kept as one float tensor; augmentations then run batch-wise on tensors.

>>> import torch
>>> s = ImageSet(images=torch.zeros(2, 1, 8, 8), labels=torch.tensor([0, 1]), ids=["a", "b"])
>>> len(s), s.subset([1]).ids
(2, ['b'])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

NORMAL, ABNORMAL, UNKNOWN = 0, 1, -1


@dataclass
class ImageSet:
    """Images with optional labels and masks.

    images:  float32 ``[N, C, H, W]`` in ``[0, 1]``.
    labels:  int64 ``[N]``: 0 normal, 1 abnormal, -1 unknown.
    ids:     one string per image (file path, ``file.npz#index`` or ``volume.nii.gz#z=12``).
    masks:   optional uint8 ``[N, 1, H, W]`` (1 = lesion); images without a mask have an all-zero
             mask and ``has_mask`` False.
    defects: category per image (``good``, a defect folder name, or ``""`` when unknown).
    """

    images: Tensor
    labels: Tensor
    ids: list[str]
    masks: Tensor | None = None
    has_mask: Tensor | None = None
    defects: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.images.ndim != 4:
            raise ValueError(f"images must be [N, C, H, W], got shape {tuple(self.images.shape)}")
        if self.labels.shape != (n,) or len(self.ids) != n:
            raise ValueError(f"labels/ids must have {n} entries")
        if not self.defects:
            self.defects = ["" for _ in range(n)]
        if self.masks is not None:
            if self.masks.shape != (n, 1, *self.images.shape[2:]):
                raise ValueError(
                    f"masks shape {tuple(self.masks.shape)} does not match images {tuple(self.images.shape)}"
                )
            if self.has_mask is None:
                self.has_mask = self.masks.flatten(1).any(dim=1)
        if not torch.isfinite(self.images).all():
            bad = [self.ids[i] for i in (~torch.isfinite(self.images.flatten(1)).all(1)).nonzero().flatten()]
            raise ValueError(f"images contain NaN/Inf: {bad[:5]}")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def size(self) -> int:
        return self.images.shape[-1]

    def subset(self, index: Sequence[int] | Tensor) -> ImageSet:
        """The images at ``index`` (in that order)."""
        idx = torch.as_tensor(index, dtype=torch.long)
        return ImageSet(
            images=self.images[idx],
            labels=self.labels[idx],
            ids=[self.ids[i] for i in idx.tolist()],
            masks=None if self.masks is None else self.masks[idx],
            has_mask=None if self.has_mask is None else self.has_mask[idx],
            defects=[self.defects[i] for i in idx.tolist()],
        )

    @staticmethod
    def concat(sets: Sequence[ImageSet]) -> ImageSet:
        """One set holding all images of ``sets`` (masks kept if any set has them)."""
        if not sets:
            raise ValueError("nothing to concatenate")
        any_mask = any(s.masks is not None for s in sets)

        def masks_of(s: ImageSet) -> Tensor:
            if s.masks is not None:
                return s.masks
            return torch.zeros(len(s), 1, *s.images.shape[2:], dtype=torch.uint8)

        def has_of(s: ImageSet) -> Tensor:
            return s.has_mask if s.has_mask is not None else torch.zeros(len(s), dtype=torch.bool)

        return ImageSet(
            images=torch.cat([s.images for s in sets]),
            labels=torch.cat([s.labels for s in sets]),
            ids=[i for s in sets for i in s.ids],
            masks=torch.cat([masks_of(s) for s in sets]) if any_mask else None,
            has_mask=torch.cat([has_of(s) for s in sets]) if any_mask else None,
            defects=[d for s in sets for d in s.defects],
        )
