"""Pre-training: optimiser, schedule, validation loss, atomic checkpoints, resume, selection.

Every pre-training method goes through :func:`train_method`; a method only supplies
``training_loss``. The epochs themselves run on the loop core of :mod:`medad.train.core`.
Under ``torchrun`` (:mod:`medad.distributed`) the same loop runs in every process: each takes
its share of every global batch of the seeded permutation (:func:`epoch_batches`), the method is
wrapped in DistributedDataParallel, the logged losses are averaged over the processes, and rank 0
alone writes checkpoints, with every rank's RNG state in
them so that a resumed run continues exactly.

>>> import torch
>>> from medad.config import TrainConfig
>>> from medad.methods.base import PretrainMethod
>>> class Toy(PretrainMethod):
...     name = "toy"
...     def training_loss(self, images):
...         return {"loss": self.encoder(images.flatten(1)).pow(2).mean()}
>>> history = train_method(Toy(torch.nn.Linear(4, 2)), torch.rand(8, 1, 2, 2),
...                        None, TrainConfig(epochs=2, batch_size=4, progress=False))
>>> [h["epoch"] for h in history]
[1, 2]
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from medad import distributed
from medad.config import TrainConfig
from medad.device_policy import ComputePolicy, StagedImages
from medad.methods.base import PretrainMethod
from medad.train.checkpoint import load_checkpoint, load_state, save_checkpoint
from medad.train.core import check_weights, divergence_hint, optimizer_step, run_epochs
from medad.train.selection import CheckpointScore, choose_checkpoint

log = logging.getLogger("medad.train")


def build_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD (momentum 0.9) with the configured learning rate and weight decay."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(epoch: int, cfg: TrainConfig) -> float:
    """The learning rate of ``epoch`` as a share of ``cfg.lr``: a linear warm-up over the first
    ``warmup_epochs`` (epoch e gets (e + 1) / (W + 1)), then the cosine decay over the remaining
    epochs (DINO's schedule, Caron et al. 2021) or the constant rate.

    >>> cfg = TrainConfig(epochs=6, warmup_epochs=2)
    >>> [round(lr_factor(e, cfg), 3) for e in range(6)]
    [0.333, 0.667, 1.0, 0.854, 0.5, 0.146]
    """
    warm = cfg.warmup_epochs
    if epoch < warm:
        return (epoch + 1) / (warm + 1)
    if cfg.schedule == "constant":
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * (epoch - warm) / max(cfg.epochs - warm, 1)))


def build_schedule(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """Cosine decay over all epochs (stepped once per epoch), or a constant rate; with
    ``warmup_epochs`` a linear warm-up first (:func:`lr_factor`)."""
    if cfg.warmup_epochs:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_factor(epoch, cfg))
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(cfg.epochs, 1))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[Tensor]:
    """Index batches of one epoch: global batches of ``batch_size`` from a permutation seeded by
    (seed, epoch), of which rank ``rank`` of ``world`` processes takes every ``world``-th index.

    The last incomplete batch is dropped when there is more than one batch, because BatchNorm
    and contrastive losses need at least two images per batch; with several processes a global
    batch is cut to a multiple of ``world`` so that every rank gets as many images.

    >>> [b.tolist() for b in epoch_batches(5, 2, seed=0, epoch=1)] == [b.tolist() for b in epoch_batches(5, 2, 0, 1)]
    True
    >>> whole = epoch_batches(8, 4, seed=0, epoch=1)
    >>> halves = [epoch_batches(8, 4, 0, 1, rank=r, world=2) for r in (0, 1)]
    >>> all(sorted(a.tolist() + b.tolist()) == sorted(w.tolist()) for w, a, b in zip(whole, *halves))
    True
    """
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    batches = list(torch.randperm(n, generator=g).split(batch_size))
    if len(batches) > 1 and len(batches[-1]) < batch_size:
        batches.pop()
    if world == 1:
        return batches
    return [b[: len(b) - len(b) % world][rank::world] for b in batches if len(b) >= world]


@torch.no_grad()
def _validation_loss(method: PretrainMethod, images: StagedImages, cfg: TrainConfig, policy: ComputePolicy) -> float:
    """Mean loss on validation normals with a fixed augmentation seed, leaving the training RNG intact;
    summed on the device and read once."""
    method.eval()
    total, count = 0.0, 0
    rank, world = distributed.rank(), distributed.world_size()
    with torch.random.fork_rng(devices=[policy.device] if policy.device.type == "cuda" else []):
        torch.manual_seed(cfg.seed + 7 + 100_003 * rank)
        for idx in epoch_batches(len(images), cfg.batch_size, cfg.seed, 0, rank, world):
            with policy.autocast():
                loss = method.training_loss(images[idx])["loss"]
            total = total + loss.detach().double() * len(idx)
            count += len(idx)
    method.train()
    total, count = distributed.mean(torch.tensor([float(total), count], dtype=torch.float64)).tolist()
    return total / max(count, 1)


def _rng_state(device: torch.device) -> dict[str, Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def train_method(
    method: PretrainMethod,
    train_images: Tensor,
    val_images: Tensor | None,
    cfg: TrainConfig,
    *,
    device: torch.device | str = "cpu",
    checkpoint_path: str | Path | None = None,
    resume: bool = False,
    fingerprint: str = "",
    sensitivity: CheckpointScore | None = None,
) -> list[dict[str, Any]]:
    """Train ``method`` on ``train_images`` for ``cfg.epochs`` epochs; return the per-epoch history.

    With ``checkpoint_path`` a resumable checkpoint (weights, optimiser, schedule, RNG state,
    history) is written atomically every ``cfg.checkpoint_every`` epochs and at the end.
    ``resume=True`` continues from it; ``fingerprint`` (e.g. a hash of the config and data
    manifest) must match the checkpoint's, so a run is never resumed with other settings.

    ``sensitivity`` (e.g. a :class:`~medad.detectors.sensitivity.SensitivityScore`) is evaluated on the
    encoder at every checkpoint epoch and recorded in the history with its standard error. With
    ``cfg.select_by == "sensitivity"`` the best-scoring checkpoint is kept (in memory and as
    ``best.pt`` beside ``checkpoint_path``) and its weights are restored at the end if
    :func:`~medad.train.selection.choose_checkpoint` prefers it to the last epoch by
    ``cfg.select_margin`` standard errors; the history record of the epoch in use gets
    ``"selected": True``.
    """
    policy = ComputePolicy.resolve(device, cfg.precision)
    device = policy.device
    if len(train_images) < 2:
        raise ValueError(f"training needs at least 2 images, got {len(train_images)}")
    rank, world, main = distributed.rank(), distributed.world_size(), distributed.is_main()
    batch_size = min(cfg.batch_size, len(train_images))
    if world > 1 and (cfg.batch_size % world or batch_size < 2 * world):
        raise ValueError(
            f"train.batch_size={cfg.batch_size} (global, {len(train_images)} training images) must be a multiple of "
            f"the {world} processes with at least 2 images per process"
        )
    method.to(device).train()
    optimizer = build_optimizer(method.parameters(), cfg)
    schedule = build_schedule(optimizer, cfg)
    history: list[dict[str, Any]] = []
    start_epoch = 1
    ckpt = Path(checkpoint_path) if checkpoint_path else None
    selecting = cfg.select_by == "sensitivity"
    if selecting and sensitivity is None:
        raise ValueError("train.select_by=sensitivity needs validation normals and train.sensitivity_holdout > 0")
    best: dict[str, Any] = {"value": -math.inf, "epoch": None, "state": None}
    if resume and ckpt is not None and ckpt.is_file():
        state, meta = load_checkpoint(ckpt, map_location=device)
        if meta.get("fingerprint") != fingerprint:
            raise ValueError(
                f"cannot resume from {ckpt}: it was written for another config or dataset "
                f"(fingerprint {meta.get('fingerprint')!r} != {fingerprint!r}); start a new run directory"
            )
        if meta.get("world_size", 1) != world:
            raise ValueError(
                f"cannot resume from {ckpt}: it was written by {meta.get('world_size', 1)} training process(es), "
                f"this run has {world}; resume with the same --nproc"
            )
        for target, key in ((method, "method"), (optimizer, "optimizer"), (schedule, "schedule")):
            load_state(target, state[key], ckpt, key)
        _set_rng_state(state["rng_ranks"][rank] if world > 1 else state["rng"], device)
        history = meta["history"]
        start_epoch = int(meta["epoch"]) + 1
        if meta.get("best_epoch") is not None:
            best_state, _ = load_checkpoint(ckpt.with_name("best.pt"), map_location=device)
            best.update(value=meta["best_value"], epoch=meta["best_epoch"], state=best_state["method"])
        if main:
            log.info("resumed from %s at epoch %d", ckpt, start_epoch)
    else:
        if resume and main:
            log.info("no checkpoint at %s: starting from scratch", ckpt)
        if rank:  # every process draws its own augmentations
            torch.manual_seed(cfg.seed + 100_003 * rank)

    def save(epoch: int) -> None:
        if ckpt is None:
            return
        rngs = distributed.gather_objects(_rng_state(device))  # collective: every rank calls save
        if not main:
            return
        state = {
            "method": method.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "rng": rngs[0],
            **({"rng_ranks": rngs} if world > 1 else {}),
        }
        meta = {"epoch": epoch, "history": history, "fingerprint": fingerprint,
                "best_epoch": best["epoch"], "best_value": best["value"] if best["epoch"] else None,
                **({"world_size": world} if world > 1 else {})}
        save_checkpoint(ckpt, state, meta)

    def consider(epoch: int, value: float) -> None:
        """Keep the weights of the best checkpoint so far (in memory and as best.pt)."""
        if not selecting or value <= best["value"]:
            return
        state = {k: v.detach().clone() for k, v in method.state_dict().items()}
        best.update(value=value, epoch=epoch, state=state)
        if ckpt is not None and main:
            save_checkpoint(ckpt.with_name("best.pt"), {"method": state}, {"epoch": epoch, "sensitivity": value})

    method.on_train_start(cfg.epochs * len(epoch_batches(len(train_images), batch_size, cfg.seed, 1)), train_images)
    step_model = _parallel(method, device) if distributed.active() else method
    staged = policy.stage(train_images)
    staged_val = policy.stage(val_images) if val_images is not None and len(val_images) >= 2 else None
    error = f"loss became {{loss}} at epoch {{epoch}}; {divergence_hint('train.lr / --lr', cfg.lr)}"

    def step(idx: Tensor, epoch: int, done: float) -> dict[str, Tensor]:
        method.on_train_step(done)
        with policy.autocast():
            terms = step_model(staged[idx])
        values = {"loss": optimizer_step(terms["loss"], optimizer, error, epoch, check=policy.eager_checks)}
        method.after_optimizer_step()
        return values | {key: value.detach() for key, value in terms.items() if key != "loss"}

    def checkpoint_epoch(epoch: int) -> bool:
        return epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs

    def end_of_epoch(record: dict[str, Any]) -> None:
        epoch, seconds, images = record.pop("epoch"), record.pop("seconds"), record.pop("images")
        check_weights(method, f"the weights ({{name}}) became NaN/Inf in epoch {epoch} while the loss stayed finite; "
                              + divergence_hint("train.lr / --lr", cfg.lr))
        lr = optimizer.param_groups[0]["lr"]  # the rate this epoch trained with
        schedule.step()
        # every rank saw as many images: the mean of the ranks' means is the mean over the global batches
        means = distributed.mean(torch.tensor(list(record.values()), dtype=torch.float64)).tolist()
        terms = dict(zip(record, means, strict=True))
        record.clear()
        record.update(epoch=epoch, loss=terms.pop("loss"), seconds=seconds,
                      images_per_second=images * world / seconds if seconds > 0 else math.nan, lr=lr, **terms)
        if staged_val is not None:
            record["val_loss"] = _validation_loss(method, staged_val, cfg, policy)
        if sensitivity is not None and checkpoint_epoch(epoch):
            # rank 0's encoder decides (the ranks' BatchNorm statistics differ slightly)
            record["sensitivity"] = distributed.broadcast_object(sensitivity(method.encoder) if main else None)
            record["sensitivity_se"] = sensitivity.standard_error(record["sensitivity"])
            consider(epoch, record["sensitivity"])
        history.append(record)  # before saving (run_epochs' checkpoint hook): the checkpoint holds the history
        if main:
            log.info(
                "epoch %d/%d  loss %.4f%s%s  %.1f img/s",
                epoch,
                cfg.epochs,
                record["loss"],
                f"  val_loss {record['val_loss']:.4f}" if "val_loss" in record else "",
                f"  sensitivity_score {record['sensitivity']:.4f}" if "sensitivity" in record else "",
                record["images_per_second"],
            )

    def save_after_logging(record: dict[str, Any]) -> None:
        if checkpoint_epoch(record["epoch"]):
            save(record["epoch"])

    with policy.activate():
        run_epochs(step, lambda epoch: epoch_batches(len(train_images), batch_size, cfg.seed, epoch, rank, world),
                   epochs=cfg.epochs, start=start_epoch - 1, name="epoch", show=cfg.progress and main,
                   after_epoch=end_of_epoch, checkpoint=save_after_logging, log_as="pretrain",
                   live=policy.eager_checks, error=error)
    chosen = choose_checkpoint(history, cfg.select_margin) if selecting else None
    if chosen is not None:
        if chosen == best["epoch"] and chosen != history[-1]["epoch"]:
            load_state(method, best["state"], ckpt.with_name("best.pt") if ckpt else "the best epoch", "method")
        for record in history:
            record["selected"] = record["epoch"] == chosen
        if main:
            log.info("selected epoch %d (best sensitivity score %.4f at epoch %d)",
                     chosen, best["value"], best["epoch"])
    method.eval()
    return history


def _parallel(method: PretrainMethod, device: torch.device) -> torch.nn.Module:
    """``method`` in DistributedDataParallel: calling it runs ``training_loss`` and the backward
    pass averages the gradients over the processes. BatchNorm statistics stay per process (DDP's
    default; the buffers are broadcast from rank 0 before every step)."""
    return torch.nn.parallel.DistributedDataParallel(  # static: the heads in use never change within a run
        method, device_ids=[device.index] if device.type == "cuda" else None, static_graph=True
    )
