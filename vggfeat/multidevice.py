"""One extraction on several devices (``vggfeat extract --device cuda:0,cuda:1``): a process per
device describes one shard of the images, an :class:`ExtractionJob` of ``images.shard(k, n)``, into
``OUTPUT.shards/``; the shards are then merged into ``OUTPUT`` (:func:`merge_shards`).

It does in one command what ``--shard K/N`` on each GPU and ``vggfeat merge`` do, with the same
files and the same guarantees: each shard resumes from its own parts, a finished shard is not
described again, and ``OUTPUT`` appears only when whole. Shards are equal blocks of the sorted
images, so the slowest device sets the pace.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import queue
import re
import shutil
import signal
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from .discover import ImageSet
from .errors import VggfeatError
from .extractor import Extractor
from .job import DTYPES, ExtractionJob, JobResult, config_json, disk_per_row
from .merge import merge_shards
from .network import DenseVGG
from .store import check_output_path, lock_folder, open_h5, shards_folder, work_progress

_SHARD_FILE = re.compile(r"^shard-(\d+)-of-(\d+)\.h5(\.parts)?$")
# Seconds that a shard's process has, once told to stop, to stop where its work is kept (its
# parts are written whole or not at all, so a kill then loses at most the part under way).
STOP_SECONDS = 60.0
_POLL_SECONDS = 1.0


class MultiDeviceJob:
    """Extract ``images`` with ``extractor``'s options on each of ``devices`` at once into ``output``.

    ``extractor`` is built on the first device (it checks the options and fetches the weights once,
    before the processes start); each process builds its own from ``extractor.arguments``, so
    ``extractor`` must name its architecture rather than hold a loaded network. Where
    ``extractor.workers`` is None, it is set to each process's share of the CPU's cores.
    Construction refuses what :class:`ExtractionJob` refuses, and a shards folder that is not this
    extraction's; :meth:`run` does the work and raises :class:`VggfeatError` if a shard fails, once
    the others have stopped, keeping their work.
    """

    def __init__(
        self,
        extractor: Extractor,
        devices: Sequence[str],
        images: ImageSet,
        output: str | Path,
        *,
        overwrite: bool = False,
        dtype: str = "float32",
        part_images: int = 4096,
        provenance: dict | None = None,
    ) -> None:
        if len(devices) < 2:
            raise VggfeatError("a multi-device extraction needs two devices or more; ExtractionJob runs on one")
        if isinstance(extractor.arguments["model"], DenseVGG):
            raise VggfeatError("each device's process builds its own network: make the extractor from an architecture "
                               "name (and weights), not from a loaded network")
        if dtype not in DTYPES:
            raise VggfeatError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
        self.extractor, self.devices, self.images = extractor, tuple(devices), images
        self.output, self.work = Path(output), shards_folder(Path(output))
        self.overwrite, self.dtype, self.part_images = overwrite, dtype, part_images
        self.provenance = provenance or {}
        check_output_path(self.output)
        count = len(self.devices)
        if extractor.workers is None:  # the cores are shared by the processes' decoding
            cores = max(1, (os.cpu_count() or 1) // count)
            extractor.workers = min(extractor.plan_run(len(images) // count).workers, cores)
        self.shard_files = [self.work / f"shard-{k}-of-{count}.h5" for k in range(1, count + 1)]
        if self.output.exists() and not overwrite and not self._merged_but_left_its_shards():
            raise VggfeatError(f"{self.output} already exists; pass --overwrite to replace it")
        self._lock = self._open_work_folder()
        self.done = sum(self._held(path) for path in self.shard_files)

    @property
    def total(self) -> int:
        return len(self.images)

    def disk_needed(self) -> int:
        """Bytes of disk the run still needs at its peak: parts for the images no shard holds yet,
        each shard written beside its parts, and the merged output beside all the shards."""
        return (self.total - self.done + 2 * self.total) * disk_per_row(self.extractor.dim, self.dtype)

    def run(self, progress: Callable[[int], None] | None = None) -> JobResult:
        """Describe every shard no file holds yet, each on its device, then merge them into the
        output; ``progress(n)`` as the shards' chunks are done."""
        began = time.perf_counter()
        try:
            computed = 0
            if not self._merged_but_left_its_shards():
                computed = self._describe_shards(progress)
                merge_shards(self.shard_files, self.output, overwrite=self.overwrite)
            with open_h5(self.output) as f:
                rows, failed = f["features"].shape[0], f["failed/paths"].shape[0]
            shutil.rmtree(self.work)
        finally:
            self._lock.close()
        return JobResult(self.output, rows, failed, computed, time.perf_counter() - began)

    def _describe_shards(self, progress: Callable[[int], None] | None) -> int:
        """Run a process per shard; the images they described. Any failure, or a stop (Ctrl-C,
        SIGTERM), stops them all."""
        context = multiprocessing.get_context("spawn")  # no forked copies of CUDA's or the threads' state
        messages = context.Queue()
        count, arguments = len(self.devices), {**self.extractor.arguments, "workers": self.extractor.workers}
        config = config_json(self.extractor.config(), self.dtype)
        # Each process is sent its shard's images only: not ten million paths to each of eight.
        shards = {k: self.images.shard(k, count) for k in range(1, count + 1)}
        # shard: ("done", images described) or (how it ended, why). A shard that an earlier run
        # finished needs no process, nor a network loaded for it (its process would check again).
        outcomes: dict[int, tuple[str, object]] = {
            k: ("done", 0) for k, path in enumerate(self.shard_files, start=1) if _finished(path, config, shards[k])}
        processes = {
            k: context.Process(target=_describe_shard, name=f"vggfeat-shard-{k}-of-{count}", args=(
                arguments, device, shards[k], path, self.dtype, self.part_images, self.overwrite, self.provenance,
                messages))
            for k, (device, path) in enumerate(zip(self.devices, self.shard_files), start=1) if k not in outcomes
        }
        try:
            for process in processes.values():
                process.start()
            while len(outcomes) < count and not any(kind != "done" for kind, _ in outcomes.values()):
                self._receive(messages, processes, outcomes, progress)
        except BaseException:  # Ctrl-C or SIGTERM here: every shard stops, keeping its parts
            _stop(processes.values(), tell=True)
            raise
        _stop(processes.values(), tell=len(outcomes) < count)  # after a failure, the others stop
        failures = [f"shard {k}/{count} on {self.devices[k - 1]}: {why}" for k, (kind, why) in sorted(outcomes.items())
                    if kind != "done"]
        if failures:
            raise VggfeatError(f"{'; '.join(failures)}. The other shards stopped; their work is kept in {self.work}: "
                               "run the same command to resume")
        return sum(int(described) for _, described in outcomes.values())

    def _receive(self, messages, processes: dict, outcomes: dict, progress: Callable[[int], None] | None) -> None:
        """Take the shards' messages for up to a poll's time; a process that ended without saying
        how (killed, out of memory) has failed."""
        def take(message: tuple[int, str, object]) -> None:
            k, kind, value = message
            if kind != "progress":
                outcomes[k] = (kind, value)
            elif progress:
                progress(value)

        with contextlib.suppress(queue.Empty):
            take(messages.get(timeout=_POLL_SECONDS))
        ended = [k for k, process in processes.items() if k not in outcomes and process.exitcode is not None]
        if ended:  # its last words went into the queue before it ended: they are read first
            with contextlib.suppress(queue.Empty):
                while True:
                    take(messages.get_nowait())
            for k in ended:
                outcomes.setdefault(k, ("failed", f"its process ended with exit code {processes[k].exitcode} before finishing"))

    def _held(self, path: Path) -> int:
        """Images that a shard's file (finished) or its parts (interrupted) hold."""
        if path.exists():
            try:
                with open_h5(path) as f:
                    return f["features"].shape[0] + f["failed/paths"].shape[0] if f.attrs.get("complete") else 0
            except (OSError, KeyError):
                return 0
        progress = work_progress(path)
        return progress[0] if progress else 0

    def _merged_but_left_its_shards(self) -> bool:
        """Is the output the merge of this folder's shards, killed before it removed them?"""
        try:
            with open_h5(self.output) as f:
                attrs = dict(f.attrs)
            with open_h5(self.shard_files[0]) as f:
                config = f.attrs.get("config")
        except (OSError, KeyError):
            return False
        return (bool(attrs.get("complete")) and attrs.get("config") == config
                and attrs.get("images_sha256") == self.images.digest()
                and attrs.get("merged_from") == json.dumps(sorted(path.name for path in self.shard_files)))

    def _open_work_folder(self):
        """The shards folder, made or adopted, and locked. Only a folder of shard files (and their
        work) is ours; shards of a run on another number of devices are removed only with --overwrite."""
        self.work.mkdir(exist_ok=True)
        entries = set(os.listdir(self.work)) - {"lock"}
        if any(not _SHARD_FILE.match(entry) for entry in entries):
            raise VggfeatError(f"{self.work} exists but is not a vggfeat shards folder; move it away or remove it")
        lock, self.unlocked_because = lock_folder(self.work, self.output)
        others = sorted(entry for entry in entries if int(_SHARD_FILE.match(entry)[2]) != len(self.devices))
        if others and not self.overwrite:
            lock.close()
            count = int(_SHARD_FILE.match(others[0])[2])
            raise VggfeatError(f"{self.work} holds the shards of an interrupted run on {count} devices: resume it on "
                               f"{count} devices, or pass --overwrite to discard it")
        for entry in others:
            path = self.work / entry
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        return lock


# --------------------------------------------------------------------------- in each device's process


def _describe_shard(arguments: dict, device: str, shard: ImageSet, output: Path, dtype: str, part_images: int,
                    overwrite: bool, provenance: dict, messages) -> None:
    """One shard into ``output``; says on ``messages`` (shard, kind, value) how it goes: "progress"
    (images), then "done" (images described), "failed" (why) or "stopped"."""
    k = shard.shard_of.index
    # Ctrl-C is for the parent, which stops every shard alike (SIGTERM); SIGTERM stops this one as
    # Ctrl-C stops a single run, keeping its parts.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _interrupt)
    threading.Thread(target=_stop_when_orphaned, args=(os.getppid(),), daemon=True).start()
    try:
        extractor = Extractor(**arguments, device=device)
        if _finished(output, config_json(extractor.config(), dtype), shard):
            messages.put((k, "done", 0))
            return
        job = ExtractionJob(extractor, shard, output, overwrite=overwrite, dtype=dtype, part_images=part_images,
                            provenance=provenance)
        result = job.run(progress=lambda n: messages.put((k, "progress", n)))
        messages.put((k, "done", result.computed))
    except KeyboardInterrupt:
        messages.put((k, "stopped", "stopped (SIGTERM)"))
    except (VggfeatError, OSError) as error:
        messages.put((k, "failed", str(error)))
    except Exception as error:  # a bug: its traceback, on the terminal, is what a report needs
        traceback.print_exc()
        messages.put((k, "failed", f"{type(error).__name__}: {error}"))


def _finished(output: Path, config: str, shard: ImageSet) -> bool:
    """Is ``output`` this very ``shard`` of its collection, made with the ``config`` attribute
    ``config``, complete: written by an earlier, interrupted run?"""
    if not output.exists():
        return False
    with open_h5(output) as f:
        attrs = dict(f.attrs)
    made_of = shard.shard_of
    return (bool(attrs.get("complete")) and attrs.get("config") == config
            and (attrs.get("collection_sha256"), attrs.get("shard_index"), attrs.get("shard_count"))
            == (made_of.collection_sha256, made_of.index, made_of.count))


def _interrupt(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: a second one must not cut the first's clean-up short
    raise KeyboardInterrupt()


def _stop_when_orphaned(parent: int) -> None:
    """A shard whose parent was killed (kill -9) stops, keeping its parts, rather than run on unseen."""
    while os.getppid() == parent:
        time.sleep(_POLL_SECONDS)
    os.kill(os.getpid(), signal.SIGTERM)


def _stop(processes, tell: bool) -> None:
    """Wait for the shards' processes to end, having told those still running to stop (``tell``);
    kill one that will not."""
    for process in processes:
        if tell and process.is_alive():
            process.terminate()  # SIGTERM: see _interrupt
    deadline = time.monotonic() + STOP_SECONDS
    for process in processes:
        if process.pid is not None:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()

