"""The Python API: a scikit-learn / PyOD-style anomaly detector over medad's methods and scores.

``fit`` pre-trains the encoder with the configured self-supervised method on normal images only,
fits the primary detector (and the other applicable scores) on the training normals and sets
the threshold from held-out validation normals. Higher scores mean "more anomalous".

>>> import torch
>>> from medad import AnomalyDetector
>>> normals = torch.rand(12, 1, 16, 16)
>>> det = AnomalyDetector(image_size=16, epochs=1, batch_size=4, progress=False).fit(normals)
>>> det.decision_function(torch.rand(3, 1, 16, 16)).shape
(3,)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from pydantic import ValidationError
from torch import Tensor, nn

from medad import __version__
from medad import distributed
from medad.config import (
    FUSION, RunConfig, ScoreSpec, apply_budget, apply_shortcuts, error_lines, from_preset, shortcut_overrides,
)
from medad.data.imageset import ImageSet
from medad.data.preprocessor import Preprocessor
from medad.detectors.base import DetectorOutput, NonFiniteFeatures
from medad.device_policy import ComputePolicy
from medad.detectors.embedding import EmbeddingDetector, EmbeddingParams, cached_view
from medad.detectors.fusion import Standardisation, fit_fusion, fuse_scores
from medad.detectors.maps import postprocess_maps, reduce_maps
from medad.detectors.registry import applicable_detectors, build_detector, detector_class
from medad.detectors.sensitivity import SensitivityScore
from medad.evaluation.calibration import normal_map_range, normal_quantile
from medad.evaluation.metrics import quantile_threshold
from medad.evaluation.pixel import pixel_quantile_threshold
from medad.evaluation.projection import Projection, fit_projection
from medad.methods.base import PretrainMethod
from medad.methods.registry import METHODS, build_method
from medad.models.resnet import build_encoder
from medad.progress import progress_enabled
from medad.runtime import resolve_device, seed_everything, set_threads
from medad.train.checkpoint import load_checkpoint, load_state, save_checkpoint
from medad.train.core import divergence_hint
from medad.train.loop import train_method
from medad.train.networks import network_checkpoints

log = logging.getLogger("medad")

Images = Union[ImageSet, Tensor, np.ndarray, str, Path]
MODEL_FORMAT = 1
FITTED_METADATA = ("threshold", "threshold_rule", "pixel_threshold", "pixel_threshold_rule", "map_range",
                   "val_scores", "fusion", "history", "train_seconds", "n_train", "manifest_sha256")
"""The fitted fields (attribute ``<key>_``) saved in model.json under ``<key>``: save and load read this one list."""


def score_params(config: RunConfig, name: str) -> dict[str, Any]:
    """The params of score ``name``: ``detector.params`` for the primary detector; for a score
    listed in ``detector.also`` with params of its own (``{name, params}``), those; for the other
    scores reported beside it, the view settings they share with it (``tta``, ``tta_seed``,
    ``contexts``, ``batch_size`` of :class:`~medad.detectors.embedding.EmbeddingParams`), so that
    e.g. CON2's S_NND, S_LH and Mahalanobis columns all score both contexts with the same TTA
    (CON2 eq. 16).

    A detector with a ``seed`` of its own (weight initialisation and data order of its networks,
    PaDiM's channel subset) gets the run's ``train.seed`` unless ``detector.params.seed`` is set,
    so that ``--seed`` changes every random source of a run.

    >>> cfg = RunConfig.model_validate({"detector": {"name": "nnd", "params": {"k": 3, "contexts": ["flip"]}}})
    >>> score_params(cfg, "nnd"), score_params(cfg, "lh")
    ({'k': 3, 'contexts': ['flip']}, {'contexts': ['flip']})
    >>> score_params(RunConfig.model_validate({"detector": {"name": "dae"}, "train": {"seed": 2}}), "dae")
    {'seed': 2}
    """
    params = config.detector.params
    if name == config.detector.name:
        own = dict(params)
    elif config.detector.also_params(name) is not None:
        own = config.detector.also_params(name)
    elif issubclass(detector_class(name), EmbeddingDetector):
        shared = set(EmbeddingParams.model_fields)
        own = {k: v for k, v in params.items() if k in shared}
    else:
        own = {}
    if "seed" in detector_class(name).Params.model_fields:
        own.setdefault("seed", config.train.seed)
    return own


def scores_of(config: RunConfig) -> list[str]:
    """The detectors ``config`` fits: ``detector.name`` first, then the others reported beside it.

    >>> scores_of(RunConfig.model_validate({"detector": {"name": "lh"}}))
    ['lh', 'mahalanobis', 'nnd', 'cosine']
    """
    detector = config.detector
    if detector.also == "auto":
        extra = applicable_detectors(detector.name, score_params(config, detector.name))
    else:
        extra = detector.also_names()
    names = [detector.name] + [n for n in extra if n != detector.name]
    missing = [n for n in detector.fuse if n not in names]
    if missing:
        raise ValueError(f"detector.fuse names {missing}, which are not among the scores {names}")
    return names


def check_params(config: RunConfig) -> None:
    """Validate the method's params and every score's (:func:`score_params`) against their
    ``Params`` before any data is read or network built. The errors of all of them come in one
    ``ValidationError``, each located in the config (``method.params.temperature``,
    ``detector.params.k``, ``detector.also.0.params.epochs``).

    >>> try:
    ...     check_params(RunConfig.model_validate({"detector": {"name": "nnd", "params": {"k": 0}}}))
    ... except ValidationError as exc:
    ...     print([error["loc"] for error in exc.errors()])
    [('detector', 'params', 'k')]
    """
    detector = config.detector
    own = {spec.name: ("detector", "also", i, "params")  # scores listed in `also` with params of their own
           for i, spec in enumerate([] if detector.also == "auto" else detector.also) if isinstance(spec, ScoreSpec)}
    errors = []

    def check(loc: tuple, params_class: type, params: dict[str, Any]) -> None:
        try:
            params_class.model_validate(params)
        except ValidationError as exc:
            errors.extend({**error, "loc": (*loc, *error["loc"])} for error in exc.errors())

    check(("method", "params"), METHODS[config.method.name].Params, config.method.params)
    n_before = len(errors)
    check(("detector", "params"), detector_class(detector.name).Params, score_params(config, detector.name))
    if len(errors) == n_before:  # which scores go beside the primary one depends on its params
        for name in scores_of(config)[1:]:
            check(own.get(name, ("detector", "params")), detector_class(name).Params, score_params(config, name))
    if errors:
        raise ValidationError.from_exception_data("RunConfig", errors)


class NotFittedError(RuntimeError):
    """Raised when a detector is used before ``fit`` (or ``load``)."""


class AnomalyDetector:
    """Self-supervised encoder + anomaly scores + label-free threshold.

    Configure with a :class:`~medad.config.RunConfig` or a ``preset`` name (:mod:`medad.presets`),
    a ``budget`` (``"paper"``: the published one, :mod:`medad.budgets`, under the shortcuts given),
    and/or shortcuts (``method``, ``detector``, ``image_size``, ``channels``, ``epochs``,
    ``batch_size``, ``lr``, ``seed``, ``device``, ``progress``). Images may be an
    :class:`ImageSet`, a tensor or array ``[N, C, H, W]`` / ``[N, H, W]`` (floats in [0, 1] or
    uint8), or a path to a file or folder of images.
    """

    def __init__(self, config: RunConfig | None = None, *, preset: str | None = None, budget: str | None = None,
                 **shortcuts: Any):
        if preset is not None and config is not None:
            raise ValueError("give a config or a preset, not both (the config records its preset)")
        if config is not None and preset is None and budget is None and not shortcuts:
            self.config = config  # as given, so that scikit-learn's clone finds the same object
        else:
            config = apply_shortcuts(from_preset(preset) if preset else config or RunConfig(), **shortcuts)
            # the shortcuts given win over the budget's values
            self.config = apply_budget(config, budget, explicit=set(shortcut_overrides(**shortcuts)))
        check_params(self.config)
        self.device = resolve_device(self.config.train.device)
        self.encoder_: nn.Module | None = None
        self.method_: PretrainMethod | None = None  # the fitted method with its heads; not saved (load: None)
        self.validation_pass_: tuple[dict[str, DetectorOutput], Tensor] | None = None
        """Every score and the embeddings of the validation normals from fitting (not saved), so that
        the run's report does not score them again."""
        self.detectors_ = nn.ModuleDict()
        self.threshold_: float | None = None
        self.threshold_rule_: str = "none"
        self.pixel_threshold_: float | None = None
        self.pixel_threshold_rule_: str = "none"
        self.map_range_: tuple[float, float] | None = None  # heatmap colour scale (validation normals)
        self.projection_: Projection | None = None  # the report's 2-D embedding basis (training normals)
        self.val_scores_: list[float] = []
        self.fusion_: Standardisation | None = None  # per fused score: validation-normal (mean, std)
        self.history_: list[dict[str, Any]] = []
        self.train_seconds_: float = 0.0
        self.n_train_: int = 0
        self.manifest_sha256_: str = ""

    # -- inputs -----------------------------------------------------------------------------
    @property
    def primary(self) -> str:
        """Name of the score used for the threshold and predictions: the detector's, or ``fusion``
        when ``detector.fuse`` averages several (:mod:`medad.detectors.fusion`)."""
        return FUSION if self.config.detector.fuse else self.config.detector.name

    @property
    def policy(self) -> ComputePolicy:
        """Where and in which dtype the networks compute (:mod:`medad.device_policy`), from
        ``train.device`` and ``train.precision``."""
        return ComputePolicy.resolve(self.device, self.config.train.precision)

    @property
    def preprocessor(self) -> Preprocessor:
        """The model's input conversion (:mod:`medad.data.preprocessor`), from ``config.data``."""
        return Preprocessor.from_config(self.config.data)

    def prepare(self, images: Images) -> Tensor:
        """Bring any accepted input (path, :class:`ImageSet`, tensor or array) to float32
        ``[N, C, S, S]`` in [0, 1] in the model's layout, with the configured per-image intensity
        scaling (``data.intensity``) applied: what the encoder and the detectors see."""
        return self.preprocessor(images)

    def _check_fitted(self) -> None:
        if self.encoder_ is None or not self.detectors_:
            raise NotFittedError("this AnomalyDetector is not fitted yet: call fit() or AnomalyDetector.load()")

    # -- fitting ----------------------------------------------------------------------------
    @property
    def selected_epoch(self) -> int | None:
        """The epoch whose weights the model uses (the last one unless selected by sensitivity)."""
        chosen = [h["epoch"] for h in self.history_ if h.get("selected")]
        return chosen[0] if chosen else (self.history_[-1]["epoch"] if self.history_ else None)

    def score_names(self) -> list[str]:
        """The detectors to fit: ``detector.name`` first, then the others reported beside it."""
        return scores_of(self.config)

    def fit(
        self,
        images: Images,
        val_images: Images | None = None,
        *,
        unlabeled: Images | None = None,
        checkpoint_path: str | Path | None = None,
        resume: bool = False,
        fingerprint: str = "",
    ) -> AnomalyDetector:
        """Pre-train on normal ``images``, fit the scores, set the threshold on validation normals.

        Without ``val_images``, ``config.data.val_fraction`` of ``images`` is held out (seeded).
        ``unlabeled`` images (unknown labels) go to the detectors that use them (DDAD).
        With ``checkpoint_path`` the pre-training and the detectors' own networks are checkpointed
        (``networks/`` beside it) and ``resume`` continues an interrupted fit whose ``fingerprint``
        matches.

        Under ``torchrun`` every process pre-trains its share of each batch (:mod:`medad.distributed`);
        rank 0 then fits the scores and thresholds alone, while the other ranks return a model that
        holds only the trained ``encoder_``.
        """
        cfg = self.config
        distributed.init_from_env(self.device)
        seed_everything(cfg.train.seed)
        set_threads(cfg.train.threads)
        train = self.prepare(images)
        if val_images is None:
            n_val = int(round(len(train) * cfg.data.val_fraction)) if len(train) > 2 else 0
            perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.train.seed))
            val, train = train[perm[:n_val]], train[perm[n_val:]]
        else:
            val = self.prepare(val_images)
        if len(train) < 2:
            raise ValueError(f"need at least 2 normal training images, got {len(train)}")
        self._check_fusable(len(val))  # before training, not after

        t0 = time.perf_counter()
        encoder = build_encoder(cfg.encoder, in_channels=cfg.data.channels, image_size=cfg.data.image_size)
        method = build_method(cfg.method, encoder)
        method.preprocessor = self.preprocessor
        can_score = len(val) >= 1 and len(train) >= 4 and cfg.train.sensitivity_holdout > 0 and cfg.train.epochs > 0
        pretrain = method.trains and any(
            build_detector(name, score_params(cfg, name)).uses_encoder for name in self.score_names())
        if method.trains and not pretrain:
            log.warning("detector %r trains its own network and reads no encoder: method %r is not trained "
                        "(use --method none)", cfg.detector.name, cfg.method.name)
        self.history_ = train_method(
            method, train, val, cfg.train, device=self.device,
            checkpoint_path=checkpoint_path, resume=resume, fingerprint=fingerprint,
            sensitivity=SensitivityScore(train, val, cfg.train.sensitivity_holdout, seed=cfg.train.seed)
            if can_score else None,
        ) if pretrain else []
        if not method.trains:
            method.calibrate(train.to(self.device))
        self.encoder_ = method.encoder.to(self.device).eval()
        self.method_ = method.eval()
        if not distributed.is_main():
            return self
        # detectors' own networks are saved beside the pre-training checkpoint, and resumed
        networks = nullcontext() if checkpoint_path is None else network_checkpoints(
            Path(checkpoint_path).parent / "networks", fingerprint, resume)
        with networks, self.policy.activate():
            try:
                self._fit_scores(train, val, None if unlabeled is None else self.prepare(unlabeled))
            except NonFiniteFeatures as exc:  # say what to suspect: the pre-training or the inputs
                cause = divergence_hint("train.lr / --lr", cfg.train.lr) if pretrain else "check the input images"
                raise NonFiniteFeatures(f"{exc}; {cause}") from exc
        self.train_seconds_ = time.perf_counter() - t0
        return self

    def _check_fusable(self, n_val: int) -> None:
        if self.config.detector.fuse and n_val < 2:
            raise ValueError(f"detector.fuse standardises its scores on the validation normals and needs at least "
                             f"2, got {n_val} (raise data.val_fraction or give validation images)")

    def fit_scores(self, images: Images, val_images: Images, unlabeled: Images | None = None) -> AnomalyDetector:
        """Fit the scores on normal ``images`` with the current encoder and set the thresholds on
        ``val_images`` (normals); ``fit`` calls it after pre-training. Call it yourself after
        replacing ``encoder_``, e.g. with another checkpoint's weights, to score with that encoder.
        """
        if self.encoder_ is None:
            raise NotFittedError("fit_scores needs an encoder: call fit() or AnomalyDetector.load() first")
        pool = None if unlabeled is None else self.prepare(unlabeled)
        with self.policy.activate():
            return self._fit_scores(self.prepare(images), self.prepare(val_images), pool)

    def _fit_scores(self, train: Tensor, val: Tensor, pool: Tensor | None) -> AnomalyDetector:
        """:meth:`fit_scores` on images already brought to the model's layout by :meth:`prepare`."""
        cfg = self.config
        cache: dict = {}
        self.detectors_ = nn.ModuleDict()
        with progress_enabled(cfg.train.progress):
            for name in self.score_names():
                detector = build_detector(name, score_params(cfg, name)).to(self.device)
                self.detectors_[name] = detector.fit(train, self.encoder_, cache, unlabeled=pool).eval()
        self.n_train_ = len(train)
        some = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.train.seed))[:512]
        self.projection_ = fit_projection(self._embed(train[some]).numpy())

        self.fusion_ = None
        self._check_fusable(len(val))
        if len(val):
            cache: dict = {}
            outputs = self._score(val, cache=cache)
            if cfg.detector.fuse:
                self.fusion_ = fit_fusion({name: outputs[name].scores for name in cfg.detector.fuse})
                outputs[FUSION] = self._fused(outputs)
            self.validation_pass_ = (outputs, self._embed(val, cache=cache))
            out = outputs[self.primary]
            self.val_scores_ = out.scores.tolist()
            self.threshold_, self.threshold_rule_ = quantile_threshold(
                np.asarray(self.val_scores_), cfg.evaluation.threshold_quantile
            )
            if out.maps is not None:
                maps = out.maps.cpu().numpy()
                self.pixel_threshold_, self.pixel_threshold_rule_ = pixel_quantile_threshold(
                    maps, cfg.evaluation.pixel_threshold_quantile
                )
                self.map_range_ = normal_map_range(maps)
        else:
            log.warning("no validation normals: no threshold, predict() is unavailable")
            self.val_scores_, self.threshold_, self.threshold_rule_ = [], None, "none"
        return self

    # -- scoring ----------------------------------------------------------------------------
    @property
    def fitted_scores(self) -> list[str]:
        """The names of every score :meth:`score_all` gives: the fitted detectors', then ``fusion``."""
        return list(self.detectors_) + ([FUSION] if self.fusion_ else [])

    def score_all(self, images: Images, names: Sequence[str] | None = None) -> dict[str, DetectorOutput]:
        """Every fitted score of ``images`` by name (the detectors', then ``fusion`` if fused), or
        only those in ``names``."""
        self._check_fitted()
        unknown = sorted(set(names or ()) - set(self.fitted_scores))
        if unknown:
            raise ValueError(f"unknown score(s) {unknown}; this model has {self.fitted_scores}")
        return self._score(self.prepare(images), names)

    def score_and_embed(self, images: Images) -> tuple[dict[str, DetectorOutput], Tensor]:
        """Every fitted score (:meth:`score_all`) and the embeddings (:meth:`embed`) of ``images``
        in one pass: the images are prepared once and the encoder's plain view is shared."""
        self._check_fitted()
        x, cache = self.prepare(images), {}
        return self._score(x, cache=cache), self._embed(x, cache=cache)

    @torch.no_grad()
    def _score(self, x: Tensor, names: Sequence[str] | None = None, cache: dict | None = None
               ) -> dict[str, DetectorOutput]:
        """:meth:`score_all` on images already brought to the model's layout by :meth:`prepare`;
        maps are post-processed as ``config.maps`` says and their image scores taken again, and the
        fused score (image level, no map) is added once :meth:`_fit_scores` has standardised its
        parts. ``cache`` holds the encoder's views for whoever reads the same ``x`` next."""
        cache = {} if cache is None else cache
        fused = self.fusion_ is not None and (names is None or FUSION in names)
        wanted = None if names is None else set(names) | (set(self.fusion_) if fused else set())
        with self.policy.activate():
            outputs = {name: det.score(x, self.encoder_, cache) for name, det in self.detectors_.items()
                       if wanted is None or name in wanted}
        post = self.config.maps
        if post.active:
            for name, out in outputs.items():
                if out.maps is not None:
                    maps = postprocess_maps(x, out.maps, foreground=post.foreground, erode=post.erode,
                                            smooth=post.smooth, channels=post.foreground_channels)
                    reduction = post.reduction or self.detectors_[name].params.reduction
                    outputs[name] = DetectorOutput(scores=reduce_maps(maps, reduction), maps=maps)
        if fused:
            outputs[FUSION] = self._fused(outputs)
        if names is not None:
            outputs = {name: out for name, out in outputs.items() if name in names}
        return outputs

    def _fused(self, outputs: dict[str, DetectorOutput]) -> DetectorOutput:
        """The fused score of ``outputs`` (:func:`~medad.detectors.fusion.fuse_scores`)."""
        return DetectorOutput(scores=fuse_scores({name: outputs[name].scores for name in self.fusion_}, self.fusion_))

    def decision_function(self, images: Images) -> np.ndarray:
        """Primary anomaly scores ``[N]``; higher = more anomalous (PyOD convention)."""
        return self.score_all(images)[self.primary].scores.cpu().numpy()

    score = decision_function

    def predict(self, images: Images) -> np.ndarray:
        """1 for images whose score exceeds the label-free threshold, else 0."""
        if self.threshold_ is None:
            raise NotFittedError("no threshold: fit with validation normals (val_fraction > 0)")
        return (self.decision_function(images) > self.threshold_).astype(np.int64)

    def predict_proba(self, images: Images) -> np.ndarray:
        """``[N, 2]``: column 1 is the calibrated score — the share of validation normals scoring
        below each image (:func:`~medad.evaluation.calibration.normal_quantile`), column 0 is one
        minus it (the empirical p-value of "normal"), as scikit-learn and PyOD lay out probabilities."""
        if not self.val_scores_:
            raise NotFittedError("no validation-normal scores: fit with validation normals (val_fraction > 0)")
        q = normal_quantile(self.decision_function(images), self.val_scores_)
        return np.stack([1.0 - q, q], axis=1)

    # -- scikit-learn estimator API ---------------------------------------------------------
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The estimator's parameters: the resolved run configuration (preset and shortcuts
        included), so that ``sklearn.base.clone(model)`` gives an unfitted copy."""
        return {"config": self.config}

    def set_params(self, **params: Any) -> AnomalyDetector:
        """Set ``config`` and/or shortcut values (``epochs=3``, ``detector="nnd"``); takes effect
        at the next :meth:`fit`. Returns the estimator."""
        config = params.pop("config", self.config)
        self.config = apply_shortcuts(config, **params) if params else config
        check_params(self.config)
        self.device = resolve_device(self.config.train.device)
        return self

    def anomaly_map(self, images: Images) -> np.ndarray:
        """Pixel anomaly maps ``[N, H, W]`` from the primary detector, if it is spatial."""
        out = self.score_all(images)[self.primary]
        if out.maps is None:
            raise ValueError(f"detector {self.primary!r} gives image scores only, no anomaly maps")
        return out.maps.cpu().numpy()

    @torch.no_grad()
    def diagnostics(self, val_images: Images) -> dict[str, float]:
        """Every fitted detector's label-free diagnostics on validation normals, keyed
        ``<detector>_<name>`` (see :meth:`medad.detectors.base.Detector.diagnostics`)."""
        self._check_fitted()
        x = self.prepare(val_images)
        return {f"{name}_{key}": value for name, det in self.detectors_.items()
                for key, value in det.diagnostics(x).items()}

    @torch.no_grad()
    def embed(self, images: Images, batch_size: int = 128) -> Tensor:
        """Pooled encoder embeddings ``[N, D]`` (on CPU)."""
        self._check_fitted()
        return self._embed(self.prepare(images), batch_size)

    def _embed(self, x: Tensor, batch_size: int = 128, cache: dict | None = None) -> Tensor:
        """:meth:`embed` of images already brought to the model's layout by :meth:`prepare`."""
        with self.policy.activate():
            return cached_view(x, self.encoder_, {} if cache is None else cache, batch_size=batch_size)

    # -- persistence ------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write ``model.pt`` (tensors only) and ``model.json`` (everything else) to ``directory``."""
        self._check_fitted()
        directory = Path(directory)
        state = {
            "encoder": self.encoder_.state_dict(),
            "detectors": {name: det.state_dict() for name, det in self.detectors_.items()},
            **({"projection": {"mean": torch.from_numpy(self.projection_.mean),
                               "components": torch.from_numpy(self.projection_.components)}}
               if self.projection_ is not None else {}),
        }
        meta = {
            "format": MODEL_FORMAT,
            "medad_version": __version__,
            "config": self.config.model_dump(mode="json"),
            "preprocessing": self.preprocessor.metadata(),
            "scores": list(self.detectors_),
            "score_params": {name: det.params.model_dump(mode="json") for name, det in self.detectors_.items()},
            "primary": self.primary,
            **{key: getattr(self, f"{key}_") for key in FITTED_METADATA},
        }
        save_checkpoint(directory / "model.pt", state, meta)
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | None = None) -> AnomalyDetector:
        """Load a model saved by :meth:`save` (its folder, a run directory containing ``model/``, or
        the folder's ``model.pt`` / ``model.json``). A pair of files that were not saved together,
        or were edited since, is refused (:mod:`medad.train.checkpoint`)."""
        directory = Path(directory)
        if directory.name in ("model.pt", "model.json") and directory.is_file():
            directory = directory.parent
        elif (directory / "model" / "model.pt").is_file():
            directory = directory / "model"
        path = directory / "model.pt"
        if not (path.is_file() or path.with_suffix(".json").is_file()):
            raise FileNotFoundError(f"no saved model in {directory}: expected model.pt and model.json there "
                                    "(or in its model/ folder), as `medad train` and AnomalyDetector.save write them")

        def check(meta: dict[str, Any]) -> None:
            meta_path = path.with_suffix(".json")
            if meta.get("format", 0) > MODEL_FORMAT:
                raise ValueError(f"{meta_path} was written by a newer medad ({meta.get('medad_version')}, model "
                                 f"format {meta['format']}; this is medad {__version__}, format {MODEL_FORMAT}): "
                                 "upgrade medad to load it")
            missing = [key for key in ("config", "scores") if key not in meta]
            if missing:
                raise ValueError(f"{meta_path} is not a medad model's metadata (no {', '.join(missing)})")

        state, meta = load_checkpoint(path, check=check)
        try:
            config = RunConfig.model_validate(meta["config"])
        except ValidationError as exc:  # an older model.json (no hashes) edited by hand
            raise ValueError("\n".join(f"{path.with_suffix('.json')}: config: {line}" for line in error_lines(exc))
                             ) from None
        config.encoder.weights = None  # the saved weights replace any initial weights file
        if device is not None:
            config.train.device = device
        model = cls(config)
        encoder = build_encoder(config.encoder, in_channels=config.data.channels, image_size=config.data.image_size)
        load_state(encoder, state.get("encoder", {}), path, "encoder")
        model.encoder_ = encoder.to(model.device).eval()
        for name in meta["scores"]:
            # models saved before score_params was recorded gave params to the primary score only
            saved = meta.get("score_params", {}).get(name)
            primary_only = config.detector.params if name == config.detector.name else {}
            detector = build_detector(name, primary_only if saved is None else saved)
            load_state(detector, state.get("detectors", {}).get(name, {}), path, f"detector {name!r}")
            model.detectors_[name] = detector.to(model.device).eval()
        for key in FITTED_METADATA:  # a field an older medad did not save keeps its unfitted default
            if key in meta:
                setattr(model, f"{key}_", meta[key])
        if model.map_range_ is not None:
            model.map_range_ = tuple(model.map_range_)
        if "projection" in state:  # saved since the report's one embedding basis
            basis = state["projection"]
            model.projection_ = Projection(basis["mean"].numpy(), basis["components"].numpy())
        return model
