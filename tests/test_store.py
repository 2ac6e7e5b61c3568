"""Files vggfeat writes appear whole or not at all: an interrupted write keeps the old file."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

import vggfeat.export
import vggfeat.report
from svmhelpers import write_features
from vggfeat.export import export
from vggfeat.files import WrittenMeanwhile, write_text_file, written_atomically
from vggfeat.report import write_report


def test_a_completed_write_replaces_the_file_with_normal_permissions(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    (tmp_path / "out.bin.tmp").write_bytes(b"a user's file with the name a naive writer would use")
    with written_atomically(target) as temporary:
        assert temporary.parent == tmp_path and temporary.exists() and temporary != target
        temporary.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert (tmp_path / "out.bin.tmp").read_bytes().startswith(b"a user's file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin", "out.bin.tmp"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), written_atomically(target) as temporary:
        temporary.write_bytes(b"half")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_a_file_another_run_wrote_meanwhile_is_not_replaced_unasked(tmp_path):
    """Two runs into one new output (a script started twice): each checked that there was none;
    the second to finish replaced the first's result, both saying they wrote it. It is refused,
    naming the file; an output there as the run began was one the command was told to replace."""
    target = tmp_path / "p.csv"
    with pytest.raises(WrittenMeanwhile, match="p.csv was written by another run while this one ran"):
        with written_atomically(target) as temporary:
            temporary.write_text("this run's")
            target.write_text("the other run's")
    assert target.read_text() == "the other run's" and [p.name for p in tmp_path.iterdir()] == ["p.csv"]
    with written_atomically(target) as temporary:
        temporary.write_text("this run's")
    assert target.read_text() == "this run's"


def test_a_folder_made_read_only_as_a_file_is_written_is_said_naming_the_file(tmp_path, monkeypatch):
    """The temporary file could then not be removed either: that error, naming the hidden
    temporary file, replaced the one that names the file written."""
    target = tmp_path / "p.csv"

    def refused(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted")

    with pytest.raises(OSError) as raised, written_atomically(target) as temporary:
        temporary.write_text("rows")
        monkeypatch.setattr(os, "replace", refused)
        monkeypatch.setattr(os, "link", refused)
        monkeypatch.setattr(type(temporary), "unlink", refused)
    assert raised.value.filename == str(target), raised.value


def test_a_writer_killed_outright_leaves_a_file_the_next_write_removes(tmp_path):
    """SIGKILL (the out-of-memory killer, a batch system's hard limit) as a file is written: its
    temporary file, hidden and as large as the file, goes with the next write of the file. Another
    living process's is being written, and is kept; so is one a user named so."""
    target = tmp_path / "out.h5"
    target.write_bytes(b"old")
    killed = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import os, signal
        from vggfeat.files import write_text_file, written_atomically
        with written_atomically({str(target)!r}) as temporary:
            temporary.write_bytes(b"half of a large file")
            os.kill(os.getpid(), signal.SIGKILL)
        """)], env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert killed.returncode == -signal.SIGKILL
    [left] = [p.name for p in tmp_path.iterdir() if p.name != "out.h5"]
    assert left.startswith(".out.h5.") and left.endswith(".tmp")
    living = tmp_path / left.replace(left.split("-")[1], str(os.getpid()))  # this process: alive
    living.write_bytes(b"being written")
    users = tmp_path / ".out.h5.a.tmp"
    users.write_bytes(b"a user's")
    with written_atomically(target) as temporary:
        temporary.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out.h5", living.name, users.name])


def test_a_file_of_the_longest_name_a_file_system_takes_is_written(tmp_path):
    """Its temporary file's name, the file's and a writer's tag, was over 255 bytes."""
    target = tmp_path / ("x" * 251 + ".csv")
    write_text_file(target, "a,b\n")
    assert target.read_text() == "a,b\n" and [p.name for p in tmp_path.iterdir()] == [target.name]


def test_an_npy_export_is_written_a_block_at_a_time_as_numpy_reads_it(tmp_path, monkeypatch):
    """Through no memory map of the whole array (its written pages counted in the process's memory):
    float32 and float16 files, over several blocks, read back as they are held."""
    monkeypatch.setattr(vggfeat.export, "_BLOCK_BYTES", 3 * 4 * 4)  # 3 rows a block
    X = np.random.default_rng(0).standard_normal((7, 4)).astype(np.float32)
    for dtype in (np.float32, np.float16):
        db = write_features(tmp_path / f"{dtype.__name__}.h5", X, [f"{i}.jpg" for i in range(7)], np.zeros(7, dtype=int),
                            ["a"])
        with h5py.File(db, "r+") as f:  # as --dtype float16 stores it
            del f["features"]
            f["features"] = X.astype(dtype)
        export(db, "npy")
        exported = np.load(db.with_suffix(".npy"))
        assert exported.dtype == dtype and exported.shape == (7, 4)
        np.testing.assert_array_equal(exported, X.astype(dtype))


def test_an_export_that_fails_midway_keeps_the_previous_export(tmp_path, monkeypatch):
    X = np.arange(24, dtype=np.float32).reshape(6, 4)
    db = write_features(tmp_path / "db.h5", X, [f"{i}.jpg" for i in range(6)], np.zeros(6, dtype=int), ["a"])
    export(db, "npy")
    before = np.load(tmp_path / "db.npy")

    def failing(f, target, step):
        target.write_bytes(b"half an array")
        raise OSError("disk full")

    monkeypatch.setattr(vggfeat.export, "_npy", failing)
    with pytest.raises(OSError, match="disk full"):
        export(db, "npy", overwrite=True)
    np.testing.assert_array_equal(np.load(tmp_path / "db.npy"), before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db.failed.csv", "db.h5", "db.npy", "db.paths.csv"]


def test_an_export_that_fails_after_its_array_keeps_the_previous_files_together(tmp_path, monkeypatch):
    """The .npy of one run beside the rows (.paths.csv) of another, nothing saying so: an export
    killed between its files, with --overwrite, left that."""
    X = np.arange(24, dtype=np.float32).reshape(6, 4)
    db = write_features(tmp_path / "db.h5", X, [f"{i}.jpg" for i in range(6)], np.zeros(6, dtype=int), ["a"])
    export(db, "npy")
    before = {name: (tmp_path / name).read_bytes() for name in ("db.npy", "db.paths.csv", "db.failed.csv")}
    other = write_features(tmp_path / "other.h5", X[:2], ["x.jpg", "y.jpg"], np.zeros(2, dtype=int), ["a"])

    def failing(f, step):
        raise OSError("killed")

    monkeypatch.setattr(vggfeat.export, "_rows", failing)
    with pytest.raises(OSError, match="killed"):
        export(other, "npy", output=tmp_path / "db.npy", overwrite=True)
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db.failed.csv", "db.h5", "db.npy", "db.paths.csv", "other.h5"]


def test_a_report_interrupted_as_it_is_drawn_leaves_the_previous_report_whole(tmp_path, monkeypatch):
    """Its files were written one after another: a run stopped before its plot left its
    metrics beside the plot of the report before."""
    metrics = {"task": "single-label", "examples": 4, "classes": ["a", "b"], "confusion_matrix": [[2, 0], [1, 1]],
               "mean_class_recall": 0.75, "accuracy": 0.75,
               "per_class": [{"class": "a", "support": 2}, {"class": "b", "support": 2}]}
    written = write_report(tmp_path / "rep", metrics, np.zeros((4, 2)), np.zeros((4, 2), dtype=bool))
    before = [path.read_bytes() for path in written]

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(vggfeat.report, "plot_confusion", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_report(tmp_path / "rep", {**metrics, "accuracy": 0.5}, np.zeros((4, 2)), np.zeros((4, 2), dtype=bool))
    assert [path.read_bytes() for path in written] == before and len(list((tmp_path / "rep").iterdir())) == 4
