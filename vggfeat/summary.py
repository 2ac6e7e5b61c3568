"""Summary: the network as the paper presents it, layer by layer, computed from the built model.

For each layer: output shape, activation memory, weights, multiply-adds (MACs) and receptive field
with its stride in input pixels. Nothing is typed in from a table: the model is built on the meta
device (no weights allocated), shapes come from running meta tensors through its modules, weights
from its parameters, and MACs and receptive fields from each module's kernel, stride and channels.

The fully connected layers are described as ``DenseVGG`` runs them (fc6 a 7x7 convolution, fc7 and
fc8 1x1): at 224x224 they are the paper's FC layers exactly; larger inputs give dense fc6-fc8 maps.

Counting conventions:

- **weights**: parameters (weights and biases, and BN's scale and shift), as torchvision counts
  them; BN's running statistics are buffers and are not counted.
- **MACs**: multiply-adds of convolutions and fully connected layers (biases not counted), plus one
  per element for BN's inference-time scale-and-shift and ``size`` per element for LRN's sum of
  squares. Max-pooling and ReLU compare, they do not multiply-add: 0.
- **activations**: elements of each layer's output (ReLU runs in place and adds none), float32
  bytes; the total includes the input image.
- **receptive field**: side in input pixels, F = F_prev + (k - 1) x jump, jump = jump_prev x stride,
  the forward form of the rule F(i) = (F(i+1) - 1) x stride + k. Padding does not change it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .architectures import PAPER_NAMES, build_vgg
from .errors import VggfeatError
from .network import MIN_INPUT_SIDE, DenseVGG
from .weights import WeightsInfo

BYTES_PER_ELEMENT = 4  # float32 activations


@dataclass(frozen=True)
class LayerSummary:
    name: str  # "input", "conv1_1", "lrn1", "pool1", ..., "fc6", "fc7", "fc8"
    kind: str  # the paper's notation: "conv3-64", "conv1-256", "LRN", "maxpool", "FC-4096"
    shape: tuple[int, int, int]  # output (channels, height, width)
    weights: int
    macs: int
    receptive_field: int  # side, in input pixels
    stride: int  # input pixels between neighbouring outputs

    @property
    def activations(self) -> int:
        channels, height, width = self.shape
        return channels * height * width

    @property
    def bytes(self) -> int:
        return self.activations * BYTES_PER_ELEMENT


@dataclass(frozen=True)
class NetworkSummary:
    model: str
    configuration: str  # the paper's letter, e.g. "D"
    input_size: tuple[int, int]  # (height, width)
    layers: tuple[LayerSummary, ...]

    @property
    def weights(self) -> int:
        return sum(layer.weights for layer in self.layers)

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def activations(self) -> int:
        return sum(layer.activations for layer in self.layers)

    @property
    def bytes(self) -> int:
        return self.activations * BYTES_PER_ELEMENT

    @property
    def weight_layers(self) -> int:
        """The paper's depth: conv and FC layers (11 for A ... 19 for E)."""
        return sum(1 for layer in self.layers if layer.kind.startswith(("conv", "FC")))

    def layer(self, name: str) -> LayerSummary:
        return next(layer for layer in self.layers if layer.name == name)

    def to_dict(self) -> dict:
        layers = [{**asdict(layer), "shape": list(layer.shape), "activations": layer.activations,
                   "bytes": layer.bytes} for layer in self.layers]
        return {
            "model": self.model,
            "configuration": self.configuration,
            "input_size": list(self.input_size),
            "bytes_per_element": BYTES_PER_ELEMENT,
            "layers": layers,
            "totals": {"weights": self.weights, "macs": self.macs, "activations": self.activations,
                       "bytes": self.bytes, "weight_layers": self.weight_layers},
        }


def summarize(model: str, size: int | tuple[int, int] = 224) -> NetworkSummary:
    """Layer-by-layer summary of configuration ``model`` for an input of ``size`` (side or (h, w))."""
    height, width = (size, size) if isinstance(size, int) else size
    if min(height, width) < MIN_INPUT_SIDE:
        raise VggfeatError(f"input size {height}x{width} is too small: fc6 needs a 7x7 pool5 map, "
                           f"so each side must be >= {MIN_INPUT_SIDE}")
    with torch.device("meta"):
        dense = DenseVGG(build_vgg(model), model, WeightsInfo("none", ""))
    layers = [LayerSummary("input", "image", (3, height, width), 0, 0, 1, 1)]
    walker = _Walker(torch.empty(1, 3, height, width, device="meta"))
    for name, modules in _named_groups(dense):
        layers.append(walker.step(name, modules))
    return NetworkSummary(model, PAPER_NAMES[model], (height, width), tuple(layers))


def receptive_field(modules: Iterable[nn.Module]) -> tuple[int, int]:
    """(receptive field side, stride) in input pixels of the output of ``modules`` run in order."""
    field, jump = 1, 1
    for module in modules:
        field, jump = _advance(field, jump, module)
    return field, jump


@dataclass(frozen=True)
class StackComparison:
    """One k x k convolution against the stack of 3x3 convolutions with the same receptive field."""

    kernel: int
    channels: int
    stack_layers: int  # 3x3 layers in the stack: (k - 1) / 2
    receptive_field: int  # of the stack, computed; equals kernel
    single_weights: int  # k^2 C^2
    stack_weights: int  # 3^2 C^2 per layer

    @property
    def extra(self) -> float:
        """How much more the single layer needs, as a fraction of the stack (0.81 for 7x7)."""
        return self.single_weights / self.stack_weights - 1


def compare_stacks(kernels: Sequence[int] = (5, 7), channels: int = 512) -> list[StackComparison]:
    """The paper's Sec. 2.3 argument: a stack of 3x3 convs has the receptive field of one larger conv
    with fewer weights (three 3x3: 27C^2, one 7x7: 49C^2) and more non-linearities.

    Weights without biases, as in the paper, counted from conv layers built on the meta device with
    C input and output channels.
    """
    comparisons = []
    for kernel in kernels:
        if kernel < 3 or kernel % 2 == 0:
            raise VggfeatError(f"kernel {kernel}: a stack of 3x3 convolutions matches odd kernels >= 3 only")
        layers = (kernel - 1) // 2
        with torch.device("meta"):
            single = nn.Conv2d(channels, channels, kernel, padding=kernel // 2, bias=False)
            stack = [nn.Conv2d(channels, channels, 3, padding=1, bias=False) for _ in range(layers)]
        field, _ = receptive_field(stack)
        assert field == receptive_field([single])[0]  # the premise of the comparison
        comparisons.append(StackComparison(kernel, channels, layers, field, _count(single), sum(map(_count, stack))))
    return comparisons


# --------------------------------------------------------------------------- walking the modules


def _named_groups(dense: DenseVGG) -> Iterable[tuple[str, list[nn.Module]]]:
    """The modules of ``dense`` grouped into the paper's layers, named as DenseVGG names them.

    A conv layer takes its BN and ReLU along; LRN and each pool are layers of their own.
    """
    block, conv, group, name = 1, 0, [], ""
    for module in dense.features:
        if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.LocalResponseNorm)) and group:
            yield name, group
            group = []
        if isinstance(module, nn.Conv2d):
            conv += 1
            name = f"conv{block}_{conv}"
        elif isinstance(module, nn.LocalResponseNorm):
            name = f"lrn{block}"
        elif isinstance(module, nn.MaxPool2d):
            name, block, conv = f"pool{block}", block + 1, 0
        group.append(module)
    yield name, group
    yield "fc6", [dense.fc6, nn.ReLU()]
    yield "fc7", [dense.fc7, nn.ReLU()]
    yield "fc8", [dense.fc8]


class _Walker:
    """Runs a meta tensor through the groups, tracking receptive field and stride."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x, self.field, self.jump = x, 1, 1

    def step(self, name: str, modules: list[nn.Module]) -> LayerSummary:
        weights = macs = 0
        for module in modules:
            before = self.x
            self.x = module(before)
            self.field, self.jump = _advance(self.field, self.jump, module)
            weights += _count(module)
            macs += _macs(module, before, self.x)
        _, channels, height, width = self.x.shape
        return LayerSummary(name, _kind(name, modules[0]), (channels, height, width), weights, macs, self.field, self.jump)


def _advance(field: int, jump: int, module: nn.Module) -> tuple[int, int]:
    kernel, stride = _window(module)
    return field + (kernel - 1) * jump, jump * stride


def _window(module: nn.Module) -> tuple[int, int]:
    """(kernel side, stride) of a module that slides a window; (1, 1) for pointwise modules."""
    if isinstance(module, (nn.Conv2d, nn.MaxPool2d)):
        kernel, stride = _pair(module.kernel_size), _pair(module.stride)
        if kernel[0] != kernel[1] or stride[0] != stride[1]:
            raise ValueError(f"non-square {module}: receptive fields here are sides of squares")
        return kernel[0], stride[0]
    return 1, 1


def _macs(module: nn.Module, before: torch.Tensor, after: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        kernel_h, kernel_w = _pair(module.kernel_size)
        return after.numel() * (module.in_channels // module.groups) * kernel_h * kernel_w
    if isinstance(module, nn.BatchNorm2d):
        return after.numel()
    if isinstance(module, nn.LocalResponseNorm):
        return after.numel() * module.size
    return 0


def _kind(name: str, first: nn.Module) -> str:
    if name.startswith("fc"):
        return f"FC-{first.out_channels}"
    if isinstance(first, nn.Conv2d):
        return f"conv{_pair(first.kernel_size)[0]}-{first.out_channels}"
    if isinstance(first, nn.LocalResponseNorm):
        return "LRN"
    return "maxpool"


def _count(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (value[0], value[1])
