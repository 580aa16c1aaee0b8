"""The per-image result record shared by metrics, report and CLI.

>>> import numpy as np
>>> rs = ResultSet([ImageResult(id="a.png", score=0.1, label=0), ImageResult(id="b.png", score=2.0, label=1)])
>>> rs.scores().tolist(), rs.labels().tolist()
([0.1, 2.0], [0, 1])
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medad.atomic import atomic_file
from medad.files import unreadable_arrays

_ARRAY_FIELDS = ("anomaly_map", "mask", "image", "projection")


@dataclass
class ImageResult:
    """What medad says about one image.

    score:       the primary detector's score (higher = more anomalous).
    label:       0 normal, 1 abnormal, ``None`` unknown.
    scores:      every fitted detector's score by name (includes the primary one).
    anomaly_map: ``[H, W]`` float map at model resolution when the detector is spatial.
    mask:        ``[H, W]`` uint8 ground-truth lesion mask when known.
    prediction:  1 if ``score`` exceeds the model threshold, else 0 (``None`` without threshold).
    role:        ``test``, ``val`` (validation normals) or ``predict``.
    image:       ``[C, H, W]`` uint8 preprocessed image, kept only for images the report shows.
    projection:  2-D projection of the image's embedding (for the report's scatter plot).
    """

    id: str
    score: float
    label: int | None = None
    defect: str = ""
    scores: dict[str, float] = field(default_factory=dict)
    anomaly_map: np.ndarray | None = None
    mask: np.ndarray | None = None
    prediction: int | None = None
    role: str = "test"
    image: np.ndarray | None = None
    projection: np.ndarray | None = None


class ResultSet(Sequence[ImageResult]):
    """An ordered collection of :class:`ImageResult` with array views for metrics."""

    def __init__(self, results: Sequence[ImageResult]):
        self._results = list(results)

    def __len__(self) -> int:
        return len(self._results)

    def __getitem__(self, i):  # type: ignore[override]
        return self._results[i]

    def __iter__(self) -> Iterator[ImageResult]:
        return iter(self._results)

    def scores(self, name: str | None = None) -> np.ndarray:
        """Primary scores, or those of detector ``name``."""
        if name is None:
            return np.array([r.score for r in self._results], dtype=np.float64)
        return np.array([r.scores[name] for r in self._results], dtype=np.float64)

    def labels(self) -> np.ndarray:
        """Labels with -1 for unknown."""
        return np.array([-1 if r.label is None else r.label for r in self._results], dtype=np.int64)

    def score_names(self) -> list[str]:
        return list(self._results[0].scores) if self._results else []

    def has_labels(self) -> bool:
        """True when both classes are present, so that AUROC is defined."""
        labels = self.labels()
        return bool((labels == 0).any() and (labels == 1).any())

    def with_role(self, role: str) -> ResultSet:
        """The results whose ``role`` is ``role``."""
        return ResultSet([r for r in self._results if r.role == role])

    def save(self, path: str | Path) -> None:
        """Write to a ``.npz`` (no pickled objects; optional arrays stored per image that has them),
        atomically (:mod:`medad.atomic`)."""
        names = self.score_names()
        out: dict[str, np.ndarray] = {
            "ids": np.array([r.id for r in self._results], dtype=str),
            "score": self.scores(),
            "label": self.labels(),
            "defect": np.array([r.defect for r in self._results], dtype=str),
            "role": np.array([r.role for r in self._results], dtype=str),
            "prediction": np.array(
                [-1 if r.prediction is None else r.prediction for r in self._results], dtype=np.int64
            ),
            "score_names": np.array(names, dtype=str),
            "all_scores": np.array([[r.scores[n] for n in names] for r in self._results], dtype=np.float64),
        }
        for name in _ARRAY_FIELDS:
            idx = [i for i, r in enumerate(self._results) if getattr(r, name) is not None]
            if idx:
                out[f"{name}_index"] = np.array(idx, dtype=np.int64)
                out[name] = np.stack([getattr(self._results[i], name) for i in idx])
        with atomic_file(path) as fh:
            np.savez_compressed(fh, **out)

    @classmethod
    def load(cls, path: str | Path) -> ResultSet:
        """Read a file written by :meth:`save`; one line naming it if it is not one."""
        try:
            with np.load(path, allow_pickle=False) as npz:
                z = {key: npz[key] for key in npz.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{path} is not a predictions file medad can read ({unreadable_arrays(exc)})") from None
        missing = sorted({"ids", "score", "label", "defect", "role", "prediction", "score_names", "all_scores"}
                         - set(z))
        if missing:
            raise ValueError(f"{path} is not a medad predictions file (no {', '.join(missing)})")
        names = [str(n) for n in z["score_names"]]
        results = [
            ImageResult(
                id=str(z["ids"][i]),
                score=float(z["score"][i]),
                label=None if z["label"][i] < 0 else int(z["label"][i]),
                defect=str(z["defect"][i]),
                scores={n: float(z["all_scores"][i, k]) for k, n in enumerate(names)},
                prediction=None if z["prediction"][i] < 0 else int(z["prediction"][i]),
                role=str(z["role"][i]),
            )
            for i in range(len(z["ids"]))
        ]
        for name in _ARRAY_FIELDS:
            if f"{name}_index" in z:
                for row, i in enumerate(z[f"{name}_index"]):
                    setattr(results[int(i)], name, z[name][row])
        return cls(results)
