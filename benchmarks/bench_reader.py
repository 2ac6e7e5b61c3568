"""Reading alone, without the network: how fast ImageReader delivers decoded images, in threads
against processes, in one run.

    python benchmarks/bench_reader.py --count 256 --images 4096 --workers 2,16 --device cuda

The single-scale target (5,000 images/s end to end) needs the reader to deliver at least that
much while the network runs. This makes ``--count`` 500x375 / 375x500 JPEGs, then reads
``--images`` of them (the files over and over) with each decoder, in threads and in processes, with
``--workers`` of each, on ``--device`` (on a GPU the pixels end there, uploaded by the reader's
threads), and prints images/s, this process's CPU time per image (its threads included; the
processes' own CPU is not) and the whole machine's (every process's: with the workers'; Linux),
with the cores busy on average: all of them busy means reading is short of CPU. Each read starts
its own decoding processes and shuts them down at its end, so their start (about 0.15-0.3 s a read
on this workplace's 2-core VM) is inside each timed read: it weighs most at small --images. The
untimed read before it pays the first-time costs that do carry over (imports; on a GPU, CUDA's).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench_extract import CONTENTS, jpeg_kilobytes, machine_cpu_seconds, make_jpegs
from cuda_check import require_cuda
import vggfeat.processes
from vggfeat.errors import VggfeatError
from vggfeat.jpeg import decoder_library
from vggfeat.reading import GPU_DECODERS, ImageReader
from vggfeat.settings import decoder_library_of


def read_all(reader: ImageReader, paths: list[Path], lookahead: int) -> int:
    count = 0
    with reader.read(paths, lookahead) as decoded:
        for _ in decoded:
            count += 1
    if reader.device.type == "cuda":
        torch.cuda.synchronize()
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=256, help="JPEGs made")
    parser.add_argument("--images", type=int, default=2048, help="images read per setting")
    parser.add_argument("--workers", default="2", help="comma-separated counts of threads or processes")
    parser.add_argument("--decoders", default="pil,torchvision")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--lookahead", type=int, default=1024, help="files decoded ahead (the extractor's: ~1,000 on a GPU)")
    parser.add_argument("--slots", choices=["auto", "on", "off"], default="auto",
                        help="processes decode into reused slots of shared memory (auto: for a GPU) or fresh blocks")
    parser.add_argument("--content", choices=CONTENTS, default="photo", help="of the JPEGs (see bench_extract.py)")
    parser.add_argument("--worker-niceness", type=int, default=vggfeat.processes.WORKER_NICENESS,
                        help="decoding processes' priority below this process's (Unix niceness) [default: %(default)s]")
    args = parser.parse_args()
    require_cuda("bench_reader", args.device)
    vggfeat.processes.WORKER_NICENESS = args.worker_niceness
    if args.slots != "auto":
        vggfeat.processes._reuses_slots = lambda device: args.slots == "on"
    device = torch.device(args.device)
    decoders = [d for d in args.decoders.split(",") if d == "pil" or decoder_library_of(d) != "none"]
    with tempfile.TemporaryDirectory() as tmp:
        files = make_jpegs(Path(tmp), args.count, content=args.content)
        paths = list(itertools.islice(itertools.cycle(files), args.images))
        print(f"{args.images} reads of {args.count} {args.content} JPEGs (500x375 / 375x500, "
              f"{jpeg_kilobytes(files):.0f} KB on average) onto {device}; "
              f"batched decoder: {decoder_library()}; processes decode into "
              f"{'reused slots' if vggfeat.processes._reuses_slots(device) else 'fresh blocks'}, at niceness "
              f"+{args.worker_niceness}")
        for decoder in decoders:
            for workers in (int(w) for w in args.workers.split(",")):
                rates = {}
                for processes in (False,) if decoder in GPU_DECODERS else (False, True):  # those decode from this process
                    reader = ImageReader(device, decoder, workers, max_pixels=10**9, min_side=32, processes=processes)
                    # Warm-up: imports, streams; not the processes' start, which each read pays anew.
                    read_all(reader, files[:workers], lookahead=workers)
                    wall, cpu, machine = time.perf_counter(), time.process_time(), machine_cpu_seconds()
                    count = read_all(reader, paths, args.lookahead)
                    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                    machine = machine_cpu_seconds() - machine
                    rates[processes] = count / wall
                    print(f"  {decoder:12} {workers:3} {'processes' if processes else 'threads  '}: "
                          f"{count / wall:8.0f} images/s, this process's CPU {1e6 * cpu / count:6.0f} us an image, "
                          f"the machine's {1e6 * machine / count:6.0f} us ({machine / wall:.1f} of {os.cpu_count()} cores busy)")
                if True in rates:
                    print(f"  {decoder:12} {workers:3} processes / threads: {rates[True] / rates[False]:.2f}x")


if __name__ == "__main__":
    try:
        main()
    except VggfeatError as error:
        sys.exit(f"error: {error}")
