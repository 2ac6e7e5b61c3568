"""How long a ``vggfeat`` command takes to start: each command as the CLI runs it now (its module
imported when it runs, torch only where it runs the network) against every command imported first,
with the modules that run jobs, as the CLI did before.

    python benchmarks/bench_startup.py --repeats 5

Each run is a fresh process (``python -c``, the interpreter of this script), timed from start to
exit, its median over --repeats printed. The commands: ``--help``; ``info`` on a small features
file, an index and an SVM model (written to --workdir first); ``train-svm --help``; ``extract
--help``, ``classify --help`` and ``search --help``, whose modules imported torch before their
options were declared apart from it (vggfeat.choices). The baseline runs the same command after
importing every command's module and the modules that run extraction jobs at the terminal, which
is what the CLI did before.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_svm import make_file  # noqa: E402

NOW = "from vggfeat.cli import main; main()"
EAGER = ("from vggfeat.cli import COMMANDS, cli, main, jobs, posteriors; [cli.get_command(None, name) for name in COMMANDS]; "
         "main()")


def seconds(code: str, args: list[str], repeats: int) -> float:
    """Median wall time of ``python -c code args...`` over ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=None, help="Folder for the small files [default: a temporary one].")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_startup-"))
    workdir.mkdir(parents=True, exist_ok=True)
    features, index, model = workdir / "features.h5", workdir / "index.h5", workdir / "model.h5"
    make_file(features, rows=5000, dim=64, classes=10)
    for prepare in (["index", features, index, "-q", "--overwrite"], ["train-svm", features, model, "--C", "1", "-q", "--overwrite"]):
        subprocess.run([sys.executable, "-c", NOW, *map(str, prepare)], check=True, capture_output=True)
    commands = [["--help"], ["info", features], ["info", index], ["info", model], ["train-svm", "--help"],
                ["extract", "--help"], ["classify", "--help"], ["search", "--help"]]
    print(f"{'command':<40} {'now':>8} {'all first':>10} {'ratio':>6}")
    for command in commands:
        command = list(map(str, command))
        now, eager = seconds(NOW, command, args.repeats), seconds(EAGER, command, args.repeats)
        shown = " ".join(arg if not arg.startswith("/") else Path(arg).name for arg in command)
        print(f"{'vggfeat ' + shown:<40} {now:>7.2f}s {eager:>9.2f}s {eager / now:>5.1f}x")


if __name__ == "__main__":
    main()
