"""DICOM outputs for a DICOM source image: a Segmentation (SEG) of the lesion mask and a
Secondary Capture (SC) of the heatmap overlay, both filed in the source's study.

Both are built by highdicom (imported here only, when they are written) from the source's
header, which gives them its patient and study (same StudyInstanceUID); each goes into a new
series (generated UIDs unless the caller passes the series, e.g. one per source series for a
whole ``medad predict`` run) and references the source instance:

* SEG: BINARY, one segment "anomaly" (category SCT 49755003 "Morphologically Abnormal
  Structure", type SCT 52988006 "Lesion"), AUTOMATIC, with an AlgorithmIdentificationSequence
  naming medad and its version (family DCM 123110 "Artificial Intelligence"); its source is in
  ReferencedSeriesSequence and in the frame's SourceImageSequence. A source with a frame of
  reference and a plane position (CT, MR) gets the source's plane position and orientation; a
  2-D projection image (CR, DX, MG, US, an SC) without them gets a segmentation without a frame of
  reference, aligned pixel for pixel with the source, as highdicom builds it for one frame.
* SC: the overlay as 8-bit RGB, with the source in SourceImageSequence, its PixelSpacing
  (when it has one) and its PatientOrientation (taken from ImageOrientationPatient when only that
  is given; left empty, as the standard allows, when neither is).

The mask and overlay must have the source's Rows x Columns (not the model's working size:
:func:`medad.data.writers.resize_map` brings a map back). Multi-frame sources, sources without
their SOP Class, SOP Instance, Study or Series Instance UID, and any source highdicom refuses
(e.g. an MR image without the frame of reference its IOD requires) raise
:class:`DicomOutputError`, one line naming the file; the two files are written together with
:func:`medad.atomic.atomic_files`, both or neither.

>>> import tempfile, numpy as np, pydicom
>>> from pydicom.uid import ComputedRadiographyImageStorage, generate_uid
>>> ds = pydicom.Dataset()
>>> ds.SOPClassUID, ds.SOPInstanceUID = ComputedRadiographyImageStorage, generate_uid()
>>> ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality, ds.PatientID = generate_uid(), generate_uid(), "CR", "P1"
>>> ds.set_pixel_data(np.zeros((12, 10), np.uint16), "MONOCHROME2", 16)
>>> mask = np.zeros((12, 10), bool); mask[2:5, 3:7] = True
>>> out = write_dicom_outputs(ds, mask, np.zeros((12, 10, 3), np.uint8), Path(tempfile.mkdtemp()), "chest")
>>> seg = pydicom.dcmread(out.seg_path)
>>> seg.Modality, seg.StudyInstanceUID == ds.StudyInstanceUID, bool((seg.pixel_array == mask).all())
('SEG', True, True)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from medad import __version__
from medad.atomic import atomic_files
from medad.files import one_line

if TYPE_CHECKING:
    import highdicom as hd

SEG_SUFFIX, SC_SUFFIX = ".seg.dcm", ".sc.dcm"
"""File endings of the two outputs: ``<stem>.seg.dcm`` and ``<stem>.sc.dcm``."""
SERIES_NUMBER = 900
"""Series Number of the SEG series; the SC series gets the next one."""
MANUFACTURER = "medad"
REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
PATIENT_AND_STUDY_TYPE2 = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber",
                           "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName")
"""Type 2 attributes (present, possibly empty) highdicom copies from the source; a source
lacking one gets it empty in the outputs."""


class DicomOutputError(ValueError):
    """A source image that cannot get DICOM outputs; the message names the file and why."""

    def __init__(self, source: str | Path, problem: str):
        self.source, self.problem = str(source), problem
        super().__init__(f"no DICOM outputs for {source}: {problem}")

    def __reduce__(self):  # keeps the two-argument constructor picklable
        return type(self), (self.source, self.problem)


@dataclass(frozen=True)
class DicomOutputs:
    """The two files written for one source image."""

    seg_path: Path
    sc_path: Path


@dataclass(frozen=True)
class OutputSeries:
    """The series a SEG and an SC go into (one pair per source series keeps a run's outputs
    of one series together in a viewer)."""

    seg_uid: str
    sc_uid: str

    @classmethod
    def new(cls) -> OutputSeries:
        """Two freshly generated Series Instance UIDs."""
        return cls(generate_uid(), generate_uid())


def read_source(path: str | Path) -> pydicom.Dataset:
    """The header of the DICOM file ``path`` (no pixel data), checked as :func:`check_source`
    does; a file that is not readable DICOM raises :class:`DicomOutputError`."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception as exc:  # pydicom raises many kinds on a damaged file; each is one line naming it
        raise DicomOutputError(path, f"not a readable DICOM file ({one_line(exc)})") from None
    check_source(ds, path)
    return ds


def check_source(ds: pydicom.Dataset, name: str | Path) -> None:
    """Raise :class:`DicomOutputError` (naming ``name``) unless ``ds`` has the identifiers the
    outputs reference and holds one frame."""
    missing = [key for key in REQUIRED_UIDS if not str(ds.get(key, "") or "").strip()]
    if missing:
        raise DicomOutputError(name, f"it has no {', '.join(missing)}, which the outputs must reference")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise DicomOutputError(name, f"it holds {frames} frames (multi-frame sources are not supported)")
    if "Rows" not in ds or "Columns" not in ds:
        raise DicomOutputError(name, "it has no Rows / Columns (no image)")


def write_dicom_outputs(
    source: pydicom.Dataset | str | Path,
    mask: np.ndarray,
    overlay_rgb: np.ndarray,
    out_dir: str | Path,
    stem: str,
    *,
    algorithm_version: str = __version__,
    series: OutputSeries | None = None,
    series_number: int = SERIES_NUMBER,
) -> DicomOutputs:
    """Write ``out_dir/<stem>.seg.dcm`` (the boolean ``mask``, source Rows x Columns) and
    ``out_dir/<stem>.sc.dcm`` (``overlay_rgb``, uint8 Rows x Columns x 3) for the DICOM image
    ``source`` (a dataset, its header is enough, or a file), both or neither; see the module
    docstring. ``algorithm_version`` goes into the AlgorithmIdentificationSequence and
    SoftwareVersions (default: this medad's version); ``series``: the series to file them in (new
    ones when None); ``series_number``: the SEG's (the SC's is the next). Raises
    :class:`DicomOutputError` for a source that cannot be referenced or arrays of the wrong shape,
    :class:`medad.atomic.WriteError` when the disk refuses the files."""
    if isinstance(source, pydicom.Dataset):
        ds, name = source, getattr(source, "filename", None) or "the source image"
        check_source(ds, name)
    else:
        ds, name = read_source(source), source
    shape = (int(ds.Rows), int(ds.Columns))
    mask, overlay_rgb = np.asarray(mask), np.asarray(overlay_rgb)
    if mask.shape != shape or mask.dtype != bool:
        raise DicomOutputError(name, f"the mask must be a boolean {shape[0]}x{shape[1]} array (the source's Rows x "
                                     f"Columns), got {mask.dtype} {mask.shape}")
    if overlay_rgb.shape != (*shape, 3) or overlay_rgb.dtype != np.uint8:
        raise DicomOutputError(name, f"the overlay must be a uint8 {shape[0]}x{shape[1]}x3 RGB array, got "
                                     f"{overlay_rgb.dtype} {overlay_rgb.shape}")
    ds = _with_type2(ds)
    series = series or OutputSeries.new()
    try:
        instance = int(ds.get("InstanceNumber", 1) or 1)
        seg = _segmentation(ds, mask, series.seg_uid, series_number, instance, algorithm_version)
        sc = _secondary_capture(ds, overlay_rgb, series.sc_uid, series_number + 1, instance, algorithm_version)
    except Exception as exc:  # highdicom's refusal (ValueError, TypeError, AttributeError...), in one line
        raise DicomOutputError(name, f"highdicom cannot derive a SEG / SC from it ({one_line(exc)})") from None
    out = Path(out_dir)
    outputs = DicomOutputs(out / f"{stem}{SEG_SUFFIX}", out / f"{stem}{SC_SUFFIX}")
    with atomic_files() as files:
        for path, dataset in ((outputs.seg_path, seg), (outputs.sc_path, sc)):
            files.write(path, lambda fh, d=dataset: pydicom.dcmwrite(fh, d, enforce_file_format=True))
    return outputs


def _with_type2(ds: pydicom.Dataset) -> pydicom.Dataset:
    """``ds``, or a shallow copy with the missing :data:`PATIENT_AND_STUDY_TYPE2` attributes empty."""
    missing = [key for key in PATIENT_AND_STUDY_TYPE2 if key not in ds]
    if not missing:
        return ds
    filled = pydicom.Dataset(ds)  # a new dataset holding the same elements: the caller's is not changed
    filled.file_meta = getattr(ds, "file_meta", pydicom.dataset.FileMetaDataset())
    for key in missing:
        setattr(filled, key, None)
    return filled


def _algorithm(version: str) -> hd.AlgorithmIdentificationSequence:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    return hd.AlgorithmIdentificationSequence(name="medad", family=codes.DCM.ArtificialIntelligence, version=version)


def _segmentation(ds: pydicom.Dataset, mask: np.ndarray, series_uid: str, series_number: int, instance: int,
                  version: str) -> hd.seg.Segmentation:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="anomaly",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=_algorithm(version),
    )
    return hd.seg.Segmentation(
        source_images=[ds],
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=instance,
        manufacturer=MANUFACTURER,
        manufacturer_model_name="medad anomaly detection",
        software_versions=version,
        device_serial_number="none",
        series_description="medad anomaly mask",
        omit_empty_frames=False,  # an image without anomaly gets its (empty) frame, not a SEG without frames
    )


def _secondary_capture(ds: pydicom.Dataset, overlay: np.ndarray, series_uid: str, series_number: int, instance: int,
                       version: str) -> hd.sc.SCImage:
    import highdicom as hd

    orientation = _patient_orientation(ds)
    spacing = ds.get("PixelSpacing")
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=ds,
        pixel_array=overlay,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=instance,
        manufacturer=MANUFACTURER,
        pixel_spacing=tuple(float(v) for v in spacing) if spacing else None,
        patient_orientation=("L", "F"),  # highdicom takes single letters only: replaced just below
        series_description="medad anomaly heatmap",
        software_versions=version,
    )
    sc.PatientOrientation = orientation  # the source's (oblique "FL" too); Type 2: empty when unknown
    reference = pydicom.Dataset()
    reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    sc.SourceImageSequence = [reference]
    sc.DerivationDescription = f"medad {version} anomaly heatmap over the source image"
    return sc


def _patient_orientation(ds: pydicom.Dataset) -> list[str] | None:
    """The source's PatientOrientation, else the closest one to its ImageOrientationPatient, else None.

    >>> ds = pydicom.Dataset(); ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    >>> _patient_orientation(ds)
    ['P', 'F']
    """
    given = ds.get("PatientOrientation")
    if isinstance(given, pydicom.multival.MultiValue) and len(given) == 2:
        return [str(v) for v in given]
    cosines = ds.get("ImageOrientationPatient")
    if cosines is None or len(cosines) != 6:
        return None
    from highdicom.spatial import get_closest_patient_orientation

    row, col = np.asarray(cosines[:3], float), np.asarray(cosines[3:], float)
    try:
        closest = get_closest_patient_orientation(np.column_stack([row, col, np.cross(row, col)]))
    except ValueError:  # not orthogonal: no orientation to name
        return None
    return [closest[0].value, closest[1].value]
