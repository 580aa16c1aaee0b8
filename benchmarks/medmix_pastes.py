"""Benchmark: what MedMix pastes on LGG dev at 64 px, with and without its foreground / feather
options (issue 14 item 2; the table in docs/methods/pmsacl.md).

For 512 training slices, one lesion each (seed 0), it prints the share of lesions lying mostly
on background, mostly black (cut from background), changing the image by less than 0.02 on
average, and empty. The judge of "background" is ``foreground_of`` at 0.1.

    .venv/bin/python benchmarks/medmix_pastes.py
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from medad.augment.medmix import MedMix, foreground_of
from medad.config import DataConfig
from medad.data.loading import load_splits

DATA = Path(os.environ.get("MEDAD_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
VARIANTS = {
    "paper (default)": MedMix(),
    "foreground 0.1": MedMix(foreground=0.1),
    "foreground 0.1 + feather 0.3": MedMix(foreground=0.1, feather=0.3),
}


def paste_stats(images: torch.Tensor, mix: MedMix, seed: int = 0) -> dict[str, float]:
    """Shares of the lesions (one per image) that are mostly background, mostly black, nearly
    unchanged or empty."""
    fg = foreground_of(images, 0.1)
    level = torch.quantile(images.mean(1).flatten(1), 0.99, dim=1)
    out, masks = mix(images, torch.ones(len(images), dtype=torch.long), torch.Generator().manual_seed(seed))
    m = masks[:, 0].bool()
    size = m.flatten(1).sum(1).clamp_min(1)
    on_fg = (fg & m).flatten(1).sum(1) / size
    black = ((out.mean(1) < 0.1 * level.view(-1, 1, 1)) & m).flatten(1).sum(1) / size
    change = ((out - images).abs().mean(1) * m).flatten(1).sum(1) / size
    empty = m.flatten(1).sum(1) == 0
    shares = {"mostly background": on_fg < 0.5, "mostly black": black > 0.5, "change < 0.02": change < 0.02,
              "empty": empty}
    return {k: float(v.float().mean()) for k, v in shares.items()}


def main() -> None:
    cfg = DataConfig(path=str(DATA / "lgg_brain_mri_dev"), image_size=64, channels=3)
    images = load_splits(cfg, seed=0).train.images[:512]
    for name, mix in VARIANTS.items():
        stats = paste_stats(images, mix)
        print(f"{name:30s} " + "  ".join(f"{k} {v:6.1%}" for k, v in stats.items()))


if __name__ == "__main__":
    main()
