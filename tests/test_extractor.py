"""Extractor: batching, flips, scales, resizing, validation and failures.

Descriptors must not depend on how images were batched (padding is masked out), flip and scale
aggregation must mean what the paper says, and bad arguments or files must fail clearly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

import vggfeat.extractor
from imagefiles import smooth_rgb, write_corrupt, write_rgb
from reference import assert_close
from vggfeat import Extractor, ImageError, VggfeatError, load_network
from vggfeat.decode import decode_image
from vggfeat.resize import IMAGENET_MEAN, IMAGENET_STD, plan_batches, resized_shape, to_input, to_inputs


def one_at_a_time(extractor: Extractor, images) -> np.ndarray:
    return np.concatenate([extractor.describe([image]) for image in images])


@pytest.fixture
def padding_spy(monkeypatch):
    """Records, for each batch the Extractor runs, whether it was padded (mixed shapes)."""
    padded: list[bool] = []
    original = vggfeat.extractor.pad_batch

    def spy(inputs):
        batch, sizes = original(inputs)
        padded.append(sizes is not None)
        return batch, sizes

    monkeypatch.setattr(vggfeat.extractor, "pad_batch", spy)
    return padded


# Three images of different sizes, small to keep the tests fast: the two landscape ones share a
# batch at every scale, padded in width by more than 32 px so that even their fc7 maps differ in
# size; at 224 the portrait one joins them (padded both ways).
MIXED_SHAPES = [(224, 240), (224, 272), (250, 224)]


@pytest.fixture(scope="module")
def mixed_images():
    return [smooth_rgb(h, w, seed=20 + i) for i, (h, w) in enumerate(MIXED_SHAPES)]


def planned_batches(images, scale: int, batch_size: int, scales, flip: bool = True):
    """The batches the Extractor plans at ``scale``, as lists of input shapes (as in _describe_at)."""
    shapes = [resized_shape(*image.shape[:2], scale) for image in images]
    if flip:
        shapes += shapes
    budget = batch_size * max(scales) ** 2 * 4 // 3
    return [[shapes[i] for i in batch] for batch in plan_batches(shapes, batch_size, budget)]


# --------------------------------------------------------------------------- batched == one at a time


def test_batches_really_mix_shapes(mixed_images):
    """Guard against vacuous batching tests: for these shapes a batch holds different shapes."""
    for scale in (224, 256):
        batches = planned_batches(mixed_images[:2], scale, batch_size=8, scales=(224, 256))
        assert len(batches) == 1 and len(batches[0]) == 4, batches
        widths = {w for _, w in batches[0]}
        assert max(widths) // 32 > min(widths) // 32, "fc7 maps of one size: pooling not exercised"
    batches = planned_batches(mixed_images, 224, batch_size=8, scales=(224,))
    assert len(batches) == 1 and len(set(batches[0])) == 3, batches


def test_batched_equals_one_at_a_time(random_vgg16, mixed_images, padding_spy):
    images = mixed_images[:2]
    extractor = Extractor(random_vgg16, scales=[224, 256], flip=True, batch_size=8, device="cpu")
    batched = extractor.describe(images)
    assert any(padding_spy), "no batch was padded: the test would not exercise masking"
    singles = one_at_a_time(extractor, images)
    assert batched.shape == (2, 4096) and batched.dtype == np.float32
    assert_close(batched, singles, 1e-5, "fc7 avg, batched vs alone")
    # Different images give different descriptors (rows were not mixed up or copied).
    assert np.abs(batched[0] - batched[1]).max() > 1e-3 * np.abs(batched).max()


def test_batched_equals_one_at_a_time_conv5_3_max(random_vgg16, mixed_images, padding_spy):
    images = mixed_images[:2]
    extractor = Extractor(
        random_vgg16, scales=[224], flip=True, layer="conv5_3", pooling="max", batch_size=8, device="cpu"
    )
    batched = extractor.describe(images)
    assert any(padding_spy)
    assert batched.shape == (2, 512)
    assert_close(batched, one_at_a_time(extractor, images), 1e-5, "conv5_3 max, batched vs alone")


@pytest.fixture(scope="module")
def random_vgg11_bn():
    """vgg11_bn with seeded random weights, and BatchNorm statistics and conv biases made nonzero.

    torchvision initialises conv biases to 0 and BatchNorm to the identity, so zero padding would
    stay (almost) zero through the network. Realistic BatchNorm shifts make the padded area nonzero
    after every BN + ReLU, which is the case the masking must handle.
    """
    network = load_network("vgg11_bn", "random", 0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in network.features:
            if isinstance(module, torch.nn.Conv2d):
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))
            elif isinstance(module, torch.nn.BatchNorm2d):
                channels = module.num_features
                module.running_mean.copy_(0.2 * torch.randn(channels, generator=generator))
                module.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(channels, generator=generator) + 0.5)
                module.bias.copy_(0.3 * torch.randn(channels, generator=generator))
    return network


def test_bn_padded_area_is_nonzero(random_vgg11_bn):
    """The premise of the BN tests: a zero input gives a nonzero map after the first BN + ReLU."""
    with torch.inference_mode():
        conv1_1, _ = random_vgg11_bn(torch.zeros(1, 3, 16, 16), "conv1_1")
    assert conv1_1.abs().max() > 0.01


@pytest.mark.parametrize("layer, pooling, scales", [("fc7", "avg", [224, 256]), ("conv5_2", "max", [224])])
def test_batched_equals_one_at_a_time_batchnorm(random_vgg11_bn, mixed_images, padding_spy, layer, pooling, scales):
    extractor = Extractor(
        random_vgg11_bn, scales=scales, flip=True, layer=layer, pooling=pooling, batch_size=8, device="cpu"
    )
    images = mixed_images if len(scales) == 1 else mixed_images[:2]
    batched = extractor.describe(images)
    assert any(padding_spy)
    assert_close(batched, one_at_a_time(extractor, images), 1e-5, f"vgg11_bn {layer} {pooling}")


def test_batchnorm_padded_batch_gives_each_image_its_own_map(random_vgg11_bn):
    generator = torch.Generator().manual_seed(6)
    images = [torch.randn(3, 270, 224, generator=generator), torch.randn(3, 224, 245, generator=generator)]
    batch = torch.zeros(2, 3, 270, 245)
    for slot, image in enumerate(images):
        batch[slot, :, : image.shape[1], : image.shape[2]] = image
    sizes = torch.tensor([list(image.shape[1:]) for image in images])
    with torch.inference_mode():
        padded, out_sizes = random_vgg11_bn(batch, "fc7", sizes)
        unmasked, _ = random_vgg11_bn(batch, "fc7")
        for slot, image in enumerate(images):
            alone, _ = random_vgg11_bn(image.unsqueeze(0), "fc7")
            h, w = alone.shape[-2:]
            assert out_sizes[slot].tolist() == [h, w]
            assert_close(padded[slot, :, :h, :w], alone[0], 1e-5, f"vgg11_bn fc7, image {slot}")
            assert (unmasked[slot, :, :h, :w] - alone[0]).abs().max() > 1e-3 * alone.abs().max()


@pytest.mark.parametrize("network", ["random_vgg16", "random_vgg11_bn"])
def test_bf16_on_the_cpu_agrees_with_fp32(network, mixed_images, padding_spy, request):
    """--precision bf16 on a CPU (3-4x faster where it has AMX, RESULTS.md): every image's descriptor
    within the issue's cosine of 0.999 to fp32's, batches padded, BatchNorm too; the file records it."""
    network = request.getfixturevalue(network)
    options = {"scales": [224], "flip": False, "batch_size": 8, "device": "cpu"}  # a padded batch of three
    exact, half = Extractor(network, **options), Extractor(network, precision="bf16", **options)
    expected, actual = exact.describe(mixed_images), half.describe(mixed_images)
    assert any(padding_spy)
    assert actual.dtype == np.float32 and np.isfinite(actual).all()
    cosine = (actual * expected).sum(1) / np.linalg.norm(actual, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() >= 0.999, cosine
    assert np.abs(actual - expected).max() > 0, "bf16 gave fp32's numbers: it did not run in bf16"
    assert (exact.config()["precision"], half.config()["precision"]) == ("fp32", "bf16")


# --------------------------------------------------------------------------- flips, scales, aggregation


@pytest.fixture(scope="module")
def picture():
    """250x300: at Q=224 it is resized on both axes (to 224x268)."""
    return smooth_rgb(250, 300, seed=30)


def test_flip_is_mean_of_image_and_mirror(random_vgg16, picture):
    mirrored = np.ascontiguousarray(np.fliplr(picture))
    plain = Extractor(random_vgg16, scales=[224], flip=False, device="cpu").describe([picture, mirrored])
    flipped = Extractor(random_vgg16, scales=[224], flip=True, device="cpu").describe([picture])
    # The mirror really changes the descriptor, so averaging is not trivially the identity.
    assert np.abs(plain[0] - plain[1]).max() > 1e-2 * np.abs(plain).max()
    assert_close(flipped[0], (plain[0] + plain[1]) / 2, 1e-5, "flip=True vs mean of image and mirror")


@pytest.fixture(scope="module")
def per_scale(random_vgg16, picture):
    """Single-scale descriptors (flip off) of ``picture`` at 224 and 256."""
    return {
        q: Extractor(random_vgg16, scales=[q], flip=False, device="cpu").describe([picture])[0] for q in (224, 256)
    }


def test_stack_concatenates_scales_in_given_order(random_vgg16, picture, per_scale):
    extractor = Extractor(random_vgg16, scales=[256, 224], aggregate="stack", flip=False, device="cpu")
    assert extractor.dim == 8192
    stacked = extractor.describe([picture])
    assert stacked.shape == (1, 8192)
    assert np.abs(per_scale[224] - per_scale[256]).max() > 1e-3 * np.abs(per_scale[224]).max()
    assert_close(stacked[0, :4096], per_scale[256], 1e-5, "first half: Q=256")
    assert_close(stacked[0, 4096:], per_scale[224], 1e-5, "second half: Q=224")


def test_mean_averages_scales(random_vgg16, picture, per_scale):
    extractor = Extractor(random_vgg16, scales=[224, 256], aggregate="mean", flip=False, device="cpu")
    assert extractor.dim == 4096
    assert_close(extractor.describe([picture])[0], (per_scale[224] + per_scale[256]) / 2, 1e-5, "mean over scales")


def test_dim_and_config_reflect_options(random_vgg16):
    extractor = Extractor(
        random_vgg16, scales=[256, 384, 512], aggregate="stack", layer="conv5_3", pooling="max", flip=False, device="cpu"
    )
    assert extractor.dim == 3 * 512
    config = extractor.config()
    assert config["model"] == "vgg16"
    assert config["weights"] == "random" and config["weights_seed"] == 0
    assert config["weights_sha256"] == random_vgg16.weights.sha256 and len(config["weights_sha256"]) == 64
    assert config["layer"] == "conv5_3" and config["pooling"] == "max"
    assert config["scales"] == [256, 384, 512] and config["aggregate"] == "stack"
    assert config["flip"] is False and config["precision"] == "fp32" and config["dim"] == 1536
    assert config["preprocessing"]["mean"] == list(IMAGENET_MEAN)
    assert config["preprocessing"]["std"] == list(IMAGENET_STD)

    default = Extractor(random_vgg16, device="cpu")
    assert default.dim == 4096
    assert default.config()["scales"] == [256, 384, 512]  # the paper's Q
    assert default.config()["flip"] is True and default.config()["aggregate"] == "mean"
    assert default.config()["layer"] == "fc7" and default.config()["pooling"] == "avg"
    assert Extractor(random_vgg16, scales=[224, 256], aggregate="stack", layer="fc6", device="cpu").dim == 8192


def test_an_extractor_shows_its_network_scales_device_and_precision(random_vgg16):
    """Its repr was Python's default, <vggfeat.extractor.Extractor object at 0x...>."""
    extractor = Extractor(random_vgg16, layer="conv1_1", scales=[224, 256], device="cpu")
    assert repr(extractor) == ("Extractor(model='vgg16', weights='random', layer='conv1_1', scales=(224, 256), "
                               "device='cpu', precision='fp32', dim=64)")


def test_describe_empty_list(random_vgg16):
    out = Extractor(random_vgg16, scales=[224], device="cpu").describe([])
    assert out.shape == (0, 4096) and out.dtype == np.float32


# --------------------------------------------------------------------------- resize


SHAPES = [(480, 640), (640, 480), (333, 500), (500, 333), (1000, 1001), (1001, 1000), (224, 224), (300, 299),
          (100, 3000), (3000, 100), (577, 1023), (1023, 577), (50, 70)]


@pytest.mark.parametrize("scale", [224, 256, 384, 512])
def test_resized_shape_matches_torchvision_resize(scale):
    for height, width in SHAPES:
        expected = tuple(TF.resize(torch.zeros(1, height, width, dtype=torch.uint8), scale, antialias=True).shape[1:])
        shape = resized_shape(height, width, scale)
        assert shape == expected, (height, width, scale)
        assert min(shape) == scale


def test_to_input_matches_torchvision_resize_and_normalize():
    image = torch.from_numpy(smooth_rgb(300, 410, seed=40)).permute(2, 0, 1)
    shape = resized_shape(300, 410, 256)
    ours = to_input(image, shape)
    reference = TF.resize(image.float() / 255, [256], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    reference = TF.normalize(reference, list(IMAGENET_MEAN), list(IMAGENET_STD))
    assert ours.shape == reference.shape == (3, 256, 349)
    assert_close(ours, reference, 1e-5, "to_input vs torchvision Resize + Normalize")
    # No resize when the image already has the target shape: only normalisation.
    same = to_input(image, (300, 410))
    assert_close(same, TF.normalize(image.float() / 255, list(IMAGENET_MEAN), list(IMAGENET_STD)), 1e-6, "no resize")


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "options, words",
    [
        ({"layer": "fc9"}, ["layer", "'fc9'", "fc7", "fc8", "conv5_3"]),
        ({"scales": [200, 256]}, ["200", "224", "fc7", "conv5_3"]),
        ({"scales": [200], "layer": "fc8"}, ["200", "224", "fc8"]),
        ({"scales": [200], "layer": "conv5_3", "center_crop": True}, ["200", "center_crop (--center-crop)"]),
        ({"scales": [16, 256], "layer": "conv5_3"}, ["16", "32", "stride"]),
        ({"scales": [256, 256]}, ["repeat", "256"]),
        ({"scales": []}, ["scale"]),
        ({"pooling": "median"}, ["pooling", "'median'", "avg", "max"]),
        ({"aggregate": "concat"}, ["aggregate", "'concat'", "mean", "stack"]),
        ({"precision": "fp64"}, ["precision", "'fp64'", "fp32", "bf16"]),
        ({"precision": "fp16", "device": "cpu"}, ["precision='fp16' (--precision fp16)", "CUDA"]),  # a Python user's name too
        ({"layer": "conv5_3", "resize_side": "long", "center_crop": True},
         ["center_crop (--center-crop)", "resize_side='long' (--resize-side long)"]),
        ({"batch_size": 0}, ["batch size", "auto"]),
        ({"batch_size": "big"}, ["batch size", "'big'"]),
        ({"scales": [224.9]}, ["whole numbers", "224.9"]),  # was 224, silently
        ({"workers": -1}, ["workers", "-1"]),  # the thread pool's own ValueError, at the first image
        ({"workers": 0}, ["workers", "at least 1"]),  # was the default, silently
        ({"device": "tpu"}, ["device", "tpu"]),
    ],
)
def test_bad_options_raise_clear_errors(random_vgg16, options, words):
    with pytest.raises(VggfeatError) as raised:
        Extractor(random_vgg16, **{"device": "cpu", **options})
    message = str(raised.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def test_a_gpu_that_is_not_there_is_refused_by_name(random_vgg16, monkeypatch):
    if not torch.cuda.is_available():  # as on a machine with two GPUs
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    count = torch.cuda.device_count()
    with pytest.raises(VggfeatError, match=rf"cuda:{count} asked for, but this machine has {count} GPU\(s\): "
                                           rf"cuda:0 to cuda:{count - 1}"):
        Extractor(random_vgg16, device=f"cuda:{count}")


def test_unknown_errors_mode_is_refused(random_vgg16):
    with pytest.raises(VggfeatError, match="errors"):
        Extractor(random_vgg16, scales=[224], device="cpu").extract([], errors="skip")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("extract")
    good = [folder / "a.png", folder / "c.jpg"]
    write_rgb(good[0], 224, 224, seed=50)
    write_rgb(good[1], 224, 224, seed=51)
    corrupt = write_corrupt(folder / "b.jpg")
    return good, corrupt


def test_extract_raises_on_corrupt_file(random_vgg16, files):
    good, corrupt = files
    extractor = Extractor(random_vgg16, scales=[224], flip=False, device="cpu")
    with pytest.raises(ImageError) as raised:
        extractor.extract([corrupt, good[0]], errors="raise")
    assert str(corrupt) in str(raised.value)
    assert "not an image" in str(raised.value).lower()


def test_extract_nan_row_for_corrupt_file(random_vgg16, files):
    good, corrupt = files
    extractor = Extractor(random_vgg16, scales=[224], flip=False, device="cpu")
    clean = extractor.extract(good)
    mixed = extractor.extract([good[0], corrupt, good[1]], errors="nan")
    assert mixed.shape == (3, 4096) and mixed.dtype == np.float32
    assert np.isnan(mixed[1]).all()
    assert np.isfinite(mixed[[0, 2]]).all()
    assert_close(mixed[[0, 2]], clean, 1e-6, "good rows next to a corrupt file")
    # extract() of a file is describe() of its decoded pixels.
    assert_close(clean[:1], extractor.describe([decode_image(good[0])]), 1e-5, "extract vs describe")
    # describe() takes uint8 RGB pixels: others were described as they came (0..1 floats, silently
    # other descriptors) or failed deep in torch; a mirrored view (negative strides) is taken.
    pixels = decode_image(good[0])
    for other, what in ((pixels / 255.0, "float64 ndarray of shape"), (pixels[..., 0], "uint8 ndarray of shape"),
                        (np.dstack([pixels, pixels[..., :1]]), "uint8 ndarray of shape"), (Image.fromarray(pixels), "Image"),
                        (torch.from_numpy(pixels), "torch.uint8 Tensor of shape")):  # a tensor is [3, H, W]
        with pytest.raises(ValueError, match=f"image 0: expected decoded RGB pixels, a uint8 array .*, got a {what}"):
            extractor.describe([other])
    assert_close(extractor.describe([pixels[:, ::-1]]), extractor.describe([pixels[:, ::-1].copy()]), 0, "a mirrored view")
    assert_close(extractor.describe([torch.from_numpy(pixels).permute(2, 0, 1)]), clean[:1], 1e-5, "a decoder's tensor")
    # One path where a sequence belongs: a string's characters were each taken for a file (NaN rows).
    for one in (str(good[0]), good[0]):
        with pytest.raises(TypeError, match="expected a sequence of image paths, got one: .*; give \\["):
            extractor.extract(one, errors="nan")


def test_chunks_report_failures_and_sizes(random_vgg16, files):
    good, corrupt = files
    extractor = Extractor(random_vgg16, scales=[224], flip=False, device="cpu")
    chunks = list(extractor.iter_chunks([corrupt, good[0]], chunk_images=1))
    assert [(c.start, c.end) for c in chunks] == [(0, 1), (1, 2)]
    assert chunks[0].indices == [] and chunks[0].features.shape == (0, 4096)
    assert [index for index, _ in chunks[0].failures] == [0]
    assert chunks[1].indices == [1] and chunks[1].sizes == [(224, 224)] and not chunks[1].failures
    assert math.isfinite(float(chunks[1].features.sum()))


@pytest.mark.parametrize("in_flight", [1, 3])
def test_chunks_are_the_same_however_many_are_in_flight(random_vgg16, files, in_flight, monkeypatch):
    good, corrupt = files
    paths = [good[0], corrupt, good[1], good[0], good[1]]
    extractor = Extractor(random_vgg16, layer="conv1_1", scales=[224], flip=False, device="cpu")
    expected = list(extractor.iter_chunks(paths, chunk_images=1))
    monkeypatch.setattr(vggfeat.extractor, "CHUNKS_IN_FLIGHT", in_flight)
    chunks = list(extractor.iter_chunks(paths, chunk_images=1))
    assert [(c.start, c.end, c.indices, c.failures) for c in chunks] == [
        (c.start, c.end, c.indices, c.failures) for c in expected]
    assert all(np.array_equal(c.features, e.features) for c, e in zip(chunks, expected))


def test_an_image_whose_descriptor_is_not_finite_fails_alone(random_vgg16, files, monkeypatch):
    good, corrupt = files
    extractor = Extractor(random_vgg16, layer="conv1_1", scales=[224], flip=False, device="cpu")
    clean = extractor.extract(good)
    real = Extractor.describe_async

    def overflowing(self, images, sizes=None):  # as fp16 arithmetic that overflows on the second image
        features = real(self, images, sizes).clone()
        features[1:2, 5] = float("inf")
        return features

    monkeypatch.setattr(Extractor, "describe_async", overflowing)
    [chunk] = list(extractor.iter_chunks([good[0], corrupt, good[1]]))
    assert chunk.indices == [0] and chunk.sizes == [(224, 224)] and np.array_equal(chunk.features, clean[:1])
    assert [index for index, _ in chunk.failures] == [1, 2]
    assert "NaN or infinite" in chunk.failures[1][1] and "--precision" in chunk.failures[1][1]


# --------------------------------------------------------------------------- centre crop


def test_center_crop_is_torchvision_resize_then_center_crop(random_vgg16, tmp_path):
    """--scales 256 --center-crop: the descriptor of torchvision's Resize(256) + CenterCrop(224)."""
    from torchvision.transforms import v2

    write_rgb(tmp_path / "a.png", 300, 417, seed=5)  # odd margins: checks the crop's rounding
    extractor = Extractor(random_vgg16, scales=[256], flip=False, center_crop=True, device="cpu")
    descriptor = extractor.extract([tmp_path / "a.png"])
    pipeline = v2.Compose([
        v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
        v2.Resize(256, antialias=True), v2.CenterCrop(224), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
    x = pipeline(decode_image(tmp_path / "a.png")).unsqueeze(0)
    assert x.shape == (1, 3, 224, 224)
    with torch.inference_mode():
        expected = random_vgg16(x, "fc7")[0].mean(dim=(2, 3)).numpy()
    assert_close(descriptor, expected, 1e-4, "centre crop")
    assert extractor.config()["center_crop"] is True
    assert Extractor(random_vgg16, scales=[256], device="cpu").config()["center_crop"] is False


def test_conv_layers_take_scales_below_224(random_vgg16, reference_vgg16, tmp_path):
    """conv5_3 at Q=96: torchvision's VGG16 features up to conv5_3 (ReLU) on the image resized by
    torchvision's Resize(96), averaged over the map, then over the image and its flip."""
    from torchvision.transforms import v2

    write_rgb(tmp_path / "a.png", 150, 260, seed=6)
    extractor = Extractor(random_vgg16, layer="conv5_3", scales=[96], flip=True, device="cpu")
    descriptor = extractor.extract([tmp_path / "a.png"])
    pipeline = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Resize(96, antialias=True),
                           v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    x = pipeline(decode_image(tmp_path / "a.png")).unsqueeze(0)
    assert x.shape == (1, 3, 96, 166)  # a 6x10 conv5_3 map: smaller than fc6's 7x7 window
    conv5_3 = reference_vgg16.features[:30]  # up to conv5_3 and its ReLU
    with torch.inference_mode():
        expected = (conv5_3(x).mean(dim=(2, 3)) + conv5_3(x.flip(-1)).mean(dim=(2, 3))).numpy() / 2
    assert_close(descriptor, expected, 1e-4, "conv5_3 at Q=96")


def test_center_crop_refuses_long_side(random_vgg16):
    with pytest.raises(VggfeatError, match="center-crop"):
        Extractor(random_vgg16, layer="conv5_3", resize_side="long", center_crop=True, device="cpu")
    with pytest.raises(VggfeatError, match="flip is True or False, got 'no'"):  # bool('no') was True
        Extractor(random_vgg16, flip="no", device="cpu")
    for scales in (224, "224"):  # '224' was scales 2, 2 and 4
        with pytest.raises(VggfeatError, match=f"scales are a sequence of sizes such as \\[256, 384, 512\\], got {scales!r}"):
            Extractor(random_vgg16, scales=scales, device="cpu")
    assert Extractor(random_vgg16, scales=[224], batch_size=np.int64(4), device="cpu").batch_size == 4


def test_inputs_and_their_flips_come_in_order_whatever_the_sizes():
    """to_inputs resizes and flips images of one size together; the order stays the images' own."""
    sizes = [(240, 300), (300, 240), (240, 300), (256, 256), (300, 240)]
    images = [torch.from_numpy(smooth_rgb(h, w, seed=i)).permute(2, 0, 1) for i, (h, w) in enumerate(sizes)]
    for crop in (None, 224):
        inputs = to_inputs(images, 256, crop=crop, flip=True)
        assert len(inputs) == 2 * len(images)
        for image, x, flipped in zip(images, inputs, inputs[len(images):]):
            alone = to_inputs([image], 256, crop=crop)[0]
            torch.testing.assert_close(x, alone)
            torch.testing.assert_close(flipped, alone.flip(-1))
        expected_shape = (3, 224, 224) if crop else (3, 256, 320)
        assert inputs[0].shape == expected_shape and inputs[1].shape == (expected_shape[0], *expected_shape[:0:-1])
    torch.testing.assert_close(to_inputs(images[:1], 256)[0], to_input(images[0], (256, 320)))
