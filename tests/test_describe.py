"""``vggfeat describe``: the paper's configurations, counted from the built models.

The pinned numbers come from outside vggfeat: the paper's Table 2 (weights in millions),
torchvision's exact parameter counts (also in its weights metadata), its GFLOPS metadata, and the
receptive-field rule F(i) = (F(i+1) - 1) x stride + k applied backwards, independently of the
forward walk the summary does.
"""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from torch import nn

from runhelpers import error_line, run_main
from vggfeat.architectures import build_vgg
from vggfeat.choices import ALL_ARCHITECTURES, ARCHITECTURES, PAPER_ORDER
from vggfeat.errors import VggfeatError
from vggfeat.network import DenseVGG
from vggfeat.summary import compare_stacks, receptive_field, summarize
from vggfeat.weights import WeightsInfo

# Simonyan & Zisserman, Table 2: "Number of parameters (in millions)".
TABLE_2 = {"vgg11": 133, "vgg11_lrn": 133, "vgg13": 133, "vgg16_c": 134, "vgg16": 138, "vgg19": 144}
WEIGHT_LAYERS = {"vgg11": 11, "vgg11_lrn": 11, "vgg13": 13, "vgg16_c": 16, "vgg16": 16, "vgg19": 19}
TORCHVISION_PARAMS = {
    "vgg11": 132_863_336, "vgg13": 133_047_848, "vgg16": 138_357_544, "vgg19": 143_667_240,
    "vgg11_bn": 132_868_840, "vgg13_bn": 133_053_736, "vgg16_bn": 138_365_992, "vgg19_bn": 143_678_248,
}


@pytest.fixture(scope="module")
def summaries():
    return {model: summarize(model) for model in ALL_ARCHITECTURES}


# --------------------------------------------------------------------------- weights


@pytest.mark.parametrize("model", PAPER_ORDER)
def test_weights_match_table_2(summaries, model):
    summary = summaries[model]
    assert round(summary.weights / 1e6) == TABLE_2[model]
    assert summary.weight_layers == WEIGHT_LAYERS[model]
    assert summary.configuration == {"vgg11": "A", "vgg11_lrn": "A-LRN", "vgg13": "B", "vgg16_c": "C",
                                     "vgg16": "D", "vgg19": "E"}[model]


@pytest.mark.parametrize("model", ARCHITECTURES)
def test_weights_match_torchvision_exactly(summaries, model):
    with torch.device("meta"):
        vgg = torchvision.models.get_model(model, weights=None)
    meta = torchvision.models.get_model_weights(model).IMAGENET1K_V1.meta
    assert summaries[model].weights == TORCHVISION_PARAMS[model] == meta["num_params"]
    assert summaries[model].weights == sum(p.numel() for p in vgg.parameters())


def test_lrn_and_1x1_configurations(summaries):
    # LRN has no weights; C swaps three 3x3 kernels of D for 1x1 ones, saving 8/9 of their weights.
    assert summaries["vgg11_lrn"].weights == summaries["vgg11"].weights
    assert summaries["vgg16"].weights - summaries["vgg16_c"].weights == 8 * (256 * 256 + 2 * 512 * 512)
    c = summaries["vgg16_c"]
    assert [c.layer(name).kind for name in ("conv3_2", "conv3_3", "conv4_3", "conv5_3")] == [
        "conv3-256", "conv1-256", "conv1-512", "conv1-512"]
    a_lrn = summaries["vgg11_lrn"]
    assert [layer.name for layer in a_lrn.layers[:4]] == ["input", "conv1_1", "lrn1", "pool1"]
    assert a_lrn.layer("lrn1").macs == 64 * 224 * 224 * 5  # sum of squares over 5 channels


def test_lrn_is_alexnets():
    """After conv1_1's ReLU, b = a / (k + alpha * sum of a^2 over 5 channels)^beta with Krizhevsky
    et al.'s k = 2, alpha = 1e-4, beta = 0.75 (torch divides its alpha by the window size)."""
    features = build_vgg("vgg11_lrn").features
    assert isinstance(features[1], nn.ReLU) and isinstance(features[2], nn.LocalResponseNorm)
    a = torch.rand(1, 8, 3, 3, generator=torch.Generator().manual_seed(0)) * 50
    squares = nn.functional.pad(a.pow(2), (0, 0, 0, 0, 2, 2))  # zero channels beyond the edges
    window = torch.stack([squares[:, c : c + 5].sum(dim=1) for c in range(8)], dim=1)
    expected = a / (2 + 1e-4 * window) ** 0.75
    torch.testing.assert_close(features[2](a), expected, rtol=1e-5, atol=0)


@pytest.mark.parametrize("model", ALL_ARCHITECTURES)
def test_layer_names_are_dense_vggs(summaries, model):
    """The rows are the layers DenseVGG names (plus the input and LRN), with its channels."""
    with torch.device("meta"):
        dense = DenseVGG(build_vgg(model), model, WeightsInfo("none", ""))
    rows = [layer for layer in summaries[model].layers if layer.name != "input" and layer.kind != "LRN"]
    assert [layer.name for layer in rows] == list(dense.layers)
    assert [layer.shape[0] for layer in rows] == list(dense.layer_dims.values())


# --------------------------------------------------------------------------- multiply-adds, shapes


def test_macs(summaries):
    vgg16 = summaries["vgg16"]
    assert vgg16.layer("conv1_1").macs == 224 * 224 * 64 * 3 * 9
    assert vgg16.layer("fc6").macs == 7 * 7 * 512 * 4096
    assert vgg16.layer("pool1").macs == 0
    for model in ("vgg11", "vgg13", "vgg16", "vgg19"):  # torchvision's GFLOPS metadata counts MACs
        assert summaries[model].macs / 1e9 == pytest.approx(
            torchvision.models.get_model_weights(model).IMAGENET1K_V1.meta["_ops"], abs=5e-4)


def test_activations(summaries):
    vgg16 = summaries["vgg16"]
    assert vgg16.layer("input").activations == 3 * 224 * 224
    assert vgg16.layer("conv1_2").activations == 64 * 224 * 224
    assert vgg16.layer("conv1_2").bytes == 4 * 64 * 224 * 224
    assert vgg16.activations == sum(layer.activations for layer in vgg16.layers) == 15_237_608


def test_dense_maps_at_384x512():
    summary = summarize("vgg16", (384, 512))
    assert summary.input_size == (384, 512)
    assert summary.layer("pool5").shape == (512, 12, 16)
    assert summary.layer("fc6").shape == (4096, 6, 10)  # one 224x224 window every 32 px
    assert summary.layer("fc8").shape == (1000, 6, 10)
    assert summary.weights == TORCHVISION_PARAMS["vgg16"]  # the same weights, applied densely
    assert summary.layer("fc6").macs == 6 * 10 * 7 * 7 * 512 * 4096


def test_too_small_input_is_refused():
    with pytest.raises(VggfeatError, match="224"):
        summarize("vgg16", (200, 300))


# --------------------------------------------------------------------------- receptive fields


def backward_receptive_field(windows: list[tuple[int, int]]) -> int:
    """The rule F(i) = (F(i+1) - 1) x stride + k, from one output unit back to the input."""
    field = 1
    for kernel, stride in reversed(windows):
        field = (field - 1) * stride + kernel
    return field


@pytest.mark.parametrize("model", ["vgg11", "vgg16", "vgg19", "vgg16_c"])
def test_receptive_fields_follow_the_rule(summaries, model):
    features = build_vgg(model).features
    windows = [(m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0],
                m.stride if isinstance(m.stride, int) else m.stride[0])
               for m in features if isinstance(m, (nn.Conv2d, nn.MaxPool2d))]
    names = [layer.name for layer in summaries[model].layers if layer.name.startswith(("conv", "pool"))]
    for count, name in enumerate(names, start=1):
        assert summaries[model].layer(name).receptive_field == backward_receptive_field(windows[:count]), name


def test_vgg16_receptive_fields(summaries):
    vgg16 = summaries["vgg16"]
    assert (vgg16.layer("conv1_1").receptive_field, vgg16.layer("conv1_2").receptive_field) == (3, 5)
    assert vgg16.layer("conv5_3").receptive_field == 196
    assert (vgg16.layer("pool5").receptive_field, vgg16.layer("pool5").stride) == (212, 32)
    assert vgg16.layer("fc6").receptive_field == 212 + 6 * 32  # a 7x7 window of pool5
    assert vgg16.layer("fc8").receptive_field == vgg16.layer("fc6").receptive_field


# --------------------------------------------------------------------------- 3x3 stacks


def test_compare_stacks():
    five, seven = compare_stacks((5, 7), channels=1)
    assert (seven.stack_layers, seven.receptive_field, seven.stack_weights, seven.single_weights) == (3, 7, 27, 49)
    assert (five.stack_layers, five.receptive_field, five.stack_weights, five.single_weights) == (2, 5, 18, 25)
    assert seven.extra == pytest.approx(49 / 27 - 1)  # the paper's "81% more"
    [wide] = compare_stacks((7,), channels=512)
    assert (wide.stack_weights, wide.single_weights) == (27 * 512**2, 49 * 512**2)
    with pytest.raises(VggfeatError):
        compare_stacks((4,))
    assert receptive_field([nn.Conv2d(1, 1, 3)] * 3) == (7, 1)


# --------------------------------------------------------------------------- the command


def test_cli_table():
    code, out, err = run_main(["describe", "vgg16"])
    assert code == 0, err
    assert "configuration D, 16 weight layers" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:] if line.strip()}
    assert rows["conv5_3"][-2:] == ["196", "16"] and rows["pool5"][-2:] == ["212", "32"]
    assert rows["conv1_1"][-3] == f"{224 * 224 * 64 * 27:,}"  # MACs, before RF and stride
    assert "138,357,544" in rows["total"]
    assert "multiply-adds" in out


def test_cli_json_and_dense_size():
    code, out, err = run_main(["describe", "vgg16", "--size", "384x512", "--json"])
    assert code == 0, err
    data = json.loads(out)
    assert data["input_size"] == [384, 512] and data["configuration"] == "D"
    fc6 = next(layer for layer in data["layers"] if layer["name"] == "fc6")
    assert fc6["shape"] == [4096, 6, 10] and fc6["activations"] == 4096 * 60
    assert data["totals"]["weights"] == 138_357_544
    assert data["totals"]["activations"] == sum(layer["activations"] for layer in data["layers"])


def test_cli_markdown_and_overview():
    code, out, err = run_main(["describe", "--markdown"])
    assert code == 0, err
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert len({line.count("|") for line in table}) == 1  # every row has every column
    models = [line.split("|")[1].strip() for line in table[2:]]
    assert models == list(ALL_ARCHITECTURES)
    weights_m = {line.split("|")[1].strip(): int(line.split("|")[5]) for line in table[2:]}
    assert {model: weights_m[model] for model in TABLE_2} == TABLE_2


def test_cli_compare():
    code, out, err = run_main(["describe", "--compare", "--kernels", "7", "--channels", "1", "--json"])
    assert code == 0, err
    [seven] = json.loads(out)
    assert (seven["stack_weights"], seven["single_weights"], seven["receptive_field"]) == (27, 49, 7)
    code, out, _ = run_main(["describe", "--compare"])
    assert "27C²" in out and "49C²" in out and "+81%" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["vgg16", "--size", "100"], "224"),
        (["vgg16", "--size", "big"], "384x512"),
        (["vgg16", "--compare"], "no MODELS"),
        (["--compare", "--kernels", "6"], "odd"),
        (["--compare", "--kernels", ","], "such as 5,7"),
        (["vgg99"], "vgg99"),
        (["vgg16", "--json", "--markdown"], "one of"),
    ],
)
def test_cli_user_errors(args, message):
    code, _, err = run_main(["describe", *args])
    assert code == 2
    assert message in error_line(err)
