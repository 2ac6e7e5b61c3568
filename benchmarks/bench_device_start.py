"""How long ``vggfeat extract --device A,B`` takes to start its devices' processes: the command now
against the same command with each device's process spawned afresh, as before the thirty-sixth
session, in one run.

    python benchmarks/bench_device_start.py --repeats 3 --devices cpu,cpu

Each run is a fresh ``vggfeat extract`` process (``python -c``, the interpreter of this script),
timed from start to exit, its median over --repeats printed, on --count small PNGs at conv1_1 (so
that starting is most of the run): its own imports, the network loaded on the first device, the
devices' processes started, each building its network, and the blocks merged. Three ways:

- before: each device's process spawned (it imports torch, torchvision and vggfeat itself) and
  random weights drawn by torchvision's constructor, each layer initialised twice;
- spawned: as before, but with random weights drawn once (this session's ``weights._random``);
- now: the processes forked from the fork server, started as the network loads, which imported
  vggfeat once.

Random weights (``--weights random``): ImageNet weights are read from a file, in about 0.3 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

SPAWNED = ("import multiprocessing, vggfeat.multidevice; "
           "vggfeat.multidevice.process_context = lambda: multiprocessing.get_context('spawn'); "
           "import vggfeat.processes; vggfeat.processes.start_process_server = lambda: None; ")
# Random weights as load_vgg drew them before: torchvision's constructor under a seed; patched into
# vggfeat.weights as a process imports it (not at start: the resource tracker needs no torch).
TWICE_INITIALISED = """
import importlib.util, sys

def _random(model, seed):
    import torch, torchvision
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torchvision.models.get_model(model, weights=None)

class _PatchWeights:
    def find_spec(self, name, path, target=None):
        if name != "vggfeat.weights":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module
        def exec_module(module):
            run(module)
            module._random = _random
        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, _PatchWeights())
"""
RUN = "from vggfeat.cli import main; main()"
# (the command's code, what its processes and their children run first: a sitecustomize module)
WAYS = {"before": (SPAWNED + RUN, TWICE_INITIALISED), "spawned": (SPAWNED + RUN, None), "now": (RUN, None)}


def seconds(code: str, site: str | None, args: list[str], repeats: int, work: Path) -> float:
    """Median wall time of ``python -c code args...`` over ``repeats`` runs, every process of
    which first runs ``site``."""
    environment = dict(os.environ)
    if site:
        (work / "site").mkdir(exist_ok=True)
        (work / "site" / "sitecustomize.py").write_text(site)
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(work / "site"), environment.get("PYTHONPATH")]))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, env=environment)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--devices", default="cpu,cpu")
    parser.add_argument("--model", default="vgg16")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work) / "images"
        folder.mkdir()
        rng = np.random.default_rng(0)
        for i in range(args.count):
            Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
        command = ["extract", str(folder), str(Path(work) / "out.h5"), "--model", args.model, "--weights", "random",
                   "--layer", "conv1_1", "--scales", "224", "--no-flip", "--device", args.devices, "--overwrite", "-q"]
        print(f"vggfeat extract of {args.count} images on {args.devices} ({args.model} conv1_1), median of {args.repeats}:")
        times = {way: seconds(code, site, command, args.repeats, Path(work)) for way, (code, site) in WAYS.items()}
        for way, taken in times.items():
            print(f"  {way:8s} {taken:6.2f} s   ({times['before'] / taken:.2f}x before)")


if __name__ == "__main__":
    main()
