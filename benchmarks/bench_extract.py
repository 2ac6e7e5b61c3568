"""Extraction throughput: vggfeat end to end against model-only and a naive loop, in one run.

    python benchmarks/bench_extract.py --count 256 --device cuda --precision fp32

Makes its own JPEG set (500x375 and 375x500, like PASCAL VOC and Caltech photos, or --size 4000x3000
for camera photos, with which --jpeg-draft matters; --content photo, a texture that encodes to the
size of VOC's photos, or smooth, cheaper to decode), then measures
in this one process, with random weights (speed does not depend on their values):
  (a) model only: the network on inputs already resized and on the device, full batches of one
      shape, timed after a first pass that warms up cuDNN's autotuning;
  (b) vggfeat end to end: files on disk to a complete HDF5 (ExtractionJob, as the CLI runs it),
      with cuDNN autotuning on (as in runs of 50,000 images or more; --no-autotune: as in shorter
      ones), its tuning already paid in (a)'s first pass; once per --decode-in given (threads,
      processes: decoding threads against worker processes, whose first start is timed apart), and
      per --decoder given (torchvision,nvimgcodec: the CPU's libjpeg-turbo against the GPU's JPEG
      engines; the GPU's decoders in threads, whatever --decode-in says);
      with --processes-per-device N, also in N processes sharing the device, a shard each
      (MultiDeviceJob): is one process's host side (its GIL) what keeps the GPU waiting?
  (c) naive baseline: per image, per scale, per flip, PIL decoding and torchvision transforms,
      fp32, batch of one, as a user would write it from torchvision;
  (d) with --dataloader: the common torchvision recipe for one view per image, an ImageFolder-style
      dataset with Resize(256), CenterCrop(224), Normalize, a DataLoader with 16 worker processes
      and pinned memory, torchvision's VGG16 up to fc7 (autocast in --precision if not fp32).
With --cold the JPEGs are dropped from the page cache before (b), (c) and (d), which then read
them from the disk. For (b) it also samples, every 50 ms, the GPU's utilisation and this
process's resident memory (host memory that stays flat while files stream through is the point
of the design), and gives the CPU cores busy on average, the machine's and this process's: with
decoding processes, the rest is theirs, and all cores busy means decoding is short of CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gzip
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from cuda_check import require_cuda
import vggfeat.extractor
import vggfeat.gpujpeg
import vggfeat.processes
import vggfeat.reading
from vggfeat import ExtractionJob, Extractor, MultiDeviceJob, VggfeatError, find_images, load_network
from vggfeat.choices import DECODERS
from vggfeat.pooling import global_pool
from vggfeat.reading import GPU_DECODERS, ImageReader
from vggfeat.resize import IMAGENET_MEAN, IMAGENET_STD, as_tensor, plan_batches, to_inputs
from vggfeat.settings import resolve_decoder
from vggfeat.weights import load_vgg


# Content of the generated JPEGs. "photo": texture with the 1/f amplitude spectrum of natural
# images, which encodes at quality 90 to ~90 KB at 500x375, the average size of PASCAL VOC 2007's
# JPEGs (9,963 of them in ~0.9 GB of tar files); it costs 1.2-1.4x as much to decode here as
# "smooth" (~30 KB), whose entropy-coded data is small: the content of the earlier sessions' figures.
CONTENTS = ("photo", "smooth")
_PHOTO_SPECTRUM = 1.1  # amplitude ~ 1/f**1.1; 1.2 gives ~75 KB, 1.3 ~57 KB


def make_jpegs(folder: Path, count: int, varied: bool = False, content: str = "photo",
               size: tuple[int, int] = (500, 375)) -> list[Path]:
    """``count`` JPEGs of ``content``: ``size`` (width, height) and its transpose in turn; ``varied``:
    long side 500, short side 300..500 and either orientation at random, as in PASCAL VOC (many
    batch shapes: cuDNN autotunes each). Returns them in name order."""
    if content not in CONTENTS:
        raise ValueError(f"content {content!r}: choose one of {', '.join(CONTENTS)}")
    rng = np.random.default_rng(0)
    long, short = max(size), min(size)
    # Windows of one texture at random: it is larger than the pictures so that they differ.
    texture = photo_texture(rng, max(1536, long * 5 // 4), max(2048, long * 5 // 4)) if content == "photo" else None
    pictures = []
    for i in range(count):
        height, width = (short, long) if i % 2 == 0 else (long, short)
        if varied:
            short = int(rng.integers(300, 501))
            height, width = (short, 500) if rng.random() < 0.7 else (500, short)
        if texture is None:
            low = rng.integers(0, 256, (height // 25, width // 25, 3), dtype=np.uint8)
            pictures.append((height, width, low))
        else:  # a window of the texture at random, in its own contrast and colour
            top, left = rng.integers(0, texture.shape[0] - height + 1), rng.integers(0, texture.shape[1] - width + 1)
            pictures.append((top, left, height, width, rng.uniform(30, 60), rng.uniform(90, 160, 3)))

    def save(i: int) -> None:
        if texture is None:
            height, width, low = pictures[i]
            picture = Image.fromarray(low).resize((width, height), Image.BILINEAR)
        else:
            top, left, height, width, contrast, colour = pictures[i]
            window = texture[top : top + height, left : left + width]
            picture = Image.fromarray(np.clip(colour + contrast * window, 0, 255).astype(np.uint8))
        picture.save(folder / f"{i:06d}.jpg", quality=90)

    with ThreadPoolExecutor(os.cpu_count()) as pool:  # Pillow encodes without holding the GIL
        list(pool.map(save, range(count)))
    return sorted(folder.glob("*.jpg"))


def photo_texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Colour noise with a natural image's 1/f amplitude spectrum, zero mean and unit deviation,
    [height, width, 3] float32; the channels share most of their content, as a photo's do."""
    frequency = np.hypot(np.fft.fftfreq(height)[:, None], np.fft.rfftfreq(width)[None, :])
    frequency[0, 0] = 1.0
    amplitude = frequency**-_PHOTO_SPECTRUM
    shape = amplitude.shape

    def noise() -> np.ndarray:
        return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)

    shared = noise()
    channels = [np.fft.irfft2((shared + 0.6 * noise()) * amplitude, s=(height, width)) for _ in range(3)]
    texture = np.stack(channels, axis=-1)
    return ((texture - texture.mean()) / texture.std()).astype(np.float32)


def jpeg_kilobytes(files: list[Path]) -> float:
    """The average size of ``files`` in KB, printed with each benchmark's setting."""
    return sum(f.stat().st_size for f in files) / max(len(files), 1) / 1e3


def evict(files: list[Path]) -> None:
    """Drop ``files`` from the page cache, so that the next reads come from the disk, as they do
    in a collection larger than memory. Needs no privileges; has no effect on tmpfs, whose files
    live in memory (see :func:`file_system`)."""
    for path in files:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)  # only clean pages can be dropped
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(descriptor)


def file_system(folder: Path) -> str:
    """The type and device of the file system holding ``folder`` (Linux), for the record."""
    try:
        mounts = [line.split()[:3] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "unknown file system"
    folder = str(folder.resolve())
    device, point, kind = max((m for m in mounts if folder == m[1] or folder.startswith(m[1].rstrip("/") + "/")),
                              key=lambda m: len(m[1]), default=("?", "?", "unknown"))
    return f"{kind} ({device} on {point})"


def process_start(extractor: Extractor, files: list[Path]) -> float:
    """Seconds that the first decoding processes of this Python process take to start (the fork
    server and its imports): paid once per run, so left out of (b), as a long run would amortise it."""
    extractor.decode_in = "processes"
    decoder = "torchvision" if extractor.decoder in GPU_DECODERS else extractor.decoder  # they decode in threads
    reader = ImageReader(extractor.device, decoder, extractor.plan_run(len(files)).workers,
                         extractor.max_pixels, extractor.min_side, processes=True)
    began = time.perf_counter()
    with reader.read(files[:1], lookahead=1) as decoded:
        list(decoded)
    return time.perf_counter() - began


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def model_only(extractor: Extractor, files: list[Path]) -> tuple[float, float]:
    """Images/s of the network alone on the very inputs vggfeat builds, already on the device, in
    the batches vggfeat plans for them; and how many seconds longer the first pass took (cuDNN's
    autotuning of each batch shape, and other first-time costs)."""
    from vggfeat.decode import decode_image

    with ThreadPoolExecutor(os.cpu_count()) as pool:  # untimed set-up: seconds saved on GPU machines' time
        pixels = [as_tensor(rgb, extractor.device) for rgb in pool.map(decode_image, files)]
    batches = []
    for q in extractor.scales:
        inputs = to_inputs(pixels, q, extractor.resize_side, extractor.crop, extractor.flip)
        plan = plan_batches([tuple(x.shape[1:]) for x in inputs], extractor.batch_size, extractor.batch_pixels)
        batches += [[inputs[i] for i in batch] for batch in plan]
    passes = []
    for _ in range(2):  # the first pass warms up: cuDNN's autotuning for every shape
        synchronize(extractor.device)
        began = time.perf_counter()
        for batch in batches:
            extractor._forward(batch)
        synchronize(extractor.device)
        passes.append(time.perf_counter() - began)
    return len(files) / passes[1], passes[0] - passes[1]


@dataclass
class Samples:
    gpu_busy: list[int] = field(default_factory=list)  # percent
    rss: list[int] = field(default_factory=list)  # bytes
    seconds: float = 0.0  # the whole run
    decode_wait: float = 0.0  # the main thread waiting for decoded images
    gpu_wait: float = 0.0  # the main thread waiting for the GPU's results
    tail: float = 0.0  # from the last image described to the complete output file
    steady: float = 0.0  # images/s from 10% to 90% of the images described: without start-up or end
    cpus_busy: float = 0.0  # the machine's cores, all processes: cores' worth busy on average
    own_cpu: float = 0.0  # this process's share of that (its threads; not decoding processes)

    def report(self) -> str:
        busy = f"; {self.steady:,.0f} images/s from 10% to 90% of the images" if self.steady else ""
        busy += f"; GPU busy {np.mean(self.gpu_busy):.0f}% of the time" if self.gpu_busy else ""
        # Whether decoding has the CPUs it needs: all cores busy means it is short of them.
        busy += (f"; CPU cores busy {self.cpus_busy:.1f} of {os.cpu_count()} on average, {self.own_cpu:.1f} of "
                 f"them this process's")
        waits = (f"; main thread waited for decoding {self.decode_wait / self.seconds:.0%} and for results "
                 f"{self.gpu_wait / self.seconds:.0%} of the run; the file was complete {self.tail:.2f} s after the last image ({self.tail / self.seconds:.0%})")
        if not self.rss:
            return busy + waits
        early = max(self.rss[: max(1, len(self.rss) // 4)])
        return (f"{busy}{waits}; host memory {early / 2**20:,.0f} MiB in the first quarter, "
                f"{max(self.rss) / 2**20:,.0f} MiB at most")


@contextlib.contextmanager
def sampled(device: torch.device) -> Iterator[Samples]:
    """GPU utilisation and resident memory of this process, every 50 ms, while the block runs;
    and the CPU cores busy over the block (the machine's, and this process's)."""
    samples, done = Samples(), threading.Event()
    page = os.sysconf("SC_PAGE_SIZE")

    def sample() -> None:
        while not done.wait(0.05):
            if device.type == "cuda":
                samples.gpu_busy.append(torch.cuda.utilization(device))
            with open("/proc/self/statm") as statm:
                samples.rss.append(int(statm.read().split()[1]) * page)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    began, machine, own = time.perf_counter(), machine_cpu_seconds(), time.process_time()
    try:
        yield samples
    finally:
        done.set()
        sampler.join()
        seconds = time.perf_counter() - began
        samples.cpus_busy = (machine_cpu_seconds() - machine) / seconds
        samples.own_cpu = (time.process_time() - own) / seconds


def machine_cpu_seconds() -> float:
    """CPU seconds that all cores have spent busy since boot (Linux's /proc/stat; 0 elsewhere)."""
    try:
        with open("/proc/stat") as stat:
            user, nice, system, idle, iowait, irq, softirq = (int(v) for v in stat.readline().split()[1:8])
    except (OSError, ValueError):
        return 0.0
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def end_to_end(extractor: Extractor, folder: Path, profile: Path | None = None, processes: int = 1) -> tuple[float, Samples, int]:
    """Images/s from files to a complete HDF5, what was sampled meanwhile, and how many distinct
    batch shapes the network saw. ``profile``: a trace file to write (see :func:`profiled`).
    ``processes`` > 1: that many processes on the device, a shard each (MultiDeviceJob, as
    ``--device cuda:0,cuda:0`` runs), each with a reading process of its own, and its own GIL;
    their start, network and compiling are in the run's time, not in its 10-90% rate."""
    images = find_images(folder)
    output = folder.parent / "bench.h5"
    if processes > 1:
        arguments = {**extractor.arguments, "model": "vgg16", "weights": "random", "seed": 0, "decode_in": extractor.decode_in,
                     "workers": extractor.workers and max(1, extractor.workers // processes)}
        job = MultiDeviceJob(Extractor(**arguments, device=str(extractor.device)), [str(extractor.device)] * processes,
                             images, output, overwrite=True)
    else:
        job = ExtractionJob(extractor, images, output, overwrite=True)
    shapes: set[tuple[int, ...]] = set()
    pad_batch = vggfeat.extractor.pad_batch

    def recorded(inputs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, sizes = pad_batch(inputs)
        shapes.add(tuple(batch.shape))  # the batches as the network gets them, as cuDNN autotunes them
        return batch, sizes

    vggfeat.extractor.pad_batch = recorded
    profiling = profiled(profile) if profile else contextlib.nullcontext()
    try:
        with sampled(extractor.device) as samples, waits_timed(samples), profiling:
            began = last = time.perf_counter()
            done, calls, marks = 0, 0, {}  # images described: the time when 10% and 90% of them were

            def described(count: int) -> None:
                nonlocal last, done, calls
                last, done, calls = time.perf_counter(), done + count, calls + 1
                for share in (0.1, 0.9):
                    if done >= share * len(images):
                        marks.setdefault(share, (last, done))

            job.run(described)
            ended = time.perf_counter()
            samples.seconds, samples.tail = ended - began, ended - last
            (t10, n10), (t90, n90) = marks[0.1], marks[0.9]
            # 0: too few chunks to tell. A chunk is reported once the next one's work is queued, so
            # the last two come together: with a handful of chunks the rate would be theirs alone.
            samples.steady = (n90 - n10) / (t90 - t10) if n90 > n10 and calls >= 5 else 0.0
    finally:
        vggfeat.extractor.pad_batch = pad_batch
    output.unlink()
    return len(images) / samples.seconds, samples, len(shapes)


@contextlib.contextmanager
def profiled(trace: Path) -> Iterator[None]:
    """torch.profiler over the block: the host's time per operator and CUDA call (a blocking
    cudaMalloc or synchronisation shows here), printed; the timeline, gzipped, to ``trace``."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as profiler:
        yield
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
    raw = trace.with_suffix("")
    profiler.export_chrome_trace(str(raw))
    with open(raw, "rb") as source, gzip.open(trace, "wb") as target:
        shutil.copyfileobj(source, target)
    raw.unlink()


@contextlib.contextmanager
def waits_timed(samples: Samples) -> Iterator[None]:
    """Time the main thread spends waiting for decoded images and for the GPU's results: what is
    left of the run, less its tail, is the host's own work (queueing GPU work, bookkeeping, handing
    parts to the writing thread)."""
    ahead, collected = vggfeat.reading.ImageReader._ahead, vggfeat.extractor.collected

    def timed_ahead(reader, *args):
        decoded = ahead(reader, *args)
        while True:
            began = time.perf_counter()
            try:
                result = next(decoded)
            except StopIteration:
                return
            finally:
                samples.decode_wait += time.perf_counter() - began
            yield result

    def timed_collected(chunk):
        began = time.perf_counter()
        try:
            return collected(chunk)
        finally:
            samples.gpu_wait += time.perf_counter() - began

    vggfeat.reading.ImageReader._ahead, vggfeat.extractor.collected = timed_ahead, timed_collected
    try:
        yield
    finally:
        vggfeat.reading.ImageReader._ahead, vggfeat.extractor.collected = ahead, collected


class Files(torch.utils.data.Dataset):
    """The dataset a user writes for an image folder: PIL decoding and a torchvision transform."""

    def __init__(self, files: list[Path], transform) -> None:
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        with Image.open(self.files[index]) as image:
            return self.transform(image.convert("RGB"))


def dataloader_recipe(files: list[Path], device: torch.device, precision: str, batch_size: int, workers: int) -> float:
    """Images/s of the common DataLoader recipe: Resize(256), CenterCrop(224), VGG16 up to fc7."""
    vgg, _ = load_vgg("vgg16", "random", 0)
    vgg.classifier = vgg.classifier[:5]  # fc6, ReLU, Dropout, fc7, ReLU: fc7 features
    vgg = vgg.eval().to(device)
    transform = v2.Compose([v2.PILToTensor(), v2.Resize(256, antialias=True), v2.CenterCrop(224),
                            v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    loader = torch.utils.data.DataLoader(Files(files, transform), batch_size=batch_size, num_workers=workers,
                                         pin_memory=device.type == "cuda")
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    synchronize(device)
    began = time.perf_counter()
    with torch.inference_mode(), torch.autocast(device.type, dtype=half, enabled=half is not None):
        for batch in loader:
            vgg(batch.to(device, non_blocking=True)).float().cpu()
    synchronize(device)
    return len(files) / (time.perf_counter() - began)


def naive(extractor: Extractor, files: list[Path]) -> float:
    # torchvision's VGG as loaded, in its default memory layout (vggfeat's own runs channels_last).
    device = extractor.device
    network = load_network("vgg16", "random", 0).to(device)
    normalize = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    synchronize(device)
    began = time.perf_counter()
    with torch.inference_mode():
        for f in files:
            image = Image.open(f).convert("RGB")
            per_scale = []
            for q in extractor.scales:
                resized = v2.functional.resize(image, q)
                if extractor.crop:
                    resized = v2.functional.center_crop(resized, extractor.crop)
                x = normalize(resized).unsqueeze(0).to(device)
                views = [x, x.flip(-1)] if extractor.flip else [x]
                per_scale.append(torch.stack([global_pool(network(v, extractor.layer)[0], None) for v in views]).mean(0))
            torch.stack(per_scale).mean(0).cpu()
    synchronize(device)
    return len(files) / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--naive-count", type=int, default=None, help="images for the slow naive loop [default: count]")
    parser.add_argument("--model-only-count", type=int, default=512,
                        help="images for model only, whose inputs are all held on the device at once")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--scales", default="256,384,512")
    parser.add_argument("--batch-size", default="auto", type=lambda v: v if v == "auto" else int(v))
    parser.add_argument("--workers", type=int, default=None, help="vggfeat's decoding threads or processes")
    parser.add_argument("--decode-in", default="threads", help="threads, processes or both (threads,processes): (b) for each")
    parser.add_argument("--decoder", default="auto", help=f"{', '.join(DECODERS)} or auto; several (comma-separated): (b) for each")
    parser.add_argument("--center-crop", action="store_true", help="the fast single-view setting (all three measures crop)")
    parser.add_argument("--no-flip", action="store_true")
    parser.add_argument("--varied-sizes", action="store_true", help="VOC-like image sizes instead of two")
    parser.add_argument("--size", default="500x375", type=lambda v: tuple(int(side) for side in v.split("x")),
                        help="width x height of the JPEGs, made in both orientations (4000x3000: camera photos) "
                             "[default: %(default)s]")
    parser.add_argument("--jpeg-draft", action="store_true", help="(b) with --jpeg-draft: large JPEGs decoded smaller")
    parser.add_argument("--cold", action="store_true",
                        help="drop the JPEGs from the page cache before each measure that reads them ((b), (c), "
                             "(d)): read from the disk, not memory (put them on a disk with TMPDIR; not tmpfs)")
    parser.add_argument("--content", choices=CONTENTS, default="photo",
                        help="photo: texture the size of VOC's photos once encoded (~90 KB at 500x375); smooth: "
                             "~30 KB, cheaper to decode, as in the figures before 2026-11-23 [default: %(default)s]")
    parser.add_argument("--no-autotune", action="store_true",
                        help="cuDNN's heuristics, as runs of fewer than 50,000 images have [default: autotuning, as longer runs]")
    parser.add_argument("--compile", action="store_true", help="the network through torch.compile, in (a) and (b)")
    parser.add_argument("--jpeg-group", type=int, default=vggfeat.reading.JPEG_GROUP,
                        help="files per decoding call of a thread (a batch of the GPU's decoders), or per process's "
                             "block [default: %(default)s]")
    parser.add_argument("--chunks-in-flight", type=int, default=vggfeat.extractor.CHUNKS_IN_FLIGHT,
                        help="chunks whose work is queued before the oldest is collected, in (b) [default: %(default)s]")
    parser.add_argument("--switch-interval", type=float, metavar="SECONDS",
                        help="Python's GIL switch interval for the run (default 0.005): shorter bounds how long "
                             "the main thread waits for the GIL after each torch call while decoding threads run Python")
    parser.add_argument("--profile", type=Path, metavar="TRACE.json.gz",
                        help="profile (b) with torch.profiler: print its table, write its timeline here")
    parser.add_argument("--worker-niceness", default=str(vggfeat.processes.WORKER_NICENESS),
                        help="decoding processes' priority below this process's (Unix niceness); comma-separated "
                             "values: (b) with processes for each [default: %(default)s]")
    parser.add_argument("--processes-per-device", type=int, default=1, metavar="N",
                        help="also (b) with N processes on the device, a shard each (--device X,X), after the last --decode-in")
    parser.add_argument("--dataloader", action="store_true", help="also measure (d), the DataLoader recipe")
    parser.add_argument("--dataloader-workers", type=int, default=16)
    parser.add_argument("--dataloader-batch", type=int, default=256)
    args = parser.parse_args()
    require_cuda("bench_extract", args.device)
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    vggfeat.extractor.CHUNKS_IN_FLIGHT = args.chunks_in_flight
    vggfeat.reading.JPEG_GROUP = args.jpeg_group
    scales = [int(q) for q in args.scales.split(",")]
    network = load_network("vgg16", "random", 0)
    places, decoders = args.decode_in.split(","), args.decoder.split(",")
    for decoder in set(decoders) - {"auto", *DECODERS}:
        parser.error(f"unknown decoder {decoder}")
    if "nvimgcodec" in decoders and vggfeat.gpujpeg.version() is None:
        parser.error(f"nvImageCodec is not installed: {vggfeat.gpujpeg.install_command()}")
    extractor = Extractor(network, scales=scales, device=args.device, precision=args.precision, flip=not args.no_flip,
                          batch_size=args.batch_size, workers=args.workers, decoder=decoders[0],
                          decode_in="threads" if decoders[0] in GPU_DECODERS else places[0],
                          center_crop=args.center_crop, jpeg_draft=args.jpeg_draft, autotune="off" if args.no_autotune else "on",
                          compile="on" if args.compile else "off")
    name = torch.cuda.get_device_name() if extractor.device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device {name}; vgg16 fc7, Q={args.scales}{', centre crop' if args.center_crop else ''}, "
          f"{'no flip' if args.no_flip else 'flip'}, mean; precision {extractor.precision}; batch {extractor.batch_size} "
          f"inputs / {extractor.batch_pixels:,} pixels; {args.workers or 'default'} {extractor.decoder} decoding workers; {args.count} JPEGs "
          f"{'of varied sizes' if args.varied_sizes else '{0}x{1}/{1}x{0}'.format(*args.size)}{', JPEG draft' if args.jpeg_draft else ''}{', no autotuning' if args.no_autotune else ''}{', torch.compile' if args.compile else ''}{f', {args.chunks_in_flight} chunks in flight'}{f', {args.jpeg_group} files a decoding call' if args.jpeg_group != parser.get_default('jpeg_group') else ''}{f', GIL switch interval {sys.getswitchinterval():g} s' if args.switch_interval else ''} (model only on {min(args.count, args.model_only_count)}, naive on {args.naive_count or args.count})")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        started = time.perf_counter()
        files = make_jpegs(folder, args.count, args.varied_sizes, args.content, args.size)
        print(f"{len(files)} {args.content} JPEGs, {jpeg_kilobytes(files):.0f} KB on average, "
              f"made in {time.perf_counter() - started:.0f} s, on {file_system(folder)}; read "
              f"{'cold (dropped from the page cache before each measure)' if args.cold else 'from the page cache'}")
        cold = functools.partial(evict, files) if args.cold else lambda: None
        a, first_pass = model_only(extractor, files[: args.model_only_count])
        runs, failures = {}, {}
        if "processes" in places:
            print(f"decoding processes started in {process_start(extractor, files):.1f} s (once per run; not in (b))")
        nicenesses = [int(n) for n in args.worker_niceness.split(",")]
        # The GPU's decoders decode from this process, in threads, whatever --decode-in says.
        for decoder, place in ((d, p) for d in decoders for p in (["threads"] if d in GPU_DECODERS else places)):
            extractor.decoder, extractor.decode_in = resolve_decoder(decoder), place
            named = f" ({extractor.decoder})" if len(decoders) > 1 else ""
            for niceness in nicenesses if place == "processes" else [None]:
                if niceness is not None:
                    vggfeat.processes.WORKER_NICENESS = niceness
                cold()
                name = (place if niceness is None else f"processes at niceness +{niceness}") + named
                try:
                    runs[name] = end_to_end(extractor, folder, args.profile)
                except Exception as error:  # noqa: BLE001 - one way that fails here is reported, the others measured
                    failures[name] = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300]}"
                    traceback.print_exc()
        if args.processes_per_device > 1:
            cold()
            runs[f"{extractor.decode_in}, in {args.processes_per_device} processes on the device, a shard each"] = end_to_end(
                extractor, folder, processes=args.processes_per_device)
        cold()
        c = naive(extractor, files[: args.naive_count or args.count])
        if args.dataloader:
            cold()
            d = dataloader_recipe(files, extractor.device, extractor.precision, args.dataloader_batch, args.dataloader_workers)
    print(f"(a) model only       {a:9.2f} images/s   (its first pass took {first_pass:.1f} s longer: autotuning, first-time costs)")
    for place, (b, samples, shapes) in runs.items():
        print(f"(b) vggfeat e2e      {b:9.2f} images/s   {b / a:6.1%} of model only, decoding in {place}"
              f"{samples.report()}; {shapes} distinct batch shapes")
    for place, failure in failures.items():
        print(f"(b) vggfeat e2e      failed, decoding in {place}: {failure}")
    b = max(b for b, _, _ in runs.values())  # the ratios below are the faster (b)'s
    print(f"(c) naive loop       {c:9.2f} images/s   vggfeat is {b / c:5.1f}x faster")
    if args.dataloader:
        print(f"(d) DataLoader       {d:9.2f} images/s   vggfeat is {b / d:5.1f}x faster "
              f"({args.dataloader_workers} workers, batch {args.dataloader_batch}, Resize 256 + CenterCrop 224, no flip)")


if __name__ == "__main__":
    try:
        main()
    except VggfeatError as error:
        sys.exit(f"error: {error}")
