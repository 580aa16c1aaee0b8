"""The one validated run configuration, loaded from YAML and overridden from the CLI.

Every run writes its resolved configuration (all defaults filled in) to ``RUN_DIR/config.yaml``;
``medad train --config RUN_DIR/config.yaml`` repeats the run.

>>> cfg = RunConfig.model_validate({"data": {"path": "data/synthetic", "image_size": 32}})
>>> cfg.data.image_size, cfg.method.name, cfg.detector.name
(32, 'contrastive', 'mahalanobis')
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medad import catalog
from medad.budgets import budget_overrides, flat_keys
from medad.atomic import atomic_write_text
from medad.presets import PRESETS, merge_preset

SCHEMA_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _did_you_mean(name: str, options: Any) -> str:
    """`` (did you mean 'x'?)`` for the option closest to ``name``, or nothing."""
    close = difflib.get_close_matches(str(name), [str(o) for o in options], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _known(kind: str, table: Mapping[str, str], name: str) -> str:
    """``name`` if ``table`` (:mod:`medad.catalog`) has it, else ValueError listing the known names."""
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}{_did_you_mean(name, table)}; known {kind}s: "
                         f"{', '.join(sorted(table))} (`medad list`)")
    return name


class DataConfig(_Strict):
    """Where the images come from and how every image is brought to one tensor layout."""

    path: str | None = Field(None, description="MVTec-style folder or MedMNIST .npz file")
    format: Literal["auto", "folder", "medmnist"] = "auto"
    normal_label: int | None = Field(
        None, description="MedMNIST label that means 'normal' (known for pneumoniamnist=0, breastmnist=1)"
    )
    image_size: int = Field(64, ge=8, le=1024, description="square side every image is resized to")
    channels: Literal[1, 3] = Field(1, description="every image is converted to this many channels")
    intensity: Literal["as_read", "minmax", "percentile"] = Field(
        "as_read", description="per-image intensity scaling before the model: none, min-max, or the "
        "0.5/99.5 percentiles to [0, 1]"
    )
    val_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="share of training normals held out for thresholds/selection"
    )
    max_train: int | None = Field(None, ge=1, description="use at most this many training normals")
    on_error: Literal["raise", "skip"] = Field(
        "raise", description="unreadable image: stop with an error naming it, or log and skip it"
    )
    nifti_slices: Literal["middle", "all"] | int = Field(
        "middle", description="axial slices taken from each NIfTI volume"
    )
    unlabeled: str | None = Field(None, description="folder or .npz of unlabeled images (DDAD-style pool)")
    labelled_val: str | None = Field(
        None,
        description="optional labelled validation folder; its threshold is reported under its own name",
    )


class EncoderConfig(_Strict):
    """ResNet encoder shared by all self-supervised methods."""

    arch: Literal["resnet18"] = "resnet18"
    width: int = Field(64, ge=4, le=128, description="channels of the first stage (64 = standard ResNet-18)")
    stem: Literal["auto", "cifar", "imagenet"] = Field(
        "auto", description="auto: cifar (3x3, stride 1) up to 32 px, imagenet (7x7, stride 2 + pool) above"
    )
    weights: str | None = Field(None, description="optional local state_dict file to start from")


class MethodConfig(_Strict):
    """Self-supervised pre-training objective; ``params`` are validated by the method itself."""

    name: str = "contrastive"
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known_method(cls, name: str) -> str:
        return _known("method", catalog.METHODS, name)


class ScoreSpec(_Strict):
    """A score reported beside the primary one, with parameters of its own (validated by it)."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known_detector(cls, name: str) -> str:
        return _known("detector", catalog.DETECTORS, name)


FUSION = "fusion"
"""Name of the fused score (:mod:`medad.detectors.fusion`), the primary score when ``detector.fuse`` is set."""


class DetectorConfig(_Strict):
    """The score used for thresholds and predictions, plus the others reported beside it.

    >>> DetectorConfig(also=["nnd", {"name": "dae", "params": {"epochs": 2}}], fuse=["mahalanobis", "dae"]).fuse
    ['mahalanobis', 'dae']
    """

    name: str = "mahalanobis"
    params: dict[str, Any] = Field(default_factory=dict)
    also: list[str | ScoreSpec] | Literal["auto"] = Field(
        "auto", description="further scores reported in metrics.json, by name or as {name, params}; "
        "auto = all that apply"
    )
    fuse: list[str] = Field(
        default_factory=list, description="scores averaged into the primary score 'fusion', each standardised "
        "by the mean and std of its validation-normal scores; [] = the detector's own score is primary"
    )

    @field_validator("name")
    @classmethod
    def _known_detector(cls, name: str) -> str:
        if name == FUSION:
            raise ValueError(f"{FUSION!r} is the name of the fused score, not a detector (see detector.fuse)")
        return _known("detector", catalog.DETECTORS, name)

    @field_validator("also")
    @classmethod
    def _known_also(cls, also: list[str | ScoreSpec] | str) -> list[str | ScoreSpec] | str:
        for name in [] if also == "auto" else [a for a in also if isinstance(a, str)]:
            _known("detector", catalog.DETECTORS, name)
        return also

    @field_validator("fuse")
    @classmethod
    def _known_fuse(cls, fuse: list[str]) -> list[str]:
        return [_known("detector", catalog.DETECTORS, name) for name in fuse]

    @model_validator(mode="after")
    def _check_fuse(self) -> DetectorConfig:
        if self.fuse:
            if len(set(self.fuse)) < 2 or len(set(self.fuse)) != len(self.fuse):
                raise ValueError(f"detector.fuse needs at least two different scores, got {self.fuse}")
            listed = {self.name, *self.also_names()}
            missing = [n for n in self.fuse if n not in listed] if self.also != "auto" else []
            if missing:
                raise ValueError(f"detector.fuse names {missing}, which are neither detector.name nor in detector.also")
        return self

    def also_names(self) -> list[str]:
        """The names in ``also`` (empty for ``auto``)."""
        return [] if self.also == "auto" else [a if isinstance(a, str) else a.name for a in self.also]

    def also_params(self, name: str) -> dict[str, Any] | None:
        """The params given to ``name`` in ``also`` (``None`` if it is listed by name only or not at all)."""
        for a in [] if self.also == "auto" else self.also:
            if isinstance(a, ScoreSpec) and a.name == name:
                return dict(a.params)
        return None


class MapConfig(_Strict):
    """Post-processing of every anomaly map (spatial detectors), label-free; lengths in px at 256 px,
    scaled with the image side (see :mod:`medad.detectors.maps`). The defaults change nothing."""

    foreground: float | None = Field(
        None, ge=0, lt=1, description="zero the map outside each image's foreground (pixels above this fraction "
        "of its 99th percentile, holes filled); None = keep the whole map"
    )
    foreground_channels: list[int] | None = Field(
        None, description="channels the foreground is found on (their brightest); None = all"
    )
    erode: float = Field(0.0, ge=0, description="erode the foreground by this radius (px at 256 px), e.g. "
                         "to drop the scalp of head MRI")
    smooth: float = Field(0.0, ge=0, description="Gaussian blur of the map, sigma in px at 256 px (0 = none)")
    reduction: Literal["max", "mean"] | None = Field(
        None, description="image score from the post-processed map; None = the detector's own reduction"
    )

    @property
    def active(self) -> bool:
        return self.foreground is not None or self.smooth > 0 or self.reduction is not None


class TrainConfig(_Strict):
    """The training loop."""

    epochs: int = Field(20, ge=0)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-6, ge=0)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: int = Field(
        0, ge=0, description="linear learning-rate warm-up over the first epochs (DINO's code: 10)"
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seed of every random source (numpy needs it >= 0)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="dtype the networks compute in: auto = bf16 autocast on a CUDA GPU, fp32 on a CPU "
        "(weights and statistics stay fp32/fp64; medad.device_policy)"
    )
    threads: int | None = Field(None, ge=1, description="torch CPU threads; default: torch's choice")
    checkpoint_every: int = Field(1, ge=1, description="epochs between resumable checkpoints")
    select_by: Literal["last", "sensitivity"] = Field(
        "last", description="keep the last epoch, or the checkpoint with the highest sensitivity score"
    )
    select_margin: float = Field(
        1.0, ge=0, description="with select_by=sensitivity, leave the last epoch only for a checkpoint whose "
        "score is higher by more than this many standard errors (0 = take the highest score)"
    )
    sensitivity_holdout: int = Field(
        64, ge=0, description="training normals held out for the sensitivity score (0 = do not compute it)"
    )
    progress: bool = True
    log: list[Literal["tensorboard"]] = Field(
        default_factory=list, description="experiment logs `medad train` writes: tensorboard = every epoch's "
        "losses, learning rate and sensitivity score and the final figures in RUN/tensorboard/ (medad.experiment_log)"
    )

    @field_validator("log", mode="before")
    @classmethod
    def _one_log_is_a_list(cls, log: Any) -> Any:
        """``log: tensorboard`` in a YAML file means ``[tensorboard]``."""
        return [log] if isinstance(log, str) else log


class EvalConfig(_Strict):
    """How thresholds are chosen (never on the test split) and what the report shows."""

    threshold_quantile: float = Field(
        0.95, gt=0, lt=1, description="threshold = this quantile of validation-normal scores"
    )
    pixel_threshold_quantile: float = Field(
        0.99, gt=0, lt=1, description="pixel threshold = this quantile of validation-normal pixel scores"
    )
    min_region: int = Field(
        0, ge=0, description="drop predicted lesion components smaller than this many pixels (0 = keep all)"
    )
    top_k: int = Field(8, ge=1, le=64, description="images per gallery in the report")

    @model_validator(mode="before")
    @classmethod
    def _drop_unused_batch_size(cls, data: Any) -> Any:
        """``evaluation.batch_size`` (configs written before 2026-12-03) was never read (scoring batches are
        set per detector, e.g. the embedding detectors' ``batch_size``); old configs still load without it."""
        if isinstance(data, dict) and "batch_size" in data:
            data = {k: v for k, v in data.items() if k != "batch_size"}
        return data


class RunConfig(_Strict):
    """Everything that defines a run; saved as ``RUN_DIR/config.yaml``."""

    schema_version: int = SCHEMA_VERSION
    preset: str | None = Field(
        None, description="the preset this config started from (medad.presets; `medad list`): filled in by "
        "load_config / from_preset under the explicit values, then only a record"
    )
    budget: Literal["cpu", "paper"] = Field(
        "cpu", description="paper: the method's and detector's published budget (medad.budgets) wherever the "
        "run gives no value of its own (apply_budget); cpu: medad's defaults. Then only a record"
    )
    data: DataConfig = Field(default_factory=DataConfig)
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    detector: DetectorConfig = Field(default_factory=DetectorConfig)
    maps: MapConfig = Field(default_factory=MapConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluation: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _known_version(self) -> RunConfig:
        if self.schema_version > SCHEMA_VERSION:
            raise ValueError(
                f"config schema_version {self.schema_version} is newer than this medad "
                f"({SCHEMA_VERSION}); upgrade medad"
            )
        return self

    @model_validator(mode="after")
    def _foreground_channels_exist(self) -> RunConfig:
        """Caught here, before any training, rather than when the first map is post-processed."""
        bad = [c for c in self.maps.foreground_channels or [] if not 0 <= c < self.data.channels]
        if bad:
            raise ValueError(f"maps.foreground_channels {bad} do not exist in data.channels={self.data.channels} "
                             "images (channels count from 0; set data.channels: 3 for colour / multi-sequence data)")
        return self


def _read_yaml(path: str | Path | None) -> dict[str, Any]:
    """The mapping in a YAML config file (none: empty); errors are one line naming the file."""
    if path is None:
        return {}
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read config {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ValueError(f"config {path} is not valid YAML: {yaml_problem(exc)}") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"config {path} must be a mapping of sections (data:, train:, ...) at the top level, "
                         f"not a {type(raw).__name__}")
    return raw


def _validated(raw: dict[str, Any], path: str | Path | None) -> RunConfig:
    """``raw`` with its preset filled in, validated; errors of a file's values name the file."""
    try:
        return RunConfig.model_validate(merge_preset(raw))
    except ValidationError as exc:
        if path is None:
            raise
        raise ValueError("\n".join(f"config {path}: {line}" for line in error_lines(exc))) from None


def load_config(path: str | Path | None = None, preset: str | None = None) -> RunConfig:
    """Read and validate a YAML config (none: the defaults); ``preset`` replaces the file's
    ``preset:``. Errors are one line each, naming the file and the offending key."""
    raw = _read_yaml(path)
    if preset is not None:
        raw["preset"] = preset
    return _validated(raw, path)


def error_lines(exc: ValidationError, names: Mapping[str, str] | None = None) -> list[str]:
    """One line per error in ``exc``: where it is — the config key, or what ``names`` calls that
    key or a section above it (the CLI flag that set it) — pydantic's message without its
    documentation link, and the value given. The alternatives of a union fold into one line.

    >>> try:
    ...     RunConfig.model_validate({"data": {"image_size": -3, "chanels": 3}})
    ... except ValidationError as exc:
    ...     print("\\n".join(error_lines(exc, {"data.image_size": "--image-size"})))
    --image-size: Input should be greater than or equal to 8 (got -3)
    data.chanels: unknown key (did you mean 'channels'?)
    """
    names = names or {}
    found: dict[tuple, list[str]] = {}
    alternatives = set()  # keys where a union's alternatives failed
    for error in exc.errors(include_url=False):
        loc = tuple(part for part in error["loc"] if not _union_tag(part))
        if len(loc) < len(error["loc"]):
            alternatives.add(loc)
        found.setdefault(loc, []).append(_message(error, loc))
    lines = []
    for loc, messages in found.items():
        if loc in alternatives and any(other[: len(loc)] == loc and other != loc for other in found):
            continue  # an alternative that failed deeper down says more than "or it should be ..."
        key = ".".join(map(str, loc))
        given = [k for k in names if key == k or key.startswith(k + ".")]
        where = key if not given else names[given[0]] if given[0] == key else f"{names[given[0]]} ({key})"
        lines.append(f"{where}: " * bool(where) + "; or ".join(dict.fromkeys(messages)))
    return lines


def _union_tag(part: str | int) -> bool:
    """Whether a pydantic error location part names a union member (``int``, ``ScoreSpec``,
    ``literal['auto']``) rather than a key."""
    return isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "bool") or part[:1].isupper())


def _message(error: dict[str, Any], loc: tuple) -> str:
    """pydantic's message for one error, with an unknown key's likely meaning and the value given."""
    kind, value = error["type"], error.get("input")
    if kind == "extra_forbidden":
        section: Any = RunConfig
        for part in loc[:-1]:
            field = section.model_fields.get(part) if isinstance(section, type) else None
            section = field.annotation if field is not None else None
        known = section.model_fields if isinstance(section, type) and issubclass(section, BaseModel) else ()
        return f"unknown key{_did_you_mean(loc[-1], known)}"
    if kind == "missing":
        return "required, but missing"
    message = error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    shown = kind not in ("value_error", "assertion_error") and isinstance(value, (str, int, float, bool, type(None)))
    return f"{message} (got {value!r})" if shown else message


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error in one line: what is wrong and where (PyYAML spreads it over several lines).

    >>> try:
    ...     yaml.safe_load("a: [1, 2")
    ... except yaml.YAMLError as exc:
    ...     print(yaml_problem(exc))
    expected ',' or ']', but got '<stream end>' (line 1, column 9)
    """
    mark = getattr(exc, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return f"{getattr(exc, 'problem', None) or ' '.join(str(exc).split())}{where}"


def resolve_config(path: str | Path | None = None, *, preset: str | None = None, budget: str | None = None,
                   overrides: dict[str, Any] | None = None) -> RunConfig:
    """A run's config, lowest first: medad's defaults, the preset, the budget (:func:`apply_budget`),
    the YAML file's values, the dotted ``overrides`` (CLI flags and ``--set``). ``preset`` and
    ``budget`` replace the file's.

    >>> cfg = resolve_config(budget="paper", overrides={"method.name": "ccd", "train.epochs": 3})
    >>> cfg.data.image_size, cfg.train.batch_size, cfg.train.epochs, cfg.budget
    (256, 32, 3, 'paper')
    """
    raw = _read_yaml(path)
    overrides = dict(overrides or {})
    named = {name for name in (preset, overrides.pop("preset", None)) if name is not None}
    if len(named) > 1:
        raise ValueError(f"two presets given ({', '.join(sorted(map(str, named)))}): give one")
    if named:  # --preset and --set preset=NAME both bring the preset's values, under the file's
        raw["preset"] = named.pop()
    config = apply_overrides(_validated(raw, path), overrides)
    return apply_budget(config, budget, explicit=flat_keys(raw) | set(overrides))


def apply_budget(config: RunConfig, budget: str | None = None, explicit: set[str] | frozenset[str] = frozenset()
                 ) -> RunConfig:
    """``config`` with ``budget`` recorded (``None``: keep the config's) and, for ``paper``, the values
    of :func:`medad.budgets.budget_overrides` for its method and primary detector set wherever the
    dotted key is not in ``explicit`` (the values the run gave itself).

    >>> apply_budget(RunConfig(), "paper", explicit={"train.epochs"}).train.optimizer  # contrastive: SGD
    'sgd'
    """
    if budget is not None and budget != config.budget:
        config = apply_overrides(config, {"budget": budget})
    if config.budget != "paper":
        return config
    values = budget_overrides(config.method.name, config.detector.name)
    return apply_overrides(config, {key: value for key, value in values.items() if key not in explicit})


def from_preset(name: str, values: dict[str, Any] | None = None) -> RunConfig:
    """The config of preset ``name`` with the nested ``values`` on top.

    >>> from_preset("brain-mri", {"train": {"seed": 1}}).detector.name
    'dae'
    """
    return RunConfig.model_validate(merge_preset({**(values or {}), "preset": name}))


def save_config(config: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (all defaults spelled out), atomically."""
    atomic_write_text(path, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))


def apply_overrides(config: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """Return a copy with dotted-key overrides applied, e.g. ``{"train.epochs": 3}`` (``None`` sets null).

    Choosing another method or detector (``method.name``, ``detector.name``) than the config's
    preset names drops the params that preset gave the one it replaces (and, for the detector,
    the preset's ``also`` and ``fuse``, which were chosen around it).

    >>> apply_overrides(RunConfig(), {"method.params.temperature": 0.5}).method.params
    {'temperature': 0.5}
    >>> apply_overrides(from_preset("brain-mri"), {"detector.name": "padim"}).detector.params
    {}
    """
    data = config.model_dump(mode="json")
    preset = PRESETS[config.preset].values if config.preset in PRESETS else {}
    for part, keys in (("method", ("params",)), ("detector", ("params", "also", "fuse"))):
        if part not in preset or overrides.get(f"{part}.name") in (None, data[part]["name"]):
            continue
        section = type(getattr(config, part))  # MethodConfig or DetectorConfig
        given, fresh = section.model_validate(preset[part]).model_dump(mode="json"), section().model_dump(mode="json")
        for key in keys:
            if key in preset[part] and data[part][key] == given[key]:
                data[part][key] = fresh[key]
    for dotted, value in overrides.items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            if not isinstance(node, dict) or key not in node:
                hint = _did_you_mean(key, node) if isinstance(node, dict) else ""
                raise ValueError(f"unknown config key {dotted!r}: no section {key!r} there{hint}")
            node = node[key]
        if not isinstance(node, dict):
            raise ValueError(f"unknown config key {dotted!r}: {parents[-1]!r} is a value, not a section")
        node[leaf] = value
    return RunConfig.model_validate(data)


def parse_assignments(items: list[str]) -> dict[str, Any]:
    """``["a.b=1", "c=[x, y]"]`` -> ``{"a.b": 1, "c": ["x", "y"]}`` (values parsed as YAML).

    >>> parse_assignments(["train.epochs=3", "method.params.view=local"])
    {'train.epochs': 3, 'method.params.view': 'local'}
    """
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ValueError(f"--set {item}: the value is not valid YAML: {yaml_problem(exc)}") from None
    return out


# Short names shared by the CLI flags and the Python API's keyword arguments.
SHORTCUTS: dict[str, str] = {
    "data": "data.path",
    "image_size": "data.image_size",
    "channels": "data.channels",
    "method": "method.name",
    "detector": "detector.name",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "lr": "train.lr",
    "seed": "train.seed",
    "device": "train.device",
    "precision": "train.precision",
    "progress": "train.progress",
    "select_by": "train.select_by",
}


def apply_shortcuts(config: RunConfig, **values: Any) -> RunConfig:
    """Apply :data:`SHORTCUTS` keyword overrides (``None`` means "keep the config's value").

    >>> apply_shortcuts(RunConfig(), epochs=3, detector="nnd").train.epochs
    3
    """
    return apply_overrides(config, shortcut_overrides(**values))


def shortcut_overrides(**values: Any) -> dict[str, Any]:
    """:data:`SHORTCUTS` keyword values as dotted-key overrides for :func:`apply_overrides`; ``None``
    means "not given" and is left out.

    >>> shortcut_overrides(epochs=3, seed=None)
    {'train.epochs': 3}
    """
    unknown = sorted(set(values) - set(SHORTCUTS))
    if unknown:
        raise TypeError(f"unknown option(s) {unknown}; known: {sorted(SHORTCUTS)}")
    return {SHORTCUTS[k]: v for k, v in values.items() if v is not None}
