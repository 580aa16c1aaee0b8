"""Label-free comparison of finished runs: choose τ, λ or a method without an abnormal image.

Rafiee's sensitivity score (:mod:`medad.train.selection`) is comparable between runs that held out
the same training normals and validated on the same normals, i.e. runs on the same data with the
same seed, ``data.val_fraction`` and ``train.sensitivity_holdout``. :func:`compare_runs` reads each
run's score at the epoch the run uses and ranks them; :func:`lead_in_standard_errors` says whether
the best run's lead is larger than the score's noise. ``medad compare`` prints both.

>>> rows = [RunScore("a", "dino_neg", "mahalanobis", 10, 0.56, 0.02, None),
...         RunScore("b", "dino_neg", "mahalanobis", 10, 0.50, 0.02, None)]
>>> round(lead_in_standard_errors(rows), 2)
2.12
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from medad.files import read_json

#: config keys that must agree for two runs' sensitivity scores to be comparable
SAME_SPLIT_KEYS = (("data", "val_fraction"), ("data", "max_train"), ("train", "seed"), ("train", "sensitivity_holdout"))


@dataclass(frozen=True)
class RunScore:
    """One run's label-free figures at the epoch whose weights it uses."""

    run: str
    method: str
    detector: str
    epoch: int
    sensitivity_score: float
    standard_error: float | None
    val_loss: float | None


def _model_json(run_dir: Path) -> dict:
    for candidate in (run_dir / "model" / "model.json", run_dir / "model.json"):
        if candidate.is_file():
            return read_json(candidate)
    raise FileNotFoundError(f"{run_dir} is not a medad run (no model/model.json); train one with `medad train`")


def _run_score(run_dir: Path, meta: dict) -> RunScore:
    scored = [h for h in meta.get("history", []) if h.get("sensitivity") is not None]
    if not scored:
        raise ValueError(
            f"{run_dir} has no sensitivity score: it was trained without validation normals, with "
            "train.sensitivity_holdout 0, or without pre-training (method none)"
        )
    used = next((h for h in scored if h.get("selected")), scored[-1])
    return RunScore(
        run=str(run_dir), method=meta["config"]["method"]["name"], detector=meta["primary"], epoch=used["epoch"],
        sensitivity_score=used["sensitivity"], standard_error=used.get("sensitivity_se"), val_loss=used.get("val_loss"),
    )


def compare_runs(run_dirs: Sequence[str | Path]) -> list[RunScore]:
    """The runs' sensitivity scores, highest first; raises ``ValueError`` if the runs used other
    data or another held-out split (their scores would not be comparable)."""
    if len(run_dirs) < 2:
        raise ValueError(f"compare needs at least two runs, got {len(run_dirs)}")
    metas = {Path(d): _model_json(Path(d)) for d in run_dirs}
    (first, ref), *others = metas.items()
    for run_dir, meta in others:
        for section, key in SAME_SPLIT_KEYS:
            a, b = meta["config"][section][key], ref["config"][section][key]
            if a != b:
                raise ValueError(
                    f"{run_dir} has {section}.{key}={a!r} but {first} has {b!r}: other held-out normals, "
                    "so their sensitivity scores are not comparable"
                )
        if meta.get("manifest_sha256") != ref.get("manifest_sha256"):
            raise ValueError(
                f"{run_dir} and {first} used other images or another train/validation split "
                "(their manifests differ): their scores are not comparable"
            )
    rows = [_run_score(run_dir, meta) for run_dir, meta in metas.items()]
    return sorted(rows, key=lambda r: r.sensitivity_score, reverse=True)


def lead_in_standard_errors(rows: Sequence[RunScore]) -> float:
    """How many standard errors of the difference the first row leads the second by (``nan`` when
    a standard error is missing: histories written before medad recorded it)."""
    best, second = rows[0], rows[1]
    if best.standard_error is None or second.standard_error is None:
        return math.nan
    noise = math.hypot(best.standard_error, second.standard_error)
    gap = best.sensitivity_score - second.sensitivity_score
    return math.inf if noise == 0 and gap > 0 else (gap / noise if noise else 0.0)
