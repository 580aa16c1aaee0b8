"""The report's figures, each returned as PNG bytes.

Figures are drawn on :class:`matplotlib.figure.Figure` objects with the Agg canvas, never through
``pyplot``: no GUI backend is touched and the global backend of a caller (e.g. a notebook) is left
alone.

>>> import numpy as np
>>> from medad.evaluation.records import ImageResult, ResultSet
>>> rs = ResultSet([ImageResult(id=f"{i}.png", score=float(i), label=int(i > 2)) for i in range(6)])
>>> roc_png(rs, primary="demo")[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
True
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image as PILImage
from sklearn.metrics import auc, roc_curve

from medad.evaluation.records import ImageResult, ResultSet

DPI = 110
NORMAL, ABNORMAL, VALIDATION, UNLABELLED = "#1f77b4", "#d62728", "#2ca02c", "#7f7f7f"
OVERLAY_CMAP, OVERLAY_ALPHA, MASK_COLOUR = "jet", 0.45, "magenta"  # magenta is not in jet
HEATMAP_MIN_HEIGHT = 256  # px of a predicted heatmap with its colour bar


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure, **savefig_kwargs) -> bytes:
    """Encode ``fig`` as PNG without the matplotlib URL in the metadata."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None}, **savefig_kwargs)
    return buf.getvalue()


def _groups(results: ResultSet) -> list[tuple[str, str, list[ImageResult]]]:
    """(legend name, colour, results) of test normals, test abnormals, unlabelled, val normals."""
    groups = [
        ("normal", NORMAL, [r for r in results if r.role != "val" and r.label == 0]),
        ("abnormal", ABNORMAL, [r for r in results if r.role != "val" and r.label == 1]),
        ("unlabelled", UNLABELLED, [r for r in results if r.role != "val" and r.label is None]),
        ("validation normal", VALIDATION, [r for r in results if r.role == "val"]),
    ]
    return [g for g in groups if g[2]]


def roc_png(results: ResultSet, primary: str = "score") -> bytes:
    """ROC of the labelled test results: the primary score bold, the other scores thin.

    ``primary`` names the primary score in the legend; an entry of that name in
    ``ImageResult.scores`` is not drawn twice.

    >>> from medad.evaluation.records import ImageResult, ResultSet
    >>> rs = ResultSet([ImageResult(id="a", score=0.0, label=0), ImageResult(id="b", score=1.0, label=1)])
    >>> len(roc_png(rs)) > 1000
    True
    """
    test = results.with_role("test")
    labels = test.labels()
    curves = [(primary, test.scores(), 2.2)]
    curves += [(n, test.scores(n), 1.0) for n in test.score_names() if n != primary]
    fig = _figure(5.0, 4.6)
    ax = fig.add_subplot()
    for name, scores, width in curves:
        fpr, tpr, _ = roc_curve(labels, scores)
        ax.plot(fpr, tpr, lw=width, label=f"{name} (AUROC {auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey", label="chance")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate")
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _png(fig)


def histogram_png(results: ResultSet, threshold: float | None = None, threshold_rule: str = "") -> bytes:
    """Primary-score histograms (density) of test normals, abnormals and validation normals.

    >>> from medad.evaluation.records import ImageResult, ResultSet
    >>> rs = ResultSet([ImageResult(id=str(i), score=float(i), label=i % 2) for i in range(10)])
    >>> len(histogram_png(rs, threshold=4.5, threshold_rule="q0.95")) > 1000
    True
    """
    scores = results.scores()
    bins = np.histogram_bin_edges(scores, bins=int(np.clip(2 * np.sqrt(len(scores)), 10, 50)))
    fig = _figure(8.4, 3.6)
    ax = fig.add_subplot()
    for name, colour, group in _groups(results):
        scores = [r.score for r in group]
        if name == "validation normal":
            ax.hist(scores, bins=bins, density=True, histtype="step", lw=1.8, color=colour, label=name)
        else:
            ax.hist(scores, bins=bins, density=True, alpha=0.5, color=colour, label=name)
    if threshold is not None:
        rule = f" ({threshold_rule})" if threshold_rule else ""
        ax.axvline(threshold, color="black", ls="--", lw=1.2, label=f"threshold {threshold:.4g}{rule}")
    ax.set(xlabel="anomaly score", ylabel="density")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return _png(fig)


def map_range(results: Sequence[ImageResult]) -> tuple[float, float]:
    """Common colour range (1st and 99th percentile) of all anomaly maps, so tiles compare.

    >>> import numpy as np
    >>> from medad.evaluation.records import ImageResult
    >>> map_range([ImageResult(id="a", score=0.0, anomaly_map=np.linspace(0, 1, 101).reshape(1, 101))])
    (0.01, 0.99)
    """
    maps = [r.anomaly_map.ravel() for r in results if r.anomaly_map is not None]
    if not maps:
        return 0.0, 1.0
    lo, hi = np.percentile(np.concatenate(maps), [1, 99])
    return float(lo), float(max(hi, lo + 1e-12))


def _show_image(ax: Axes, image_chw: np.ndarray) -> tuple[int, int]:
    """Draw a ``[C, H, W]`` uint8 image (RGB if C == 3, else its first channel in grey)."""
    height, width = image_chw.shape[1:]
    extent = (0, width, height, 0)
    if image_chw.shape[0] == 3:
        ax.imshow(image_chw.transpose(1, 2, 0), extent=extent)
    else:
        ax.imshow(image_chw[0], cmap="gray", vmin=0, vmax=255, extent=extent)
    ax.set_axis_off()
    return height, width


def _draw_mask(ax: Axes, mask: np.ndarray, height: int, width: int) -> None:
    """Outline a binary mask, stretched onto an image of ``height`` x ``width``."""
    if not mask.any():
        return
    ys = (np.arange(mask.shape[0]) + 0.5) * height / mask.shape[0]
    xs = (np.arange(mask.shape[1]) + 0.5) * width / mask.shape[1]
    ax.contour(xs, ys, (mask > 0).astype(float), levels=[0.5], colors=MASK_COLOUR, linewidths=1.2)


def draw_overlay(
    ax: Axes,
    image_chw: np.ndarray,
    anomaly_map: np.ndarray | None,
    vmin: float,
    vmax: float,
    mask: np.ndarray | None = None,
) -> None:
    """Draw the image, the anomaly map on top (common ``vmin``/``vmax``) and the mask outline.

    Map and mask may have another resolution than the image; they are stretched onto it.
    """
    height, width = _show_image(ax, image_chw)
    if anomaly_map is not None:
        norm = Normalize(vmin=vmin, vmax=vmax, clip=True)
        extent = (0, width, height, 0)
        ax.imshow(anomaly_map, cmap=OVERLAY_CMAP, norm=norm, alpha=OVERLAY_ALPHA, extent=extent)
    if mask is not None:
        _draw_mask(ax, mask, height, width)
    ax.set(xlim=(0, width), ylim=(height, 0))


def tile_png(result: ImageResult, vmin: float, vmax: float) -> bytes:
    """One gallery tile: the image, and the map overlay with the mask outline when a map exists.

    The caption (:func:`medad.report.html.tile_caption`) is HTML text under the tile, which stays
    readable when the browser scales the tile down.

    >>> import numpy as np
    >>> r = ImageResult(id="a.png", score=1.0, label=1, image=np.zeros((1, 32, 32), np.uint8),
    ...                 anomaly_map=np.random.rand(32, 32), mask=np.eye(32, dtype=np.uint8))
    >>> len(tile_png(r, 0.0, 1.0)) > 1000
    True
    """
    if result.image is None:
        raise ValueError(f"{result.id}: no image kept for this result")
    panels = 2 if result.anomaly_map is not None else 1
    fig = _figure(2.1 * panels, 2.1)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    if panels == 2:
        _show_image(axes[0], result.image)
    draw_overlay(axes[-1], result.image, result.anomaly_map, vmin, vmax, result.mask)
    fig.subplots_adjust(left=0.02, right=0.98, top=0.98, bottom=0.02, wspace=0.04)
    return _png(fig)


def tiles_png(results: Sequence[ImageResult], vmin: float, vmax: float) -> list[bytes]:
    """:func:`tile_png` of each result, all on the same colour scale."""
    return [tile_png(r, vmin, vmax) for r in results]


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """An image tensor in [0, 1] as the uint8 array the figures draw.

    >>> to_uint8(torch.tensor([0.0, 0.5, 1.0])).tolist()
    [0, 128, 255]
    """
    return (image.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def save_heatmap_png(
    image_chw_uint8: np.ndarray, anomaly_map: np.ndarray, path: str | Path, vmin: float, vmax: float
) -> Path:
    """Write the gallery overlay of one image, without axes, at the image's own pixel size.

    >>> import numpy as np, tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "a.png"
    >>> save_heatmap_png(np.zeros((3, 40, 60), np.uint8), np.random.rand(10, 15), out, 0.0, 1.0).exists()
    True
    """
    height, width = image_chw_uint8.shape[1:]
    fig = _figure(width / DPI, height / DPI)
    draw_overlay(fig.add_axes((0, 0, 1, 1)), image_chw_uint8, anomaly_map, vmin, vmax)
    path = Path(path)
    path.write_bytes(_png(fig, dpi=DPI))
    return path


class HeatmapWriter:
    """Heatmap PNGs with a colour bar for many images on one fixed scale (``medad predict``).

    The overlay is the gallery's (``OVERLAY_CMAP`` at ``OVERLAY_ALPHA`` over the image, the map
    stretched onto it) but blended with numpy and written by PIL, at least ``HEATMAP_MIN_HEIGHT``
    px tall; the colour bar is drawn once by matplotlib per height and reused — about 10x faster
    than a matplotlib figure per image.

    >>> import numpy as np, tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "a.png"
    >>> HeatmapWriter(0.0, 1.0).save(np.zeros((1, 32, 32), np.uint8), np.random.rand(8, 8), out).exists()
    True
    """

    def __init__(self, vmin: float, vmax: float):
        self.vmin, self.vmax = float(vmin), float(max(vmax, vmin + 1e-12))
        self._cmap = colormaps[OVERLAY_CMAP]
        self._bars: dict[int, np.ndarray] = {}

    def bar(self, height: int) -> np.ndarray:
        """The colour bar with its labels, ``[height, w, 3]`` uint8."""
        if height not in self._bars:
            fig = _figure(0.45 * height / DPI, height / DPI)
            cax = fig.add_axes((0.1, 0.05, 0.2, 0.9))
            mappable = ScalarMappable(norm=Normalize(vmin=self.vmin, vmax=self.vmax), cmap=OVERLAY_CMAP)
            fig.colorbar(mappable, cax=cax).ax.tick_params(labelsize=6)
            rgb = np.asarray(PILImage.open(io.BytesIO(_png(fig, dpi=DPI))).convert("RGB"))
            self._bars[height] = rgb[:height]
        return self._bars[height]

    def colours(self, anomaly_map: np.ndarray, height: int, width: int) -> np.ndarray:
        """The map stretched onto ``height`` x ``width`` (nearest neighbour) in the overlay's
        colours on this scale: float ``[height, width, 3]`` in [0, 255]."""
        stretched = np.asarray(PILImage.fromarray(np.asarray(anomaly_map, np.float32)).resize((width, height),
                                                                                               PILImage.NEAREST))
        return self._cmap(np.clip((stretched - self.vmin) / (self.vmax - self.vmin), 0, 1))[..., :3] * 255

    def rgba(self, anomaly_map: np.ndarray, height: int, width: int) -> np.ndarray:
        """The overlay alone, uint8 ``[height, width, 4]``: the colours of :meth:`colours` with
        ``OVERLAY_ALPHA`` as alpha, so that drawn over the image it gives :meth:`overlay`'s picture
        (``medad serve``'s heatmap.png).

        >>> HeatmapWriter(0.0, 1.0).rgba(np.zeros((4, 4)), 8, 8)[0, 0].tolist()  # jet's dark blue
        [0, 0, 128, 115]
        """
        alpha = np.full((height, width, 1), round(OVERLAY_ALPHA * 255), np.uint8)
        return np.concatenate([self.colours(anomaly_map, height, width).round().astype(np.uint8), alpha], axis=2)

    def overlay(self, image_chw_uint8: np.ndarray, anomaly_map: np.ndarray) -> np.ndarray:
        """The image with the map blended over it (stretched onto it, nearest neighbour), at the
        image's own size, without colour bar: RGB ``[H, W, 3]`` uint8 (``medad predict --dicom-out``'s
        Secondary Capture).

        >>> HeatmapWriter(0.0, 1.0).overlay(np.zeros((1, 4, 6), np.uint8), np.ones((2, 2))).shape
        (4, 6, 3)
        """
        rgb = image_chw_uint8.transpose(1, 2, 0) if image_chw_uint8.shape[0] == 3 else \
            np.repeat(image_chw_uint8[0][..., None], 3, axis=2)
        h, w = rgb.shape[:2]
        blended = (1 - OVERLAY_ALPHA) * rgb.astype(np.float32) + OVERLAY_ALPHA * self.colours(anomaly_map, h, w)
        return blended.round().astype(np.uint8)

    def save(self, image_chw_uint8: np.ndarray, anomaly_map: np.ndarray, path: str | Path) -> Path:
        height = image_chw_uint8.shape[1]
        scale = max(1, -(-HEATMAP_MIN_HEIGHT // height))  # integer zoom to at least the minimum height
        zoomed = np.kron(image_chw_uint8, np.ones((1, scale, scale), np.uint8))
        canvas = np.concatenate([self.overlay(zoomed, anomaly_map), self.bar(height * scale)], axis=1)
        path = Path(path)
        PILImage.fromarray(canvas).save(path, compress_level=1)
        return path


def projection_png(results: ResultSet) -> bytes:
    """2-D scatter of the results' ``projection`` coloured by label; validation normals hollow.

    >>> import numpy as np
    >>> from medad.evaluation.records import ImageResult, ResultSet
    >>> rs = ResultSet([ImageResult(id=str(i), score=0.0, label=i % 2, projection=np.random.rand(2))
    ...                 for i in range(8)])
    >>> len(projection_png(rs)) > 1000
    True
    """
    fig = _figure(7.0, 4.6)
    ax = fig.add_subplot()
    for name, colour, group in _groups(results):
        points = np.array([r.projection for r in group if r.projection is not None]).reshape(-1, 2)
        if not len(points):
            continue
        if name == "validation normal":
            ax.scatter(*points.T, s=22, facecolors="none", edgecolors=colour, lw=1.0, label=name, zorder=1)
        else:
            ax.scatter(*points.T, s=14, color=colour, alpha=0.7, lw=0, label=name, zorder=2)
    ax.set(xticks=[], yticks=[], xlabel="projection 1", ylabel="projection 2")
    ax.legend(fontsize=8, markerscale=1.3, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return _png(fig)


def loss_png(history: Sequence[dict]) -> bytes:
    """Training and validation loss per epoch, and on a second axis the sensitivity score at the
    checkpoints where it was computed, with the selected checkpoint marked.

    >>> len(loss_png([{"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 1.5, "val_loss": 1.7}])) > 1000
    True
    """
    fig = _figure(6.0, 3.4)
    ax = fig.add_subplot()
    for key, label in (("loss", "training loss"), ("val_loss", "validation loss")):
        points = [(h["epoch"], h[key]) for h in history if h.get(key) is not None]
        if points:
            ax.plot(*zip(*points), marker="o", ms=3, label=label)
    ax.set(xlabel="epoch", ylabel="loss")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, labels = ax.get_legend_handles_labels()
    sensitivity = [(h["epoch"], h["sensitivity"]) for h in history if h.get("sensitivity") is not None]
    if sensitivity:
        ax2 = ax.twinx()
        ax2.plot(*zip(*sensitivity), color="tab:green", marker="s", ms=3, lw=1, label="sensitivity score")
        ax2.set_ylabel("sensitivity (AUROC)")
        handles2, labels2 = ax2.get_legend_handles_labels()
        handles, labels = handles + handles2, labels + labels2
    for h in history:
        if h.get("selected"):
            line = ax.axvline(h["epoch"], color="0.3", ls="--", lw=1, label=f"selected: epoch {h['epoch']}")
            handles, labels = handles + [line], labels + [line.get_label()]
    ax.legend(handles, labels, fontsize=8)
    fig.tight_layout()
    return _png(fig)
