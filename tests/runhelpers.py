"""Helpers for the job and CLI tests: a labelled image folder, reading an output file back with
plain h5py, and running the ``vggfeat`` command in this process or in a real one.

Plain functions, no pytest magic, so any test file can ``from runhelpers import ...``.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import vggfeat.decode
import vggfeat.extractor
import vggfeat.jpeg
import vggfeat.job
from imagefiles import write_corrupt, write_exif_rotated, write_rgb

# The cheapest honest configuration: random weights, one scale, no flip; on the CPU, so that
# numbers compare exactly wherever the tests run.
FAST = ["--weights", "random", "--seed", "0", "--scales", "224", "--no-flip", "--device", "cpu"]


# --------------------------------------------------------------------------- images


def write_labelled_folder(root) -> dict:
    """Two classes (``cats/``, ``dogs/``), a root-level image (label -1), an EXIF-rotated JPEG and a
    corrupt file in a class, written under ``root``.

    Returns {"rows": [(relative path, class name or None, (height, width))] in sorted order,
    "failed": [(relative path, class name)], "classes": [...]}: what the output file must hold.
    """
    root = Path(root)
    (root / "cats").mkdir(parents=True, exist_ok=True)
    (root / "dogs").mkdir(parents=True, exist_ok=True)
    write_rgb(root / "cats" / "a.png", 224, 240, seed=1)
    write_rgb(root / "cats" / "b.jpg", 236, 224, seed=2)
    write_rgb(root / "dogs" / "c.png", 224, 224, seed=3)
    # Stored 224 high x 256 wide, orientation 6: shown (and decoded) 256 high x 224 wide.
    write_exif_rotated(root / "dogs" / "turned.jpg", orientation=6, height=224, width=256)
    write_rgb(root / "top.png", 224, 232, seed=4)
    write_corrupt(root / "dogs" / "broken.jpg")
    return {
        "rows": [
            ("cats/a.png", "cats", (224, 240)),
            ("cats/b.jpg", "cats", (236, 224)),
            ("dogs/c.png", "dogs", (224, 224)),
            ("dogs/turned.jpg", "dogs", (256, 224)),
            ("top.png", None, (224, 232)),
        ],
        "failed": [("dogs/broken.jpg", "dogs")],
        "classes": ["cats", "dogs"],
    }


def write_plain_folder(root, count: int, start_seed: int = 0, height: int = 224, width: int = 232) -> list[Path]:
    """``count`` small RGB PNGs ``img00.png`` ... directly in ``root`` (no classes)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = root / f"img{i:02d}.png"
        write_rgb(path, height, width + 4 * i, seed=start_seed + i)
        paths.append(path)
    return paths


def flaky_storage(monkeypatch, failing: dict[str, int]) -> list[float]:
    """Reads of the files named in ``failing`` fail with EIO that many times first, as on a network
    file system's or an object store mount's timeout; returns the waits between tries."""
    real, waits = vggfeat.decode.open_image_file, []

    def open_image_file(path):
        name = os.path.basename(path)
        if failing.get(name, 0) > 0:
            failing[name] -= 1
            raise OSError(errno.EIO, "Input/output error", str(path))
        return real(path)

    for module in (vggfeat.decode, vggfeat.jpeg):
        monkeypatch.setattr(module, "open_image_file", open_image_file)
    monkeypatch.setattr(vggfeat.decode.time, "sleep", waits.append)
    return waits



# --------------------------------------------------------------------------- interrupted runs


def crash_on_part(monkeypatch, number: int, error: Exception | None = None) -> None:
    """Make the ``number``-th part write (1-based) raise ``error``, by default like a run killed at
    that moment."""
    real, calls = vggfeat.job.write_part, []

    def write_part(*args):
        calls.append(args[1:3])
        if len(calls) == number:
            raise error or RuntimeError("simulated crash")
        return real(*args)

    monkeypatch.setattr(vggfeat.job, "write_part", write_part)


def interrupted_run(monkeypatch, args: list, after_parts: int = 1) -> None:
    """Run ``vggfeat ARGS`` in this process and let it die after ``after_parts`` parts."""
    crash_on_part(monkeypatch, after_parts + 1)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_main(args)
    monkeypatch.undo()


class Killed(BaseException):
    """A kill, simulated: no handler of the command's catches it, and nothing after it runs."""


def killed_after_renaming(monkeypatch, name: str) -> None:
    """Kill the command (:class:`Killed`) just after its file ``name`` is renamed into place
    (:func:`vggfeat.files.replace_durably`): before anything it does next."""
    import vggfeat.files

    replace = vggfeat.files.replace_durably

    def killed_after_the_rename(source, destination, *args, **kwargs) -> None:
        replace(source, destination, *args, **kwargs)
        if Path(destination).name == name:
            raise Killed()

    monkeypatch.setattr(vggfeat.files, "replace_durably", killed_after_the_rename)


def needs_extended_attributes(folder) -> None:
    """Skip the test where ``folder``'s file system keeps no extended attributes (in which an
    output records how it was made: :mod:`vggfeat.rerun`)."""
    probe = Path(folder) / ".xattr-probe"
    probe.touch()
    try:
        os.setxattr(probe, "user.vggfeat.probe", b"{}")
    except (AttributeError, OSError):
        pytest.skip("this file system keeps no extended attributes: an output records nothing")
    finally:
        probe.unlink()


# --------------------------------------------------------------------------- output files


def read_output(path) -> dict:
    """Everything in an output file, with plain h5py, as numpy arrays, lists and a dict of attributes."""
    with h5py.File(path, "r") as f:
        return {
            "features": f["features"][:],
            "paths": list(f["paths"].asstr()[:]),
            "labels": f["labels"][:],
            "classes": list(f["classes"].asstr()[:]),
            "sizes": f["sizes"][:],
            "read_after": f["read_after"][:] if "read_after" in f else None,
            "failed_paths": list(f["failed/paths"].asstr()[:]),
            "failed_errors": list(f["failed/errors"].asstr()[:]),
            "failed_labels": f["failed/labels"][:].tolist(),
            "failed_read_after": f["failed/read_after"][:] if "failed/read_after" in f else None,
            "attrs": dict(f.attrs),
        }


def assert_same_output(actual: dict, expected: dict, atol: float = 1e-6) -> None:
    """Same rows in the same order (paths, labels, sizes), same features, same failures."""
    assert actual["paths"] == expected["paths"]
    assert len(set(actual["paths"])) == len(actual["paths"]), "duplicated rows"
    assert actual["classes"] == expected["classes"]
    np.testing.assert_array_equal(actual["labels"], expected["labels"])
    np.testing.assert_array_equal(actual["sizes"], expected["sizes"])
    # When each row's file was read after differs from run to run; whether it is known does not.
    for name in ("read_after", "failed_read_after"):
        assert (actual[name] is None) == (expected[name] is None), name
        if expected[name] is not None:
            np.testing.assert_array_equal(np.isfinite(actual[name]), np.isfinite(expected[name]))
    assert actual["features"].shape == expected["features"].shape
    assert actual["features"].dtype == expected["features"].dtype
    np.testing.assert_allclose(actual["features"], expected["features"], rtol=0, atol=atol)
    assert actual["failed_paths"] == expected["failed_paths"]
    assert actual["failed_errors"] == expected["failed_errors"]
    assert actual["failed_labels"] == expected["failed_labels"]
    assert actual["attrs"]["complete"] and expected["attrs"]["complete"]
    assert actual["attrs"]["config"] == expected["attrs"]["config"]


# --------------------------------------------------------------------------- running the command


def run_main(args: list[str]) -> tuple[int, str, str]:
    """``vggfeat ARGS`` in this process: (exit code, stdout, stderr). Other exceptions propagate."""
    from vggfeat.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(arg) for arg in args])
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        else:  # main always exits
            raise AssertionError("vggfeat.cli.main returned without exiting")
    return code, out.getvalue(), err.getvalue()


def command(args: list[str]) -> list[str]:
    """The argv of a real ``vggfeat ARGS`` process, with this interpreter."""
    return [sys.executable, "-c", "from vggfeat.cli import main; main()", *map(str, args)]


def run_process(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(command(args), capture_output=True, text=True, timeout=timeout)


def error_line(stderr: str) -> str:
    """The one ``Error:`` line of a refused command; fails on a traceback or several error lines."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1, f"expected one 'Error:' line, got:\n{stderr}"
    assert lines[-1] == errors[0], f"the error must be the last line:\n{stderr}"
    return errors[0]


def process_state(process: int) -> tuple[str, int]:
    """(state, parent) of ``process`` from /proc; ("", 0) if there is no such process."""
    try:
        fields = (Path("/proc") / str(process) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return "", 0
    return fields[0], int(fields[1])


def running(process: int, wait: float = 10.0) -> bool:
    """Whether ``process`` still runs after up to ``wait`` seconds for it to end. A zombie has
    ended (only its parent's wait for it is missing)."""
    deadline = time.monotonic() + wait
    while process_state(process)[0] not in ("", "Z"):
        if time.monotonic() > deadline:
            return True
        time.sleep(0.05)
    return False


def started_until_a_part(args: list, work, parts: str = "part-*.h5") -> subprocess.Popen:
    """``vggfeat ARGS`` in a process of its own, once it has written a first part into ``work``
    (a file matching ``parts`` there)."""
    process = subprocess.Popen(command(args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not list(work.glob(parts)):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no part after 180 s, or the run ended before one was seen:\n{process.communicate()[1]}")
        time.sleep(0.01)
    return process


def terminated(args: list, work, parts: str = "part-*.h5") -> list[int]:
    """The processes that ``vggfeat ARGS`` had started when sent SIGTERM, as a batch system does at
    a time limit, once it had written a first part; checks that it stopped as it should."""
    process = started_until_a_part(args, work, parts)
    try:
        started = children(process.pid)
        process.send_signal(signal.SIGTERM)
        stderr = process.communicate(timeout=120)[1]
    finally:
        process.kill()
    assert process.returncode == 143, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines[-1] == f"terminated: finished parts are kept in {work}; run the same command to resume", stderr
    assert "Traceback" not in stderr
    return started


def children(process: int) -> list[int]:
    """The processes started by ``process``, and by those (decoding workers come from a server)."""
    found, parents = [], {process}
    for _ in range(3):
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) not in parents and process_state(int(entry.name))[1] in parents:
                found.append(int(entry.name))
                parents.add(int(entry.name))
    return found


# --------------------------------------------------------------------------- GPU memory


def gpu_full_for(threads: tuple[str, ...] | None = None):
    """A ``torch.Tensor.to`` for which the GPU is always full: copies to a CUDA device raise
    OutOfMemoryError (only in threads whose names start with one of ``threads``, if given)."""
    import threading

    import torch

    to = torch.Tensor.to

    def full(tensor, *args, **kwargs):
        to_gpu = any(isinstance(arg, (str, torch.device)) and torch.device(arg).type == "cuda"
                     for arg in (*args, kwargs.get("device")))
        if to_gpu and (threads is None or threading.current_thread().name.startswith(threads)):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return to(tensor, *args, **kwargs)

    return full
