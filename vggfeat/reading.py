"""Read: image files become decoded pixels, ahead of the network and in order.

Each file becomes an RGB uint8 array (PIL), a [3, H, W] uint8 tensor (torchvision's decoders, or
any image on its way to a GPU), or the :class:`ImageError` saying why it cannot be used. Decoders:

- ``pil``: Pillow, for every file.
- ``torchvision``: JPEGs in batches by libjpeg-turbo on the CPU, through TorchCodec or
  torchvision (:mod:`vggfeat.jpeg`): PIL's pixels exactly, at about half PIL's cost per image;
  other files by PIL.
- ``nvjpeg``: JPEGs in batches on the GPU (nvJPEG), the same way; other files by PIL.

Decoding runs in threads, or with ``processes`` in worker processes: there it holds no lock that
the network's thread needs (Python's GIL, which threads share), and the pixels come back through
shared memory made once and reused (a group of files at a time, large photos a few). On a GPU,
threads upload (or decode there) on streams of their own. However large the images, the workers
hold at most LOOKAHEAD_BYTES of decoded pixels ahead of the reader (:class:`Budget`).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import multiprocessing
import os
import queue
import select
import shutil
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .decode import decode_image, open_image_file
from .errors import ImageError, VggfeatError
from .jpeg import EncodedJpeg, decode_jpegs, read_jpeg

DECODERS = ("pil", "torchvision", "nvjpeg")
# Files per decoding task with torchvision's decoders (one batched decode call), and with processes
# (one block of shared memory back).
JPEG_GROUP = 32
# Most decoded bytes a decoding thread decodes at once; a group's files beyond go next.
BLOCK_BYTES = 64 * 2**20
# With processes: most decoded bytes a worker sends at once, and for a GPU the size of the slots of
# shared memory that workers decode into, one per worker and two more: a group of 500x375 images.
SLOT_BYTES = 32 * 2**20
# Decoded pixels that the workers may hold ahead of the group being read (on the GPU, if the
# network is there), besides that group: 1,900 images of 500x375, or 14 of 6000x4000.
LOOKAHEAD_BYTES = 2**30
# Worker processes start from a server process that has imported vggfeat once, rather than each
# importing torch anew (seconds apiece); it holds no CUDA context or threads that a fork could copy.
# Where there is no fork server (Windows), each starts afresh.
PROCESS_START = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"

# Files whose decoder may kill its process before the cause is more likely the processes' own.
MAX_CRASHES = 10
_SHARED_MEMORY = ("processes return pixels through shared memory (/dev/shm), which may be too small (in Docker, "
                  "raise --shm-size); or decode in threads (--decode-in threads)")

Decoded = np.ndarray | torch.Tensor | ImageError


class ImageReader:
    """Decodes files with ``workers`` threads (or processes) for a network on ``device``; see :meth:`read`."""

    def __init__(self, device: torch.device, decoder: str, workers: int, max_pixels: int, min_side: int,
                 processes: bool = False) -> None:
        self.device, self.decoder, self.workers, self.processes = device, decoder, workers, processes
        self.max_pixels, self.min_side = max_pixels, min_side
        self._thread = threading.local()  # per thread of this process: its stream

    @contextlib.contextmanager
    def read(self, paths: Sequence[str | os.PathLike], lookahead: int) -> Iterator[Iterator[Decoded]]:
        """The decoded ``paths``, in order, with up to ``lookahead`` files (and LOOKAHEAD_BYTES of
        pixels) decoded ahead."""
        budget = Budget(LOOKAHEAD_BYTES)
        with contextlib.ExitStack() as stack:
            if self.processes:
                submit = stack.enter_context(_DecodingProcesses(self, budget)).submit
            else:
                pool = ThreadPoolExecutor(self.workers, thread_name_prefix="vggfeat-decode")
                stack.callback(pool.shutdown, cancel_futures=True)  # a reader that stops early waits for no more
                submit = functools.partial(pool.submit, self._decode_group, budget=budget)
            stack.callback(budget.close)  # first: no worker is left waiting for a reader gone
            yield self._ahead(paths, submit, lookahead, budget)

    def _ahead(self, paths: Sequence[str | os.PathLike], submit: Callable[[list[Path], int], Future],
               lookahead: int, budget: Budget) -> Iterator[Decoded]:
        # Files go in groups: torchvision decodes a group in one batch, a process returns it in one block.
        group = 1 if self.decoder == "pil" and not self.processes else JPEG_GROUP
        pending: deque[Future] = deque()
        upcoming, numbers = iter(paths), itertools.count()

        def submit_next() -> None:
            files = [Path(path) for path in itertools.islice(upcoming, group)]
            if files:
                pending.append(submit(files, next(numbers)))

        for _ in range(-(-lookahead // group)):
            submit_next()
        number = 0
        while pending:
            budget.reading(number)
            future = pending.popleft()
            submit_next()
            results, held = future.result()
            yield from results
            budget.give_back(held)  # the reader holds them now, within its own bounds
            number += 1

    def _decode_group(self, paths: list[Path], number: int, budget: Budget, limit: int | None = None
                      ) -> tuple[list[Decoded], int]:
        """The files' pixels, and how many bytes of the budget they took (group ``number``). With a
        ``limit``, only the first files whose pixels it holds (at least one), by their headers."""
        results: list[Decoded | None] = []
        jpegs: list[tuple[int, EncodedJpeg]] = []
        held = total = 0
        for path in paths:
            try:
                jpeg = None if self.decoder == "pil" else read_jpeg(path, self.max_pixels, self.min_side)
            except ImageError as error:
                results.append(error)
                continue
            if limit is not None:
                nbytes = _header_bytes(path) if jpeg is None else jpeg.decoded_bytes
                if results and total + nbytes > limit:
                    break
                total += nbytes
            if jpeg is None:
                pixels, taken = self._decode(path, number, budget)
                results.append(pixels)
                held += taken
            else:
                jpegs.append((len(results), jpeg))
                results.append(None)
        on = self.device if self.decoder == "nvjpeg" else torch.device("cpu")
        for batch in _blocks(jpegs, lambda item: item[1].decoded_bytes, BLOCK_BYTES):
            held += budget.take(number, sum(jpeg.decoded_bytes for _, jpeg in batch))  # before they exist
            with self._own_stream():
                decoded = decode_jpegs([jpeg for _, jpeg in batch], on)
                if on != self.device:
                    decoded = [None if pixels is None else self._upload(pixels) for pixels in decoded]
            for (i, jpeg), pixels in zip(batch, decoded):
                if pixels is None:  # PIL decides
                    pixels, taken = self._decode(jpeg.path, number, budget)
                    held += taken
                results[i] = pixels
        return results, held

    def _decode(self, path: Path, number: int, budget: Budget) -> tuple[Decoded, int]:
        try:
            rgb = decode_image(path, max_pixels=self.max_pixels, min_side=self.min_side)
        except ImageError as error:
            return error, 0
        held = budget.take(number, rgb.nbytes)
        if self.device.type != "cuda":
            return rgb, held
        with self._own_stream():
            return self._upload(torch.from_numpy(rgb)).permute(2, 0, 1), held

    def _unpack(self, packed: torch.Tensor, outcomes: list[tuple[int, int] | str]) -> list[Decoded]:
        """A worker process's block: [3, H, W] views of it, or the errors. For a GPU the block is in
        pinned memory (_DecodingProcesses._copied), and goes there in one upload."""
        if self.device.type == "cuda":
            with self._own_stream():
                packed = self._upload(packed, pinned=True)
        results: list[Decoded] = []
        start = 0
        for outcome in outcomes:
            if isinstance(outcome, str):
                results.append(ImageError(outcome))
                continue
            height, width = outcome
            results.append(packed[start : start + 3 * height * width].view(3, height, width))
            start += 3 * height * width
        return results

    def _upload(self, pixels: torch.Tensor, pinned: bool = False) -> torch.Tensor:
        """``pixels`` on the network's GPU; or left on the host when the GPU has no room for them
        now, for the network's thread to upload with their batch (where a batch that does not fit
        is split, and an image that does not fit alone is recorded as failed): an upload ahead of
        the network must never fail the run. ``pinned``: they are in pinned memory, which the
        caller knows: ``is_pinned`` asks the driver (cudaPointerGetAttributes, 2.6 ms a call on
        average in a profile of a run on an H100 machine)."""
        try:
            return pixels.to(self.device, non_blocking=pinned)
        except torch.cuda.OutOfMemoryError:
            return pixels

    @contextlib.contextmanager
    def _own_stream(self) -> Iterator[None]:
        """On a GPU, run the block on this thread's own stream, and wait for it.

        Uploads from pageable memory then block only this thread, never the stream the network
        runs on. And decoders get memory that only this stream has used, after its earlier work
        is done: nvJPEG's hardware decoder is known to write its output before the work queued
        ahead of it on its stream has run (pytorch/vision#9606).
        """
        if self.device.type != "cuda":
            yield
            return
        stream = getattr(self._thread, "stream", None)
        if stream is None:
            stream = self._thread.stream = torch.cuda.Stream(self.device)
        with torch.cuda.stream(stream):
            yield
        stream.synchronize()


class Budget:
    """Bytes of decoded pixels that decoding workers may hold ahead of the reader.

    A worker takes what an image will need before it decodes it (or uploads it), waiting while
    the budget is spent; the reader gives a group's bytes back once it has read the group. The
    group the reader waits for (``reading``) never waits, so reading always goes on, whatever the
    image sizes: host and GPU memory stay bounded for photos of 24 megapixels as for thumbnails.
    """

    def __init__(self, limit: int | None) -> None:  # None: no limit
        self.limit, self.held, self.next_read, self.closed = limit, 0, 0, False
        self._changed = threading.Condition()

    def take(self, number: int, nbytes: int) -> int:
        """Wait until group ``number`` may hold ``nbytes`` more; returns ``nbytes``."""
        with self._changed:
            self._changed.wait_for(lambda: self.closed or self.limit is None or number <= self.next_read
                                   or self.held + nbytes <= self.limit)
            self.held += nbytes
        return nbytes

    def give_back(self, nbytes: int) -> None:
        with self._changed:
            self.held -= nbytes
            self._changed.notify_all()

    def reading(self, number: int) -> None:
        """The reader now waits for group ``number``."""
        with self._changed:
            self.next_read = number
            self._changed.notify_all()

    def close(self) -> None:
        """The reader is gone: nobody waits any more."""
        with self._changed:
            self.closed = True
            self._changed.notify_all()


class _DecodingProcesses:
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
        self.arguments = (reader.decoder, reader.max_pixels, reader.min_side)
        self.context = multiprocessing.get_context(PROCESS_START)
        if PROCESS_START == "forkserver":
            self.context.set_forkserver_preload([__name__])
        count = reader.workers + 2  # a thread (and slot) for every worker, and two being copied out
        self.slots = _slots(count) if _reuses_slots(reader.device) else []
        self.free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for slot in range(len(self.slots)):
            self.free.put(slot)
        self.pool = self._pool(reader.workers)
        self.receiving = ThreadPoolExecutor(count, thread_name_prefix="vggfeat-receive")
        self.lock = threading.Lock()
        self.crashes = 0

    def __enter__(self) -> _DecodingProcesses:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.receiving.shutdown(wait=True, cancel_futures=True)
        self.pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, files: list[Path], number: int) -> Future[tuple[list[Decoded], int]]:
        return self.receiving.submit(self._received, files, number)

    def _received(self, files: list[Path], number: int) -> tuple[list[Decoded], int]:
        results: list[Decoded] = []
        held = 0
        while len(results) < len(files):
            blocks = self._decoded(files[len(results):])
            for pixels, outcomes in blocks:  # the budget once the slot is free again
                held += self.budget.take(number, pixels.numel())
                results += self.reader._unpack(pixels, outcomes)
        return results, held

    def _decoded(self, files: list[Path]) -> list[tuple[torch.Tensor, list[tuple[int, int] | str]]]:
        """The first of ``files`` that a slot holds (at least one), decoded by a worker and copied
        out of its slot: [(pixels, outcomes)], one block; after a worker's death, one per file."""
        slot = self.free.get() if self.slots else None
        try:
            pool = self.pool
            try:
                block = _block(pool.submit(_decode_into, [str(f) for f in files], slot, *self.arguments))
            except BrokenProcessPool:  # broken by another group's file, and not restarted yet
                block = None
            return [self._copied(slot, *block)] if block is not None else self._alone(files, slot, pool)
        finally:
            if slot is not None:
                self.free.put(slot)

    def _copied(self, slot: int | None, own: torch.Tensor | None, outcomes: list[tuple[int, int] | str]
                ) -> tuple[torch.Tensor, list[tuple[int, int] | str]]:
        """The pixels out of the slot, or the block of their own that they came in; for a GPU, in
        pinned memory, for the upload."""
        cuda = self.reader.device.type == "cuda"
        if own is not None:
            return (own.pin_memory() if cuda else own), outcomes
        pixels = self.slots[slot][: sum(3 * h * w for h, w in _sizes(outcomes))]
        return (pixels.pin_memory() if cuda else pixels.clone()), outcomes

    def _alone(self, files: list[Path], slot: int | None, broken: ProcessPoolExecutor
               ) -> list[tuple[torch.Tensor, list[tuple[int, int] | str]]]:
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
                    block = _block(alone.submit(_decode_into, [str(path)], slot, *self.arguments))
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

    def _started(self, workers: int) -> ProcessPoolExecutor:
        """A pool whose process has been seen to start: were it to die whatever it is given, every
        file would otherwise be recorded as one that crashed the decoder."""
        pool = self._pool(workers)
        try:
            pool.submit(_worker_setup, self.slots, os.getpid()).result()
        except BrokenProcessPool:
            pool.shutdown(wait=False)
            raise VggfeatError("decoding processes die as they start (a script that starts them must guard its "
                               "code with if __name__ == '__main__'); or decode in threads (--decode-in threads)") from None
        return pool

    def _pool(self, workers: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(workers, mp_context=self.context, initializer=_worker_setup,
                                   initargs=(self.slots, os.getpid()))


def shared_memory_holds(workers: int) -> bool:
    """Whether shared memory (/dev/shm) has room for the slots of ``workers`` decoding processes
    and as much again (Docker gives containers 64 MiB unless told otherwise)."""
    try:
        free = shutil.disk_usage("/dev/shm").free
    except OSError:
        return False
    return free >= 2 * (workers + 2) * SLOT_BYTES


def _reuses_slots(device: torch.device) -> bool:
    """Whether workers decode into reused slots (for a GPU) or fresh blocks (see _DecodingProcesses)."""
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


def _sizes(outcomes: list[tuple[int, int] | str]) -> list[tuple[int, int]]:
    return [outcome for outcome in outcomes if not isinstance(outcome, str)]


_SLOTS: list[torch.Tensor] = []  # in a worker process: the reading process's slots, if any


def _worker_setup(slots: list[torch.Tensor], reading_process: int) -> None:
    # One thread each: the workers are already one per core. Ctrl-C is for the main process,
    # which stops them; each would otherwise print a traceback of its own.
    global _SLOTS
    _SLOTS = slots
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not any(thread.name == _WATCH for thread in threading.enumerate()):
        threading.Thread(target=_exit_after, args=(reading_process,), name=_WATCH, daemon=True).start()


_WATCH = "vggfeat-watch-reader"


def _exit_after(process: int) -> None:
    """In a worker: end once ``process``, the reading one, has ended. A reading process that is
    killed (kill -9, a batch system's time limit) cannot stop its workers, which would otherwise
    wait for work for ever, each holding its memory."""
    try:
        descriptor = os.pidfd_open(process)  # readable once the process has ended (Linux 5.3 on)
    except (AttributeError, OSError):
        descriptor = None
    if descriptor is not None:
        select.select([descriptor], [], [])
    else:
        while _running(process):
            time.sleep(1.0)
    os._exit(1)


def _running(process: int) -> bool:
    try:
        os.kill(process, 0)
    except (ProcessLookupError, PermissionError):  # gone; or its number reused by someone else's
        return False
    return True


def _decode_into(paths: list[str], slot: int | None, decoder: str, max_pixels: int, min_side: int
                 ) -> tuple[torch.Tensor | None, list[tuple[int, int] | str]]:
    """In a worker process: decode the first of ``paths`` that fit a slot (at least one) into slot
    ``slot``, [3, H, W] each, one after another; return None (or, with no slot or for one image
    larger than a slot, the pixels in a fresh block of shared memory) and per file decoded its
    (height, width) or why not."""
    reader = ImageReader(torch.device("cpu"), decoder, 1, max_pixels, min_side)
    decoded, _ = reader._decode_group([Path(p) for p in paths], 0, Budget(None), limit=SLOT_BYTES)
    images = [torch.from_numpy(d).permute(2, 0, 1) if isinstance(d, np.ndarray) else d
              for d in decoded if not isinstance(d, ImageError)]
    total = sum(x.numel() for x in images)
    own = None if slot is not None and total <= SLOT_BYTES else torch.empty(total, dtype=torch.uint8).share_memory_()
    target = _SLOTS[slot] if own is None else own
    start = 0
    for x in images:
        target[start : start + x.numel()].view(x.shape).copy_(x)
        start += x.numel()
    outcomes = [str(d) if isinstance(d, ImageError) else tuple(d.shape[1:]) if isinstance(d, torch.Tensor)
                else d.shape[:2] for d in decoded]
    return own, outcomes


def _header_bytes(path: Path) -> int:
    """Decoded size by the header; 0 when it cannot be read (the decoder will say why)."""
    try:
        with open_image_file(path) as file, Image.open(file) as image:
            width, height = image.size
    except Exception:  # noqa: BLE001 - the decoder words the reason
        return 0
    return 3 * width * height


def _blocks(items: list, nbytes: Callable[[object], int], limit: int) -> Iterator[list]:
    """``items`` in consecutive runs of at most ``limit`` bytes decoded (at least one item each):
    large photos are decoded, and take their memory, a few at a time rather than a group at once."""
    block: list = []
    total = 0
    for item in items:
        size = nbytes(item)
        if block and total + size > limit:
            yield block
            block, total = [], 0
        block.append(item)
        total += size
    if block:
        yield block
