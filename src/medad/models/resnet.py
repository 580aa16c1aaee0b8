"""ResNet-18 encoder written from scratch, with a configurable stem and width.

Parameter names follow torchvision's ``resnet18`` (``conv1``, ``bn1``, ``layer1.0.conv1``, ...), so an
ImageNet state_dict saved from torchvision loads with :func:`load_encoder_weights` (its ``fc.*``
classifier is dropped).

>>> import torch
>>> enc = ResNetEncoder(in_channels=1, width=8, stem="cifar")
>>> enc(torch.rand(2, 1, 16, 16)).shape
torch.Size([2, 64])
>>> {k: tuple(v.shape) for k, v in enc.feature_maps(torch.rand(2, 1, 16, 16), ("layer1", "layer3")).items()}
{'layer1': (2, 8, 16, 16), 'layer3': (2, 32, 4, 4)}
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from medad.config import EncoderConfig
from medad.files import load_tensors

log = logging.getLogger(__name__)

Stem = Literal["cifar", "imagenet"]
LAYERS = ("layer1", "layer2", "layer3", "layer4")
# "auto" picks the cifar stem up to this side length. benchmarks/encoder_speed.py (2 CPU cores,
# width 64): the cifar stem trains 10-16x slower than the imagenet stem at the same size (32 px:
# ~23 vs ~240 img/s; 64 px: ~5 vs ~80 img/s), affordable only for small images, while at 32 px
# the imagenet stem leaves 2x2 layer3 and 1x1 layer4 maps, too coarse to be useful.
CIFAR_STEM_MAX_SIZE = 32


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (1x1 projection when the shape changes).

    >>> BasicBlock(8, 16, stride=2)(torch.rand(1, 8, 8, 8)).shape
    torch.Size([1, 16, 4, 4])
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNetEncoder(nn.Module):
    """ResNet-18 (BasicBlock, [2, 2, 2, 2]) mapping ``[N, C, H, W]`` to pooled ``[N, 8 * width]``.

    ``stem="imagenet"``: 7x7 stride-2 conv + BN + ReLU + 3x3 stride-2 max-pool (layer1 at H/4).
    ``stem="cifar"``: 3x3 stride-1 conv + BN + ReLU, no pool (layer1 at full resolution).
    Convolutions use Kaiming (fan-out, ReLU) init, BatchNorm starts at gamma=1, beta=0.
    ``zero_init_residual=True`` starts the last BN gamma of every block at 0, so every residual
    branch starts as zero (Goyal et al. 2017); off by default, as in torchvision, because the
    benefit was shown for large-batch supervised training, not for short contrastive runs.

    >>> enc = ResNetEncoder(in_channels=3, width=16, stem="imagenet")
    >>> enc.out_dim, enc.layer_channels["layer2"], enc(torch.rand(2, 3, 64, 64)).shape
    (128, 32, torch.Size([2, 128]))
    """

    def __init__(
        self, in_channels: int = 1, width: int = 64, stem: Stem = "imagenet", zero_init_residual: bool = False
    ):
        super().__init__()
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")
        self.in_channels, self.width, self.stem = in_channels, width, stem
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
        else:
            self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer_channels = {name: width * 2**i for i, name in enumerate(LAYERS)}
        in_ch = width
        for i, name in enumerate(LAYERS):
            out_ch = self.layer_channels[name]
            stride = 1 if i == 0 else 2
            blocks = nn.Sequential(BasicBlock(in_ch, out_ch, stride), BasicBlock(out_ch, out_ch))
            self.add_module(name, blocks)
            in_ch = out_ch
        self.out_dim = in_ch
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def feature_maps(
        self, x: Tensor, layers: Sequence[str] = ("layer1", "layer2", "layer3")
    ) -> dict[str, Tensor]:
        """Intermediate maps ``{name: [N, layer_channels[name], h, w]}``; stops at the deepest one asked."""
        unknown = [name for name in layers if name not in LAYERS]
        if unknown or not layers:
            raise ValueError(f"unknown layers {unknown}; choose from {list(LAYERS)}")
        deepest = max(LAYERS.index(name) for name in layers)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = {}
        for name in LAYERS[: deepest + 1]:
            x = getattr(self, name)(x)
            if name in layers:
                out[name] = x
        return out

    def forward(self, x: Tensor) -> Tensor:
        return self.feature_maps(x, ("layer4",))["layer4"].mean(dim=(2, 3))


def resolve_stem(stem: str, image_size: int) -> Stem:
    """Turn ``auto`` into ``cifar`` up to ``CIFAR_STEM_MAX_SIZE`` px and ``imagenet`` above.

    >>> resolve_stem("auto", 28), resolve_stem("auto", 64), resolve_stem("cifar", 64)
    ('cifar', 'imagenet', 'cifar')
    """
    if stem == "auto":
        return "cifar" if image_size <= CIFAR_STEM_MAX_SIZE else "imagenet"
    if stem not in ("cifar", "imagenet"):
        raise ValueError(f"stem must be 'auto', 'cifar' or 'imagenet', got {stem!r}")
    return stem  # type: ignore[return-value]


CHANNELS_LAST_MIN_WIDTH = 8


def build_encoder(cfg: EncoderConfig, in_channels: int, image_size: int) -> ResNetEncoder:
    """Encoder for ``cfg``, with weights from ``cfg.weights`` (a local file) when given.

    Its parameters are converted to ``channels_last``, which trained 0-45% faster (never slower)
    on CPU in ``benchmarks/encoder_speed.py``; feature maps then come back in that memory format too
    (same values and shape; use ``reshape``/``flatten`` rather than ``view`` across C and N).
    Below ``width`` 8 the encoder stays contiguous: oneDNN's AVX2 1x1-convolution weight gradient
    hangs or crashes in ``channels_last`` with 4 input channels (seen with torch 2.13 on an AMD EPYC),
    and such tiny encoders are only used in tests.

    >>> build_encoder(EncoderConfig(width=8), in_channels=1, image_size=28).stem
    'cifar'
    """
    encoder = ResNetEncoder(in_channels, cfg.width, resolve_stem(cfg.stem, image_size))
    if cfg.weights is not None:
        load_encoder_weights(encoder, cfg.weights)
    return encoder.to(memory_format=torch.channels_last) if cfg.width >= CHANNELS_LAST_MIN_WIDTH else encoder


def load_encoder_weights(encoder: ResNetEncoder, path: str | Path) -> None:
    """Load a local state_dict file into ``encoder``, adapting it where that is unambiguous.

    Accepted: a raw state_dict or one under ``"state_dict"``, ``"encoder"`` (a saved medad model's
    ``model.pt``) or ``"method"`` (a training checkpoint); keys prefixed with ``module.``
    (DataParallel/DDP) or ``encoder.`` (a pre-training method; its heads are ignored) are
    stripped; a torchvision ``fc.*`` classifier is dropped; a ``conv1`` trained on 3 channels is
    summed over its input channels for a 1-channel encoder (a grey image repeated 3 times gives
    the same response), and a 1-channel ``conv1`` is repeated / 3 for a 3-channel one. Anything
    else that does not match raises ``ValueError`` (one line) listing missing, unexpected and
    mis-shaped keys; a file with pickled objects is refused (:func:`medad.files.load_tensors`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"encoder weights file not found: {path}")
    raw = load_tensors(path)
    state = adapt_state_dict(_unwrap(raw, path), encoder)
    own = encoder.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mis_shaped = [
        f"{k}: file {tuple(state[k].shape)} vs encoder {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if state[k].shape != own[k].shape
    ]
    if missing or unexpected or mis_shaped:
        listings = [_listing(title, items) for title, items in (
            ("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mis_shaped)) if items]
        raise ValueError(
            f"weights {path} do not fit ResNetEncoder(in_channels={encoder.in_channels}, "
            f"width={encoder.width}, stem={encoder.stem!r}); check encoder.width/stem and data.channels: "
            + "; ".join(listings)
        )
    encoder.load_state_dict(state)
    log.info("loaded encoder weights from %s", path)


def adapt_state_dict(state: Mapping[str, Tensor], encoder: ResNetEncoder) -> dict[str, Tensor]:
    """Strip ``module.``/``encoder.`` prefixes, drop ``fc.*`` and adapt ``conv1`` input channels."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("encoder.") for k in state):
        state = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    dropped = [k for k in state if k.startswith("fc.")]
    if dropped:
        log.info("dropping classifier weights %s", dropped)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    w = state.get("conv1.weight")
    want = encoder.conv1.weight.shape
    if w is not None and w.shape[:1] + w.shape[2:] == want[:1] + want[2:] and w.shape[1] != want[1]:
        if w.shape[1] == 3 and want[1] == 1:
            state["conv1.weight"] = w.sum(dim=1, keepdim=True)
            log.info("conv1: summed 3 input channels of the weights into 1")
        elif w.shape[1] == 1 and want[1] == 3:
            state["conv1.weight"] = w.repeat(1, 3, 1, 1) / 3
            log.info("conv1: spread 1 input channel of the weights over 3 (divided by 3)")
    return state


def _unwrap(raw: object, path: Path) -> Mapping[str, Tensor]:
    if isinstance(raw, Mapping):
        for key in ("state_dict", "encoder", "method"):
            if isinstance(raw.get(key), Mapping):
                raw = raw[key]
                break
    if not isinstance(raw, Mapping) or not all(isinstance(v, Tensor) for v in raw.values()):
        raise ValueError(
            f"weights {path} must hold a state_dict (name -> tensor), "
            "optionally under 'state_dict', 'encoder' or 'method'"
        )
    return raw


def _listing(title: str, items: list[str], limit: int = 10) -> str:
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"{title} ({len(items)}): {', '.join(items[:limit])}{more}"
