"""The benchmarks' check that a CUDA device asked for is there, imported by those that take --device."""

from __future__ import annotations

import sys


def require_cuda(script: str, devices: str, option: str = "--device") -> None:
    """End ``script`` with one line, not a traceback from deep in torch or vggfeat, where ``devices``
    (comma-separated, as ``option`` takes them) names a CUDA device and this machine has none."""
    if not any(device.strip().startswith("cuda") for device in devices.split(",")):
        return
    import torch  # here: a run on the CPU may import no torch at all (bench_svm's liblinear)

    if not torch.cuda.is_available():
        sys.exit(f"{script}: {option} {devices} needs a CUDA GPU; none here")
