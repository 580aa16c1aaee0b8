"""Method names used in configs, mapped to their classes.

>>> from medad.config import MethodConfig
>>> from medad.models.resnet import ResNetEncoder
>>> build_method(MethodConfig(params={"temperature": 0.5}), ResNetEncoder(1, 8, "cifar")).params.temperature
0.5
"""

from __future__ import annotations

from pydantic import ValidationError
from torch import nn

from medad.config import MethodConfig
from medad.methods.base import PretrainMethod
from medad.methods.ccd import CCDMethod
from medad.methods.con2 import CON2Method
from medad.methods.contrastive import ContrastiveMethod
from medad.methods.dino_neg import DinoNegMethod
from medad.methods.none import NoPretraining
from medad.methods.pmsacl import PMSACLMethod

METHODS: dict[str, type[PretrainMethod]] = {
    "contrastive": ContrastiveMethod,
    "ccd": CCDMethod,
    "pmsacl": PMSACLMethod,
    "con2": CON2Method,
    "dino_neg": DinoNegMethod,
    "none": NoPretraining,
}


def build_method(cfg: MethodConfig, encoder: nn.Module) -> PretrainMethod:
    """Instantiate ``cfg.name`` around ``encoder``; bad params raise a pydantic error naming the method."""
    if cfg.name not in METHODS:
        raise ValueError(f"unknown method {cfg.name!r}; known methods: {', '.join(sorted(METHODS))}")
    try:
        return METHODS[cfg.name](encoder, **cfg.params)
    except ValidationError as exc:
        raise ValidationError.from_exception_data(
            title=f"method {cfg.name!r} params", line_errors=exc.errors()
        ) from None
