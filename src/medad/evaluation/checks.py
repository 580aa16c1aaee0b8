"""Warnings a run's metrics call for, shown at the top of the report and logged at the end of a run.

Three situations a reader of the figures should not miss:

- the test normals are flagged far more often than the threshold was designed for (the
  threshold, set on validation normals, does not transfer: other patients, scanners or
  intensities than the training data);
- the image AUROC is below chance (the score ranks abnormal images as *more* normal: a confound,
  or a lesion type the score's polarity does not see);
- the threshold rests on very few validation normals (its quantile is coarse).

>>> evaluation_warnings({"threshold_quantile": 0.95, "specificity": 0.6, "n_val": 200, "image_auroc": 0.8})[0][:40]
'The threshold flags 40% of the test norm'
"""

from __future__ import annotations

from typing import Any

SPECIFICITY_SLACK = 0.15  # test specificity this far below the design is warned about
MIN_VAL_NORMALS = 20  # fewer validation normals than this is warned about


def evaluation_warnings(metrics: dict[str, Any]) -> list[str]:
    """Plain-text warnings for ``metrics`` (the content of metrics.json; every key optional)."""
    out = []
    design, spec = metrics.get("threshold_quantile"), metrics.get("specificity")
    if design is not None and spec is not None and spec < design - SPECIFICITY_SLACK:
        out.append(
            f"The threshold flags {1 - spec:.0%} of the test normals, though it was set to flag "
            f"{1 - design:.0%} of the validation normals: the test images differ from the training data "
            "(other patients, scanners or intensity scales). Sensitivity and specificity here are not what "
            "the threshold promises; consider validation normals from the test site."
        )
    auroc = metrics.get("image_auroc")
    if auroc is not None and auroc < 0.5:
        out.append(
            f"The image AUROC is {auroc:.3f}, below chance: abnormal test images score as more normal than "
            "normal ones. Look for a confound (e.g. slice position, acquisition) or a lesion the score's "
            "polarity does not see."
        )
    n_val = metrics.get("n_val")
    if metrics.get("threshold") is not None and n_val is not None and n_val < MIN_VAL_NORMALS:
        out.append(
            f"The threshold rests on {n_val} validation normals only; its quantile is coarse. Use more "
            "training normals or a larger data.val_fraction."
        )
    return out
