"""Batch sizes and precision chosen for the device, and batches that run out of GPU memory.

Running out of memory is simulated on the CPU (the network raises CUDA's own OutOfMemoryError for
batches over a pixel limit), so CI checks that the run goes on and its numbers do not change.
"""

from __future__ import annotations

import logging
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from imagefiles import smooth_rgb, write_rgb
from reference import assert_close
from vggfeat import Extractor, VggfeatError, load_network
from vggfeat.extractor import out_of_memory, too_large_for_memory

SHAPES = [(224, 300), (300, 224), (240, 240), (224, 224), (260, 350), (224, 280)]


@pytest.fixture(scope="module")
def images():
    return [smooth_rgb(h, w, seed=i) for i, (h, w) in enumerate(SHAPES)]


# What running out of memory raises: on a GPU, CUDA's OutOfMemoryError, or where cuDNN has no room
# for a convolution's workspace a RuntimeError of its own; on the CPU (torch's allocator), a
# RuntimeError too.
CUDNN_OUT_OF_MEMORY = [
    "GET was unable to find an engine to execute this computation",  # cuDNN's heuristics
    "FIND was unable to find an engine to execute this computation",  # cuDNN's autotuning
    "Unable to find a valid cuDNN algorithm to run convolution",
    "cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
    "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
]
OUT_OF_MEMORY = {
    "gpu": lambda: torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)"),
    "cudnn": lambda: RuntimeError(CUDNN_OUT_OF_MEMORY[0]),
    "cpu": lambda: RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                                "memory: you tried to allocate 959997600000 bytes. Error code 12 (Cannot allocate memory)"),
}


def memory_limited(monkeypatch, extractor: Extractor, most_pixels: int, memory: str = "gpu") -> list[int]:
    """Make ``extractor``'s network run out of ``memory`` on batches over ``most_pixels`` padded
    pixels; returns the sizes of the batches that ran."""
    ran: list[int] = []
    forward = extractor._forward

    def limited(inputs):
        padded = len(inputs) * max(x.shape[1] for x in inputs) * max(x.shape[2] for x in inputs)
        if padded > most_pixels:
            raise OUT_OF_MEMORY[memory]()
        ran.append(len(inputs))
        return forward(inputs)

    monkeypatch.setattr(extractor, "_forward", limited)
    return ran


def test_auto_precision_and_batch_size_on_the_cpu(random_vgg16):
    extractor = Extractor(random_vgg16, device="cpu", scales=[256, 384])
    assert extractor.precision == "fp32" and extractor.config()["precision"] == "fp32"
    assert extractor.batch_size == 16 and extractor.batch_pixels == 16 * 224 * 224


def test_an_explicit_batch_size_bounds_inputs_and_pixels(random_vgg16):
    extractor = Extractor(random_vgg16, device="cpu", scales=[224, 448], batch_size=10)
    assert extractor.batch_size == 10 and extractor.batch_pixels == 10 * (448 * 448 * 4 // 3)


def test_peak_activation_estimate_follows_the_architecture():
    # VGG16 (D): conv1_2 holds its 64-channel input and output at full size. VGG11 (A) has one conv
    # in block 1 (3 -> 64), then block 2's 64 -> 128 at a quarter of the pixels.
    vgg16, vgg11 = load_network("vgg16", "random"), load_network("vgg11", "random")
    assert vgg16.peak_values_per_pixel("fc7") == 128 and vgg16.peak_values_per_pixel("conv1_1") == 67
    assert vgg11.peak_values_per_pixel("fc7") == 67


@pytest.mark.parametrize("memory", OUT_OF_MEMORY)
def test_a_batch_out_of_memory_is_split_and_later_batches_shrink(images, monkeypatch, memory):
    # VGG11 to conv3_1: a quarter of its work; batches are planned and split on the input's pixels
    settings = dict(weights="random", device="cpu", scales=[224], batch_size=6, layer="conv3_1")
    expected = Extractor("vgg11", **settings).describe(images)
    extractor = Extractor("vgg11", **settings)
    ran = memory_limited(monkeypatch, extractor, most_pixels=3 * 240 * 240, memory=memory)
    assert_close(extractor.describe(images), expected, 1e-5, "after splitting")
    assert max(ran) <= 3 and extractor.batch_size <= 3
    assert extractor.batch_pixels < 6 * (224 * 224 * 4 // 3)
    assert extractor.describe(images).shape == expected.shape  # planned within the new limits


@pytest.mark.parametrize("memory", OUT_OF_MEMORY)
def test_an_image_too_large_for_memory_alone_fails_and_the_rest_go_on(random_vgg16, tmp_path, monkeypatch, memory):
    """On the CPU, an image resized to a huge --scales (100000) ended the run in the allocator's
    RuntimeError."""
    paths = []
    for i, (h, w) in enumerate([(224, 224), (224, 900), (240, 260)]):
        paths.append(tmp_path / f"{i}.png")
        write_rgb(paths[-1], h, w, seed=i)
    expected = Extractor(random_vgg16, device="cpu", scales=[224], flip=False).extract([paths[0], paths[2]])
    extractor = Extractor(random_vgg16, device="cpu", scales=[224], flip=False)
    memory_limited(monkeypatch, extractor, most_pixels=224 * 600, memory=memory)
    chunks = list(extractor.iter_chunks(paths))
    assert [c.indices for c in chunks] == [[0, 2]]
    assert chunks[0].sizes == [(224, 224), (240, 260)]
    (index, reason), = chunks[0].failures
    assert index == 1 and reason == ("a 900x224 image does not fit in memory at Q=224; describe it with smaller scales "
                                     "(--scales)")
    assert too_large_for_memory((224, 900), 224, on_gpu=True) == ("a 900x224 image does not fit in GPU memory at Q=224; "
                                                                  "describe it with device='cpu' (--device cpu) or smaller "
                                                                  "scales (--scales)")
    assert_close(chunks[0].features, expected, 1e-5, "the images that fit")
    got = extractor.extract(paths, errors="nan")
    assert np.isnan(got[1]).all() and np.isfinite(got[[0, 2]]).all()


@pytest.mark.parametrize("message", CUDNN_OUT_OF_MEMORY)
def test_cudnn_and_cublas_without_memory_are_out_of_memory(message):
    """cuDNN raises no OutOfMemoryError where its workspace does not fit: the batch is split all the
    same (above, with the first message), rather than the run ending in a traceback."""
    assert out_of_memory(RuntimeError(message))
    assert not out_of_memory(RuntimeError("a bug, not a lack of memory"))


def test_an_error_of_the_network_other_than_memory_still_stops_the_run(random_vgg16, tmp_path, monkeypatch):
    write_rgb(tmp_path / "a.png", 224, 224)
    extractor = Extractor(random_vgg16, device="cpu", scales=[224], flip=False)

    def broken(inputs):
        raise RuntimeError("a bug, not a lack of memory")

    monkeypatch.setattr(extractor, "_forward", broken)
    with pytest.raises(RuntimeError, match="a bug, not a lack of memory"):
        list(extractor.iter_chunks([tmp_path / "a.png"]))


def test_a_huge_photo_and_a_panorama_are_described():
    """A 6000x4000 photo is resized from its full size; a 224x8000 panorama runs as one dense map
    (VGG11's: 36 windows of VGG16 take 21 s on 2 cores)."""
    photo, panorama = smooth_rgb(4000, 6000, seed=1), smooth_rgb(8000, 224, seed=2)
    extractor = Extractor("vgg11", weights="random", device="cpu", scales=[224], flip=False)
    got = extractor.describe([photo, panorama])
    assert got.shape == (2, 4096) and np.isfinite(got).all() and not np.allclose(got[0], got[1])


def long_run_extractor(random_vgg16, monkeypatch):
    """Extractors as at the start of a run over ``run`` images (a long run: 3 or more), by default
    as if on a GPU: whether a batch is autotuned or compiled reads only the device's type."""
    import vggfeat.extractor

    monkeypatch.setattr(vggfeat.extractor, "LONG_RUN_IMAGES", 3)
    monkeypatch.setattr(vggfeat.extractor, "CPU_COMPILE_IMAGES", 3)
    monkeypatch.setattr(vggfeat.extractor, "cpu_bf16", lambda: "amx")  # whatever this machine's CPU

    def extractor(run: int | None = None, cuda: bool = True, decoder: str | None = None, **options) -> Extractor:
        options.setdefault("layer", "conv3_1")  # which batches are tuned reads the inputs alone
        made = Extractor(random_vgg16, device="cpu", scales=[224], batch_size=4, **options)
        if cuda:
            made.device = torch.device("cuda")
        if decoder:
            made.decoder = decoder  # (nvjpeg is refused on the CPU)
        made._start_run(run or 0)  # as iter_chunks does, or the constructor on that device
        return made

    return extractor


def tuning_batch(count: int, width: int = 224) -> list[torch.Tensor]:
    return [torch.zeros(3, 224, width)] * count


def test_cudnn_autotunes_only_full_batches_of_long_runs(random_vgg16, monkeypatch):
    """Autotuning costs seconds per batch shape on a GPU: only full batches (whose shapes recur),
    at most TUNED_SHAPES of them, never with nvJPEG; with "auto" only in long runs."""
    import vggfeat.extractor

    extractor = long_run_extractor(random_vgg16, monkeypatch)
    batch = tuning_batch
    assert not extractor(autotune="auto")._tuning(batch(4))[0]  # describe() alone is no long run
    assert not extractor(2, autotune="auto")._tuning(batch(4))[0]
    auto = extractor(3, autotune="auto")
    assert auto._tuning(batch(4))[0] and not auto._tuning(batch(3))[0]  # a left-over batch is not tuned
    tuned = [auto._tuning(batch(4, 224 + extra))[0] for extra in range(1, 10)]
    assert tuned == [True] * (vggfeat.extractor.TUNED_SHAPES - 1) + [False] * 2  # 224 was the first
    assert auto._tuning(batch(4))[0], "a shape already tuned stays tuned"

    assert extractor(autotune="on")._tuning(batch(4))[0]
    assert not extractor(3, autotune="off")._tuning(batch(4))[0]
    nvjpeg = extractor(autotune="on", decoder="nvjpeg")
    assert not nvjpeg._tuning(batch(4))[0]  # it hung on an H100 while cuDNN autotuned
    with pytest.raises(VggfeatError, match="unknown autotune 'always'"):
        Extractor(random_vgg16, device="cpu", autotune="always")


def compiled_batches(monkeypatch, extractor: Extractor, fail: bool = False) -> list[int]:
    """Record the sizes of the batches ``extractor`` runs compiled; torch.compile is replaced by a
    stand-in that runs the network as it is (or, with ``fail``, fails as a missing compiler does)."""
    ran: list[int] = []

    def compiled(network, **options):
        assert options == {"dynamic": False}

        def run(batch, layer, sizes):
            if fail:
                raise RuntimeError("Failed to find C compiler. Please specify via CC environment variable.")
            ran.append(len(batch))
            return network(batch, layer, sizes)
        return run

    monkeypatch.setattr(torch, "compile", compiled)
    return ran


def test_compiles_full_batches_of_long_runs_on_a_gpu(random_vgg16, monkeypatch, images):
    """torch.compile costs seconds per batch shape: as autotuning, only full batches of long runs,
    and with "auto" only on a GPU, or on a CPU in bf16 (in fp32 it gained nothing measurable there).
    Batches that are not compiled give the very same descriptors."""
    extractor = long_run_extractor(random_vgg16, monkeypatch)
    batch = tuning_batch
    auto = extractor(3, compile="auto")
    assert auto._compiling
    assert not extractor(2, compile="auto")._compiling
    assert not extractor(3, cuda=False, compile="auto")._compiling
    assert extractor(3, cuda=False, compile="auto", precision="bf16")._compiling
    assert not extractor(2, cuda=False, compile="auto", precision="bf16")._compiling
    assert not extractor(3, compile="off")._compiling
    assert extractor(cuda=False, compile="on")._compiling
    with pytest.raises(VggfeatError, match="unknown compile 'always'"):
        Extractor(random_vgg16, device="cpu", compile="always")

    on = extractor(cuda=False, compile="on")
    ran = compiled_batches(monkeypatch, on)
    plain = extractor(cuda=False, compile="off").describe(images[:5])
    on.batch_size = 2
    assert_close(on.describe(images[:5]), plain, 1e-5, "batches of 2 (compiled) and 1 (not)")
    assert ran and set(ran) == {2}, "only full batches are compiled"
    assert auto._recurring(batch(4))


def test_a_failed_compile_warns_and_runs_uncompiled_or_stops_when_asked_for(random_vgg16, monkeypatch, images):
    extractor = long_run_extractor(random_vgg16, monkeypatch)
    plain = extractor(cuda=False, compile="off").describe(images[:4])
    auto = extractor(3, cuda=False, compile="auto")
    auto._compiling = True  # as on a GPU
    compiled_batches(monkeypatch, auto, fail=True)
    with pytest.warns(UserWarning, match="torch.compile failed .*C compiler.*; the network runs uncompiled"):
        assert_close(auto.describe(images[:4]), plain, 1e-5, "uncompiled after the failure")
    assert not auto._compiling, "tried once, not per batch"
    on = extractor(cuda=False, compile="on")
    compiled_batches(monkeypatch, on, fail=True)
    with pytest.raises(VggfeatError, match=r"torch.compile failed .*; run without it: compile='off' \(--compile off\)"):
        on.describe(images[:4])


def test_long_gpu_runs_decode_in_processes_where_shared_memory_has_room(random_vgg16, monkeypatch):
    """decode_in="auto" (the CLI's default): processes only where their seconds of starting pay
    (long runs on a GPU), never with nvJPEG (it decodes in this process), and not where /dev/shm
    is too small for their slots (Docker's 64 MiB); workers by default as measured."""
    import vggfeat.extractor

    extractor = long_run_extractor(random_vgg16, monkeypatch)
    monkeypatch.setattr(vggfeat.extractor.os, "cpu_count", lambda: 32)
    long_run = extractor(decode_in="auto").plan_run(3)
    assert long_run.processes and long_run.workers == vggfeat.extractor.PROCESS_WORKERS == 16
    assert long_run.autotune and long_run.compile
    short = extractor(decode_in="auto").plan_run(2)
    assert not short.processes and short.workers == vggfeat.extractor.THREAD_WORKERS == 8
    assert not (short.autotune or short.compile)
    assert not extractor(cuda=False, decode_in="auto").plan_run(3).processes
    assert not extractor(decode_in="threads").plan_run(3).processes
    assert extractor(cuda=False, decode_in="processes").plan_run(2).processes
    assert extractor(decode_in="auto", workers=3).plan_run(3).workers == 3
    for decoder in ("nvjpeg", "nvimgcodec"):  # they decode on the GPU, from this process
        assert not extractor(decode_in="auto", decoder=decoder).plan_run(3).processes, decoder
    monkeypatch.setattr(vggfeat.processes.shutil, "disk_usage", lambda path: SimpleNamespace(free=2**26))
    assert not extractor(decode_in="auto").plan_run(3).processes, "64 MiB of /dev/shm"
    monkeypatch.setattr(vggfeat.extractor.os, "cpu_count", lambda: 4)
    assert extractor(decode_in="processes").plan_run(3).workers == 4, "no more than the cores"


@pytest.mark.skipif(not shutil.which("g++"), reason="torch.compile on the CPU needs a C++ compiler")
def test_the_compiled_network_gives_the_descriptors_of_the_plain_one(images):
    """The real torch.compile (Inductor), on the CPU: the same numbers as the network run plainly.
    Two images of one shape and their flips: two full batches of 2, one graph compiled (each
    shape costs seconds of compiling; which batches are compiled is tested above)."""
    network = load_network("vgg11", "random", 0)
    one_shape = [images[0], np.ascontiguousarray(images[0][::-1])]
    plain = Extractor(network, device="cpu", scales=[224], batch_size=2, compile="off").describe(one_shape)
    compiled = Extractor(network, device="cpu", scales=[224], batch_size=2, compile="on")
    assert_close(compiled.describe(one_shape), plain, 1e-4, "compiled")
    assert compiled._compiled is not None and compiled._compiling
    # Inductor's "No CUDA runtime is found, using CUDA_HOME=..." (a torch log line) kept off the terminal.
    assert logging.getLogger("torch.utils.cpp_extension").getEffectiveLevel() == logging.ERROR


def test_every_tuned_shape_of_every_network_runs_compiled_padded_or_not(monkeypatch):
    """Dynamo runs a function uncompiled from its recompile limit on (8 graphs in torch 2.14), saying
    nothing; every network's graphs are of one code object, DenseVGG.forward's, and each tuned batch
    shape may take two: a batch of one image size (unpadded) and one padded. Two networks (a
    FusedExtractor's), each with its TUNED_SHAPES shapes both ways: each batch gets its graph.
    Graphs counted by a backend that compiles nothing (Inductor would take seconds a graph)."""
    import torch._dynamo
    from torch._dynamo import config

    import vggfeat.extractor
    from vggfeat.extractor import TUNED_SHAPES
    from vggfeat.resize import pad_batch

    graphs = []

    def counting(graph, example_inputs):
        graphs.append(graph)
        return graph.forward

    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **options: real(model, backend=counting, **options))
    for name in ("recompile_limit", "accumulated_recompile_limit"):
        monkeypatch.setattr(config, name, getattr(config, name))  # this process's limits, restored after
    monkeypatch.setattr(vggfeat.extractor, "_networks_compiled", 0, raising=False)  # (none in older vggfeat)
    logging.getLogger("torch._dynamo").setLevel(logging.ERROR)  # (it warns of the limit where it is hit)
    torch._dynamo.reset()
    batches = 0
    try:
        for model in ("vgg11", "vgg13"):
            extractor = Extractor(model, weights="random", device="cpu", scales=[32], layer="conv1_1", compile="on")
            for key in range(TUNED_SHAPES):
                height, width = 32, 32 * (key + 1)  # (batches are padded to multiples of 32)
                one_size = [torch.zeros(3, height, width)] * 2
                padded = [torch.zeros(3, height, width), torch.zeros(3, height - 4, width - 4)]  # the same key
                for inputs in (one_size, padded):
                    batch, sizes = pad_batch(inputs)
                    extractor._network(batch.contiguous(memory_format=torch.channels_last), sizes, compiled=True)
                    batches += 1
    finally:
        torch._dynamo.reset()
    assert batches == 2 * 2 * TUNED_SHAPES and len(graphs) == batches, "some batches ran uncompiled"
