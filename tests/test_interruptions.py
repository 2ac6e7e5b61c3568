"""What an extraction survives: kill -9 and SIGTERM, a full disk, its storage going away, and file
systems without locks; each time the same command resumes without losing or repeating a row.

Runs are in this process through ``vggfeat.cli.main`` with the session's random VGG16, except where
a real process must be killed or must run under another C library (``LD_PRELOAD``).
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest

from imagefiles import write_corrupt
from runhelpers import (
    FAST,
    assert_same_output,
    command,
    crash_on_part,
    error_line,
    interrupted_run,
    read_output,
    run_main,
    running,
    started_until_a_part,
    terminated,
    write_labelled_folder,
    write_plain_folder,
)
import vggfeat.job
import vggfeat.output
from vggfeat.cli.common import Terminated, size_text, stopping_on_sigterm

CHEAP = [*FAST, "--layer", "conv1_1"]  # bookkeeping, not deep features: ~50 times cheaper than fc7



# --------------------------------------------------------------------------- kills, signals and full disks


def test_sigterm_before_the_run_starts_ends_as_terminated(tmp_path):
    """A SIGTERM as the command reads its list (or loads its network, finds the images) ends it as
    one at work: 'terminated', exit 143; click had made it an abort ('interrupted', 130)."""
    process = subprocess.Popen(command(["extract", "--file-list", "-", tmp_path / "out.h5", *CHEAP]),
                               stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):  # until it waits for the list on its standard input
            if "pipe_read" in Path(f"/proc/{process.pid}/wchan").read_text():
                break
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        stderr = process.communicate(timeout=60)[1]
    finally:
        process.kill()
    assert process.returncode == 143 and error_line(stderr) == "Error: terminated", stderr
    assert not (tmp_path / "out.h5").exists()


# A stop sent to the command as it loads the CLI's libraries: at the import of click.
_STOPPED_WHILE_LOADING = """
import os, signal, sys

class StopAtClick:
    def find_spec(self, name, path=None, target=None):
        if name == "click":
            os.kill(os.getpid(), signal.{signal})
        return None

from vggfeat._entry import run
assert "numpy" not in sys.modules, "the entry point loads NumPy before it handles stops"
sys.meta_path.insert(0, StopAtClick())
sys.argv = ["vggfeat", "--version"]
run()
"""


@pytest.mark.parametrize("stop, code, said", [("SIGTERM", 143, "terminated"), ("SIGINT", 130, "interrupted")])
def test_a_stop_as_the_command_loads_its_libraries_ends_in_one_line(stop, code, said):
    """Before, SIGTERM in the first tenths of a second killed the command without a word (-15) and
    Ctrl-C printed the traceback of an import."""
    result = subprocess.run([sys.executable, "-c", _STOPPED_WHILE_LOADING.replace("{signal}", stop)],
                            capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stderr) == (code, f"Error: {said}\n"), result.stderr


def test_a_stop_that_the_command_was_started_to_ignore_stays_ignored_as_it_loads():
    """A Ctrl-C that a background job of a script ignores (SIG_IGN, inherited) stopped the command
    as it loaded its libraries: the entry point's handler took its place."""
    script = _STOPPED_WHILE_LOADING.replace("{signal}", "SIGINT").replace(
        "from vggfeat._entry import run", "signal.signal(signal.SIGINT, signal.SIG_IGN)\nfrom vggfeat._entry import run")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("vggfeat, version"), result.stderr


def test_resume_after_kill_9(tmp_path):
    images = tmp_path / "images"
    write_plain_folder(images, 5)
    write_corrupt(images / "img02x.png")  # a failure in the middle
    output, reference = tmp_path / "out.h5", tmp_path / "reference.h5"
    work = tmp_path / "out.h5.parts"
    # fc7 on the CPU: slow enough (a part every 0.1 to 1 s) to be caught between parts.
    options = [*FAST, "--part-size", "1"]

    process = started_until_a_part(["extract", images, output, *options], work)
    try:
        assert not output.exists()
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    assert not output.exists()
    done = len(list(work.glob("part-*.h5")))
    assert 1 <= done < 6, f"{done} parts: the kill came too late to test resuming"

    code, _, stderr = run_main(["extract", images, output, *options])  # resumed in another process: this one
    assert code == 0, stderr
    code, _, err = run_main(["extract", images, reference, *options])  # uninterrupted: the same options, the same parts
    assert code == 0, err
    assert f"resuming: {done} of 6 images were done by an interrupted run" in stderr
    assert re.search(rf"5 descriptors .*1 failed; {6 - done} images in", stderr), stderr
    assert not work.exists()
    assert_same_output(read_output(output), read_output(reference))
    assert read_output(output)["failed_paths"] == ["img02x.png"]
    assert read_output(output)["attrs"]["command"].endswith("--no-flip --device cpu --part-size 1")


def test_sigterm_stops_the_run_keeping_its_parts_and_its_workers_go(tmp_path):
    write_plain_folder(tmp_path / "images", 6)
    output, work = tmp_path / "out.h5", tmp_path / "out.h5.parts"
    # A batch system's time limit: SIGTERM, in a run with decoding processes to stop too.
    args = ["extract", tmp_path / "images", output, *FAST, "--part-size", "1", "--decode-in", "processes"]
    workers = terminated(args, work)
    assert not output.exists()
    assert len(list(work.glob("part-*.h5"))) >= 1
    assert len(workers) >= 2 and not any(map(running, workers)), "processes outlived the run"
    code, _, err = run_main(args)
    assert code == 0 and "resuming:" in err, err


# A reading process with its decoding processes started, then killed as kill -9 (or a batch
# system's time limit) kills: no chance to stop its workers.
KILLED_READER = """
import os, signal, sys, torch
from vggfeat.processes import DecodingProcesses
from vggfeat.reading import Budget, ImageReader
reader = ImageReader(torch.device("cpu"), "pil", 2, max_pixels=10**8, min_side=32, processes=True)
workers = DecodingProcesses(reader, Budget(None))
for _ in range(4):
    workers.pool.submit(os.getpid).result()
with open(sys.argv[1], "w") as f:
    f.write(" ".join(map(str, workers.pool._processes)))
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_decoding_processes_end_when_the_reading_process_is_killed(tmp_path):
    listed, errors = tmp_path / "workers", tmp_path / "stderr"
    with open(errors, "w") as stderr:  # not a pipe: workers that outlive the reader would hold it open
        reader = subprocess.run([sys.executable, "-c", KILLED_READER, listed], stdout=subprocess.DEVNULL,
                                stderr=stderr, timeout=120)
    assert reader.returncode == -signal.SIGKILL, errors.read_text()
    workers = [int(pid) for pid in listed.read_text().split()]
    assert workers
    try:
        assert not any(map(running, workers)), "decoding processes outlived their reader"
    finally:
        for process in filter(running, workers):
            os.kill(process, signal.SIGKILL)


def test_a_full_disk_stops_the_run_in_one_line_and_loses_no_part(tmp_path, monkeypatch):
    write_plain_folder(tmp_path / "images", 4)
    output, work = tmp_path / "out.h5", tmp_path / "out.h5.parts"
    args = ["extract", tmp_path / "images", output, *CHEAP, "--part-size", "1"]
    crash_on_part(monkeypatch, 3, OSError(errno.ENOSPC, "No space left on device", str(work / "part.tmp")))
    code, _, err = run_main(args)
    monkeypatch.undo()
    assert code == 1
    assert error_line(err) == (f"Error: [Errno 28] No space left on device: '{work / 'part.tmp'}'; finished parts "
                               f"are kept in {work}: run the same command to resume")
    assert len(list(work.glob("part-*.h5"))) == 2 and not output.exists()
    code, _, err = run_main(args)
    assert code == 0 and "resuming: 2 of 4 images" in err, err
    code, _, err = run_main(["extract", tmp_path / "images", tmp_path / "reference.h5", *CHEAP])
    assert_same_output(read_output(output), read_output(tmp_path / "reference.h5"))


def test_a_full_disk_as_the_run_begins_names_the_file_it_could_not_write(tmp_path, monkeypatch):
    """A write's refusal names no file ("[Errno 28] No space left on device" alone): said without
    the manifest's name, nothing told where the disk was full."""
    write_plain_folder(tmp_path / "images", 2)
    output, work = tmp_path / "out.h5", tmp_path / "out.h5.parts"
    write_text = Path.write_text

    def full(path, *args, **kwargs):
        if path.name.startswith("manifest.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    code, _, err = run_main(["extract", tmp_path / "images", output, *CHEAP])
    monkeypatch.undo()
    assert code == 1 and error_line(err).startswith(f"Error: [Errno 28] No space left on device: '{work / 'manifest.json'}'")
    code, _, err = run_main(["extract", tmp_path / "images", output, *CHEAP])
    assert code == 0 and output.exists(), err


def test_a_disk_full_as_rows_are_written_costs_only_the_part_under_way(tmp_path, monkeypatch):
    write_plain_folder(tmp_path / "images", 2)
    output = tmp_path / "out.h5"
    args = ["extract", tmp_path / "images", output, *CHEAP, "--part-size", "1"]
    append, calls = vggfeat.output.OutputFile.append, []

    def full_the_second_time(*args):
        calls.append(args)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return append(*args)

    monkeypatch.setattr(vggfeat.output.OutputFile, "append", full_the_second_time)
    code, _, err = run_main(args)
    assert code == 1 and "No space left on device" in error_line(err)
    monkeypatch.undo()
    code, _, err = run_main(args)
    assert code == 0, err
    assert "resuming: 1 of 2 images" in err and "2 descriptors (64-d float32), 0 failed; 1 image in" in err
    assert run_main(["extract", tmp_path / "images", tmp_path / "reference.h5", *CHEAP])[0] == 0
    assert_same_output(read_output(output), read_output(tmp_path / "reference.h5"))


def _file_size_limit(limit: int):
    """For a process whose files cannot grow past ``limit`` bytes: its writes there fail (EFBIG) as
    on a full disk, in the HDF5 library too, instead of killing it (SIGXFSZ)."""
    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return limited


_JOB_TWICE = """
import resource, sys
from vggfeat import Extractor, find_images
from vggfeat.job import ExtractionJob
extractor = Extractor("vgg11", weights="random", seed=0, layer="conv1_1", scales=[64], flip=False, device="cpu")
images, output, limit = find_images(sys.argv[1]), sys.argv[2], int(sys.argv[3])
hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
try:
    print("first:", ExtractionJob(extractor, images, output, part_images=4).run().rows)
except OSError as error:
    print("first:", error)
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
try:
    print("again:", ExtractionJob(extractor, images, output, part_images=4).run().rows)
except Exception as error:
    print("again:", type(error).__name__, error)
"""


def test_after_a_full_disk_the_api_refuses_a_second_run_in_the_process_and_a_new_process_resumes(tmp_path):
    """Through the Python API, where the process goes on after the error: HDF5 cannot close, nor
    open again, a file it failed to write, so a second job on that output in the process is refused
    with the reason, rather than failing deep in HDF5 or truncating the rows; a new process resumes."""
    write_plain_folder(tmp_path / "images", 40)
    output = tmp_path / "out.h5"
    script = [sys.executable, "-c", _JOB_TWICE, tmp_path / "images", output]
    ran = subprocess.run([*script, str(8 * 1024)], capture_output=True, text=True, timeout=120,
                         preexec_fn=lambda: signal.signal(signal.SIGXFSZ, signal.SIG_IGN))
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == [
        f"first: [Errno 27] File too large: '{output}.parts/rows.h5'",
        f"again: VggfeatError {output}.parts/rows.h5 is open in this process already: close it first. HDF5 cannot "
        "close a file it failed to write (a full disk, say): a run stopped so resumes in a new process"]
    resumed = subprocess.run([*script, str(2**40)], capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0 and resumed.stdout.splitlines()[0] == "first: 40", resumed.stderr
    assert sorted(read_output(output)["paths"]) == sorted(path.name for path in (tmp_path / "images").iterdir())


@pytest.mark.parametrize("limit, every_row_kept", [(8 * 1024, False), (28 * 1024, True)])
def test_a_full_disk_under_hdf5_ends_the_process_cleanly_and_the_run_resumes(tmp_path, limit, every_row_kept):
    """For real, in HDF5 (the tests above make Python's writes fail): rows that cannot be written
    (8 KiB: the first part's), or the file that cannot be completed (28 KiB: every row is written).
    One error line, exit code 1, not the crash with which HDF5 ends a process that holds a file it
    could not flush (h5py issue 914); then the same command finishes the file."""
    write_plain_folder(tmp_path / "images", 40)
    output = tmp_path / "out.h5"
    args = ["extract", tmp_path / "images", output, *CHEAP, "--part-size", "4"]
    full = subprocess.run(command(args), capture_output=True, text=True, timeout=120, preexec_fn=_file_size_limit(limit))
    assert full.returncode == 1, full.stderr
    assert error_line(full.stderr) == (f"Error: [Errno 27] File too large: '{output}.parts/rows.h5'; finished parts are "
                                       f"kept in {output}.parts: run the same command to resume")
    assert "Exception ignored" not in full.stderr and not output.exists()
    code, _, err = run_main(args)  # in another process: this one
    assert code == 0, err
    assert ("every image was described by the interrupted run" in err) == every_row_kept, err
    assert run_main(["extract", tmp_path / "images", tmp_path / "reference.h5", *CHEAP])[0] == 0
    assert_same_output(read_output(output), read_output(tmp_path / "reference.h5"))


@pytest.mark.parametrize("limit", [8 * 1024, 28 * 1024])
def test_a_full_disk_on_several_devices_or_in_a_merge_ends_in_one_line(tmp_path, limit):
    """On several devices, the processes' own files fail (8 KiB) or the merged file does (28 KiB);
    'vggfeat merge' of shard files too. One line each time, and the same command then finishes."""
    write_plain_folder(tmp_path / "images", 40)
    output = tmp_path / "out.h5"
    args = ["extract", tmp_path / "images", output, *CHEAP, "--part-size", "4", "--device", "cpu,cpu"]
    full = subprocess.run(command(args), capture_output=True, text=True, timeout=180, preexec_fn=_file_size_limit(limit))
    assert "[Errno 27] File too large" in error_line(full.stderr) and "Exception ignored" not in full.stderr
    assert full.returncode == 1 and not output.exists()
    assert run_main(args)[0] == 0
    for k in (1, 2):
        assert run_main(["extract", tmp_path / "images", tmp_path / f"s{k}.h5", *CHEAP, "--shard", f"{k}/2"])[0] == 0
    merge = ["merge", tmp_path / "s1.h5", tmp_path / "s2.h5", tmp_path / "merged.h5"]
    full = subprocess.run(command(merge), capture_output=True, text=True, timeout=120, preexec_fn=_file_size_limit(limit))
    assert full.returncode == 1 and error_line(full.stderr) == f"Error: [Errno 27] File too large: '{tmp_path / 'merged.h5'}'"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["images", "out.h5", "s1.h5", "s2.h5"]  # nothing left
    assert run_main(merge)[0] == 0
    assert_same_output(read_output(tmp_path / "merged.h5"), read_output(output))


def test_a_full_disk_fails_the_files_made_from_descriptors_in_one_line(tmp_path):
    """An SVM model, a whitening, an index, an export: nothing is left of the file, and no crash."""
    write_plain_folder(tmp_path / "images", 20)
    features = tmp_path / "out.h5"
    assert run_main(["extract", tmp_path / "images", features, *CHEAP])[0] == 0
    with h5py.File(features, "r+") as f:  # two classes, for the SVM
        f["labels"][:] = [0, 1] * 10
        del f["classes"]
        f["classes"] = ["a", "b"]
    for args, written in ((["train-svm", features, "--C", "1"], "model.h5"), (["whiten", "fit", features], "w.h5"),
                          (["index", features], "index.h5"), (["export", features], "x.npy")):
        full = subprocess.run(command([*args, tmp_path / written]), capture_output=True, text=True, timeout=120,
                              preexec_fn=_file_size_limit(2048))
        assert full.returncode == 1, full.stderr
        assert error_line(full.stderr).startswith("Error: [Errno 27] File too large") and "Exception" not in full.stderr
        assert sorted(path.name for path in tmp_path.iterdir()) == ["images", "out.h5"], args


def test_a_run_the_disk_cannot_hold_is_warned_of_before_it_starts(tmp_path, monkeypatch):
    write_plain_folder(tmp_path / "images", 4)
    args = ["extract", tmp_path / "images", tmp_path / "out.h5", *CHEAP, "--part-size", "1"]
    interrupted_run(monkeypatch, args, after_parts=2)
    # conv1_1 in float32: 64 values of 4 bytes per row, plus at most 128 bytes of path and the like;
    # resumed with 2 of 4 images done, the run writes the 2 rows left.
    row, usage = 64 * 4 + vggfeat.job._ROW_EXTRAS, shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=2 * row - 1))
    code, _, err = run_main([*args, "--quiet"])  # said even with --quiet
    assert code == 0, err
    assert (f"WARNING: this run needs up to {size_text(2 * row)} more disk and {size_text(2 * row - 1)} "
            f"is free in {tmp_path}; --dtype float16 halves it.") in " ".join(err.split())
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=4 * row))
    code, _, err = run_main(["extract", tmp_path / "images", tmp_path / "fresh.h5", *CHEAP])
    assert code == 0 and "more disk" not in err, err


# --------------------------------------------------------------------------- file systems without locks

NO_LOCKS = "No locks available"  # what NFS without its lock daemon answers (ENOLCK)


def lockless_commands(folder) -> list[list]:
    """extract, then the commands that read its file and write others, in a folder of ``folder``."""
    write_labelled_folder(folder / "images")
    features, model = folder / "out.h5", folder / "model.svm.h5"
    return [["extract", folder / "images", features, *CHEAP], ["info", features],
            ["train-svm", features, model, "--C", "1"], ["predict", model, features, folder / "predicted.csv"]]


def test_a_file_system_without_locks_is_used_all_the_same(tmp_path, monkeypatch):
    real_open = h5py.File.__init__

    def file(self, name, *args, locking=None, **kwargs):  # HDF5 on such a file system: every locked open fails
        if locking is not False and isinstance(name, (str, os.PathLike)):  # (h5py's own File(id) opens nothing)
            raise OSError(errno.ENOLCK, "Unable to synchronously open file (unable to lock file, errno = 37, "
                                        f"error message = '{NO_LOCKS}')")
        real_open(self, name, *args, locking=locking, **kwargs)

    def flock(*args):
        raise OSError(errno.ENOLCK, NO_LOCKS)

    monkeypatch.setattr(h5py.File, "__init__", file)  # every HDF5 file, vggfeat's kinds of it too (subclasses)
    monkeypatch.setattr(fcntl, "flock", flock)
    said = []
    for args in lockless_commands(tmp_path):
        code, _, err = run_main(args)
        assert code == 0, err
        said.append(" ".join(err.split()))
    assert f"the file system of {tmp_path / 'out.h5.parts'} has no locks ({NO_LOCKS})" in said[0]
    monkeypatch.undo()
    assert read_output(tmp_path / "out.h5")["attrs"]["complete"] and (tmp_path / "predicted.csv").is_file()


def test_a_file_that_cannot_be_read_is_not_called_a_foreign_one(tmp_path, monkeypatch):
    features = tmp_path / "out.h5"
    assert run_main(lockless_commands(tmp_path)[0])[0] == 0

    def file(self, path, *args, **kwargs):  # every HDF5 file, vggfeat's kinds of it too (subclasses)
        raise OSError(errno.EACCES, f"Unable to synchronously open file (unable to open file: name = '{path}', "
                                    "errno = 13, error message = 'Permission denied')")

    monkeypatch.setattr(h5py.File, "__init__", file)
    code, _, err = run_main(["train-svm", features, tmp_path / "model.h5"])
    assert code == 1 and "Permission denied" in error_line(err) and "not an HDF5 file" not in err


@pytest.mark.skipif(shutil.which("cc") is None, reason="builds a library that takes locks away (needs a C compiler)")
def test_a_file_system_without_locks_for_real_hdf5(tmp_path):
    # flock() answers ENOLCK for every file, in Python's fcntl and in the HDF5 library alike.
    source, library = tmp_path / "nolocks.c", tmp_path / "nolocks.so"
    source.write_text("#include <errno.h>\nint flock(int fd, int operation) { errno = ENOLCK; return -1; }\n")
    subprocess.run(["cc", "-shared", "-fPIC", "-o", library, source], check=True)
    environment = {**os.environ, "LD_PRELOAD": str(library)}
    for args in lockless_commands(tmp_path):
        done = subprocess.run(command(args), capture_output=True, text=True, env=environment, timeout=180)
        assert done.returncode == 0, done.stderr
    assert read_output(tmp_path / "out.h5")["attrs"]["complete"] and (tmp_path / "predicted.csv").is_file()


def test_a_sigterm_that_comes_as_an_object_is_finalised_still_stops_the_command(capfd):
    """SIGTERM raises Terminated where the main thread is: inside an object's __del__ (h5py's, as a
    file is read), Python printed "Exception ignored ... Terminated", dropped it, and the command
    went on. It stops the command, once the finaliser is done, saying nothing more."""
    class SignalledAsFinalised:
        def __del__(self) -> None:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)  # (the handler runs here, in __del__)

    went_on = []
    with pytest.raises(Terminated), stopping_on_sigterm():
        SignalledAsFinalised()
        for step in range(100):
            went_on.append(step)
            time.sleep(0.01)
    assert len(went_on) < 50 and "Exception ignored" not in capfd.readouterr().err
