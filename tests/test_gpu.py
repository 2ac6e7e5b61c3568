"""GPU path: the same descriptors as the CPU, batched or not. Skipped where CUDA is absent (CI)."""

import numpy as np
import pytest
import torch

from imagefiles import smooth_rgb
from runhelpers import assert_same_output, gpu_full_for, read_output, run_main
from vggfeat import Extractor

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

SHAPES = [(300, 400), (400, 300), (333, 500), (240, 240), (500, 375), (301, 411)]


@pytest.fixture(scope="module")
def images():
    return [smooth_rgb(h, w, seed=i) for i, (h, w) in enumerate(SHAPES)]


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_gpu_fp32_equals_cpu(random_vgg16, images):
    options = dict(scales=[224, 320], flip=True, precision="fp32")
    on_cpu = Extractor(random_vgg16, device="cpu", **options).describe(images)
    on_gpu = Extractor(random_vgg16, device="cuda", **options).describe(images)
    random_vgg16.to("cpu")
    assert relative_error(on_gpu, on_cpu) < 1e-4


def test_gpu_batched_equals_one_at_a_time(random_vgg16, images):
    extractor = Extractor(random_vgg16, device="cuda", scales=[256, 384], flip=True, batch_size=16, precision="fp32")
    batched = extractor.describe(images)
    alone = np.concatenate([extractor.describe([image]) for image in images])
    random_vgg16.to("cpu")
    assert relative_error(batched, alone) < 1e-4


@pytest.mark.parametrize("precision", ["tf32", "bf16", "fp16"])
def test_reduced_precision_stays_close_to_fp32(random_vgg16, images, precision):
    options = dict(device="cuda", scales=[256, 384], flip=True)
    reference = Extractor(random_vgg16, precision="fp32", **options).describe(images)
    reduced = Extractor(random_vgg16, precision=precision, **options).describe(images)
    random_vgg16.to("cpu")
    print(f"{precision}: min cosine to fp32 {cosine(reduced, reference).min():.6f}")
    assert cosine(reduced, reference).min() > 0.99


@pytest.mark.parametrize("decode_in", ["threads", "processes"])
def test_gpu_extract_from_files_equals_cpu(random_vgg16, images, tmp_path, decode_in):
    """The file path on the GPU, two chunks in flight, decoded in threads or in processes (their
    pixels uploaded from pinned memory), gives the CPU's numbers, in order."""
    from PIL import Image

    paths = []
    for i, image in enumerate(images * 12):  # PNGs and JPEGs, several groups of files
        paths.append(tmp_path / f"{i:02d}.{'png' if i % 2 else 'jpg'}")
        Image.fromarray(image).save(paths[-1])
    options = dict(scales=[224], flip=True, batch_size=4, precision="fp32")
    on_gpu = Extractor(random_vgg16, device="cuda", decode_in=decode_in, **options).extract(paths)
    on_cpu = Extractor(random_vgg16, device="cpu", **options).extract(paths)
    assert relative_error(on_gpu, on_cpu) < 1e-4


@pytest.mark.parametrize("decode_in", ["threads", "processes"])
def test_uploads_ahead_that_find_the_gpu_full_lose_no_image(random_vgg16, images, tmp_path, monkeypatch, decode_in):
    """When the GPU has no room for an upload ahead of the network, its image stays on the host and
    the network's thread uploads it: the same descriptors, no failure. Here every upload from a
    reading thread finds the GPU full."""
    from PIL import Image

    paths = []
    for i, image in enumerate(images * 6):
        paths.append(tmp_path / f"{i:02d}.{'png' if i % 2 else 'jpg'}")
        Image.fromarray(image).save(paths[-1])
    options = dict(device="cuda", scales=[224], flip=True, batch_size=4, precision="fp32", decode_in=decode_in)
    expected = Extractor(random_vgg16, **options).extract(paths)
    monkeypatch.setattr(torch.Tensor, "to", gpu_full_for(threads=("vggfeat-decode", "vggfeat-receive")))
    got = Extractor(random_vgg16, **options).extract(paths)
    random_vgg16.to("cpu")
    assert relative_error(got, expected) < 1e-5


def test_gpu_classify_from_files_equals_cpu(random_vgg16, images, tmp_path):
    """Classify on the GPU file path (images uploaded by the decoding threads) matches the CPU."""
    from PIL import Image

    from vggfeat.classifier import Classifier

    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i:02d}.png")
        Image.fromarray(image).save(paths[-1])
    options = dict(scales=[224], flip=True, multi_crop=True, batch_size=8, precision="fp32")
    on_gpu = Classifier(random_vgg16, device="cuda", **options).extract(paths)
    kept = Classifier(random_vgg16, device="cuda", keep_top=5, **options).extract(paths)  # a CSV's: sorted on the GPU
    on_cpu = Classifier(random_vgg16, device="cpu", **options).extract(paths)
    random_vgg16.to("cpu")
    assert relative_error(on_gpu, on_cpu) < 1e-3
    # Each image's 5 best classes and their probabilities, best first (ranks of near-equal
    # probabilities may differ between two runs: compared by value).
    classes = kept[:, 5:].astype(np.int64)
    np.testing.assert_allclose(kept[:, :5], np.take_along_axis(on_gpu, classes, axis=1), rtol=0, atol=1e-6)
    np.testing.assert_allclose(kept[:, :5], -np.sort(-on_gpu, axis=1)[:, :5], rtol=0, atol=1e-6)


def test_auto_precision_and_batch_size_on_this_gpu(random_vgg16):
    extractor = Extractor(random_vgg16, device="cuda", scales=[256, 384, 512])
    random_vgg16.to("cpu")
    assert extractor.precision == ("bf16" if torch.cuda.get_device_capability() >= (8, 0) else "fp32")
    assert 1 <= extractor.batch_size <= 256 and extractor.batch_pixels >= 512 * 683


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_auto_batch_memory_estimate_bounds_the_real_peak(random_vgg16, precision):
    """A padded batch as large as --batch-size auto allows takes no more GPU memory than estimated."""
    extractor = Extractor(random_vgg16, device="cuda", scales=[512], precision=precision)
    shape = (512, 683)
    count = min(extractor.batch_size, extractor.batch_pixels // (shape[0] * shape[1]))
    # Mixed widths, so the batch is padded and masked: the costlier path.
    inputs = [torch.randn(3, shape[0], shape[1] - 32 * (i % 2), device="cuda") for i in range(count)]
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    extractor._forward(inputs)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    itemsize = 2 if precision == "bf16" else 4
    estimate = count * shape[0] * shape[1] * (2 * 128 * itemsize + 12)
    random_vgg16.to("cpu")
    print(f"{precision}: {count} inputs of {shape}: peak {peak / 2**30:.2f} GiB, estimate {estimate / 2**30:.2f} GiB")
    assert peak <= estimate


def test_huge_images_are_described_on_the_gpu(random_vgg16):
    """The issue's memory cases: a 6000x4000 photo at Q=512 and a 224x8000 panorama."""
    photo, panorama = smooth_rgb(4000, 6000, seed=1), smooth_rgb(8000, 224, seed=2)
    extractor = Extractor(random_vgg16, device="cuda", scales=[256, 384, 512])
    got = extractor.describe([photo, panorama])
    random_vgg16.to("cpu")
    assert got.shape == (2, 4096) and np.isfinite(got).all()


@pytest.mark.parametrize("decoder", ["torchvision", "nvjpeg"])
def test_regions_of_images_decoded_on_the_gpu_equal_the_cpus(random_vgg16, images, tmp_path, decoder):
    """Regions cropped from pixels that a decoding thread left on the GPU (nvJPEG's, or uploaded):
    the CPU's descriptors of the same regions, many groups of files in flight."""
    from PIL import Image

    from vggfeat.regions import Region

    paths, regions = [], []
    for i, image in enumerate(images * 8):
        paths.append(tmp_path / f"{i:02d}.jpg")
        Image.fromarray(image).save(paths[-1], quality=95)
        height, width = image.shape[:2]
        regions.append(Region(i % 40, i % 30, width // 2 + i, height // 2 + i) if i % 3 else None)
    options = dict(scales=[224], flip=True, batch_size=4, precision="fp32")
    on_gpu = Extractor(random_vgg16, device="cuda", decoder=decoder, **options).extract(paths, regions=regions)
    on_cpu = Extractor(random_vgg16, device="cpu", decoder="torchvision", **options).extract(paths, regions=regions)
    random_vgg16.to("cpu")
    print(f"regions, {decoder} on the GPU vs the CPU: min cosine {cosine(on_gpu, on_cpu).min():.6f}")
    assert cosine(on_gpu, on_cpu).min() > (0.99999 if decoder == "torchvision" else 0.9999)


@pytest.mark.parametrize("decoder", ["nvjpeg", "nvimgcodec"])
def test_gpu_decoders_match_pil_and_survive_a_bad_file(decoder, random_vgg16, images, tmp_path):
    """--decoder nvjpeg and nvimgcodec: pixels within a few levels of PIL's, the same descriptors
    within a stated tolerance, and a truncated file in the batch recorded, not fatal. --decoder
    torchvision (libjpeg-turbo on the CPU, uploaded) gives PIL's descriptors."""
    from PIL import Image

    import vggfeat.gpujpeg
    from imagefiles import write_truncated_jpeg
    from vggfeat.decode import decode_image
    from vggfeat.jpeg import decode_jpegs, read_jpeg

    if decoder == "nvimgcodec" and vggfeat.gpujpeg.version() is None:
        pytest.skip(f"nvImageCodec is not installed: {vggfeat.gpujpeg.install_command()}")
    paths = []
    for i, image in enumerate(images * 6):  # more than one decoding group
        paths.append(tmp_path / f"{i:02d}.jpg")
        Image.fromarray(image).save(paths[-1], quality=90)
    paths.insert(3, write_truncated_jpeg(tmp_path / "truncated.jpg"))
    cuda = torch.device("cuda", torch.cuda.current_device())
    decode = vggfeat.gpujpeg.BatchDecoder(cuda) if decoder == "nvimgcodec" else None
    for path in paths[:2]:
        on_gpu = decode_jpegs([read_jpeg(path, 10**9, 32)], cuda, decode)[0]
        torch.cuda.synchronize()
        assert on_gpu.device == cuda
        difference = np.abs(on_gpu.permute(1, 2, 0).cpu().numpy().astype(int) - decode_image(path)).max()
        print(f"{decoder} vs PIL: largest pixel difference {difference}")
        assert difference <= 8
    options = dict(device="cuda", scales=[224, 320], precision="fp32", batch_size=8)
    on_the_gpu = Extractor(random_vgg16, decoder=decoder, **options)
    by_gpu = on_the_gpu.extract(paths, errors="nan")
    assert on_the_gpu.config()["decoder"] == decoder  # its pixels are not PIL's: recorded
    by_pil = Extractor(random_vgg16, decoder="pil", **options).extract(paths, errors="nan")  # not the default
    by_libjpeg = Extractor(random_vgg16, decoder="torchvision", **options).extract(paths, errors="nan")
    random_vgg16.to("cpu")
    good = np.isfinite(by_pil).all(axis=1)
    assert not good[3] and np.isnan(by_gpu[3]).all() and np.isnan(by_libjpeg[3]).all()
    assert good.sum() == len(paths) - 1 and np.isfinite(by_gpu[good]).all()
    assert relative_error(by_libjpeg[good], by_pil[good]) < 1e-5
    print(f"{decoder} vs PIL: min descriptor cosine {cosine(by_gpu[good], by_pil[good]).min():.6f}")
    assert cosine(by_gpu[good], by_pil[good]).min() > 0.9999


def test_nvimgcodec_pixels_are_read_by_the_network_before_their_memory_is_reused(random_vgg16, tmp_path):
    """--decoder nvimgcodec at three scales over many distinct images (chunks in flight, threads
    decoding ahead): each image gets the descriptor it gets described alone. nvImageCodec frees its
    images' memory on its own stream as soon as they are dropped, which record_stream cannot hold
    back: a chunk's pixels, dropped while the network's resizes of them were still queued, could be
    decoded over (wrong descriptors, silently). The pixels are PyTorch's own copies since."""
    from PIL import Image

    import vggfeat.gpujpeg

    if vggfeat.gpujpeg.version() is None:
        pytest.skip(f"nvImageCodec is not installed: {vggfeat.gpujpeg.install_command()}")
    paths = []
    for i in range(96):
        paths.append(tmp_path / f"{i:03d}.jpg")
        Image.fromarray(smooth_rgb(240 + 8 * (i % 11), 320 + 16 * (i % 7), seed=100 + i)).save(paths[-1], quality=90)
    extractor = Extractor(random_vgg16, device="cuda", decoder="nvimgcodec", scales=[256, 384, 512], precision="fp32",
                          batch_size=8, workers=4)
    together = extractor.extract(paths)
    alone = np.concatenate([extractor.extract([path]) for path in paths])
    random_vgg16.to("cpu")
    errors = np.abs(together - alone).max(axis=1) / np.abs(alone).max(axis=1)
    print(f"nvimgcodec, 96 images at 3 scales together vs alone: largest relative error {errors.max():.2e} "
          f"(image {errors.argmax()})")
    assert errors.max() < 1e-4


def test_rmac_on_the_gpu_equals_the_cpu():
    from vggfeat.pooling import pool_map

    maps = torch.relu(torch.randn(6, 512, 20, 27, generator=torch.Generator().manual_seed(0)))
    sizes = [(20, 27), (14, 27), (20, 27), (20, 19), (14, 27), (20, 27)]
    on_cpu = pool_map(maps, sizes, "rmac")
    on_gpu = pool_map(maps.cuda(), sizes, "rmac").cpu()
    assert torch.allclose(on_gpu, on_cpu, atol=1e-6)


def test_a_chunk_is_collected_without_waiting_for_the_next_chunks_work(random_vgg16, monkeypatch):
    """Two chunks are in flight: collecting the first must wait for its own work alone. A copy to
    the host queued only when it is collected waits for the second chunk's work as well, and the
    GPU then idles while the host gathers the third (GPU busy 53%, RESULTS.md)."""
    import time

    import vggfeat.extractor

    extractor = Extractor(random_vgg16, device="cuda", scales=[224], flip=False)
    torch.cuda._sleep(1000)  # CUDA's lazy start, outside the timing
    torch.cuda.synchronize()
    began = time.perf_counter()
    torch.cuda._sleep(int(1e9))
    torch.cuda.synchronize()
    chunk_seconds = time.perf_counter() - began

    def slow_chunk(chunk, images):  # each chunk's work: the GPU busy for chunk_seconds
        torch.cuda._sleep(int(1e9))
        return torch.ones(len(images), extractor.dim, device="cuda")

    monkeypatch.setattr(extractor, "_describe_chunk", slow_chunk)
    monkeypatch.setattr(vggfeat.extractor, "ImageReader", ArraysReader)
    chunks = extractor.iter_chunks(list(range(3)), chunk_images=1)
    began = time.perf_counter()
    first = next(chunks)
    waited = time.perf_counter() - began
    rest = list(chunks)
    random_vgg16.to("cpu")
    assert [c.start for c in [first, *rest]] == [0, 1, 2] and first.features.shape == (1, extractor.dim)
    assert waited < 1.5 * chunk_seconds, f"waited {waited:.2f} s for the first chunk, whose work takes {chunk_seconds:.2f} s"


@pytest.mark.parametrize("describer", ["extractor", "classifier"])
def test_describing_queues_the_gpus_work_without_waiting_for_it(random_vgg16, images, describer):
    """iter_chunks overlaps a chunk's work with gathering the next only if describe_async returns
    before the GPU is done: a host copy inside it (Classifier.describe_async had one) serialises
    the run. The GPU is kept busy first, so any wait shows as the length of that sleep."""
    import time

    from vggfeat.classifier import Classifier

    options = dict(device="cuda", scales=[224, 256], batch_size=4)
    if describer == "classifier":
        model = Classifier(random_vgg16, multi_crop=True, **options)
    else:
        model = Extractor(random_vgg16, center_crop=True, **options)
    on_gpu = [torch.from_numpy(image).permute(2, 0, 1).contiguous().cuda() for image in images[:4]]
    expected = model.describe_async(on_gpu).cpu()  # also the warm-up: CUDA's and cuDNN's first calls
    torch.cuda.synchronize()
    began = time.perf_counter()
    torch.cuda._sleep(int(1e9))
    torch.cuda.synchronize()
    sleep_seconds = time.perf_counter() - began

    torch.cuda._sleep(int(1e9))
    began = time.perf_counter()
    described = model.describe_async(on_gpu)
    queued_in = time.perf_counter() - began
    assert described.is_cuda and torch.allclose(described.cpu(), expected)
    random_vgg16.to("cpu")
    assert queued_in < 0.5 * sleep_seconds, f"describe_async took {queued_in:.2f} s behind a {sleep_seconds:.2f} s GPU sleep"


def test_the_host_waits_for_the_gpu_asleep():
    """Waiting for a chunk's results, and a decoding thread for its upload, must leave the core to
    decoding: CUDA otherwise spins while it waits (with few processes on many cores)."""
    import time

    from vggfeat.decode import DEFAULT_MAX_PIXELS
    from vggfeat.chunks import copy_to_host
    from vggfeat.reading import ImageReader

    def waited(block) -> tuple[float, float]:  # (seconds, this thread's CPU seconds)
        torch.cuda.synchronize()
        wall, cpu = time.perf_counter(), time.thread_time()
        block()
        return time.perf_counter() - wall, time.thread_time() - cpu

    def chunk_results() -> None:
        torch.cuda._sleep(int(1e9))
        _, ready = copy_to_host(torch.ones(4, 8, device="cuda"))
        ready.synchronize()

    reader = ImageReader(torch.device("cuda"), "pil", 1, DEFAULT_MAX_PIXELS, 32)

    def upload() -> None:
        with reader._own_stream():
            torch.cuda._sleep(int(1e9))

    torch.cuda._sleep(1000)  # CUDA's lazy start, outside the timing
    for block in (chunk_results, upload):
        seconds, cpu = waited(block)
        assert seconds > 0.1 and cpu < 0.2 * seconds, f"{block.__name__}: {cpu:.2f} s of CPU in {seconds:.2f} s"


class ArraysReader:
    """An ImageReader stand-in: every path is one small image, decoded at once."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def read(self, paths, lookahead):
        import contextlib
        return contextlib.nullcontext(iter([smooth_rgb(224, 224, seed=0)] * len(paths)))


def test_the_compiled_network_gives_the_plain_ones_descriptors_on_the_gpu(random_vgg16, images):
    options = dict(device="cuda", scales=[256], center_crop=True, batch_size=2, precision="fp32")
    plain = Extractor(random_vgg16, compile="off", **options).describe(images[:5])
    compiled = Extractor(random_vgg16, compile="on", **options)
    got = compiled.describe(images[:5])  # two full batches compiled, the last one not
    random_vgg16.to("cpu")
    assert compiled._compiled is not None and compiled._compiling
    assert relative_error(got, plain) < 1e-4


def test_two_processes_on_the_gpu_write_the_file_one_writes(images, tmp_path):
    """``--device cuda:0,cuda:0``: each device's process, forked from the fork server that imported
    vggfeat without touching CUDA, runs its own CUDA context and writes what one process writes."""
    from PIL import Image

    (tmp_path / "images").mkdir()
    for i, image in enumerate(images * 2):
        Image.fromarray(image).save(tmp_path / "images" / f"{i:02d}.jpg")
    args = ["extract", tmp_path / "images", "--weights", "random", "--scales", "224", "--precision", "fp32", "-q"]
    assert run_main([*args[:2], tmp_path / "one.h5", *args[2:], "--device", "cuda:0"])[0] == 0
    code, _, err = run_main([*args[:2], tmp_path / "two.h5", *args[2:], "--device", "cuda:0,cuda:0"])
    assert code == 0, err
    assert_same_output(read_output(tmp_path / "two.h5"), read_output(tmp_path / "one.h5"), atol=1e-5)


def test_lbfgs_svms_on_the_gpu_are_the_cpus():
    """``train-svm --solver lbfgs --device cuda``: float32 on the GPU reaches the objective that
    float64 on the CPU does, each class's to 1e-4."""
    from sklearn.datasets import make_classification

    from vggfeat.primal import primal_objective
    from vggfeat.svm import LinearSVM

    X, y = make_classification(4000, 512, n_informative=64, n_classes=20, n_clusters_per_class=1, random_state=0)
    X = np.abs(X) / np.linalg.norm(np.abs(X), axis=1, keepdims=True)
    targets = np.eye(20, dtype=bool)[y]
    fits = {device: LinearSVM(C=1.0, solver="lbfgs", device=device).fit(X, y) for device in ("cpu", "cuda")}
    objective = {device: primal_objective(X, targets, 1.0, np.ones(targets.shape), svm.coef_, svm.intercept_)
                 for device, svm in fits.items()}
    np.testing.assert_allclose(objective["cuda"], objective["cpu"], rtol=1e-4)
    assert fits["cuda"].n_unconverged_ == 0
    # Float16 descriptors (a float16 file) held so on the GPU too, each block computed in float32.
    half = LinearSVM(C=1.0, solver="lbfgs", device="cuda").fit(X.astype(np.float16), y)
    np.testing.assert_allclose(primal_objective(X, targets, 1.0, np.ones(targets.shape), half.coef_, half.intercept_),
                               objective["cpu"], rtol=1e-3)
