"""Decode in worker processes: groups of files become pixels in shared memory, for the reader.

Worker processes hold no lock that the network's thread needs (Python's GIL, which threads in
one process share). Their pixels come back through shared memory: for a GPU, slots made once and
reused (a group of files at a time, large photos a few); on the CPU, a fresh block per group. A
worker decodes with :class:`vggfeat.reading.ImageReader`'s own code, so pixels and errors are
those of decoding threads. A file that kills its worker (a decoder's crash) is found and recorded
as failed; workers end when the reading process does, however it ends.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import os
import queue
import select
import shutil
import signal
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import torch

from . import archives
from .decode import Reduction
from .errors import ImageError, VggfeatError, quiet_decoding_libraries
from .reading import Budget, Decoded, ImageReader, Reduced, device_threads

# Most decoded bytes a worker sends at once, and for a GPU the size of the slots of shared memory
# that workers decode into, one per worker and two more: a group of 500x375 images.
SLOT_BYTES = 32 * 2**20
# Decoding workers, and each device's process in a run on several, start from a server process
# that has imported vggfeat once, rather than each importing torch and torchvision anew (6 s apiece
# on 2 cores); it holds no CUDA context or threads that a fork could copy. Where there is no fork
# server (Windows), each starts afresh.
PROCESS_START = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
# What that server imports: the modules of every process's work. One list for all, as a process
# has one fork server, which takes the list set when it starts.
FORKSERVER_PRELOAD = ["vggfeat.processes", "vggfeat.multidevice", "vggfeat.classifier", "vggfeat.fused"]

# Files whose decoder may kill its process before the cause is more likely the processes' own.
MAX_CRASHES = 10
# How much lower than the reading process's a worker's scheduling priority is (Unix niceness; see
# _lower_priority).
WORKER_NICENESS = 10
_SHARED_MEMORY = ("processes return pixels through shared memory (/dev/shm), which may be too small (in Docker, "
                  "raise --shm-size); or decode in threads (--decode-in threads)")


def process_context() -> multiprocessing.context.BaseContext:
    """The context that vggfeat's processes start in (see PROCESS_START)."""
    context = multiprocessing.get_context(PROCESS_START)
    if PROCESS_START == "forkserver":
        context.set_forkserver_preload(FORKSERVER_PRELOAD)
    return context


def start_process_server() -> None:
    """Start the fork server now, so that what it imports (seconds) overlaps this process's own work
    (its network loaded, the images found) rather than delay the first process it starts."""
    process_context()
    if PROCESS_START == "forkserver":
        multiprocessing.forkserver.ensure_running()


class DecodingProcesses:
    """``reader.workers`` processes decoding groups of files, and threads here taking their pixels.

    For a GPU, workers decode into slots: blocks of shared memory made once here and reused, as a
    fresh block per group costs about as much as decoding it (page faults). A thread here takes a
    free slot, has a worker decode as many of its group's files as the slot holds, copies them out
    into pinned memory for the upload and frees the slot, until the group is done. Slots are never
    held while waiting for the byte budget, so reading always goes on. On the CPU a copy out of a
    slot would cost what it saves (measured with ``bench_reader.py``): workers send fresh blocks,
    which the network reads where they lie.
    A file that kills its worker process (a decoder's crash) would otherwise lose the whole pool's
    work in progress: the files it broke are decoded again one at a time in a process of their
    own, where only the culprit can fail, and it is recorded as failed.
    """

    def __init__(self, reader: ImageReader, budget: Budget) -> None:
        self.reader, self.budget = reader, budget
        self.arguments = (reader.decoder, reader.max_pixels, reader.min_side, reader.reduction)
        self.context = process_context()
        count = reader.workers + 2  # a thread (and slot) for every worker, and two being copied out
        self.slots = _slots(count) if _reuses_slots(reader.device) else []
        self.free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for slot in range(len(self.slots)):
            self.free.put(slot)
        self.pool = self._pool(reader.workers)
        # These threads pin and upload the pixels: on the reader's GPU, as its current device.
        self.receiving = ThreadPoolExecutor(count, thread_name_prefix="vggfeat-receive", **device_threads(reader.device))
        self.lock = threading.Lock()
        self.crashes = 0

    def __enter__(self) -> DecodingProcesses:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.receiving.shutdown(wait=True, cancel_futures=True)
        self.pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, files: list[Path], number: int) -> Future[tuple[list[Decoded], int]]:
        return self.receiving.submit(self._received, files, number)

    def _received(self, files: list[Path], number: int) -> tuple[list[Decoded], int]:
        names = [str(file) for file in files]
        tables = archives.member_tables(names, self._read_table)
        results: list[Decoded] = []
        held = 0
        while len(results) < len(files):
            blocks = self._decoded(names[len(results):], tables)
            for pixels, outcomes in blocks:  # the budget once the slot is free again
                held += self.budget.take(number, pixels.numel())
                results += self.reader._unpack(pixels, outcomes)
        return results, held

    def _decoded(self, files: list[str], tables: dict[str, archives.Table]
                 ) -> list[tuple[torch.Tensor, list[tuple[int, ...] | str]]]:
        """The first of ``files`` that a slot holds (at least one), decoded by a worker and copied
        out of its slot: [(pixels, outcomes)], one block; after a worker's death, one per file.
        ``tables``: where the files in archives lie in them (:func:`vggfeat.archives.member_tables`)."""
        slot = self.free.get() if self.slots else None
        try:
            pool = self.pool
            try:
                block = _block(pool.submit(_decode_into, files, slot, *self.arguments, tables))
            except BrokenProcessPool:  # broken by another group's file, and not restarted yet
                block = None
            return [self._copied(slot, *block)] if block is not None else self._alone(files, slot, pool, tables)
        finally:
            if slot is not None:
                self.free.put(slot)

    def _copied(self, slot: int | None, own: torch.Tensor | None, outcomes: list[tuple[int, ...] | str]
                ) -> tuple[torch.Tensor, list[tuple[int, ...] | str]]:
        """The pixels out of the slot, or the block of their own that they came in; for a GPU, in
        pinned memory, for the upload."""
        cuda = self.reader.device.type == "cuda"
        if own is not None:
            return (own.pin_memory() if cuda else own), outcomes
        pixels = self.slots[slot][: sum(3 * h * w for h, w in _sizes(outcomes))]
        return (pixels.pin_memory() if cuda else pixels.clone()), outcomes

    def _alone(self, files: list[str], slot: int | None, broken: ProcessPoolExecutor, tables: dict[str, archives.Table]
               ) -> list[tuple[torch.Tensor, list[tuple[int, ...] | str]]]:
        """After a worker's death: ``files`` one at a time, each alone in a process, so that a
        crash can only be its own file's."""
        with self.lock:
            if broken is self.pool:  # the first group to see it broken restarts it
                broken.shutdown(wait=False, cancel_futures=True)
                self.pool = self._pool(self.reader.workers)
            blocks = []
            alone = self._started(1)
            try:
                for path in files:
                    block = _block(alone.submit(_decode_into, [path], slot, *self.arguments, tables))
                    if block is not None:
                        blocks.append(self._copied(slot, *block))
                        continue
                    blocks.append((torch.empty(0, dtype=torch.uint8), ["the decoder crashed on this file (its process died)"]))
                    self.crashes += 1
                    if self.crashes > MAX_CRASHES:
                        raise VggfeatError(f"decoding processes died on {self.crashes} files; {_SHARED_MEMORY}")
                    alone.shutdown(wait=False)
                    alone = self._started(1)
            finally:
                alone.shutdown(wait=False)
            return blocks

    def _read_table(self, archive: str) -> dict[str, tuple[int, int]]:
        """An archive's table, read by a worker: parsing its headers would hold this process's
        lock on Python's objects (the GIL), which the thread queueing the network's work needs."""
        try:
            return self.pool.submit(archives.read_table, archive).result()
        except BrokenProcessPool:  # broken by a file; the group that saw it first restarts it
            return archives.read_table(archive)

    def _started(self, workers: int) -> ProcessPoolExecutor:
        """A pool whose process has been seen to start: were it to die whatever it is given, every
        file would otherwise be recorded as one that crashed the decoder."""
        pool = self._pool(workers)
        try:
            pool.submit(_worker_setup, *self._setup).result()
        except BrokenProcessPool:
            pool.shutdown(wait=False)
            raise VggfeatError("decoding processes die as they start (a script that starts them must guard its "
                               "code with if __name__ == '__main__'); or decode in threads (--decode-in threads)") from None
        return pool

    def _pool(self, workers: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(workers, mp_context=self.context, initializer=_worker_setup, initargs=self._setup)

    @property
    def _setup(self) -> tuple[list[torch.Tensor], int, int]:
        """What each worker is set up with: the slots, the reading process, how much lower its priority is."""
        return self.slots, os.getpid(), WORKER_NICENESS


def shared_memory_holds(workers: int) -> bool:
    """Whether shared memory (/dev/shm) has room for the slots of ``workers`` decoding processes
    and as much again (Docker gives containers 64 MiB unless told otherwise)."""
    try:
        free = shutil.disk_usage("/dev/shm").free
    except OSError:
        return False
    return free >= 2 * (workers + 2) * SLOT_BYTES


def _reuses_slots(device: torch.device) -> bool:
    """Whether workers decode into reused slots (for a GPU) or fresh blocks (see DecodingProcesses)."""
    return device.type == "cuda"


def _slots(count: int) -> list[torch.Tensor]:
    try:
        return [torch.empty(SLOT_BYTES, dtype=torch.uint8).share_memory_() for _ in range(count)]
    except RuntimeError as error:
        raise VggfeatError(f"no room for {count} x {SLOT_BYTES >> 20} MiB of shared memory ({error}); "
                           f"{_SHARED_MEMORY}") from None


def _block(decoding: Future) -> tuple[torch.Tensor | None, list] | None:
    """A worker's result, or None if its process died (or the pool was broken before it was sent)."""
    try:
        return decoding.result()
    except BrokenProcessPool:
        return None
    except Exception as error:  # a file's trouble is an ImageError in the block; this is the processes'
        raise VggfeatError(f"a decoding process failed: {type(error).__name__}: {error}; {_SHARED_MEMORY}") from error


def _sizes(outcomes: list[tuple[int, ...] | str]) -> list[tuple[int, int]]:
    """The (height, width) of each image's pixels in a block."""
    return [outcome[:2] for outcome in outcomes if not isinstance(outcome, str)]


_SLOTS: list[torch.Tensor] = []  # in a worker process: the reading process's slots, if any


def _worker_setup(slots: list[torch.Tensor], reading_process: int, niceness: int) -> None:
    # One thread each: the workers are already one per core. Ctrl-C is for the main process,
    # which stops them; each would otherwise print a traceback of its own.
    global _SLOTS
    _SLOTS = slots
    torch.set_num_threads(1)
    quiet_decoding_libraries()
    _lower_priority(reading_process, niceness)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not any(thread.name == _WATCH for thread in threading.enumerate()):
        threading.Thread(target=_exit_after, args=(reading_process,), name=_WATCH, daemon=True).start()


_WATCH = "vggfeat-watch-reader"


def _lower_priority(reading_process: int, niceness: int) -> None:
    """Let the reading process's threads go first where every core is busy. Workers decode as a
    batch job does; the reading process queues the GPU's work, which waits while it is not
    scheduled (``bench_gil.py --workers 2,3 --worker-niceness 10,0`` on 2 cores: with workers
    decoding, the main thread kept 41-57% of its speed alone at the same priority, 57-86% at +10)."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, min(os.getpriority(os.PRIO_PROCESS, reading_process) + niceness, 19))
    except (AttributeError, OSError):  # no such call (Windows), or a process gone: decoding goes on as it is
        pass


def _exit_after(process: int) -> None:
    """In a worker: end once ``process``, the reading one, has ended. A reading process that is
    killed (kill -9, a batch system's time limit) cannot stop its workers, which would otherwise
    wait for work for ever, each holding its memory."""
    wait_for_end(process)
    os._exit(1)


def wait_for_end(process: int) -> None:
    """Return once ``process`` (a process id; not a child's: any process's) has ended."""
    try:
        descriptor = os.pidfd_open(process)  # readable once the process has ended (Linux 5.3 on)
    except (AttributeError, OSError):
        descriptor = None
    if descriptor is not None:
        select.select([descriptor], [], [])
    else:
        while _running(process):
            time.sleep(1.0)


def _running(process: int) -> bool:
    try:
        os.kill(process, 0)
    except (ProcessLookupError, PermissionError):  # gone; or its number reused by someone else's
        return False
    return True


def _decode_into(paths: list[str], slot: int | None, decoder: str, max_pixels: int, min_side: int,
                 reduction: Reduction | None, tables: dict[str, archives.Table]
                 ) -> tuple[torch.Tensor | None, list[tuple[int, ...] | str]]:
    """In a worker process: decode the first of ``paths`` that fit a slot (at least one) into slot
    ``slot``, (H, W, 3) each, one after another; return None (or, with no slot or for one image
    larger than a slot, the pixels in a fresh block of shared memory) and per file decoded its
    (height, width), followed by its full size if it was decoded smaller, or why not. Files in
    archives are read where ``tables`` says they lie."""
    reader = ImageReader(torch.device("cpu"), decoder, 1, max_pixels, min_side, reduction=reduction)
    with archives.given(tables):
        decoded, _ = reader._decode_group([Path(p) for p in paths], 0, Budget(None), limit=SLOT_BYTES)
    # (height, width, 3), as both PIL and libjpeg-turbo lay pixels out: a plain copy. Into [3, H, W]
    # it would be a transposing one, 7x slower (bench_decode.py: 170-178 against 23-24 us a
    # 500x375 image, a sixth of a worker's time); the reader views them as [3, H, W] (_unpack).
    images, outcomes = [], []
    for d in decoded:
        if isinstance(d, ImageError):
            outcomes.append(str(d))
            continue
        pixels = d.pixels if isinstance(d, Reduced) else d
        image = torch.from_numpy(pixels) if isinstance(pixels, np.ndarray) else pixels.permute(1, 2, 0)
        images.append(image)
        outcomes.append((*image.shape[:2], *d.full_size) if isinstance(d, Reduced) else tuple(image.shape[:2]))
    total = sum(x.numel() for x in images)
    own = None if slot is not None and total <= SLOT_BYTES else torch.empty(total, dtype=torch.uint8).share_memory_()
    target = _SLOTS[slot] if own is None else own
    start = 0
    for x in images:
        target[start : start + x.numel()].view(x.shape).copy_(x)
        start += x.numel()
    return own, outcomes

