"""Output files whole or not at all (medad.atomic) and output folders that never mix two runs nor
lose a file medad did not write (medad.outputs)."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from medad.atomic import atomic_file, atomic_write_text, leftovers
from medad.outputs import OutputFolder


def test_an_atomic_file_exists_only_once_complete(tmp_path):
    target = tmp_path / "scores.csv"
    with pytest.raises(RuntimeError, match="half-way"):
        with atomic_file(target, "w") as fh:
            fh.write("path,score\n")
            raise RuntimeError("half-way")
    assert not target.exists() and leftovers(target) == []
    atomic_write_text(target, "old\n")
    with pytest.raises(KeyboardInterrupt):
        with atomic_file(target, "w") as fh:
            fh.write("new, half")
            raise KeyboardInterrupt
    assert target.read_text() == "old\n" and leftovers(target) == []


def test_an_atomic_file_gets_the_permissions_open_would_give(tmp_path, monkeypatch):
    import medad.atomic

    atomic_write_text(tmp_path / "a.html", "<html>")  # not mkstemp's 0o600: others may read a report
    with open(tmp_path / "b.html", "w"):
        pass
    assert (tmp_path / "a.html").stat().st_mode == (tmp_path / "b.html").stat().st_mode
    monkeypatch.setattr(medad.atomic, "_UMASK", 0o027)
    atomic_write_text(tmp_path / "c.html", "<html>")
    assert stat.S_IMODE((tmp_path / "c.html").stat().st_mode) == 0o640


def test_overwrite_deletes_exactly_what_medad_recorded_writing(tmp_path, caplog):
    out = tmp_path / "pred"
    (out / "heatmaps").mkdir(parents=True)
    (out / "heatmaps" / "mine.png").write_bytes(b"a user's file")  # in a folder medad also writes to
    (tmp_path / "victim.txt").write_text("outside")
    with OutputFolder(out, "predict") as folder:
        folder.claim(overwrite=True)
        for name in ("heatmaps/a.png", "heatmaps/sub/b.png", "scores.csv"):
            folder.path(name).write_bytes(b"medad")
        (out / ".scores.csv.x1y2.tmp").write_bytes(b"left by a killed run")
    with open(out / ".medad-predict", "a") as record:  # a damaged record may not reach outside
        record.write('"../victim.txt"\n\n"."\n"heatmaps/../../victim.txt"\n"/etc/hostname"\n7\n"heatm\n')
    with pytest.raises(FileExistsError, match="pred is not empty .*--overwrite"):
        OutputFolder(out, "predict").claim(overwrite=False)
    assert (out / "scores.csv").is_file()
    with caplog.at_level(logging.WARNING), OutputFolder(out, "predict") as folder:
        folder.claim(overwrite=True)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["heatmaps", "heatmaps/mine.png"]
    assert (tmp_path / "victim.txt").read_text() == "outside" and Path("/etc/hostname").exists()
    assert "keeping heatmaps, which medad did not record writing" in caplog.text


def test_a_file_name_with_a_line_break_is_recorded_whole(tmp_path):
    out = tmp_path / "pred"
    (out / "heatmaps").mkdir(parents=True)
    (out / "heatmaps" / "b.png").write_bytes(b"a user's file")
    with OutputFolder(out, "predict") as folder:
        folder.claim(overwrite=True)
        folder.path("heatmaps/a\nb.png").write_bytes(b"medad")
    with OutputFolder(out, "predict") as folder:
        folder.claim(overwrite=True)
    assert [p.name for p in (out / "heatmaps").iterdir()] == ["b.png"]


def test_an_empty_folder_or_a_new_one_needs_no_overwrite(tmp_path):
    (tmp_path / "empty").mkdir()
    for root in (tmp_path / "empty", tmp_path / "new" / "pred"):
        with OutputFolder(root, "predict") as folder:
            folder.claim(overwrite=False)
        assert root.is_dir()
