"""The names of medad's pre-training methods and detectors, and the class behind each.

A table of strings, importable without torch: the config refuses an unknown ``method.name`` or
detector name with it before anything heavy is imported, ``medad list`` prints it, and
:mod:`medad.methods.registry` and :mod:`medad.detectors.registry` import the classes from it
(:func:`resolve`). Adding a method or a detector is one line here.

>>> "contrastive" in METHODS and "mahalanobis" in DETECTORS
True
"""

from __future__ import annotations

from importlib import import_module

METHODS: dict[str, str] = {
    "contrastive": "medad.methods.contrastive:ContrastiveMethod",
    "ccd": "medad.methods.ccd:CCDMethod",
    "pmsacl": "medad.methods.pmsacl:PMSACLMethod",
    "con2": "medad.methods.con2:CON2Method",
    "dino_neg": "medad.methods.dino_neg:DinoNegMethod",
    "none": "medad.methods.none:NoPretraining",
}

DETECTORS: dict[str, str] = {  # in this order in `detector.also: auto` (medad.detectors.registry)
    "mahalanobis": "medad.detectors.gaussian:MahalanobisDetector",
    "nnd": "medad.detectors.knn:NearestNeighbourDetector",
    "lh": "medad.detectors.gaussian:LikelihoodDetector",
    "padim": "medad.detectors.padim:PadimDetector",
    "cosine": "medad.detectors.cosine:TemperatureCosineDetector",
    "ddad": "medad.detectors.ddad:DDADDetector",
    "ae": "medad.detectors.autoencoders:AutoEncoderDetector",
    "memae": "medad.detectors.autoencoders:MemAEDetector",
    "ae_u": "medad.detectors.autoencoders:AEUDetector",
    "msssim_ae": "medad.detectors.autoencoders:MSSSIMAEDetector",
    "igd": "medad.detectors.igd:IGDDetector",
    "fanogan": "medad.detectors.fanogan:FAnoGANDetector",
    "dae": "medad.detectors.dae:DAEDetector",
    "intensity": "medad.detectors.intensity:IntensityDetector",
    "stats": "medad.detectors.statistics:ImageStatisticsDetector",
    "patchcore": "medad.detectors.patchcore:PatchcoreDetector",
}


def resolve(table: dict[str, str]) -> dict[str, type]:
    """The classes ``table`` names (``"module:Class"``), imported: what the registries hold."""
    out = {}
    for name, target in table.items():
        module, _, cls = target.partition(":")
        out[name] = getattr(import_module(module), cls)
    return out
