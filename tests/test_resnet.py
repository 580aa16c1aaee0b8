"""ResNet-18 encoder: shapes, stems, weight loading and its adaptations."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from medad.config import EncoderConfig
from medad.models.heads import ProjectionHead
from medad.models.resnet import ResNetEncoder, build_encoder, resolve_stem


@pytest.mark.parametrize(
    ("stem", "channels", "width", "size", "maps"),
    [
        ("cifar", 1, 8, 16, {"layer1": 16, "layer2": 8, "layer3": 4, "layer4": 2}),
        ("cifar", 3, 4, 16, {"layer1": 16, "layer2": 8, "layer3": 4, "layer4": 2}),
        ("imagenet", 1, 4, 32, {"layer1": 8, "layer2": 4, "layer3": 2, "layer4": 1}),
        ("imagenet", 3, 8, 64, {"layer1": 16, "layer2": 8, "layer3": 4, "layer4": 2}),
    ],
)
def test_shapes(stem: str, channels: int, width: int, size: int, maps: dict[str, int]) -> None:
    enc = ResNetEncoder(channels, width, stem)
    x = torch.rand(2, channels, size, size)
    assert enc.out_dim == 8 * width
    assert enc(x).shape == (2, 8 * width)
    feats = enc.feature_maps(x, tuple(maps))
    assert enc.layer_channels == {f"layer{i + 1}": width * 2**i for i in range(4)}
    for name, side in maps.items():
        assert feats[name].shape == (2, enc.layer_channels[name], side, side)
    assert torch.allclose(feats["layer4"].mean(dim=(2, 3)), enc(x))


def test_feature_maps_default_layers_and_unknown_name() -> None:
    enc = ResNetEncoder(1, 4, "cifar")
    assert list(enc.feature_maps(torch.rand(2, 1, 8, 8))) == ["layer1", "layer2", "layer3"]
    with pytest.raises(ValueError, match="layer5"):
        enc.feature_maps(torch.rand(2, 1, 8, 8), ("layer5",))
    with pytest.raises(ValueError, match="choose from"):
        enc.feature_maps(torch.rand(2, 1, 8, 8), ())


def test_zero_init_residual_makes_blocks_start_as_identity_branches() -> None:
    enc = ResNetEncoder(1, 4, "cifar", zero_init_residual=True)
    blocks = [block for layer in ("layer1", "layer4") for block in getattr(enc, layer)]
    assert all(not block.bn2.weight.detach().any() for block in blocks)


def test_resolve_stem() -> None:
    assert resolve_stem("auto", 28) == "cifar"
    assert resolve_stem("auto", 32) == "cifar"
    assert resolve_stem("auto", 33) == "imagenet"
    assert resolve_stem("imagenet", 16) == "imagenet"
    with pytest.raises(ValueError, match="stem"):
        resolve_stem("tiny", 16)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("wrap", ["raw", "state_dict", "encoder", "module_prefix", "method", "checkpoint"])
def test_weights_round_trip(tmp_path, wrap: str) -> None:
    src = ResNetEncoder(1, 4, "cifar")
    state = src.state_dict()
    saved = {
        "raw": state,
        "state_dict": {"state_dict": state, "epoch": torch.tensor(3)},
        "encoder": {"encoder": state},
        "module_prefix": {f"module.{k}": v for k, v in state.items()},
        # a whole pre-training method: encoder.* plus head weights that must be ignored
        "method": {**{f"encoder.{k}": v for k, v in state.items()}, "head.net.0.weight": torch.zeros(2, 2)},
        # the training loop's checkpoint layout
        "checkpoint": {"method": {f"encoder.{k}": v for k, v in state.items()}, "optimizer": {"lr": 0.1}},
    }[wrap]
    torch.save(saved, tmp_path / "w.pt")
    loaded = build_encoder(EncoderConfig(width=4, stem="cifar", weights=str(tmp_path / "w.pt")), 1, 16)
    assert _same_weights(src, loaded)


def test_three_channel_conv1_summed_into_one(tmp_path, caplog) -> None:
    src = ResNetEncoder(3, 4, "imagenet")
    # torchvision-like: with a classifier that must be dropped
    state = {**src.state_dict(), "fc.weight": torch.zeros(10, 32), "fc.bias": torch.zeros(10)}
    torch.save(state, tmp_path / "rgb.pt")
    with caplog.at_level(logging.INFO, logger="medad.models.resnet"):
        enc = build_encoder(EncoderConfig(width=4, stem="imagenet", weights=str(tmp_path / "rgb.pt")), 1, 64)
    assert "summed 3 input channels" in caplog.text
    assert torch.allclose(enc.conv1.weight, src.conv1.weight.sum(dim=1, keepdim=True))
    grey = torch.rand(2, 1, 64, 64)
    src.eval(), enc.eval()
    # both networks in float64: in float32 the 147-term (3 x 7 x 7) and 49-term first convolutions
    # round differently and the difference grows through 17 more layers (to ~4e-6 on outputs of ~10,
    # CPU-dependent), whereas here what is left is the float32 rounding of the summed weights
    # themselves (~5e-7), far below 1e-5
    enc64, src64 = copy.deepcopy(enc).double(), copy.deepcopy(src).double()
    assert torch.allclose(enc64(grey.double()), src64(grey.double().expand(-1, 3, -1, -1)), atol=1e-5)


def test_mismatch_error_lists_keys(tmp_path) -> None:
    torch.save(ResNetEncoder(1, 8, "cifar").state_dict(), tmp_path / "w8.pt")
    with pytest.raises(ValueError, match=r"width=4.*: shape mismatches") as info:
        build_encoder(EncoderConfig(width=4, weights=str(tmp_path / "w8.pt")), 1, 16)
    assert "conv1.weight: file (8, 1, 3, 3) vs encoder (4, 1, 3, 3)" in str(info.value)

    state = ResNetEncoder(1, 4, "cifar").state_dict()
    del state["layer2.0.bn1.bias"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match=r"missing keys \(1\): layer2.0.bn1.bias") as info:
        build_encoder(EncoderConfig(width=4, stem="cifar", weights=str(tmp_path / "partial.pt")), 1, 16)
    assert "unexpected keys (1): extra.weight" in str(info.value)


def test_missing_weights_file_and_non_state_dict(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        build_encoder(EncoderConfig(weights=str(tmp_path / "nope.pt")), 1, 16)
    torch.save({"state_dict": [1, 2]}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="must hold a state_dict"):
        build_encoder(EncoderConfig(weights=str(tmp_path / "bad.pt")), 1, 16)


def test_projection_head() -> None:
    assert ProjectionHead(16, 8, out_dim=4)(torch.rand(3, 16)).shape == (3, 4)
    assert len(ProjectionHead(16, 8, 4, layers=3).net) == 7
    assert isinstance(ProjectionHead(16, 8, 4, layers=1).net[0], torch.nn.Linear)
    with pytest.raises(ValueError, match="layers"):
        ProjectionHead(16, 8, layers=0)


def test_build_encoder_is_channels_last_with_unchanged_outputs() -> None:
    enc = build_encoder(EncoderConfig(width=8, stem="auto"), in_channels=1, image_size=16)
    assert enc.stem == "cifar"
    assert enc.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    plain = ResNetEncoder(1, 8, "cifar")
    plain.load_state_dict(enc.state_dict())
    x = torch.rand(2, 1, 16, 16)
    # the same function, compared in float64: in float32 the channels_last and NCHW kernels round
    # differently through 20 layers (reductions of up to 576 terms, train-mode BatchNorm over 2
    # images), up to ~1e-5 on outputs of ~2 depending on the CPU, as large as the tolerance itself
    enc64, plain64 = copy.deepcopy(enc).double(), copy.deepcopy(plain).double()
    assert enc64.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(enc64(x.double()), plain64(x.double()), atol=1e-5)
    assert enc.feature_maps(x)["layer2"].view(2, 16, -1).shape == (2, 16, 64)


def test_tiny_encoders_stay_contiguous() -> None:
    # oneDNN's channels_last 1x1-conv weight gradient hangs with 4 input channels on AVX2 CPUs
    enc = build_encoder(EncoderConfig(width=4), in_channels=1, image_size=16)
    weight = enc.layer1[0].conv1.weight
    assert weight.is_contiguous() and not weight.is_contiguous(memory_format=torch.channels_last)
