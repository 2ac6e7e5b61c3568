"""What a py-spy recording says a run spent its time on: the functions of most samples, per thread.

    py-spy record --gil --threads --format raw -r 200 -o gil.txt -- python benchmarks/bench_extract.py ...
    python benchmarks/spy_summary.py gil.txt --without make_jpegs --without model_only --without naive

py-spy (``pip install py-spy``) samples the Python stacks of a running program; ``--gil`` keeps only
the thread holding the GIL, so the recording shows what holds it: where the main thread, which
queues the GPU's work, competes with the reading process's other threads. ``--format raw`` writes
one line per distinct stack, its frames joined by ``;`` and its count of samples last. This prints
the share of samples of each thread, then the functions with most samples of their own (the
innermost frame) and in all (anywhere on the stack), leaving out the samples whose stack holds
one of the ``--without`` functions (by name: a benchmark's set-up and its other measures, so
that what is left is the run it times, in all its threads).
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path


def read_stacks(path: Path, without: list[str] | None) -> list[tuple[list[str], int]]:
    """[(frames, samples)]: the thread first, then the frames outermost first, as py-spy writes them."""
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if len(frames) < 2:  # no Python frame: the interpreter starting or ending
            continue
        if not any(_function(frame) in (without or ()) for frame in frames):
            stacks.append((frames, int(count)))
    return stacks


def _function(frame: str) -> str:
    """``module.function`` or ``function`` of ``name (file:line)``, without the place."""
    return frame.split(" (")[0].rsplit(".", 1)[-1]


def _thread(frame: str) -> str:
    """py-spy's thread frame, ``thread (id): name``, as its name (or its id, unnamed)."""
    return frame.split("): ", 1)[1] if "): " in frame else frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recording", type=Path, help="py-spy's --format raw output")
    parser.add_argument("--without", action="append", metavar="FUNCTION",
                        help="leave out the samples whose stack holds this function (repeat it for more)")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    stacks = read_stacks(args.recording, args.without)
    total = sum(count for _, count in stacks)
    left = f" outside {', '.join(args.without)}" if args.without else ""
    if not total:
        raise SystemExit(f"no samples{left} in {args.recording}")
    threads, own, anywhere = collections.Counter(), collections.Counter(), collections.Counter()
    for frames, count in stacks:
        # Decoding threads are numbered (vggfeat-receive_3): one name for them all.
        threads[_thread(frames[0]).rstrip("0123456789_")] += count
        own[frames[-1].split(" (")[0]] += count
        for frame in {frame.split(" (")[0] for frame in frames[1:]}:
            anywhere[frame] += count
    print(f"{total:,} samples{left}")
    for title, counter in (("threads", threads), ("own samples (innermost frame)", own), ("samples in all", anywhere)):
        print(f"{title}:")
        for name, count in counter.most_common(args.top):
            print(f"  {count / total:6.1%}  {name}")


if __name__ == "__main__":
    main()
