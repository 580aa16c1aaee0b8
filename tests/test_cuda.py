"""The CUDA path against the CPU one (marker ``cuda``; skipped without a CUDA GPU, with the reason).

They run on the lent GPU machine through ``benchmarks/gpu_check.sh``. Every comparison is fp32 on
both sides with TF32 off, on tiny models: the GPU kernels then differ from the CPU's only in
summation order (and cuDNN's algorithm), so results agree to about 1e-5 relative; every random
draw comes from the CPU generator on both paths (medad.device_policy), so the augmentations are
the same. ``MEDAD_CUDA_TEST_DEVICE=cpu`` runs the same code on the CPU against itself (a dry run
of the tests' own logic where no GPU is at hand).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
import torch

from medad import AnomalyDetector
from medad.config import MethodConfig, RunConfig, TrainConfig
from medad.data.synthetic import make_phantoms, write_phantom_dataset
from medad.detectors.registry import DETECTORS
from medad.device_policy import STAGE_DTYPE, ComputePolicy, StagedImages
from medad.methods.registry import METHODS, build_method
from medad.models.resnet import ResNetEncoder
from medad.train.loop import train_method

from toys import TINY_DETECTOR_PARAMS  # tests/ is on sys.path

DEVICE = os.environ.get("MEDAD_CUDA_TEST_DEVICE", "cuda")
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                       reason="needs a CUDA GPU (run on the GPU machine by benchmarks/gpu_check.sh)"),
]

# fp32 on both sides, different kernels: ~1e-5 relative over these tiny models; a wrong device,
# dtype or a random draw that differs between the paths moves the results by far more (> 1e-2)
RTOL, ATOL = 1e-3, 1e-4

TINY = {
    **TINY_DETECTOR_PARAMS,
    "padim": {"d": 16}, "patchcore": {"coreset_ratio": 1.0}, "dae": {"epochs": 1, "widths": [4, 8]},
    "ae": {"epochs": 1, "batch_size": 4}, "memae": {"epochs": 1, "batch_size": 4},
    "ae_u": {"epochs": 1, "batch_size": 4}, "msssim_ae": {"epochs": 1, "batch_size": 4},
    "ddad": {"epochs": 1, "batch_size": 4, "ensemble": 2, "asr_epochs": 1},
}


@pytest.fixture(autouse=True)
def fp32_matmuls():
    """TF32 off, so that fp32 means fp32 on the GPU too."""
    if not torch.cuda.is_available():
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = RTOL, atol: float = ATOL) -> None:
    torch.testing.assert_close(actual.detach().cpu().double(), expected.detach().cpu().double(), rtol=rtol,
                               atol=atol * max(1.0, float(expected.detach().abs().max())))


def _step(method, images: torch.Tensor, precision: str = "fp32") -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One training loss and its gradients, with the same random draws on every device."""
    method.train()
    torch.manual_seed(1)
    device = next(method.parameters()).device
    with ComputePolicy.resolve(device, precision).autocast():
        loss = method.training_loss(images.to(device))["loss"]
    method.zero_grad()
    loss.backward()
    return loss, [p.grad for p in method.parameters() if p.grad is not None]


@pytest.mark.parametrize("name", sorted(set(METHODS) - {"none"}))
def test_every_method_s_training_step_agrees_with_cpu(name):
    torch.manual_seed(0)
    cpu = build_method(MethodConfig(name=name), ResNetEncoder(1, width=8, stem="cifar"))
    gpu = copy.deepcopy(cpu).to(DEVICE)
    images = make_phantoms(8, 32, seed=0)[0]
    loss_cpu, grads_cpu = _step(cpu, images)
    loss_gpu, grads_gpu = _step(gpu, images)
    _close(loss_gpu, loss_cpu)
    assert len(grads_gpu) == len(grads_cpu)
    scale = max(float(g.abs().max()) for g in grads_cpu)
    for a, b in zip(grads_gpu, grads_cpu):
        _close(a, b, atol=ATOL * scale)
    loss_bf16, _ = _step(copy.deepcopy(cpu).to(DEVICE), images, "bf16")  # 8-bit mantissa: ~1 % of the loss
    _close(loss_bf16, loss_cpu, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_every_detector_s_fit_and_score_agree_with_cpu(name):
    normals, _ = make_phantoms(24, 32, seed=0)
    test, _ = make_phantoms(6, 32, seed=1, lesion=True)
    outputs = {}
    for device in ("cpu", DEVICE):
        cfg = RunConfig.model_validate({
            "data": {"image_size": 32}, "encoder": {"width": 8},
            "method": {"name": "none"}, "detector": {"name": name, "params": TINY.get(name, {}), "also": []},
            "train": {"device": device, "precision": "fp32", "progress": False},
        })
        model = AnomalyDetector(cfg).fit(normals)
        assert model.encoder_ is None or next(model.encoder_.parameters()).device.type == torch.device(device).type
        outputs[device] = model.score_all(test)[name]
    cpu, gpu = outputs["cpu"], outputs[DEVICE]
    # detectors that train a network take a few steps of float noise with them
    trained = name in {"ae", "memae", "ae_u", "msssim_ae", "ddad", "igd", "fanogan", "dae"}
    rtol = 1e-2 if trained else RTOL
    _close(gpu.scores, cpu.scores, rtol=rtol, atol=rtol * float(cpu.scores.std()))
    if cpu.maps is not None:
        _close(gpu.maps, cpu.maps, rtol=rtol, atol=rtol)


def _tiny_run(device: str, epochs: int = 2) -> AnomalyDetector:
    normals, _ = make_phantoms(24, 32, seed=0)
    return AnomalyDetector(image_size=32, epochs=epochs, batch_size=8, method="contrastive", detector="padim",
                           device=device, precision="fp32", progress=False).fit(normals)


def test_a_model_trained_on_cuda_scores_the_same_on_cpu_and_back(tmp_path):
    test, _ = make_phantoms(6, 32, seed=1, lesion=True)
    trained = _tiny_run(DEVICE)
    trained.save(tmp_path / "gpu")
    on_cpu = AnomalyDetector.load(tmp_path / "gpu", device="cpu")
    assert next(on_cpu.encoder_.parameters()).device.type == "cpu"
    _close(torch.from_numpy(on_cpu.decision_function(test)), torch.from_numpy(trained.decision_function(test)))
    on_cpu.save(tmp_path / "cpu")
    back = AnomalyDetector.load(tmp_path / "cpu", device=DEVICE)
    _close(torch.from_numpy(back.decision_function(test)), torch.from_numpy(on_cpu.decision_function(test)))


def test_resume_on_cuda_continues_where_the_run_stopped(tmp_path):
    images = make_phantoms(16, 32, seed=0)[0]
    cfg = TrainConfig(epochs=3, batch_size=8, progress=False, precision="fp32")

    def method(seed: int):
        torch.manual_seed(seed)
        return build_method(MethodConfig(name="contrastive"), ResNetEncoder(1, width=8, stem="cifar"))

    straight = method(0)
    torch.manual_seed(5)
    h1 = train_method(straight, images, None, cfg, device=DEVICE)

    interrupted, calls = method(0), [0]
    loss = interrupted.training_loss

    def stopping(x):  # Ctrl-C in the 5th step: 2 steps an epoch, so in epoch 3 after the epoch-2 checkpoint
        calls[0] += 1
        if calls[0] == 5:
            raise KeyboardInterrupt
        return loss(x)

    interrupted.training_loss = stopping
    ckpt = tmp_path / "last.pt"
    torch.manual_seed(5)
    with pytest.raises(KeyboardInterrupt):
        train_method(interrupted, images, None, cfg, device=DEVICE, checkpoint_path=ckpt, fingerprint="x")
    resumed = method(99)  # other weights and RNG: everything must come from the checkpoint
    torch.manual_seed(1234)
    h2 = train_method(resumed, images, None, cfg, device=DEVICE, checkpoint_path=ckpt, resume=True, fingerprint="x")
    assert [h["epoch"] for h in h2] == [1, 2, 3]
    # cuDNN may pick other algorithms (and atomics sum in another order) from one run to the next: a
    # resumed CUDA run matches within float tolerance, not bit for bit as on a CPU
    _close(torch.tensor([h["loss"] for h in h2]), torch.tensor([h["loss"] for h in h1]))
    s1, s2 = straight.state_dict(), resumed.state_dict()
    for key in s1:
        if s1[key].is_floating_point():
            _close(s2[key], s1[key], atol=ATOL * 10)


def test_onnx_export_of_a_cuda_trained_model(tmp_path):
    pytest.importorskip("onnxruntime")
    from medad.export import export_onnx

    _tiny_run(DEVICE).save(tmp_path / "model")
    result = export_onnx(tmp_path / "model", tmp_path / "model.onnx")
    assert result.path.is_file() and result.max_rel_diff < 1e-3


def test_staged_images_are_held_on_the_device_in_half_precision():
    images = torch.rand(10, 1, 16, 16)
    staged = ComputePolicy.resolve(DEVICE).stage(images)
    idx = torch.tensor([3, 1, 7])
    batch = staged[idx]
    assert batch.dtype == torch.float32 and batch.device.type == torch.device(DEVICE).type
    if DEVICE == "cuda":
        assert staged.images.dtype == STAGE_DTYPE and staged.images.is_cuda
        _close(batch, images[idx], rtol=0, atol=2.0**-11)
    assert isinstance(staged, StagedImages) and len(staged) == 10


def test_nproc_1_trains_through_a_process_group(tmp_path):
    """``--nproc 1`` starts torchrun with one process: nccl on a GPU (gloo on a CPU), DDP and the
    gathered losses over that one process."""
    data = tmp_path / "data"
    write_phantom_dataset(data, n_train=32, n_test_normal=8, n_test_abnormal=8, size=32, seed=0)
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "medad", "train", "--data", str(data), "--method", "contrastive", "--epochs", "2",
         "--batch-size", "8", "--image-size", "32", "--set", "encoder.width=8", "--no-progress",
         "--device", DEVICE, "--nproc", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "starting 1 training processes" in done.stderr
    assert json.loads((out / "metrics.json").read_text())["image_auroc"] is not None
