"""The network alone: which way of running VGG16's dense forward is fastest here, in one run.

    python benchmarks/bench_network.py --device cuda --batch 256 --size 224

The fourth session measured the network at about 120 TFLOP/s on an H100 in bf16 (RESULTS.md), a
small share of the chip's peak: VGG's first layers move more bytes than they compute, and each
ReLU is a pass of its own over the activations. This times, on random inputs of one batch shape
(channels_last, in --precision, as vggfeat runs them), the forward up to fc7 run as:
  eager     vggfeat's DenseVGG, as the extractor runs it, its weights cast once to --precision;
  fp32      the same network in fp32, whatever --precision says;
  autocast  the fp32 network under torch.autocast to --precision, which casts the weights anew for
            every batch (how vggfeat ran bf16 on the CPU until the eighteenth session);
  fused     each convolution and its ReLU as one cuDNN call (torch.cudnn_convolution_relu; CUDA);
  compiled  torch.compile of the eager forward (its compilation untimed);
  graph     the eager forward captured once as a CUDA graph and replayed (CUDA).
Each variant's fc7 map is checked against eager's (largest difference, relative to eager's largest
value), then timed over --repeats batches after warm-up; images/s and TFLOP/s are printed, and the
speed against the first variant given (the baseline of the run).

    python benchmarks/bench_network.py --device cpu --precision bf16 --variants fp32,autocast,eager --batch 16
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from cuda_check import require_cuda
from vggfeat import VggfeatError, load_network
from vggfeat.extractor import _runner

HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


def conv_flops(network: nn.Module, x: torch.Tensor) -> float:
    """Multiply-adds x 2 of every convolution in one forward of ``x`` up to fc7."""
    total = 0.0

    def count(module: nn.Conv2d, inputs, output) -> None:
        nonlocal total
        kernel = module.kernel_size[0] * module.kernel_size[1]
        total += 2.0 * module.in_channels * kernel * output.numel()

    hooks = [m.register_forward_hook(count) for m in network.modules() if isinstance(m, nn.Conv2d)]
    network(x, "fc7")
    for hook in hooks:
        hook.remove()
    return total


def fused_forward(network: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The forward up to fc7 with each convolution and the ReLU after it in one cuDNN call."""
    steps: list[Callable[[torch.Tensor], torch.Tensor]] = []
    modules = list(network.features)
    i = 0
    while i < len(modules):
        if isinstance(modules[i], nn.Conv2d) and i + 1 < len(modules) and isinstance(modules[i + 1], nn.ReLU):
            steps.append(conv_relu(modules[i]))
            i += 2
        else:
            steps.append(modules[i])
            i += 1
    steps += [conv_relu(network.fc6), conv_relu(network.fc7)]

    def forward(x: torch.Tensor) -> torch.Tensor:
        for step in steps:
            x = step(x)
        return x

    return forward


def conv_relu(conv: nn.Conv2d) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: torch.cudnn_convolution_relu(x, conv.weight, conv.bias, conv.stride, conv.padding,
                                                  conv.dilation, conv.groups)


def graphed(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``forward`` captured as a CUDA graph on a copy of ``x``; each call copies its input in and replays."""
    static_input = x.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm-up on a side stream, as capture requires
            forward(static_input)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_output = forward(static_input)

    def replay(inputs: torch.Tensor) -> torch.Tensor:
        static_input.copy_(inputs)
        graph.replay()
        return static_output

    return replay


def timed(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, repeats: int, device: torch.device) -> float:
    """Seconds per batch, after two warm-up batches."""
    for _ in range(2):
        forward(x)
    synchronize(device)
    began = time.perf_counter()
    for _ in range(repeats):
        forward(x)
    synchronize(device)
    return (time.perf_counter() - began) / repeats


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default=None, choices=["fp32", "bf16", "fp16"],
                        help="[default: bf16 on CUDA, fp32 on the CPU]")
    parser.add_argument("--batch", type=int, default=256, help="inputs per batch (an image and its flip are two)")
    parser.add_argument("--size", default="224", help="input side, or HxW (e.g. 256x341)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--variants", default=None, help="[default: eager,fused,compiled,graph on CUDA; eager,compiled on the CPU]")
    parser.add_argument("--no-autotune", action="store_true", help="cuDNN's heuristics instead of its autotuning")
    args = parser.parse_args()
    require_cuda("bench_network", args.device)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    precision = args.precision or ("bf16" if cuda else "fp32")
    variants = (args.variants or ("eager,fused,compiled,graph" if cuda else "eager,compiled")).split(",")
    height, _, width = args.size.partition("x")
    shape = (args.batch, 3, int(height), int(width or height))
    torch.backends.cudnn.benchmark = not args.no_autotune

    network = load_network("vgg16", "random", 0).to(device)
    runner = _runner(network, precision)  # cast and channels_last, as the extractor runs it
    single = _runner(network, "fp32")
    dtype = runner.fc6.weight.dtype
    x = torch.randn(shape, device=device).to(dtype=dtype, memory_format=torch.channels_last)
    name = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    with torch.inference_mode():
        flops = conv_flops(runner, x)
        tuning = f", cuDNN autotuning {'off' if args.no_autotune else 'on'}" if cuda else ""
        print(f"device {name}; vgg16 up to fc7, batch {list(shape)}, {precision}, channels_last{tuning}; "
              f"{flops / 1e12:.2f} TFLOP a batch")
        eager = lambda inputs: runner(inputs, "fc7")[0]  # noqa: E731
        reference = eager(x).float()
        scale = reference.abs().max().item()
        baseline = None
        fp32 = lambda inputs: single(inputs.float(), "fc7")[0]  # noqa: E731

        def autocast(inputs: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device.type, dtype=HALF.get(precision, torch.float32), enabled=precision in HALF):
                return single(inputs.float(), "fc7")[0]

        for variant in variants:
            if variant not in ("eager", "fp32", "autocast", "fused", "compiled", "graph"):
                parser.error(f"unknown variant {variant!r}")
            try:  # one variant's failure (an op this build lacks, say) should not cost the others' figures
                forward = {"eager": lambda: eager, "fp32": lambda: fp32, "autocast": lambda: autocast,
                           "fused": lambda: fused_forward(runner), "compiled": lambda: torch.compile(eager),
                           "graph": lambda: graphed(eager, x)}[variant]()
                difference = (forward(x).float() - reference).abs().max().item() / scale  # compiles, untimed
                seconds = timed(forward, x, args.repeats, device)
            except Exception as error:  # noqa: BLE001
                print(f"{variant:9} failed: {type(error).__name__}: {str(error).strip().splitlines()[0][:200]}")
                continue
            baseline = baseline or seconds
            print(f"{variant:9} {shape[0] / seconds:10.1f} inputs/s  {flops / seconds / 1e12:7.1f} TFLOP/s  "
                  f"{baseline / seconds:5.2f}x the first  (largest difference to eager {difference:.1e})")


if __name__ == "__main__":
    try:
        main()
    except VggfeatError as error:
        sys.exit(f"error: {error}")
