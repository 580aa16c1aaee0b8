"""The papers' training budgets: a seed method and its detector as published, one flag away.

``medad train --budget paper`` (``budget: paper`` in YAML, ``AnomalyDetector(budget="paper")``)
sets, for the run's pre-training method and its primary detector, every value the method's paper
states: image size, epochs, batch size, optimiser, learning rate, weight decay and the method's
own knobs. Whatever the run gives explicitly (the YAML file's values, the flags, ``--set``,
the API's keyword shortcuts) overrides them; a preset's values do not (the budget was asked for
after choosing the preset). A knob its paper does not state keeps medad's CPU value, except
where a value is needed to run the paper's recipe at all (SGD's learning rate where the paper
gives none): those rows say where the value comes from. docs/methods/*.md and
docs/detectors/*.md show every value beside the CPU default with the place the paper gives it.

The papers' architectures are not all medad's: the thesis trains a ResNet-50 from ImageNet
self-supervised weights (ch. 5) and a ViT-S/16 (ch. 6-7); medad keeps its ResNet-18 from scratch
(nothing is downloaded), so these budgets reproduce the papers' schedules, not their backbones.

>>> budget_overrides("ccd", "mahalanobis")["train.epochs"]
2000
>>> budget_overrides("none", "ddad")["detector.params.epochs"]
250
>>> budget_overrides("contrastive", "nnd").get("detector.params.normalize") is None  # Mahalanobis only
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

BUDGETS = ("cpu", "paper")


@dataclass(frozen=True)
class Knob:
    """One value of a published budget: the dotted config key, its value and where it comes from."""

    key: str
    value: Any
    source: str


@dataclass(frozen=True)
class PaperBudget:
    """The budget of one method or detector as its paper gives it."""

    paper: str
    knobs: tuple[Knob, ...]
    detectors: tuple[str, ...] = ()
    """For a method: the detectors its ``detector.*`` knobs apply to (the scores its paper uses)."""


_RAFIEE = "Rafiee 2022 (PhD thesis)"
_CCD = "Tian et al., CCD, MICCAI 2021 (§3.2, implementation details)"
_PMSACL = "Tian et al., PMSACL (§4.2, implementation details)"
_CON2 = "CON2 (Two is better than one)"
_DDAD = "Cai et al., DDAD-ASR (§4.2, implementation details)"

METHOD_BUDGETS: dict[str, PaperBudget] = {
    "contrastive": PaperBudget(
        _RAFIEE + ", ch. 5.2 (its ISBI 2022 paper, RSNA chest X-ray; sections are that paper's)", (
        Knob("data.image_size", 224, "§3.2: 224-px crops of randomly resized images"),
        Knob("train.epochs", 100, "§3.2"),
        Knob("train.batch_size", 128, "§3.2; §5.2, Table 3: the best of 64 / 128 / 256"),
        Knob("train.optimizer", "sgd", "§3.2 (momentum not stated: medad's 0.9)"),
        Knob("train.lr", 0.015, "not stated (§5.2 scales it linearly with the batch): MoCo v2's 0.03 at batch 256"),
        Knob("train.weight_decay", 1e-4, "not stated: MoCo v2's 1e-4"),
        Knob("method.params.temperature", 0.07, "§3.2"),
        Knob("method.params.crop_scale_min", 0.08, "§5.1, Table 2: RandomResizedCrop scale (0.08, 1)"),
        Knob("detector.params.normalize", True, "thesis §5.1.3: the Mahalanobis score on the normalised embedding"),
    ), detectors=("mahalanobis",)),
    "ccd": PaperBudget(_CCD, (
        Knob("data.image_size", 256, "§3.2: Hyper-Kvasir and LAG at 256 px (Liu et al. at 64)"),
        Knob("train.epochs", 2000, "§3.2"),
        Knob("train.batch_size", 32, "§3.2; Fig. 2: 16 and above 32 worse"),
        Knob("train.optimizer", "sgd", "§3.2 (momentum not stated: medad's 0.9)"),
        Knob("train.lr", 0.01, "§3.2"),
        Knob("method.params.temperature", 0.2, "§3.2"),
    )),
    "pmsacl": PaperBudget(_PMSACL, (
        Knob("data.image_size", 256, "§4.2: Hyper-Kvasir, LAG and Covid-X at 256 px (Liu et al. at 64)"),
        Knob("train.epochs", 2000, "not stated: CCD's 2,000 (the same authors' training setup)"),
        Knob("train.batch_size", 32, "§4.2"),
        Knob("train.optimizer", "sgd", "§4.2, SGD with momentum (value not stated: medad's 0.9)"),
        Knob("train.lr", 0.01, "§4.2"),
        Knob("method.params.num_classes", 4, "§3, Fig. 7: |A| = 4 (0-3 lesions)"),
        Knob("method.params.alteration_p", 0.25, "§4.2"),
    )),
    "con2": PaperBudget(_CON2 + ", appendix C-D (one setting for every dataset)", (
        Knob("data.image_size", 224, "App. D: resize to 256, centre crop 224 (BreastMNIST, Pneumonia, BR35H)"),
        Knob("train.epochs", 2048, "App. C"),
        Knob("train.batch_size", 128, "App. D: 128 for the medical sets but BreastMNIST (64)"),
        Knob("train.optimizer", "adamw", "App. C: AdamW, betas (0.9, 0.999)"),
        Knob("train.lr", 1e-3, "App. C, cosine annealing"),
        Knob("train.weight_decay", 1e-3, "App. C"),
        Knob("train.schedule", "cosine", "App. C"),
        Knob("method.params.alpha", 1.0, "App. C: α rises linearly from 0 to 1 over training"),
        Knob("method.params.alpha_ramp", 1.0, "App. C"),
        Knob("detector.params.tta", 19, "eq. 16, App. C: A = 40 test-time views, half of them of the context "
             "image (40 is stated for the baselines, which follow CON2): 20 views per context"),
        Knob("detector.params.contexts", ["invert"], "eq. 16: both contexts scored (invert, the method's default; "
             "set it to the method's context)"),
    ), detectors=("nnd", "lh", "mahalanobis", "cosine")),
    "dino_neg": PaperBudget(_RAFIEE + ", ch. 7.2 (its paper on RSNA / Hyper-Kvasir / LAG; sections are that paper's)", (
        Knob("data.image_size", 256, "§3.3: global views of 256 px"),
        Knob("train.epochs", 700, "§3.3"),
        Knob("train.batch_size", 256, "§3.3 (effective batch)"),
        Knob("train.optimizer", "adamw", "§3.3"),
        Knob("train.lr", 0.002, "§3.3: lr_base 0.002 x batch / 256 (RSNA; 0.001 Hyper-Kvasir, LAG)"),
        Knob("train.schedule", "cosine", "§3.3"),
        Knob("method.params.n_local", 8, "§3.3: 2 global + 8 local positive views"),
        Knob("method.params.n_local_negatives", 8, "§3.3: 1 global + 8 local views per negative"),
        Knob("method.params.local_size", 0.375, "§3.3: local views of 96 px at 256 px"),
        Knob("method.params.student_temp", 0.1, "§3.3"),
        Knob("method.params.teacher_temp_start", 0.04, "§3.3: τ_t from 0.04 to 0.01"),
        Knob("method.params.teacher_temp_end", 0.01, "§3.3"),
        Knob("method.params.out_dim", 4096, "§3.3: K = 4096"),
        Knob("method.params.negative_weight", 1.0, "§3.3: λ = 1"),
        Knob("detector.params.normalize", True, "§2.3: the Mahalanobis score on the normalised backbone output"),
    ), detectors=("mahalanobis",)),
}

_RECONSTRUCTION = (
    Knob("data.image_size", 64, "§4.2: 64 x 64 for every dataset"),
    Knob("detector.params.epochs", 250, "§4.2: every reconstruction network"),
    Knob("detector.params.lr", 5e-4, "§4.2, Adam"),
)

DETECTOR_BUDGETS: dict[str, PaperBudget] = {
    "ddad": PaperBudget(_DDAD, _RECONSTRUCTION + (
        Knob("detector.params.ensemble", 3, "§4.2: K = 3"),
        Knob("detector.params.asr_epochs", 100, "§4.2"),
        Knob("detector.params.asr_lr", 1e-4, "§4.2"),
        Knob("detector.params.asr_weight_decay", 1e-4, "§4.2"),
    )),
    "ae": PaperBudget(_DDAD + " (its AE baseline)", _RECONSTRUCTION),
    "ae_u": PaperBudget(_DDAD + " (its AE-U baseline)", _RECONSTRUCTION),
    "memae": PaperBudget(_DDAD + " (its MemAE baseline)", _RECONSTRUCTION),
    "igd": PaperBudget(_PMSACL + " and " + _CCD + "; IGD's own settings are not given", (
        Knob("data.image_size", 256, "256 px, as the pre-training; IGD's hyper-parameters are not restated"),
    )),
    "padim": PaperBudget(_PMSACL + "; PaDiM's default setup, not given", (
        Knob("data.image_size", 256, "256 px, as the pre-training"),
    )),
    "fanogan": PaperBudget(_CCD + "; f-AnoGAN's own settings are not given", (
        Knob("data.image_size", 256, "256 px, as the pre-training"),
    )),
    "msssim_ae": PaperBudget(_CCD + "; MS-SSIM AE's own settings are not given", (
        Knob("data.image_size", 256, "256 px, as the pre-training"),
    )),
}


def budget_overrides(method: str, detector: str) -> dict[str, Any]:
    """The dotted config values of the paper budget of ``method`` (unless ``none``: nothing is
    pre-trained) and of ``detector``; the method's image size wins over the detector's, and a
    method's ``detector.*`` knobs apply only to the detectors its paper scores with."""
    out: dict[str, Any] = {}
    detector_budget = DETECTOR_BUDGETS.get(detector)
    if detector_budget is not None:
        out.update({k.key: k.value for k in detector_budget.knobs})
    method_budget = METHOD_BUDGETS.get(method) if method != "none" else None
    if method_budget is not None:
        out.update({k.key: k.value for k in method_budget.knobs
                    if not k.key.startswith("detector.") or detector in method_budget.detectors})
    return out


def flat_keys(mapping: dict[str, Any], prefix: str = "") -> set[str]:
    """Every dotted key of a nested mapping (``{"a": {"b": 1}}`` -> ``{"a", "a.b"}``).

    >>> sorted(flat_keys({"train": {"epochs": 3}, "preset": "generic"}))
    ['preset', 'train', 'train.epochs']
    """
    keys = set()
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        keys.add(dotted)
        if isinstance(value, dict):
            keys |= flat_keys(value, dotted + ".")
    return keys
