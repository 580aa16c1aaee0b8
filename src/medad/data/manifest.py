"""The split manifest: which image went into which role, with a content hash.

One row per image: ``id``, ``role`` (see :data:`ROLES`), ``sha256`` of the source file's bytes (for
images from a ``.npz``: of the image's own array bytes; all slices/frames of one file share the
file's hash), ``label`` and ``defect``. Ids are stored relative to the dataset path, so
:meth:`Manifest.digest` - the "dataset manifest hash" written into checkpoints - does not depend on
where the data lives. Files skipped as unreadable are not in the manifest (see
``DatasetSplits.skipped``).

>>> m = Manifest([ManifestRow("train/good/a.png", "train", "ab" * 32, 0, "good")])
>>> len(m.digest())
64
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import astuple, dataclass, field
from pathlib import Path

from medad.data.imageset import NORMAL, ImageSet
from medad.atomic import atomic_write_text

ROLES = ("train", "val", "test-normal", "test-abnormal", "unlabeled", "labelled-val")
FIELDS = ("id", "role", "sha256", "label", "defect")


@dataclass(frozen=True, order=True)
class ManifestRow:
    id: str
    role: str
    sha256: str
    label: int
    defect: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown manifest role {self.role!r}; expected one of {ROLES}")


@dataclass
class Manifest:
    rows: list[ManifestRow] = field(default_factory=list)

    def add(self, images: ImageSet, sha256: Sequence[str], role: str, root: str | Path | None = None) -> None:
        """Append one row per image; ``role="test"`` becomes test-normal/test-abnormal by label.

        Ids under ``root`` are stored relative to it.
        """
        if len(sha256) != len(images):
            raise ValueError(f"{len(sha256)} hashes for {len(images)} images")
        columns = zip(images.ids, sha256, images.labels.tolist(), images.defects, strict=True)
        for image_id, digest, label, defect in columns:
            if root is not None and Path(image_id).is_relative_to(root):
                image_id = Path(image_id).relative_to(root).as_posix()
            row_role = ("test-normal" if label == NORMAL else "test-abnormal") if role == "test" else role
            self.rows.append(ManifestRow(image_id, row_role, digest, int(label), defect))

    def digest(self) -> str:
        """sha256 over the sorted rows: equal for the same images in the same roles."""
        return hashlib.sha256(json.dumps(sorted(astuple(r) for r in self.rows)).encode()).hexdigest()

    def write_csv(self, path: str | Path) -> None:
        """Write the manifest (atomically: :func:`medad.atomic.atomic_write_text`)."""
        text = io.StringIO(newline="")
        writer = csv.writer(text)
        writer.writerow(FIELDS)
        writer.writerows(astuple(r) for r in self.rows)
        atomic_write_text(path, text.getvalue())

    @classmethod
    def read_csv(cls, path: str | Path) -> Manifest:
        with open(path, newline="") as f:
            reader = csv.reader(f)
            if tuple(next(reader, ())) != FIELDS:
                raise ValueError(f"{path} is not a medad manifest (expected the header {','.join(FIELDS)})")
            try:
                rows = [ManifestRow(i, role, h, int(label), defect) for i, role, h, label, defect in reader]
            except ValueError as exc:
                raise ValueError(f"{path}: malformed manifest row ({exc})") from exc
        return cls(rows)
