"""R-MAC pooling: vggfeat's against the direct loop, region by region and image by image, in one run.

    python benchmarks/bench_pooling.py --device cuda --batch 64

Pools conv5_3-sized maps (512 channels, the map of a 512x683 input: 32x42) with vggfeat's
``pool_map(..., "rmac")`` (on a GPU: maps of one size pooled together, a kernel per region; on the
CPU: map by map, which measured faster there) and with the direct loop (one slice and max per
region and image, as in Tolias et al.'s code), checks they agree, and prints maps/s of both.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F

from cuda_check import require_cuda
from vggfeat.errors import VggfeatError
from vggfeat.pooling import pool_map, rmac_by_size, rmac_regions


def direct(maps: torch.Tensor) -> torch.Tensor:
    pooled = []
    for x in maps:
        regional = torch.stack([x[:, t : t + h, l : l + w].amax(dim=(-2, -1)) for t, l, h, w in rmac_regions(*x.shape[-2:])])
        pooled.append(F.normalize(F.normalize(regional, dim=1, eps=1e-6).sum(0), dim=0, eps=1e-6))
    return torch.stack(pooled)


def rate(pool, maps: torch.Tensor, repeats: int) -> float:
    pool(maps)  # warm-up
    if maps.is_cuda:
        torch.cuda.synchronize()
    began = time.perf_counter()
    for _ in range(repeats):
        pool(maps)
    if maps.is_cuda:
        torch.cuda.synchronize()
    return repeats * len(maps) / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", default="32x42", help="map height x width")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    require_cuda("bench_pooling", args.device)
    height, width = (int(v) for v in args.size.split("x"))
    maps = torch.relu(torch.randn(args.batch, 512, height, width, generator=torch.Generator().manual_seed(0))).to(args.device)
    batched = lambda m: pool_map(m, None, "rmac")  # noqa: E731
    difference = (batched(maps) - direct(maps)).abs().max().item()
    print(f"device {args.device}; {args.batch} maps of 512x{height}x{width}, {len(rmac_regions(height, width))} regions each; "
          f"largest difference {difference:.2e}")
    grouped = lambda m: rmac_by_size(m, [tuple(m.shape[-2:])] * len(m))  # noqa: E731 - pool_map's GPU path
    a, b, c = (rate(pool, maps, args.repeats) for pool in (direct, batched, grouped))
    print(f"direct, region by region   {a:10.1f} maps/s")
    print(f"vggfeat pool_map           {b:10.1f} maps/s   {b / a:5.1f}x")
    print(f"maps of one size together  {c:10.1f} maps/s   {c / a:5.1f}x  (pool_map's path on a GPU)")


if __name__ == "__main__":
    try:
        main()
    except VggfeatError as error:
        sys.exit(f"error: {error}")
