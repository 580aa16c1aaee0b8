"""Method names used in configs, mapped to their classes (the names and modules: :mod:`medad.catalog`).

>>> from medad.config import MethodConfig
>>> from medad.models.resnet import ResNetEncoder
>>> build_method(MethodConfig(params={"temperature": 0.5}), ResNetEncoder(1, 8, "cifar")).params.temperature
0.5
"""

from __future__ import annotations

from pydantic import ValidationError
from torch import nn

from medad import catalog
from medad.config import MethodConfig
from medad.methods.base import PretrainMethod

METHODS: dict[str, type[PretrainMethod]] = catalog.resolve(catalog.METHODS)


def build_method(cfg: MethodConfig, encoder: nn.Module) -> PretrainMethod:
    """Instantiate ``cfg.name`` (a known name: the config checks it) around ``encoder``; bad params
    raise a pydantic error naming the method."""
    try:
        return METHODS[cfg.name](encoder, **cfg.params)
    except ValidationError as exc:
        raise ValidationError.from_exception_data(
            title=f"method {cfg.name!r} params", line_errors=exc.errors()
        ) from None
