"""One extraction on several devices (``vggfeat extract --device cuda:0,cuda:1``): the images are
cut into blocks, a process per device describes a block at a time, an :class:`ExtractionJob` of
``images.shard(k, n)``, into ``OUTPUT.shards/``, and the blocks are then merged into ``OUTPUT``
(:func:`merge_blocks`: each descriptor on disk once, as a run on one device has it).

It does in one command what ``--shard K/N`` on each GPU and ``vggfeat merge`` do, with the same
files and the same guarantees: each block resumes from its own parts, a finished block is not
described again, and ``OUTPUT`` appears only when whole. Large collections get several blocks per
device (:func:`block_count`): each process starts with a block of its own and then takes the next
one that no process has taken, so a faster device, or one whose images are smaller, does more of
them rather than wait for the slowest. A resumed run keeps the interrupted run's blocks, on any
number of devices.
"""

from __future__ import annotations

import collections
import contextlib
import json
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from .discover import ImageSet
from .errors import VggfeatError, quiet_decoding_libraries
from .extractor import Extractor
from .job import (ExtractionJob, JobResult, check_job, config_json, disk_per_row, existing_output, holds_extraction,
                  made_from_folder, made_with, same_folder)
from .merge import keep_merged, merge_blocks
from .network import DenseVGG
from .processes import process_context, wait_for_end
from .settings import resolve_device
from .files import as_system_errors, exit_if_hdf5_files_open, open_h5, open_hdf5_files
from .parts import (SHARD_FILE, discard_work, images_in_block, interrupted_on_one, interrupted_on_several, lock_folder,
                    lock_for_rewrite, remove_leftovers_of, tidy_emptied_shards, unlock_rewrite)
from .store import check_descriptor_output, rows_and_failures, shards_folder, work_folder

# A device gets several blocks only where each holds this many images or more: every block pays
# its reader's start and its own file (0.2-0.33 s on the CPU, bench_blocks.py --even; not yet
# measured on a GPU), and runs shorter than about this do without cuDNN's autotuning and
# torch.compile (Extractor.plan_run).
BLOCK_IMAGES = 100_000
# Blocks per device at most: the last block's images are the most that a device may wait for the
# others at the end, an eighth of its share here.
MAX_BLOCKS_PER_DEVICE = 8
# Seconds that a shard's process has, once told to stop, to stop where its work is kept (its
# parts are written whole or not at all, so a kill then loses at most the part under way).
STOP_SECONDS = 60.0
_POLL_SECONDS = 1.0


class MultiDeviceJob:
    """Extract ``images`` with ``extractor``'s options on each of ``devices`` at once into ``output``.
    Where ``images`` is a shard of a collection (``--shard K/N`` on each of several machines),
    ``output`` is that shard's file, as one device would write it. One device is enough to resume
    an interrupted run; an interrupted run on one device (``OUTPUT.parts``) is refused, and
    discarded with ``overwrite``.

    ``extractor`` is built on the first device (it checks the options and fetches the weights once,
    before the processes start); each process builds its own, of its class (an :class:`Extractor`
    or a :class:`~vggfeat.classifier.Classifier`), from ``extractor.arguments``, so ``extractor``
    must name its architecture rather than hold a loaded network. Where
    ``extractor.workers`` is None, it is set to each process's share of the CPU's cores.
    Construction refuses what :class:`ExtractionJob` refuses (and finds ``already_done`` what it
    finds so), and a shards folder that is not this extraction's; :meth:`run` does the work and
    raises :class:`VggfeatError` if a block fails, once the other processes have stopped, keeping
    their work.
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
        if len(devices) < 2 and not interrupted_on_several(Path(output)):
            raise VggfeatError("a multi-device extraction needs two devices or more (or one, to resume one); "
                               "ExtractionJob runs on one")
        if isinstance(extractor.arguments["model"], DenseVGG):
            raise VggfeatError("each device's process builds its own network: make the extractor from an architecture "
                               "name (and weights), not from a loaded network")
        check_job(extractor, images, dtype)  # here, not in each device's process
        self.extractor, self.devices, self.images = extractor, tuple(devices), images
        self.output, self.work = Path(output), shards_folder(Path(output))
        self.overwrite, self.dtype, self.part_images = overwrite, dtype, part_images
        self.provenance = provenance or {}
        check_descriptor_output(self.output)
        count = len(self.devices)
        if extractor.workers is None:  # the cores are shared by the processes' decoding
            cores = max(1, (os.cpu_count() or 1) // count)
            extractor.workers = min(extractor.plan_run(len(images) // count).workers, cores)
        tidy_emptied_shards(self.output)
        # An interrupted run's blocks are kept, whatever its number of devices.
        self.blocks = self._interrupted_blocks() or block_count(len(images), count)
        self.shard_files = [self.work / f"shard-{k}-of-{self.blocks}.h5" for k in range(1, self.blocks + 1)]
        self.already_done = not overwrite and holds_extraction(self.output, extractor.config(), dtype, images)
        if self.already_done:  # no shards folder to lock, nothing to resume
            self.unlocked_because, self.done = None, self.total
            return
        # A run killed after its merge was renamed into place, before its shards were removed: done.
        self._merged = self.output.exists() and self._merged_but_left_its_shards()
        if self.output.exists() and not overwrite and not self._merged:
            raise existing_output(self.output, extractor.config(), dtype, images)
        if interrupted_on_one(self.output):  # its parts cannot be cut into blocks
            if not overwrite:
                raise VggfeatError(f"{work_folder(self.output)} holds a run on one device, running or interrupted: run "
                                   "the same command on one device to resume it, or pass --overwrite to discard it")
            discard_work(work_folder(self.output), self.output)  # refused while it runs
        # The lock of the output's work folder too, which a run on one device and an update hold:
        # no other run writes the output while this one does.
        self._output_lock, _ = lock_for_rewrite(self.output)
        try:
            self._lock = self._open_work_folder()
        except BaseException:
            unlock_rewrite(self._output_lock, self.output)
            raise
        if self._merged:  # (keep_merged would take the merged file, renamed, for lost: every block described again)
            self.done = self.total
        else:
            keep_merged(self.shard_files, images, extractor.dim, dtype)  # or describe again blocks whose merged rows are lost
            self.done = sum(images_in_block(path) for path in self.shard_files)

    @property
    def total(self) -> int:
        return len(self.images)

    def disk_needed(self) -> int:
        """Bytes of disk the run still needs at its peak, an upper bound: the rows of the images
        no block holds yet, and one block's rows twice, as its rows are merged before its file is
        written anew without them (:func:`merge_blocks`)."""
        if self.already_done:
            return 0
        return (self.total - self.done + -(-self.total // self.blocks)) * disk_per_row(self.extractor.dim, self.dtype)

    def run(self, progress: Callable[[int], None] | None = None) -> JobResult:
        """Describe every shard no file holds yet, each on its device, then merge them into the
        output; ``progress(n)`` as the shards' chunks are done."""
        if self.already_done:
            return JobResult(self.output, *rows_and_failures(self.output), 0, 0.0, already_done=True)
        began = time.perf_counter()
        try:
            computed = 0
            with as_system_errors():  # HDF5's "file write failed" under a full disk may be a RuntimeError
                if not self._merged:
                    computed = self._describe_shards(progress)
                    merge_blocks(self.shard_files, self.output, self.images, shard_of=self.images.shard_of)
                rows, failed = rows_and_failures(self.output)
            shutil.rmtree(self.work)
            remove_leftovers_of(self.output)
        finally:
            self.close()
        return JobResult(self.output, rows, failed, computed, time.perf_counter() - began)

    def close(self) -> None:
        """Let another run write the output: what :meth:`run` does as it ends, and what a job made
        but not run must do (or let the garbage collector do)."""
        if not self.already_done and not self._lock.closed:
            self._lock.close()
            unlock_rewrite(self._output_lock, self.output)

    def _describe_shards(self, progress: Callable[[int], None] | None) -> int:
        """Describe every block no file holds yet, a process per device; the images they
        described. Any failure, or a stop (Ctrl-C, SIGTERM), stops them all."""
        context = process_context()  # no forked copies of CUDA's or the threads' state
        arguments = {**self.extractor.arguments, "workers": self.extractor.workers}
        config = config_json(self.extractor.config(), self.dtype)
        # A block that an earlier run finished needs no process, nor a network loaded for it. Each
        # process is sent its blocks' images only: not ten million paths to each of eight.
        shards = [(k, self.images.shard(k, self.blocks), path) for k, path in enumerate(self.shard_files, start=1)]
        todo = [(k, shard, path) for k, shard, path in shards if not _finished(path, config, shard)]
        devices = self.devices[: len(todo)]
        # Each process starts with a block of its own (the d-th device the d-th block left), then
        # asks for the next block that none has taken, until it is given None. Each has a pipe of
        # its own: a process killed as it writes (the out-of-memory killer) can block no other's
        # messages, as it could those of a queue they all share.
        pipes = [context.Pipe() for _ in devices]
        # Processes on the CPU share its cores: each would otherwise run the network on all of them
        # (two on 2 cores, 48 crops: 15.7-16.5 s, against 14.7 s with a core each).
        on_cpu = sum(resolve_device(device).type == "cpu" for device in devices)
        threads = max(1, torch.get_num_threads() // on_cpu) if on_cpu else None
        processes = [
            context.Process(target=_describe_blocks, name=f"vggfeat-device-{d + 1}-of-{len(devices)}", args=(
                d, type(self.extractor), arguments, device, first, child, os.getpid(), self.dtype, self.part_images,
                self.overwrite, self.provenance, threads))
            for d, (device, first, (_, child)) in enumerate(zip(devices, todo, pipes))
        ]
        run = _Run(processes, [ours for ours, _ in pipes], [k for k, _, _ in todo[: len(devices)]], todo[len(devices):],
                   progress)
        try:
            for process, (_, child) in zip(processes, pipes):
                process.start()
                child.close()  # the process's end is its own now: its end of file is the process's end
            while len(run.ended) < len(processes) and all(kind == "done" for kind, _ in run.ended.values()):
                run.receive()
        except BaseException:  # Ctrl-C or SIGTERM here: every process stops, keeping its parts
            _stop(processes, tell=True)
            raise
        _stop(processes, tell=len(run.ended) < len(processes))  # after a failure, the others stop
        failures = [f"shard {run.on[d]}/{self.blocks} on {devices[d]}: {why}" for d, (kind, why) in sorted(run.ended.items())
                    if kind != "done"]
        if any(kind == "refused" for kind, _ in run.ended.values()):  # the system's: a full disk, say
            raise OSError(f"{'; '.join(failures)}. The other shards stopped")  # as ExtractionJob.run raises it
        if failures:
            raise VggfeatError(f"{'; '.join(failures)}. The other shards stopped; their work is kept in {self.work}: "
                               "run the same command to resume")
        return run.computed

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
                and attrs.get("images_sha256") == self.images.digest() and made_from_folder(attrs, self.images.root)
                and attrs.get("merged_from") == json.dumps(sorted(path.name for path in self.shard_files)))

    def _interrupted_blocks(self) -> int | None:
        """The number of blocks of the interrupted run whose shards the folder holds, if all are of one."""
        counts = {int(match[2]) for match in map(SHARD_FILE.match, _entries(self.work)) if match}
        return counts.pop() if len(counts) == 1 else None

    def _open_work_folder(self):
        """The shards folder, made or adopted, and locked. Only a folder of shard files (and their
        work) is ours; shards of runs in another number of blocks are removed only with --overwrite."""
        self.work.mkdir(exist_ok=True)
        entries = _entries(self.work)
        if any(not SHARD_FILE.match(entry) for entry in entries):
            raise VggfeatError(f"{self.work} exists but is not a vggfeat shards folder; move it away or remove it")
        lock, self.unlocked_because = lock_folder(self.work, self.output)
        others = sorted(entry for entry in entries if int(SHARD_FILE.match(entry)[2]) != self.blocks)
        if others and not self.overwrite:
            lock.close()
            counts = sorted({int(SHARD_FILE.match(entry)[2]) for entry in entries})
            raise VggfeatError(f"{self.work} holds the shards of interrupted runs in {' and '.join(map(str, counts))} "
                               "blocks: pass --overwrite to discard them")
        for entry in sorted(set(others) | {entry for entry in entries if entry.endswith(".tmp")}):  # and a killed writer's
            path = self.work / entry
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        return lock


def block_count(images: int, devices: int) -> int:
    """How many blocks a run of ``images`` on ``devices`` cuts them into: one per device, or for a
    large collection as many per device as hold BLOCK_IMAGES each, MAX_BLOCKS_PER_DEVICE at most.
    A multiple of ``devices``, so that equal devices finish together."""
    return devices * max(1, min(MAX_BLOCKS_PER_DEVICE, images // (devices * BLOCK_IMAGES)))


def _entries(folder: Path) -> set[str]:
    """The names in ``folder`` but its lock; none if it does not exist."""
    try:
        return set(os.listdir(folder)) - {"lock"}
    except FileNotFoundError:
        return set()


class _Run:
    """The parent's side of the devices' processes: their messages, and the blocks left to give."""

    def __init__(self, processes: list, connections: list, first_blocks: list[int], left: list,
                 progress: Callable[[int], None] | None) -> None:
        self.processes, self.connections, self.left, self.progress = processes, connections, collections.deque(left), progress
        self.on = dict(enumerate(first_blocks))  # per process, the block it is on
        self.ended: dict[int, tuple[str, object]] = {}  # per process: ("done", None) or (how, why)
        self.computed = 0

    def receive(self) -> None:
        """Take the messages of up to a poll's time; a process that ended without saying how
        (killed, out of memory) has failed."""
        open_ones = {self.connections[d]: d for d in range(len(self.processes)) if d not in self.ended}
        for connection in multiprocessing.connection.wait(list(open_ones), timeout=_POLL_SECONDS):
            d = open_ones[connection]
            try:
                kind, value = connection.recv()
            except (EOFError, OSError):
                self.processes[d].join(_POLL_SECONDS)  # ended: its exit code, if it has one yet
                self.ended[d] = ("failed", f"its process ended with exit code {self.processes[d].exitcode} before finishing")
                continue
            if kind == "progress":
                if self.progress:
                    self.progress(value)
            elif kind == "block":
                self.on[d] = value
            elif kind == "described":
                self.computed += value
            elif kind == "next":
                with contextlib.suppress(OSError):  # it died meanwhile: its end of file follows
                    connection.send(self.left.popleft() if self.left else None)
            else:
                self.ended[d] = (kind, value)


# --------------------------------------------------------------------------- in each device's process


def _describe_blocks(number: int, kind: type[Extractor], arguments: dict, device: str, first: tuple[int, ImageSet, Path],
                     parent, parent_process: int, dtype: str, part_images: int, overwrite: bool, provenance: dict,
                     threads: int | None) -> None:
    """Process ``number``: with a ``kind`` (Extractor or Classifier) of ``arguments`` on ``device``,
    block ``first``, (k, its images, its file), then each block that ``parent``, its end of a pipe
    to the parent process (``parent_process``, its id), gives it when asked, until None; on the
    CPU, with ``threads`` of its own for the network. Says
    there (kind, value) how it goes: ("block", k) as it starts one, ("progress", images),
    ("described", images) once one is done, ("next", None) to ask for the next; last "done",
    "failed" (why), "refused" (the system's refusal: a full disk, say) or "stopped"."""
    # Ctrl-C is for the parent, which stops every process alike (SIGTERM); SIGTERM stops this one
    # as Ctrl-C stops a single run, keeping its parts.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _interrupt)
    threading.Thread(target=_stop_when_orphaned, args=(parent_process,), daemon=True).start()
    quiet_decoding_libraries()
    if threads and resolve_device(device).type == "cpu":
        torch.set_num_threads(threads)

    def say(kind: str, value: object) -> None:
        with contextlib.suppress(OSError):  # the parent is gone (killed): there is nobody to tell
            parent.send((kind, value))

    def end(how: str, why: object) -> None:
        """Say how the process ended; the parent then stops the others with SIGTERM, which must not cut
        this one's saying, or its exit, short."""
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        say(how, why)
        if how == "refused":  # a file that a full disk kept from closing would crash its exit
            exit_if_hdf5_files_open(but=files_before, code=0)

    files_before = open_hdf5_files()
    try:
        target = resolve_device(device)
        if target.type == "cuda" and target.index is not None:
            # CUDA's current device, per thread, starts at GPU 0: without this, this process would
            # also open a context on GPU 0 (hundreds of MiB there, where another device's process
            # works), as soon as this thread switched streams (torch.cuda.stream's exit sets the
            # previous one back, and with it GPU 0) or waited on an event. Its reader's threads are
            # set up alike (reading.device_threads). A plain "cuda" is GPU 0 already.
            torch.cuda.set_device(target.index)
        extractor = kind(**arguments, device=device)
        config = config_json(extractor.config(), dtype)
        task = first
        while task is not None:
            k, shard, output = task
            say("block", k)
            if not _finished(output, config, shard):  # an earlier run may have finished it since
                job = ExtractionJob(extractor, shard, output, overwrite=overwrite, dtype=dtype, part_images=part_images,
                                    provenance=provenance)
                say("described", job.run(progress=lambda n: say("progress", n)).computed)
            say("next", None)
            task = parent.recv()
        end("done", None)
    except (KeyboardInterrupt, EOFError):  # SIGTERM; or the parent gone as it was asked for a block
        end("stopped", "stopped (SIGTERM)")
    except VggfeatError as error:
        end("failed", str(error))
    except OSError as error:
        end("refused", str(error))
    except Exception as error:  # a bug: its traceback, on the terminal, is what a report needs
        traceback.print_exc()
        end("failed", f"{type(error).__name__}: {error}")


def _finished(output: Path, config: str, shard: ImageSet) -> bool:
    """Is ``output`` this very ``shard`` of its collection, made with the ``config`` attribute
    ``config``, complete: written by an earlier, interrupted run?"""
    try:
        with open_h5(output) as f:
            attrs = dict(f.attrs)
    except OSError:  # none there, or not an HDF5 file: its job refuses to replace it without --overwrite
        return False
    made_of = shard.shard_of
    return (bool(attrs.get("complete")) and made_with(attrs.get("config"), config)
            and ("input_root" not in attrs or same_folder(attrs["input_root"], shard.root))  # else other images, same names
            and (attrs.get("collection_sha256"), attrs.get("shard_index"), attrs.get("shard_count"))
            == (made_of.collection_sha256, made_of.index, made_of.count))


def _interrupt(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: a second one must not cut the first's clean-up short
    raise KeyboardInterrupt()


def _stop_when_orphaned(parent: int) -> None:
    """A process whose parent, process ``parent``, was killed (kill -9) stops, keeping its parts,
    rather than run on unseen. (Not "until its parent process changes": started by the forkserver,
    its parent is the forkserver, which outlives the run's process.)"""
    wait_for_end(parent)
    os.kill(os.getpid(), signal.SIGTERM)


def _stop(processes, tell: bool) -> None:
    """Wait for the devices' processes to end, having told those still running to stop (``tell``);
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

