"""DenseVGG against torchvision's own VGG, the reference implementation.

The dense network must give exactly what torchvision's classifier gives on each 224x224 window,
and the Extractor's single-scale descriptor of a 224x224 image must be torchvision's fc7 of it.
Weights are seeded random (the same seed on both sides), so no download is needed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imagefiles import write_rgb
from reference import assert_close, reference_input
from vggfeat import DenseVGG, Extractor
from vggfeat.network import MIN_INPUT_SIDE, valid_mask


# --------------------------------------------------------------------------- structure


def test_dense_network_shares_torchvision_weights(random_vgg16, reference_vgg16):
    """fc6/fc7 convolutions hold torchvision's Linear weights, laid out as (out, channel, row, col)."""
    fc6, fc7 = reference_vgg16.classifier[0], reference_vgg16.classifier[3]
    assert random_vgg16.fc6.weight.shape == (4096, 512, 7, 7)
    assert random_vgg16.fc7.weight.shape == (4096, 4096, 1, 1)
    assert torch.equal(random_vgg16.fc6.weight.reshape(4096, -1), fc6.weight)
    assert torch.equal(random_vgg16.fc6.bias, fc6.bias)
    assert torch.equal(random_vgg16.fc7.weight.reshape(4096, -1), fc7.weight)
    assert torch.equal(random_vgg16.fc7.bias, fc7.bias)
    assert not random_vgg16.training
    assert not any(p.requires_grad for p in random_vgg16.parameters())


def test_layer_names_and_dims(random_vgg16):
    layers = random_vgg16.layers
    assert layers[:3] == ("conv1_1", "conv1_2", "pool1")
    assert layers[-6:] == ("conv5_2", "conv5_3", "pool5", "fc6", "fc7", "fc8")
    assert len([name for name in layers if name.startswith("conv")]) == 13  # VGG16: 13 conv layers
    dims = random_vgg16.layer_dims
    assert (dims["conv1_1"], dims["conv2_2"], dims["conv3_3"], dims["conv4_3"], dims["conv5_3"]) == (64, 128, 256, 512, 512)
    assert dims["pool5"] == 512 and dims["fc6"] == 4096 and dims["fc7"] == 4096 and dims["fc8"] == 1000


def test_intermediate_layers_match_torchvision_features(random_vgg16, reference_vgg16):
    """conv3_3 is the output of the ReLU after the 7th conv: features[:16] in torchvision's VGG16."""
    x = torch.randn(1, 3, 64, 80, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        conv3_3, sizes = random_vgg16(x, "conv3_3")
        pool2, _ = random_vgg16(x, "pool2")
        expected_conv, expected_pool = reference_vgg16.features[:16](x), reference_vgg16.features[:10](x)
    assert sizes is None
    assert conv3_3.shape == (1, 256, 16, 20) and pool2.shape == (1, 128, 16, 20)
    assert_close(conv3_3, expected_conv, 1e-5, "conv3_3")
    assert_close(pool2, expected_pool, 1e-5, "pool2")


def test_too_small_input_for_fc6_is_refused(random_vgg16):
    with pytest.raises(ValueError, match=str(MIN_INPUT_SIDE)):
        random_vgg16(torch.zeros(1, 3, 200, 256), "fc7")


# --------------------------------------------------------------------------- 224x224: the classifier itself


@pytest.mark.parametrize(
    "layer, reference",
    [
        ("fc8", lambda vgg, pool5: vgg.classifier(torch.flatten(vgg.avgpool(pool5), 1))),
        ("fc7", lambda vgg, pool5: vgg.classifier[:5](torch.flatten(vgg.avgpool(pool5), 1))),
        ("fc6", lambda vgg, pool5: vgg.classifier[:2](torch.flatten(vgg.avgpool(pool5), 1))),
        ("pool5", lambda vgg, pool5: pool5.mean(dim=(2, 3))),
    ],
)
def test_single_scale_224_descriptor_equals_torchvision(random_vgg16, reference_vgg16, image_224, layer, reference):
    """A 224x224 image at Q=224 without flip: the descriptor is torchvision's own layer output."""
    extractor = Extractor(random_vgg16, scales=[224], flip=False, layer=layer, device="cpu")
    descriptor = extractor.extract([image_224])
    x = reference_input(image_224)
    with torch.inference_mode():
        pool5 = reference_vgg16.features(x)
        assert pool5.shape == (1, 512, 7, 7)
        expected = reference(reference_vgg16, pool5).numpy()
    assert descriptor.dtype == np.float32
    assert descriptor.shape == (1, extractor.dim) == expected.shape
    assert np.count_nonzero(expected) > expected.size // 20, "reference almost all zero: weak test"
    assert_close(descriptor, expected, 1e-4, layer)


def test_dense_map_at_224_is_one_position(random_vgg16, reference_vgg16, image_224):
    x = reference_input(image_224)
    with torch.inference_mode():
        fc7, sizes = random_vgg16(x, "fc7")
        expected = reference_vgg16.classifier[:5](torch.flatten(reference_vgg16.features(x), 1))
    assert sizes is None
    assert fc7.shape == (1, 4096, 1, 1)
    assert_close(fc7[:, :, 0, 0], expected, 1e-4, "fc7 at 224")


# --------------------------------------------------------------------------- dense: every 7x7 window of pool5


@pytest.fixture(scope="module")
def large_image(tmp_path_factory):
    """A 320x416 image: at Q=320 it is not resized, and pool5 is 10x13, so fc7 is a 4x7 map."""
    path = tmp_path_factory.mktemp("net") / "large.png"
    write_rgb(path, 320, 416, seed=12)
    return path


@pytest.fixture(scope="module")
def per_window(reference_vgg16, large_image):
    """torchvision's Linear fc6 and fc7 on each 7x7 window of pool5, flattened as torchvision does.

    Returns (x, fc6, fc7), fc6/fc7 of shape [rows, cols, 4096].
    """
    x = reference_input(large_image)
    with torch.inference_mode():
        pool5 = reference_vgg16.features(x)
        assert pool5.shape == (1, 512, 10, 13)
        rows, cols = pool5.shape[2] - 6, pool5.shape[3] - 6
        windows = torch.cat([torch.flatten(pool5[:, :, i : i + 7, j : j + 7], 1) for i in range(rows) for j in range(cols)])
        fc6 = reference_vgg16.classifier[:2](windows)
        fc7 = reference_vgg16.classifier[2:5](fc6)
    return x, fc6.reshape(rows, cols, -1).numpy(), fc7.reshape(rows, cols, -1).numpy()


def test_convolutional_fc_equals_linear_fc_on_each_window(random_vgg16, per_window):
    x, expected_fc6, expected_fc7 = per_window
    with torch.inference_mode():
        fc6, _ = random_vgg16(x, "fc6")
        fc7, sizes = random_vgg16(x, "fc7")
    assert sizes is None
    assert fc6.shape == fc7.shape == (1, 4096, 4, 7)
    dense_fc6 = fc6[0].permute(1, 2, 0).numpy()  # [rows, cols, 4096]
    dense_fc7 = fc7[0].permute(1, 2, 0).numpy()
    # The windows really differ: a mix-up of positions would be caught.
    assert np.abs(expected_fc7[0, 0] - expected_fc7[-1, -1]).max() > 0.05 * np.abs(expected_fc7).max()
    for i in range(4):
        for j in range(7):
            assert_close(dense_fc6[i, j], expected_fc6[i, j], 1e-4, f"fc6 at window ({i}, {j})")
            assert_close(dense_fc7[i, j], expected_fc7[i, j], 1e-4, f"fc7 at window ({i}, {j})")


def test_extractor_average_is_mean_over_windows(random_vgg16, per_window, large_image):
    _, expected_fc6, expected_fc7 = per_window
    fc7 = Extractor(random_vgg16, scales=[320], flip=False, device="cpu").extract([large_image])
    assert_close(fc7[0], expected_fc7.mean(axis=(0, 1)), 1e-4, "avg-pooled fc7")
    fc6 = Extractor(random_vgg16, scales=[320], flip=False, layer="fc6", pooling="max", device="cpu")
    assert_close(fc6.extract([large_image])[0], expected_fc6.max(axis=(0, 1)), 1e-4, "max-pooled fc6")


# --------------------------------------------------------------------------- padded batches


def test_valid_mask():
    sizes = torch.tensor([[2, 3], [4, 1]])
    mask = valid_mask(sizes, (4, 3), torch.float32)
    assert mask.shape == (2, 1, 4, 3)
    expected = torch.zeros(2, 1, 4, 3)
    expected[0, 0, :2, :3] = 1
    expected[1, 0, :4, :1] = 1
    assert torch.equal(mask, expected)


@pytest.mark.parametrize("layer", ["fc7", "conv5_3"])
def test_padded_batch_gives_each_image_its_own_map(random_vgg16, layer):
    """Inside each image's valid region, a zero-padded batch gives the map of the image alone.

    An odd size (231) checks that the valid size follows MaxPool's floor; the widths give fc7
    maps of different sizes (1x1 and 1x3).
    """
    generator = torch.Generator().manual_seed(5)
    images = [torch.randn(3, 231, 240, generator=generator), torch.randn(3, 224, 290, generator=generator)]
    batch = torch.zeros(2, 3, 231, 290)
    batch[0, :, :231, :240] = images[0]
    batch[1, :, :224, :290] = images[1]
    sizes = torch.tensor([[231, 240], [224, 290]])
    with torch.inference_mode():
        padded, out_sizes = random_vgg16(batch, layer, sizes)
        alone = [random_vgg16(image.unsqueeze(0), layer) for image in images]
    if layer == "fc7":
        assert [tuple(single.shape[-2:]) for single, _ in alone] == [(1, 1), (1, 3)]
    else:
        assert [tuple(single.shape[-2:]) for single, _ in alone] == [(14, 15), (14, 18)]
    for slot, (single, single_sizes) in enumerate(alone):
        assert single_sizes is None
        h, w = single.shape[-2:]
        assert out_sizes[slot].tolist() == [h, w]
        assert random_vgg16.map_size(layer, *images[slot].shape[1:]) == (h, w)  # the same, on the host
        assert_close(padded[slot, :, :h, :w], single[0], 1e-5, f"{layer}, image {slot} in a padded batch")
    if layer == "fc7":
        # Without masking, the padding would leak into the shorter image's map: masking matters here.
        with torch.inference_mode():
            unmasked, _ = random_vgg16(batch, layer)
        leak = (unmasked[1, :, :1, :3] - alone[1][0][0]).abs().max()
        assert leak > 1e-3 * alone[1][0].abs().max()


def test_dense_network_is_a_dense_vgg(random_vgg16):
    assert isinstance(random_vgg16, DenseVGG)
    assert random_vgg16.arch == "vgg16"
    assert random_vgg16.weights.is_random and random_vgg16.weights.seed == 0
