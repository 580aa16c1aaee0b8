"""Presets: the settings per modality that worked best on medad's development sets.

A preset is a partial run configuration; ``medad train --preset NAME`` (or ``preset: NAME`` in a
YAML config, ``AnomalyDetector(preset=NAME)``, :func:`medad.config.from_preset`) starts from it,
and everything given explicitly — the YAML's values, then the flags and ``--set`` — overrides it.
The resolved ``config.yaml`` of a run spells every value out, so a run repeats even if a preset
changes in a later medad.

Each preset was chosen on the development sets in ``../shared/data`` within 30 minutes of wall
time (train + fit + evaluate) on a 2-core CPU; docs/presets.md gives the figures, the command and
what each preset assumes about the images (e.g. ``brain-mri``: lesions are hyperintense on
FLAIR). ``--device cuda`` runs the same preset on a GPU, and flags override its budget there
(docs/presets.md gives the longer settings to try).

>>> sorted(PRESETS)
['brain-mri', 'breast-ultrasound', 'chest-xray', 'generic']
>>> merge_preset({"preset": "generic", "train": {"seed": 3}})["train"]["seed"]
3
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Preset:
    summary: str
    values: dict[str, Any] = field(default_factory=dict)


# The modality-free denoising U-Net (absolute residual) and the maps inside the foreground:
# ``generic``'s detector, and ``chest-xray``'s second opinion.
_DAE_ABS = {"polarity": "abs", "epochs": 40, "noise_std": 0.4, "work_size": 64}
_BODY_MAPS = {"foreground": 0.1, "erode": 8.0, "smooth": 8.0}
_LAYER1 = {"layer": "layer1"}  # an embedding score on the spatial mean of the first ResNet stage

PRESETS: dict[str, Preset] = {
    "brain-mri": Preset(
        "axial brain MRI slices, FLAIR (channel 1 of pre-contrast/FLAIR/post-contrast, or grey FLAIR): "
        "denoising U-Net with coarse noise, hyperintense residual inside the eroded head mask",
        {
            "data": {"image_size": 128, "channels": 3},
            "method": {"name": "none"},
            "detector": {"name": "dae", "params": {"polarity": "bright", "map_channels": [1], "epochs": 40,
                                                   "noise_std": 0.4, "work_size": 64}},
            "maps": {"foreground": 0.1, "foreground_channels": [1], "erode": 24.0, "smooth": 8.0},
            "evaluation": {"pixel_threshold_quantile": 0.999},
        },
    ),
    # since 2026-12-06 the fused embedding score is S_LH on the encoder's first stage, not the
    # Mahalanobis score of its last (better on both chest sets over 3 seeds; docs/presets.md)
    "chest-xray": Preset(
        "frontal chest radiographs (grey): contrastive pre-training, S_LH on the encoder's first stage "
        "fused with a denoising U-Net's absolute residual (image level, no map)",
        {
            "data": {"image_size": 64, "channels": 1},
            "encoder": {"width": 64},
            "method": {"name": "contrastive"},
            "detector": {"name": "mahalanobis",
                         "also": [{"name": "nnd", "params": _LAYER1}, {"name": "lh", "params": _LAYER1}, "cosine",
                                  {"name": "dae", "params": _DAE_ABS}],
                         "fuse": ["lh", "dae"]},
            "maps": _BODY_MAPS,
            "train": {"epochs": 50},
        },
    ),
    "breast-ultrasound": Preset(
        "breast ultrasound (grey): contrastive pre-training, Mahalanobis image score (no map)",
        {
            "data": {"image_size": 64, "channels": 1},
            "encoder": {"width": 64},
            "method": {"name": "contrastive"},
            "detector": {"name": "mahalanobis"},
            "train": {"epochs": 40},
        },
    ),
    "generic": Preset(
        "any modality, no assumption about lesion intensity: denoising U-Net, absolute residual inside "
        "the foreground",
        {
            "data": {"image_size": 128},
            "method": {"name": "none"},
            "detector": {"name": "dae", "params": _DAE_ABS},
            "maps": _BODY_MAPS,
            "evaluation": {"pixel_threshold_quantile": 0.999},
        },
    ),
}


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``, recursively for nested mappings (a copy; inputs untouched)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def merge_preset(raw: dict[str, Any]) -> dict[str, Any]:
    """A raw config mapping with its ``preset`` (if any) filled in under the explicit values."""
    name = raw.get("preset")
    if name is None:
        return raw
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))} (see `medad list`)")
    return deep_merge(PRESETS[name].values, raw)
