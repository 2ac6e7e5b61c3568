"""JPEG decoding on a GPU: torchvision's batched nvJPEG (``--decoder nvjpeg``) against nvImageCodec's
backends, the hardware JPEG engines of an A100/H100/H200 among them, in one run.

    python benchmarks/bench_gpu_decode.py --count 512 --batch 32,256 --rounds 5

Could decoding on the GPU lift the single-scale setting (``--scales 224 --center-crop``) past the
5,000 images/s that 16 cores of CPU decoding do not reach? The ninth session's torchvision nvJPEG
was no faster end to end than decoding on the CPU. nvImageCodec (``pip install
nvidia-nvimgcodec-cu13 nvidia-nvjpeg``; vggfeat's ``--decoder nvimgcodec`` since the twenty-first
session, not installed with it) can decode on the
GPU's hardware JPEG engines (``HW_GPU_ONLY``), which take no CUDA cores and no CPU; also with CUDA
(``GPU_ONLY``), with CPU Huffman decoding and CUDA (``HYBRID_CPU_GPU``), or on the CPU
(``CPU_ONLY``, the baseline for the CPU's share: libjpeg-turbo).

Makes ``--count`` photo-like 500x375 / 375x500 JPEGs (``bench_extract.make_jpegs``), holds their
bytes in memory (decoding alone: no file reading), then decodes them in batches of ``--batch`` (each
of several on the GPU: vggfeat's decoding threads call with 32 files) with each way that works
here, vggfeat's own ``--decoder nvimgcodec`` among them, ``--rounds`` times after one warm-up
round, and prints images/s, this process's CPU per image, and how the pixels compare with PIL's
(largest and mean difference, in levels). A way that cannot start here (no GPU, no hardware engine, no library) says why and is
skipped. Without a GPU only the CPU ways run: a check of the script, not a figure.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench_extract import jpeg_kilobytes, make_jpegs

Decode = Callable[[list[bytes]], list[torch.Tensor]]  # JPEG bytes -> [3, H, W] uint8, on the GPU or the host


def torchvision_nvjpeg(device: torch.device) -> Decode:
    from torchvision.io import decode_jpeg

    def decode(datas: list[bytes]) -> list[torch.Tensor]:
        encoded = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in datas]
        return decode_jpeg(encoded, device=device)

    return decode


def torchvision_cpu() -> Decode:
    from torchvision.io import decode_jpeg

    def decode(datas: list[bytes]) -> list[torch.Tensor]:
        return decode_jpeg([torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in datas])

    return decode


def nvimgcodec_backend(kind: str, device: torch.device | None) -> Decode:
    """A decoder of one nvImageCodec backend: planar RGB ([3, H, W], vggfeat's layout), on the
    GPU's current stream, or on the host for CPU_ONLY."""
    from vggfeat.gpujpeg import install_command, library

    nvimgcodec = library()  # imported as vggfeat does, without its lines about codecs it lacks
    if nvimgcodec is None:
        raise RuntimeError(f"nvImageCodec is not installed: {install_command()}")

    on_cpu = kind == "CPU_ONLY"
    decoder = nvimgcodec.Decoder(
        device_id=nvimgcodec.NVIMGCODEC_DEVICE_CPU_ONLY if on_cpu else device.index or 0,
        backends=[nvimgcodec.Backend(getattr(nvimgcodec.BackendKind, kind))])
    params = nvimgcodec.DecodeParams(apply_exif_orientation=True, color_spec=nvimgcodec.ColorSpec.SRGB,
                                     sample_format=nvimgcodec.SampleFormat.P_RGB)

    def decode(datas: list[bytes]) -> list[torch.Tensor]:
        if on_cpu:
            images = decoder.decode(datas, params=params)
            return [None if image is None else torch.from_numpy(np.asarray(image.cpu())) for image in images]
        stream = torch.cuda.current_stream(device).cuda_stream
        images = decoder.decode(datas, params=params, cuda_stream=stream)
        return [None if image is None else torch.as_tensor(image, device=device) for image in images]

    return decode


def vggfeat_nvimgcodec(device: torch.device) -> Decode:
    """vggfeat's own decoder (:class:`vggfeat.gpujpeg.BatchDecoder`): its backends in order, its
    options, the current stream."""
    from vggfeat.gpujpeg import BatchDecoder

    decoder = BatchDecoder(device)
    return lambda datas: decoder([torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in datas])


def timed(decode: Decode, datas: list[bytes], batch: int, rounds: int, device: torch.device | None
          ) -> tuple[float, float, list[torch.Tensor]]:
    """(images/s, this process's CPU microseconds per image, the first batch's pixels)."""
    def one_round() -> list[torch.Tensor]:
        first = None
        for start in range(0, len(datas), batch):
            pixels = decode(datas[start : start + batch])
            first = pixels if first is None else first
        if device is not None:
            torch.cuda.synchronize(device)
        return first

    first = one_round()  # warm-up: the decoder's buffers, the engines' start
    began, cpu = time.perf_counter(), time.process_time()
    for _ in range(rounds):
        one_round()
    seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
    images = rounds * len(datas)
    return images / seconds, 1e6 * cpu / images, first


def agreement(pixels: list[torch.Tensor], references: list[np.ndarray]) -> str:
    """How ``pixels`` ([3, H, W]) compare with PIL's (H, W, 3) of the same files."""
    failed = sum(p is None for p in pixels)
    pairs = [(p, r) for p, r in zip(pixels, references) if p is not None]
    if any(tuple(p.shape) != (3, *r.shape[:2]) for p, r in pairs):
        return f"shape differs from PIL's ({tuple(pairs[0][0].shape)} against {pairs[0][1].shape}), {failed} failed"
    differences = [np.abs(p.cpu().permute(1, 2, 0).numpy().astype(np.int16) - r) for p, r in pairs]
    largest = max(int(d.max()) for d in differences)
    mean = float(np.mean([d.mean() for d in differences]))
    return f"vs PIL: largest {largest}, mean {mean:.3f} levels; {failed} failed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=512, help="JPEGs made")
    parser.add_argument("--batch", default="256", help="JPEGs per decode call; several (32,256): the GPU's ways with each")
    parser.add_argument("--rounds", type=int, default=5, help="timed passes over the JPEGs on the GPU")
    parser.add_argument("--cpu-rounds", type=int, default=1, help="timed passes over the JPEGs on the CPU")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    batches = [int(b) for b in args.batch.split(",")]
    device = torch.device(args.device) if torch.cuda.is_available() and args.device.startswith("cuda") else None

    with tempfile.TemporaryDirectory() as folder:
        paths = make_jpegs(Path(folder), args.count)
        datas = [path.read_bytes() for path in paths]
        references = [np.asarray(Image.open(path).convert("RGB")) for path in paths[: min(batches)]]
        kilobytes = jpeg_kilobytes(paths)
    where = torch.cuda.get_device_name(device) if device is not None else "no GPU: the CPU ways only"
    print(f"{args.count} photo-like JPEGs (500x375 / 375x500, {kilobytes:.0f} KB on average) from memory, batches of "
          f"{args.batch}, {args.rounds} rounds ({args.cpu_rounds} on the CPU); {where}; torch {torch.__version__}")

    ways: list[tuple[str, Callable[[], Decode], torch.device | None]] = [
        ("torchvision, one CPU thread (libjpeg-turbo)", torchvision_cpu, None),
        ("nvImageCodec CPU_ONLY (libjpeg-turbo, its threads)", lambda: nvimgcodec_backend("CPU_ONLY", None), None),
    ]
    if device is not None:
        ways += [
            ("torchvision nvJPEG (vggfeat's --decoder nvjpeg)", lambda: torchvision_nvjpeg(device), device),
            ("nvImageCodec HW_GPU_ONLY (hardware JPEG engines)", lambda: nvimgcodec_backend("HW_GPU_ONLY", device), device),
            ("nvImageCodec GPU_ONLY (CUDA)", lambda: nvimgcodec_backend("GPU_ONLY", device), device),
            ("nvImageCodec HYBRID_CPU_GPU", lambda: nvimgcodec_backend("HYBRID_CPU_GPU", device), device),
            ("vggfeat's --decoder nvimgcodec (engines, then CUDA)", lambda: vggfeat_nvimgcodec(device), device),
        ]
    for name, make, on in ways:
        for batch in batches if on is not None else batches[:1]:
            named = f"{name}, {batch} a call" if len(batches) > 1 else name
            try:
                rate, cpu_us, first = timed(make(), datas, batch, args.rounds if on else args.cpu_rounds, on)
            except Exception as error:  # noqa: BLE001 - a way that cannot run here is reported, the others go on
                print(f"  {named:<64} cannot run here: {type(error).__name__}: {str(error).strip().splitlines()[0][:160]}")
                break
            print(f"  {named:<64} {rate:8,.0f} images/s, this process's CPU {cpu_us:6.0f} us an image; "
                  f"{agreement(first[: len(references)], references)}")


if __name__ == "__main__":
    main()
