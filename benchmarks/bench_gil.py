"""How much decoding threads slow the main thread's Python: the GIL they hold, in one run.

    python benchmarks/bench_gil.py --count 256 --workers 0,2,8,16

On a GPU the main thread queues the network's work: a few small torch operations per image, each
one Python that needs the GIL. This measures the rate of such operations (a flip of a small CPU
tensor) in the main thread while vggfeat's ImageReader decodes JPEGs without pause in ``workers``
threads, with each decoder (``DECODER:processes``: in worker processes instead); 0 workers is the
baseline, measured in the same run; decoding processes run at ``--worker-niceness`` below this
process's priority (vggfeat's default, and others to compare). Threads compete
for the CPU too: the rows "gil-free" run as many threads of work that holds no GIL (SHA-256 of
large buffers), so what is left of the difference is the GIL.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from bench_extract import CONTENTS, jpeg_kilobytes, make_jpegs
import vggfeat.processes
from vggfeat.jpeg import decoder_library
from vggfeat.reading import ImageReader


def operations_per_second(seconds: float) -> float:
    small = torch.zeros(3, 8, 8)
    done, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(100):
            small.flip(-1)
        done += 100
    return done / seconds


def meanwhile(work, threads: int, seconds: float) -> float:
    """The main thread's operations/s while ``threads`` threads run ``work(stop, started)``, from
    when every one of them has started (decoding processes take seconds to)."""
    stop = threading.Event()
    started = [threading.Event() for _ in range(threads)]
    running = [threading.Thread(target=work, args=(stop, ready)) for ready in started]
    for thread in running:
        thread.start()
    for ready in started:
        ready.wait()
    time.sleep(0.5)  # well under way
    try:
        return operations_per_second(seconds)
    finally:
        stop.set()
        for thread in running:
            thread.join()


def decoding(files: list[Path], decoder: str, workers: int):
    """Work for one thread that keeps an ImageReader of ``workers`` threads (``decoder`` ending in
    ``:processes``: processes) decoding ``files``."""
    decoder, _, where = decoder.partition(":")

    def decode_forever(stop: threading.Event, started: threading.Event) -> None:
        reader = ImageReader(torch.device("cpu"), decoder, workers, max_pixels=10**9, min_side=32,
                             processes=where == "processes")
        # The files over and over, from one reader: processes start once.
        with reader.read(itertools.cycle(files), lookahead=2 * workers + 64) as decoded:
            for _ in decoded:
                started.set()
                if stop.is_set():
                    break

    return decode_forever


def hashing(stop: threading.Event, started: threading.Event) -> None:
    data = bytes(2**22)
    started.set()
    while not stop.is_set():
        hashlib.sha256(data).digest()  # releases the GIL over large buffers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=256, help="JPEGs (500x375 / 375x500), decoded in a loop")
    parser.add_argument("--workers", default="0,2,8,16", help="decoding threads to try; 0 is the baseline")
    parser.add_argument("--decoders", default="pil,torchvision,pil:processes,torchvision:processes")
    parser.add_argument("--seconds", type=float, default=2.0, help="measured per setting")
    parser.add_argument("--switch-interval", type=float, metavar="SECONDS",
                        help="Python's GIL switch interval (default 0.005): how long a thread that wants the GIL "
                             "waits before the one holding it is made to let go")
    parser.add_argument("--content", choices=CONTENTS, default="photo", help="of the JPEGs (see bench_extract.py)")
    parser.add_argument("--worker-niceness", default=str(vggfeat.processes.WORKER_NICENESS),
                        help="decoding processes' priority below this process's (Unix niceness); comma-separated "
                             "values are each measured [default: %(default)s]")
    args = parser.parse_args()
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    torch.set_num_threads(1)  # the flips' own threads would blur the figure
    with tempfile.TemporaryDirectory() as tmp:
        files = make_jpegs(Path(tmp), args.count, content=args.content)
        baseline = operations_per_second(args.seconds)
        print(f"{args.count} {args.content} JPEGs, {jpeg_kilobytes(files):.0f} KB on average")
        print(f"main thread alone: {baseline:,.0f} small torch operations/s (torchvision decoder: {decoder_library()}; "
              f"GIL switch interval {sys.getswitchinterval():g} s)")
        counts = [int(w) for w in args.workers.split(",") if int(w) > 0]
        nicenesses = [int(n) for n in args.worker_niceness.split(",")]
        for name in ["gil-free", *args.decoders.split(",")]:
            for niceness in nicenesses if name.endswith(":processes") else [None]:
                if niceness is not None:
                    vggfeat.processes.WORKER_NICENESS = niceness
                label = name if niceness is None else f"{name} +{niceness}"
                for count in counts:
                    if name == "gil-free":
                        rate = meanwhile(hashing, count, args.seconds)
                    else:
                        rate = meanwhile(decoding(files, name, count), 1, args.seconds)
                    print(f"{label:26} {count:3} workers: {rate:12,.0f} operations/s, {rate / baseline:6.1%} of alone")


if __name__ == "__main__":
    main()
