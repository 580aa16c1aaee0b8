"""``medad predict --dicom-out`` (issue 30): a DICOM Segmentation of the lesion mask and a Secondary
Capture of the heatmap overlay per DICOM input, in the source's study and geometry, read back by
pydicom and highdicom; sources that cannot be referenced are named, never half-written."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    MRImageStorage,
    SegmentationStorage,
    generate_uid,
)
from typer.testing import CliRunner

from medad import AnomalyDetector, __version__
from medad.atomic import leftovers
from medad.cli import app
from medad.config import RunConfig
from medad.data.dicom_outputs import DicomOutputError, write_dicom_outputs
from medad.data.readers import read_images
from medad.data.synthetic import dicom_dataset, make_phantoms
from medad.data.writers import resize_map
from medad.prediction import predict_run
from medad.report.figures import HeatmapWriter, to_uint8

SIZE = 32  # the model's working size


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """The intensity baseline (spatial, nothing learned: fitted in a second), bright lesions, saved;
    its pixel threshold comes from the validation phantoms."""
    cfg = RunConfig.model_validate({
        "data": {"image_size": SIZE, "val_fraction": 0.25}, "encoder": {"width": 4},
        "method": {"name": "none"}, "detector": {"name": "intensity", "also": [], "params": {"polarity": "bright"}},
        "train": {"epochs": 0, "progress": False},
    })
    folder = tmp_path_factory.mktemp("model")
    AnomalyDetector(cfg).fit(make_phantoms(16, SIZE, seed=0)[0]).save(folder)
    return folder


def pixels(rows: int, cols: int, seed: int) -> np.ndarray:
    """16-bit: a noisy disc on a black background with a bright square inside it, which the
    intensity map marks (the mask is neither empty nor full)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:rows, :cols]
    disc = ((y - rows / 2) / rows) ** 2 + ((x - cols / 2) / cols) ** 2 < 0.16
    image = np.where(disc, 20000 + rng.random((rows, cols)) * 4000, 0)
    image[rows // 3: rows // 2, cols // 3: cols // 2] = 50000
    return image.astype(np.uint16)


def write_source(path: Path, sop_class: str, image: np.ndarray, **attributes) -> pydicom.FileDataset:
    """A DICOM file of ``image`` (``attributes`` added; None deletes one); the file as read back."""
    ds = dicom_dataset(image, 16, sop_class, **{"PatientID": "P042", "PatientName": "Doe^Jane",
                                                "StudyInstanceUID": generate_uid(),
                                                "SeriesInstanceUID": generate_uid(), **attributes})
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


def mr(path: Path, rows: int = SIZE, cols: int = SIZE, seed: int = 0, **attributes) -> pydicom.FileDataset:
    """An MR slice with its full geometry (frame of reference, position, orientation, spacing)."""
    geometry = {"Modality": "MR", "FrameOfReferenceUID": generate_uid(), "ImagePositionPatient": [-80.0, -90.0, 12.5],
                "ImageOrientationPatient": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0], "PixelSpacing": [0.8, 0.8],
                "SliceThickness": 3.0, "PatientBirthDate": "19700101", "PatientSex": "F", "StudyDate": "20240501",
                "StudyTime": "101500", "AccessionNumber": "A1", "StudyID": "1", "ReferringPhysicianName": ""}
    return write_source(path, MRImageStorage, pixels(rows, cols, seed), **{**geometry, **attributes})


def cr(path: Path, rows: int = 48, cols: int = 40, seed: int = 1, **attributes) -> pydicom.FileDataset:
    """A CR projection image, 16-bit, not the model's size: no frame of reference, no position,
    no orientation, and none of the patient / study Type 2 attributes but the ID and name."""
    return write_source(path, ComputedRadiographyImageStorage, pixels(rows, cols, seed), Modality="CR",
                        **attributes)


def seg_mask(path: Path) -> np.ndarray:
    """The segment's mask of a single-frame SEG, ``[rows, cols]`` bool, as highdicom reads it."""
    seg = hd.seg.segread(path)
    (source_uids,) = seg.get_source_image_uids()
    frames = seg.get_pixels_by_source_instance([source_uids[2]], segment_numbers=[1])
    return frames[0, :, :, 0].astype(bool)


def check_references(output: pydicom.Dataset, source: pydicom.Dataset) -> None:
    assert output.StudyInstanceUID == source.StudyInstanceUID and output.PatientID == source.PatientID
    assert output.PatientName == source.PatientName
    assert output.SeriesInstanceUID != source.SeriesInstanceUID and output.SOPInstanceUID != source.SOPInstanceUID


def test_predict_dicom_out_writes_a_seg_and_an_sc_per_dicom_input(model, tmp_path):
    """MR at the model's size (its SEG is the masks/ PNG predict wrote, its SC the heatmap's pixels)
    and a 48x40 CR (its SEG at the CR's size: the map resized back, as for a NIfTI input)."""
    sources = {"mr": mr(tmp_path / "in" / "study" / "mr" / "im0.dcm"),
               "cr": cr(tmp_path / "in" / "study" / "cr" / "chest.dcm")}
    out = tmp_path / "pred"
    predict_run(model, [tmp_path / "in"], out, save_maps=True, dicom_out=True, progress=False)
    detector = AnomalyDetector.load(model)
    painter = HeatmapWriter(*detector.map_range_)
    written = sorted(p.relative_to(out).as_posix() for p in (out / "dicom").rglob("*") if p.is_file())
    assert written == ["dicom/in/study/cr/chest.sc.dcm", "dicom/in/study/cr/chest.seg.dcm",
                       "dicom/in/study/mr/im0.sc.dcm", "dicom/in/study/mr/im0.seg.dcm"]
    for kind, stem in (("mr", "im0"), ("cr", "chest")):
        source, folder = sources[kind], out / "dicom" / "in" / "study" / kind
        seg = pydicom.dcmread(folder / f"{stem}.seg.dcm")
        sc = pydicom.dcmread(folder / f"{stem}.sc.dcm")
        assert seg.SOPClassUID == SegmentationStorage and seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
        for output in (seg, sc):
            check_references(output, source)
        assert seg.SeriesInstanceUID != sc.SeriesInstanceUID
        (series_ref,) = seg.ReferencedSeriesSequence
        assert series_ref.SeriesInstanceUID == source.SeriesInstanceUID
        assert series_ref.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        frame_ref = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
        assert frame_ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        (segment,) = seg.SegmentSequence
        assert segment.SegmentAlgorithmType == "AUTOMATIC" and segment.SegmentedPropertyTypeCodeSequence[0] \
            .CodeValue == "52988006"
        algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == "medad" and algorithm.AlgorithmVersion == __version__

        rows, cols = source.Rows, source.Columns
        flat = np.load(out / "maps" / "in" / "study" / kind / f"{stem}.npy")
        expected = resize_map(flat, rows, cols) > detector.pixel_threshold_
        assert expected.shape == (rows, cols) and 0 < expected.sum() < expected.size  # a real, partial mask
        assert np.array_equal(seg.pixel_array.astype(bool), expected)
        assert np.array_equal(seg_mask(folder / f"{stem}.seg.dcm"), expected)
        (_, image), = read_images(source.filename, channels=1)
        assert sc.Rows == rows and sc.Columns == cols and sc.PhotometricInterpretation == "RGB"
        overlay = painter.overlay(to_uint8(torch.from_numpy(image)), resize_map(flat, rows, cols))
        np.testing.assert_array_equal(sc.pixel_array, overlay)
    # at the model's size, the SEG is exactly the mask predict wrote and the SC the heatmap's pixels
    mr_dir = out / "dicom" / "in" / "study" / "mr"
    png_mask = np.asarray(Image.open(out / "masks" / "in" / "study" / "mr" / "im0.png")) > 0
    assert np.array_equal(seg_mask(mr_dir / "im0.seg.dcm"), png_mask)
    heatmap = np.asarray(Image.open(out / "heatmaps" / "in" / "study" / "mr" / "im0.png").convert("RGB"))
    zoom = heatmap.shape[0] // SIZE
    np.testing.assert_array_equal(pydicom.dcmread(mr_dir / "im0.sc.dcm").pixel_array,
                                  heatmap[::zoom, : SIZE * zoom : zoom])
    # the MR SEG keeps the source's geometry; the CR SEG has no frame of reference (a projection image)
    seg_mr = pydicom.dcmread(mr_dir / "im0.seg.dcm")
    assert seg_mr.FrameOfReferenceUID == sources["mr"].FrameOfReferenceUID
    plane = seg_mr.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0]
    assert [float(v) for v in plane.ImagePositionPatient] == [-80.0, -90.0, 12.5]
    assert list(pydicom.dcmread(mr_dir / "im0.sc.dcm").PatientOrientation) == ["L", "P"]
    seg_cr = hd.seg.segread(out / "dicom" / "in" / "study" / "cr" / "chest.seg.dcm")
    assert "FrameOfReferenceUID" not in seg_cr and seg_cr.coordinate_system is None


def test_one_output_series_per_source_series_and_overwrite_deletes_the_outputs(model, tmp_path):
    series_uid = generate_uid()
    for i in range(2):
        mr(tmp_path / "in" / f"im{i}.dcm", seed=i, SeriesInstanceUID=series_uid, InstanceNumber=i + 1)
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(tmp_path / "in" / "photo.png")
    out = tmp_path / "pred"
    predict_run(model, [tmp_path / "in"], out, heatmaps=False, dicom_out=True, progress=False, batch_size=1)
    segs = [pydicom.dcmread(out / "dicom" / "in" / f"im{i}.seg.dcm") for i in range(2)]
    assert segs[0].SeriesInstanceUID == segs[1].SeriesInstanceUID and [s.InstanceNumber for s in segs] == [1, 2]
    assert segs[0].SOPInstanceUID != segs[1].SOPInstanceUID
    assert sorted(p.name for p in (out / "dicom" / "in").iterdir()) == ["im0.sc.dcm", "im0.seg.dcm", "im1.sc.dcm",
                                                                       "im1.seg.dcm"]  # nothing for the PNG
    predict_run(model, [tmp_path / "in" / "photo.png"], out, dicom_out=True, progress=False, overwrite=True)
    assert not (out / "dicom").exists()


def test_sources_that_cannot_be_referenced_are_named_and_nothing_is_half_written(model, tmp_path, caplog):
    mr(tmp_path / "in" / "good.dcm")
    cr(tmp_path / "in" / "no_study.dcm", StudyInstanceUID="")
    mr(tmp_path / "in" / "no_frame_of_reference.dcm", FrameOfReferenceUID=None)
    frames = np.stack([pixels(SIZE, SIZE, 0)] * 2)
    write_source(tmp_path / "in" / "cine.dcm", ComputedRadiographyImageStorage, frames, NumberOfFrames=2)
    out = tmp_path / "pred"
    with caplog.at_level(logging.WARNING):
        scores = predict_run(model, [tmp_path / "in"], out, heatmaps=False, dicom_out=True, progress=False)
    assert len(scores.read_text().splitlines()) == 1 + 5  # every image scored (cine.dcm: two frames)
    assert sorted(p.name for p in (out / "dicom" / "in").iterdir()) == ["good.sc.dcm", "good.seg.dcm"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"no DICOM outputs for {tmp_path / 'in' / 'no_study.dcm'}: it has no StudyInstanceUID" in "\n".join(warnings)
    assert any(f"{tmp_path / 'in' / 'cine.dcm'}: it holds 2 frames" in w for w in warnings)
    refused = [w for w in warnings if "no_frame_of_reference.dcm" in w]
    assert len(refused) == 1 and "highdicom cannot derive" in refused[0] and "\n" not in refused[0]


def test_the_api_refuses_wrong_arrays_and_a_failed_write_leaves_neither_file(tmp_path, monkeypatch):
    source = cr(tmp_path / "chest.dcm")
    mask, overlay = np.zeros((48, 40), bool), np.zeros((48, 40, 3), np.uint8)
    with pytest.raises(DicomOutputError, match=r"chest.dcm: the mask must be a boolean 48x40 array .* bool \(32, 32"):
        write_dicom_outputs(tmp_path / "chest.dcm", np.zeros((SIZE, SIZE), bool), overlay, tmp_path / "out", "x")
    with pytest.raises(DicomOutputError, match="the overlay must be a uint8 48x40x3"):
        write_dicom_outputs(source, mask, overlay[..., 0], tmp_path / "out", "x")
    (tmp_path / "junk.dcm").write_bytes(b"\0" * 200)
    with pytest.raises(DicomOutputError, match="junk.dcm: it has no SOPClassUID"):
        write_dicom_outputs(tmp_path / "junk.dcm", mask, overlay, tmp_path / "out", "x")
    real_write = pydicom.dcmwrite

    def full_disk_on_the_sc(fh, dataset, **kwargs):
        if dataset.Modality == "OT":
            raise OSError(28, "No space left on device")
        real_write(fh, dataset, **kwargs)

    monkeypatch.setattr(pydicom, "dcmwrite", full_disk_on_the_sc)
    with pytest.raises(OSError, match="the disk is full"):
        write_dicom_outputs(source, mask, overlay, tmp_path / "out", "x")
    assert list((tmp_path / "out").iterdir()) == [] and not leftovers(tmp_path / "out" / "x.seg.dcm")


def test_cli_dicom_out_needs_a_model_with_maps(tmp_path):
    cfg = RunConfig.model_validate({
        "data": {"image_size": SIZE, "val_fraction": 0.25}, "encoder": {"width": 4},
        "method": {"name": "none"}, "detector": {"name": "stats", "also": []},
        "train": {"epochs": 0, "progress": False},
    })
    AnomalyDetector(cfg).fit(make_phantoms(8, SIZE, seed=0)[0]).save(tmp_path / "model")
    mr(tmp_path / "in" / "a.dcm")
    result = CliRunner().invoke(app, ["predict", "--model", str(tmp_path / "model"), str(tmp_path / "in"),
                                      "--out", str(tmp_path / "pred"), "--dicom-out"])
    assert result.exit_code == 2 and result.output.startswith("error: --dicom-out writes lesion masks: it needs a "
                                                              "model whose primary score (stats) gives anomaly maps")
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "pred").exists()


def test_highdicom_is_imported_only_to_write_dicom_outputs():
    """highdicom (and its codecs) loads when a SEG / SC is written, not with the module `medad predict` imports."""
    script = "import sys, medad.data.dicom_outputs; print('highdicom' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
