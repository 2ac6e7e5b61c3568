"""Reading ahead of the network: in worker processes (``--decode-in processes``) what threads give,
safe with files that kill their decoder; and, threads or processes, no further ahead than a budget
of decoded bytes, so that large photos cannot fill the memory.

Processes start from a fork server that imports vggfeat afresh; the crash tests fork this test
process instead, so that the decoder they replace is the one the workers run.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

import numpy as np
import pytest
import torch

import vggfeat.processes
import vggfeat.reading
from imagefiles import write_bad_files, write_odd_files, write_rgb
from reference import assert_close
from runhelpers import FAST, flaky_storage, gpu_full_for, read_output, run_main
from vggfeat import Extractor, ImageError, VggfeatError
from vggfeat.decode import DEFAULT_MAX_PIXELS, READ_RETRY_DELAYS, decode_image, decode_image_reduced
from vggfeat.jpeg import decoder_library
from vggfeat.reading import JPEG_GROUP, ImageReader

DECODERS = ["pil"] + ([] if decoder_library() == "none" else ["torchvision"])


@pytest.fixture(autouse=True, params=["fresh blocks", "slots"])
def worker_memory(request, monkeypatch):
    """Each test with workers sending fresh blocks of shared memory (the CPU's way) and decoding
    into reused slots (a GPU's way, which would otherwise run only there)."""
    monkeypatch.setattr(vggfeat.processes, "_reuses_slots", lambda device: request.param == "slots")
    return request.param


def decoded(paths, decoder: str = "pil", processes: bool = True) -> list:
    reader = ImageReader(torch.device("cpu"), decoder, workers=2, max_pixels=DEFAULT_MAX_PIXELS, min_side=32,
                         processes=processes)
    with reader.read(paths, lookahead=2 * JPEG_GROUP) as results:
        return list(results)


def as_hwc(pixels) -> np.ndarray:
    return pixels if isinstance(pixels, np.ndarray) else pixels.permute(1, 2, 0).numpy()


@pytest.mark.parametrize("decoder", DECODERS)
def test_processes_give_the_pixels_failures_and_reasons_of_threads(decoder, tmp_path):
    odd = write_odd_files(tmp_path / "odd")
    bad = write_bad_files(tmp_path / "bad")
    plain = [tmp_path / f"plain{i}.jpg" for i in range(2 * JPEG_GROUP + 3)]  # several groups, the last one short
    for i, path in enumerate(plain):
        write_rgb(path, 40 + i, 60, seed=i, fmt="JPEG")
    paths = sorted([*(o.path for o in odd.values()), *bad.values(), *plain])
    in_threads, in_processes = decoded(paths, decoder, processes=False), decoded(paths, decoder)
    assert len(in_processes) == len(paths)
    for path, a, b in zip(paths, in_threads, in_processes):
        if isinstance(a, ImageError) and "decompression-bomb guard" in str(a):
            # With or without its width and height, as Pillow's own guard, a global that earlier
            # calls in this process may have raised, speaks first or not.
            assert isinstance(b, ImageError) and "decompression-bomb guard" in str(b), path.name
        elif isinstance(a, ImageError):
            assert isinstance(b, ImageError) and str(b) == str(a), path.name
        else:
            assert np.array_equal(as_hwc(a), as_hwc(b)), path.name


def test_descriptors_and_the_written_file_are_those_of_threads(random_vgg16, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(5):
        write_rgb(images / f"{i}.jpg", 224 + 8 * i, 240, seed=i, fmt="JPEG")
    write_rgb(images / "5.png", 230, 230, seed=5)
    (images / "6.jpg").write_bytes(b"\xff\xd8\xff not a JPEG after all")
    paths = sorted(images.iterdir())
    options = dict(device="cpu", scales=[224], flip=False, layer="conv1_1")
    in_threads = Extractor(random_vgg16, **options).extract(paths, errors="nan")
    in_processes = Extractor(random_vgg16, decode_in="processes", **options).extract(paths, errors="nan")
    assert_close(in_processes[:6], in_threads[:6], 0, "descriptors")
    assert np.isnan(in_processes[6]).all()

    options = [*FAST, "--layer", "conv1_1", "--workers", "2"]  # decoding is compared, not the network
    runs = {how: run_main(["extract", images, tmp_path / f"{how}.h5", *options, "--decode-in", how])
            for how in ("threads", "processes")}
    for how, (code, _, err) in runs.items():
        assert code == 0, err
        assert f"2 torchvision decoding {how}" in err or f"2 pil decoding {how}" in err
    threads, processes = read_output(tmp_path / "threads.h5"), read_output(tmp_path / "processes.h5")
    assert np.array_equal(threads["features"], processes["features"])
    assert threads["paths"] == processes["paths"] and threads["failed_errors"] == processes["failed_errors"]


def test_nvjpeg_is_not_decoded_in_processes(random_vgg16):
    with pytest.raises(VggfeatError, match=r"decoder='nvjpeg' \(--decoder nvjpeg\) decodes on the GPU, from this process"):
        Extractor(random_vgg16, device="cpu", decoder="nvjpeg", decode_in="processes")
    with pytest.raises(VggfeatError, match="unknown place of decoding 'gpu'"):
        Extractor(random_vgg16, device="cpu", decode_in="gpu")


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="Unix scheduling priorities")
def test_workers_give_way_to_the_reading_process_where_cores_are_short():
    """Workers decode at a lower priority than the process they decode for, whose threads queue
    the GPU's work: where every core is busy, the GPU would otherwise wait for them."""
    reader = ImageReader(torch.device("cpu"), "pil", workers=2, max_pixels=DEFAULT_MAX_PIXELS, min_side=32,
                         processes=True)
    with vggfeat.processes.DecodingProcesses(reader, vggfeat.reading.Budget(None)) as workers:
        niceness = {workers.pool.submit(os.getpriority, os.PRIO_PROCESS, 0).result() for _ in range(4)}
    assert niceness == {min(os.getpriority(os.PRIO_PROCESS, 0) + vggfeat.processes.WORKER_NICENESS, 19)}


# What a decoder's crash looks like to the pool: the process dies. Module-level, so that a worker
# forked from this process finds them by name.
def decode_or_die(path, reduction, **limits):
    if "crash" in os.path.basename(path):
        os._exit(3)
    return decode_image_reduced(path, reduction, **limits)


def die(*slots) -> None:
    os._exit(3)


@pytest.fixture
def forked_workers(monkeypatch):
    monkeypatch.setattr(vggfeat.processes, "PROCESS_START", "fork")
    return monkeypatch


def test_a_file_that_kills_its_decoder_fails_alone(forked_workers, tmp_path):
    forked_workers.setattr(vggfeat.reading, "decode_image_reduced", decode_or_die)
    paths = [tmp_path / f"{i:03d}.png" for i in range(3 * JPEG_GROUP)]
    for i, path in enumerate(paths):
        write_rgb(path, 32, 40 + i, seed=i)
    paths[JPEG_GROUP + 5] = paths[JPEG_GROUP + 5].rename(tmp_path / "crash.png")
    results = decoded(paths)
    assert len(results) == len(paths)
    for i, (path, result) in enumerate(zip(paths, results)):
        if i == JPEG_GROUP + 5:
            assert isinstance(result, ImageError) and "decoder crashed on this file" in str(result)
        else:  # its own group's files included, and those of the groups that the crash broke
            assert np.array_equal(as_hwc(result), decode_image(path)), path.name


def test_processes_that_cannot_start_stop_the_run_with_a_message(forked_workers, tmp_path):
    forked_workers.setattr(vggfeat.processes, "_worker_setup", die)
    with pytest.raises(VggfeatError, match="decoding processes die as they start"):
        decoded(one_image(tmp_path))


@pytest.mark.parametrize("decoder", DECODERS)
def test_a_read_that_the_storage_fails_for_a_moment_is_tried_again(decoder, tmp_path, monkeypatch):
    paths = [tmp_path / "a.jpg", tmp_path / "b.png", tmp_path / "c.jpg"]
    for i, path in enumerate(paths):
        write_rgb(path, 48, 64, seed=i, fmt="JPEG" if path.suffix == ".jpg" else "PNG")
    clean = decoded(paths, decoder, processes=False)
    failing = {"a.jpg": 2, "b.png": 1, "c.jpg": 99}
    waits = flaky_storage(monkeypatch, failing)
    results = decoded(paths, decoder, processes=False)
    for expected, result in zip(clean[:2], results[:2]):  # the same pixels as if nothing had failed
        assert np.array_equal(as_hwc(result), as_hwc(expected))
    # Always failing: recorded as the storage's error once the tries are spent.
    assert isinstance(results[2], ImageError) and str(results[2]) == "storage error (Input/output error), 3 tries"
    # Tried again after each delay, and no more (a JPEG is first read for libjpeg-turbo, then by PIL).
    assert 99 - failing["c.jpg"] == 1 + len(READ_RETRY_DELAYS) + (decoder != "pil")
    assert set(waits) == set(READ_RETRY_DELAYS)


def counting_decodes(monkeypatch) -> list[str]:
    """Names of the files PIL has decoded so far (in threads: this process's decode_image_reduced)."""
    names = []
    real = vggfeat.reading.decode_image_reduced
    monkeypatch.setattr(vggfeat.reading, "decode_image_reduced",
                        lambda path, reduction, **limits: names.append(path.name) or real(path, reduction, **limits))
    return names


@pytest.mark.parametrize("decoder", DECODERS)
def test_decoding_runs_no_further_ahead_than_its_byte_budget(decoder, tmp_path, monkeypatch):
    """Huge photos must not fill the GPU (or the host) however many files the lookahead allows."""
    paths = [tmp_path / f"{i:03d}.png" for i in range(48)]  # PNGs: PIL decodes them, whatever the decoder
    for i, path in enumerate(paths):
        write_rgb(path, 40, 60, seed=i)
    image_bytes = 40 * 60 * 3
    monkeypatch.setattr(vggfeat.reading, "LOOKAHEAD_BYTES", 3 * image_bytes)
    decoded_names = counting_decodes(monkeypatch)
    reader = ImageReader(torch.device("cpu"), decoder, workers=4, max_pixels=DEFAULT_MAX_PIXELS, min_side=32)
    group = 1 if decoder == "pil" else JPEG_GROUP
    ahead = []
    with reader.read(paths, lookahead=len(paths)) as results:  # the count alone would allow all of them
        for i, pixels in enumerate(results):
            assert np.array_equal(as_hwc(pixels), decode_image(paths[i])), paths[i].name
            time.sleep(0.01)  # a slow network: the workers would race ahead
            ahead.append(len(decoded_names) - (i + 1))
    # Beyond the group being read: the budget's 3 images, and one decoded image per waiting worker.
    assert max(ahead) <= group + 3 + 4
    assert len(decoded_names) == len(paths)


@pytest.mark.parametrize("processes", [False, True])
def test_a_reader_that_stops_early_does_not_wait_for_the_rest(processes, tmp_path, monkeypatch):
    paths = [tmp_path / f"{i:03d}.png" for i in range(4 * JPEG_GROUP)]
    for i, path in enumerate(paths):
        write_rgb(path, 40, 60, seed=i)
    monkeypatch.setattr(vggfeat.reading, "LOOKAHEAD_BYTES", 1)  # every worker but the first waits
    reader = ImageReader(torch.device("cpu"), "pil", workers=2, max_pixels=DEFAULT_MAX_PIXELS, min_side=32,
                         processes=processes)
    first = []

    def read_one() -> None:
        with reader.read(paths, lookahead=len(paths)) as results:
            first.append(next(results))

    reading = threading.Thread(target=read_one, daemon=True)
    reading.start()
    reading.join(timeout=60)
    assert not reading.is_alive(), "the reader hung at its end: workers left waiting for budget"
    assert np.array_equal(as_hwc(first[0]), decode_image(paths[0]))


# What torch says when /dev/shm is full.
SHM_FULL = "unable to allocate shared memory(shm) for file </torch_1_2_3>: No space left on device (28)"


def one_image(tmp_path) -> list:
    path = tmp_path / "a.png"
    write_rgb(path, 40, 40)
    return [path]


def no_shared_memory(paths, *arguments):
    raise RuntimeError(SHM_FULL)


def test_processes_without_shared_memory_stop_the_run_with_advice(forked_workers, tmp_path):
    forked_workers.setattr(vggfeat.processes, "_decode_into", no_shared_memory)
    with pytest.raises(VggfeatError, match=r"a decoding process failed: RuntimeError: unable to allocate shared memory.*"
                                           r"shared memory \(/dev/shm\), which may be too small"):
        decoded(one_image(tmp_path))


def test_processes_dying_on_many_files_stop_the_run(forked_workers, tmp_path):
    """Rather than record every file as one that crashed its decoder (a /dev/shm too small kills them all)."""
    forked_workers.setattr(vggfeat.reading, "decode_image_reduced", decode_or_die)
    forked_workers.setattr(vggfeat.processes, "MAX_CRASHES", 2)
    paths = [tmp_path / f"crash{i}.png" for i in range(4)]
    for i, path in enumerate(paths):
        write_rgb(path, 40, 40, seed=i)
    with pytest.raises(VggfeatError, match="decoding processes died on 3 files"):
        decoded(paths)


def test_groups_come_back_a_slot_at_a_time_and_larger_images_alone(forked_workers, tmp_path):
    """A worker decodes only what fits its slot of shared memory; the rest of its group follows,
    in order, and an image larger than a slot comes in a block of its own."""
    slot = 2 * 60 * 80 * 3  # two images of the largest size but one
    forked_workers.setattr(vggfeat.processes, "SLOT_BYTES", slot)
    blocks = []
    real = vggfeat.processes.DecodingProcesses._copied
    forked_workers.setattr(vggfeat.processes.DecodingProcesses, "_copied",
                           lambda self, *block: blocks.append(real(self, *block)[0].numel()) or real(self, *block))
    paths = [tmp_path / f"{i:03d}.{'png' if i % 3 else 'jpg'}" for i in range(JPEG_GROUP + 9)]
    for i, path in enumerate(paths):
        write_rgb(path, 40 + i % 21, 80, seed=i, fmt="JPEG" if i % 3 == 0 else None)
    write_rgb(paths[5], 200, 150, seed=5)  # larger than a slot
    for decoder in DECODERS:
        blocks.clear()
        results = decoded(paths, decoder)
        assert [np.array_equal(as_hwc(r), decode_image(p)) for r, p in zip(results, paths)] == [True] * len(paths)
        assert len(blocks) >= len(paths) // 2 and sorted(blocks)[-2] <= slot and max(blocks) == 200 * 150 * 3


@pytest.mark.skipif("torchvision" not in DECODERS, reason="no batched JPEG decoder here")
def test_large_jpegs_are_decoded_a_block_at_a_time_within_the_budget(tmp_path, monkeypatch):
    """A group of large photos is not decoded at once: batches of at most BLOCK_BYTES, each taken
    from the budget before it is decoded, so other workers go on with theirs."""
    image_bytes = 48 * 64 * 3
    monkeypatch.setattr(vggfeat.reading, "BLOCK_BYTES", 2 * image_bytes)
    monkeypatch.setattr(vggfeat.reading, "LOOKAHEAD_BYTES", 4 * image_bytes)
    batches, decoded_count = [], []
    real = vggfeat.reading.decode_jpegs

    def decode_jpegs(jpegs, device):
        batches.append(sum(j.decoded_bytes for j in jpegs))
        decoded_count.append(len(jpegs))
        return real(jpegs, device)

    monkeypatch.setattr(vggfeat.reading, "decode_jpegs", decode_jpegs)
    paths = [tmp_path / f"{i:03d}.jpg" for i in range(3 * JPEG_GROUP)]
    for i, path in enumerate(paths):
        write_rgb(path, 48, 64, seed=i, fmt="JPEG")
    reader = ImageReader(torch.device("cpu"), "torchvision", workers=4, max_pixels=DEFAULT_MAX_PIXELS, min_side=32)
    ahead = []
    with reader.read(paths, lookahead=len(paths)) as results:
        for i, pixels in enumerate(results):
            assert np.array_equal(as_hwc(pixels), decode_image(paths[i])), paths[i].name
            time.sleep(0.005)
            ahead.append(sum(decoded_count) - (i + 1))
    assert max(batches) <= 2 * image_bytes and sum(decoded_count) == len(paths)
    assert max(ahead) <= JPEG_GROUP + 4  # the group being read, and the budget's 4 images


def test_no_room_for_the_slots_stops_the_run_with_advice(tmp_path, monkeypatch):
    monkeypatch.setattr(vggfeat.processes, "_reuses_slots", lambda device: True)

    monkeypatch.setattr(torch.Tensor, "share_memory_", lambda self: no_shared_memory([]))
    with pytest.raises(VggfeatError, match=r"no room for 4 x 32 MiB of shared memory .*No space left on device.*"
                                           r"raise --shm-size"):
        decoded(one_image(tmp_path))


@pytest.mark.parametrize("decoder", DECODERS)
def test_a_gpu_without_room_leaves_the_pixels_on_the_host(decoder, tmp_path, monkeypatch):
    """An upload ahead of the network that runs out of GPU memory leaves the image on the host
    (the network's thread uploads it with its batch, or records it as too large) rather than
    failing the run. Here the GPU is one that is always full."""
    monkeypatch.setattr(torch.Tensor, "to", gpu_full_for())
    monkeypatch.setattr(ImageReader, "_own_stream", lambda self: contextlib.nullcontext())
    paths = [tmp_path / f"{i}.jpg" for i in range(3)] + [tmp_path / "3.png"]
    for i, path in enumerate(paths):
        write_rgb(path, 40 + i, 60, seed=i, fmt="PNG" if path.suffix == ".png" else "JPEG")
    reader = ImageReader(torch.device("cuda"), decoder, workers=2, max_pixels=DEFAULT_MAX_PIXELS, min_side=32)
    with reader.read(paths, lookahead=8) as results:
        for path, pixels in zip(paths, results, strict=True):
            assert isinstance(pixels, torch.Tensor) and pixels.device.type == "cpu", path.name
            assert np.array_equal(as_hwc(pixels), decode_image(path)), path.name
