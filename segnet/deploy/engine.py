"""The inference engine: one model set up once for the fastest faithful path on its device.

``build_engine(model, device, precision)`` takes any model the commands
take (a converted Caffe net, a segnet checkpoint's model) and picks the path:

- a converted net of the SegNet family runs as the readable model that
  computes the same (segnet.models.weights.readable_twin);
- SegNet-family models run lean (segnet.deploy.inference): BN folded into
  the convolutions and uint8 pooling indices; on a CPU in float32, each
  decoder convolution runs direct, by Winograd F(2x2, 3x3) (wide 3x3 layers)
  or through the DFT (large kernels), whichever is fastest on this machine,
  timed once per layer shape (segnet/deploy/conv_paths.py) rather than
  assumed; the encoder stays direct, so that its poolings break exact ties
  as Caffe does; 1x1 layers may run as plain matrix products;
- on CUDA: channels-last, cuDNN autotuning, and the forward pass captured
  as a CUDA graph at the run's batch size and input size, then replayed;
- ``precision="bf16"`` (CPU with native bf16, or CUDA) runs the decoder of
  SegNet-family models in bfloat16 (the whole model otherwise), ``"fp16"``
  (CUDA) the whole model in float16. Either is refused with one line where
  the hardware has no native support, and the engine measures its argmax
  agreement with float32 on the first batch.

Other models run as they are. ``engine.labels(images)`` maps an Nx3xHxW
float batch (BGR, 0..255) to NxHxW uint8 class ids on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import nn

from converter import CaffeNet
from converter.errors import UserError

from segnet.deploy import conv_paths
from segnet.deploy.inference import Autocast, optimize_for_inference
from segnet.deploy.measure import cpu_has_bf16
from segnet.devices import pick_device
from segnet.models.outputs import labels_from_output
from segnet.models.caffe_graph import as_segmenter, declared_input_size, num_outputs
from segnet.models.family import in_segnet_family
from segnet.models.mc_dropout import dropout_layers, dropout_sampling
from segnet.models.weights import readable_twin

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class Engine:
    """A model ready to segment batches: ``labels(images)`` -> NxHxW uint8 ids (see the module docstring)."""

    forward: Callable[[torch.Tensor], torch.Tensor]
    device: torch.device
    precision: str
    num_classes: int
    input_size: tuple[int, int] | None
    path: list[str]  # what was chosen, for the user
    reference: Callable[[torch.Tensor], torch.Tensor] | None = None  # float32, for the first batch's agreement
    agreement: float | None = None  # argmax agreement with float32 on the first batch (bf16 / fp16)

    @torch.no_grad()
    def labels(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True)
        ids = labels_from_output(self.forward(x), self.num_classes)
        if self.reference is not None:  # the first batch: measured once, then the float32 copy is freed
            exact = labels_from_output(self.reference(x), self.num_classes)
            self.agreement = float((exact == ids).double().mean())
            self.reference = None
        return ids.to(torch.uint8).cpu()

    def describe(self) -> str:
        return f"{self.device} {self.precision}: " + ", ".join(self.path)


def check_precision(precision: str, device: torch.device) -> None:
    """A one-line refusal of a precision the hardware does not compute natively."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown --precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if precision == "bf16" and device.type == "cpu" and not cpu_has_bf16():
        raise UserError("--precision bf16: this CPU has no native bfloat16 (AVX-512 BF16 or AMX), so it would run "
                        "many times slower than float32; use the default fp32")  # fmt: skip
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no native bfloat16")
    if precision == "fp16" and device.type != "cuda":
        raise UserError("--precision fp16 is for CUDA devices; on a CPU use bf16 (where native) or fp32")


def build_engine(model: nn.Module, device: str | torch.device = "auto", precision: str = "fp32",
                 input_size: tuple[int, int] | None = None, batch_size: int = 1,
                 fast_conv: bool | None = None, num_classes: int | None = None) -> Engine:  # fmt: skip
    """The fastest faithful path for ``model`` on ``device`` (see the module docstring).

    ``fast_conv`` (float32 on a CPU): None runs each convolution by the
    fastest of direct, Winograd and DFT, timed per layer shape on this
    machine (segnet/deploy/conv_paths.py); True forces Winograd on the wide
    3x3 decoder layers, untimed; False runs every convolution direct. ``batch_size`` and ``input_size`` fix the CUDA graph.
    ``num_classes`` (the label space's outputs) is needed for a model that
    does not say how many scores it gives.
    """
    device = pick_device(device) if isinstance(device, str) else device
    check_precision(precision, device)
    classes = num_classes or num_outputs(model)
    if not classes:
        raise UserError("the model does not say how many classes it scores: give its label space (--labels)")
    size = input_size or declared_input_size(model)
    channels = _in_channels(model)
    path: list[str] = []
    fast = _readable(model, path)
    if fast is None:
        fast = _TestModeDropout(as_segmenter(model, probabilities=True).eval().to(device))
        path.append("the model as it is")
        reference = fast if precision != "fp32" else None
        if precision != "fp32":
            fast = _autocast(fast, precision)
            path.append(f"{precision} autocast")
    else:
        reference = _lean(fast, device, "fp32", path=[]) if precision != "fp32" else None
        fast = _lean(fast, device, precision, path)
        if device.type == "cpu" and precision == "fp32" and fast_conv is not False and size is not None:
            decoder = fast.decoder_layers() if in_segnet_family(fast) else None  # see conv_paths: free_rounding
            path += conv_paths.apply(fast, (batch_size, channels, *size), fast_conv, decoder)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one input size: cuDNN's fastest algorithms are worth measuring
        if size is not None:
            fast = _cuda_graph(fast, (batch_size, channels, *size), device, path)
    return Engine(fast, device, precision, int(classes), size, path, reference)


def _readable(model: nn.Module, path: list[str]) -> nn.Module | None:
    """The readable SegNet-family model to run, or None (a model to run as it is)."""
    if isinstance(model, CaffeNet):
        if dropout_layers(model):
            return None  # a Bayesian net keeps its own graph (its dropout's test mode is Caffe's)
        twin = readable_twin(model)
        if twin is not None:
            path.append("the readable SegNet model computing what the converted net computes")
        return twin
    if in_segnet_family(model) and not dropout_layers(model):
        return model
    return None


def _lean(model: nn.Module, device: torch.device, precision: str, path: list[str]) -> nn.Module:
    cuda = device.type == "cuda"
    bf16: bool | str = "decoder" if precision == "bf16" else False
    lean = optimize_for_inference(model.to(device), channels_last=cuda or precision == "bf16", bf16=bf16)
    path.append("BN folded, uint8 pooling indices")
    if cuda:
        path.append("channels-last")
    if precision == "bf16":
        path.append("decoder in bfloat16")
    if precision == "fp16":
        lean = _autocast(lean, "fp16")
        path.append("float16 autocast")
    return lean


def _autocast(model: nn.Module, precision: str) -> nn.Module:
    return Autocast(model, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


class _TestModeDropout(nn.Module):
    """A model whose dropout layers run in their test mode (a Bayesian net scored without sampling)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with dropout_sampling(self.model, False):
            return self.model(x)


def _in_channels(model: nn.Module) -> int:
    return int(getattr(as_segmenter(model), "in_channels", 3))


# ---------------------------------------------------------------- CUDA graphs


class _GraphReplay(nn.Module):
    """The forward pass captured once as a CUDA graph at a fixed batch and size, then replayed.

    A smaller batch (the last one) is padded to the captured size; its
    extra outputs are dropped. Any other shape runs eagerly.
    """

    def __init__(self, model: nn.Module, shape: tuple[int, ...], device: torch.device):
        super().__init__()
        self.model = model
        self.static_in = torch.zeros(shape, device=device)
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream), torch.no_grad():
            for _ in range(3):  # warm-up on a side stream, as capture requires (cuDNN picks its algorithms here)
                model(self.static_in)
        torch.cuda.current_stream(device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.no_grad():
            self.static_out = model(self.static_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if x.shape[1:] != self.static_in.shape[1:] or n > self.static_in.shape[0]:
            return self.model(x)
        self.static_in[:n].copy_(x)
        self.graph.replay()
        return self.static_out[:n].clone()


def _cuda_graph(model: nn.Module, shape: tuple[int, ...], device: torch.device, path: list[str]) -> nn.Module:
    try:
        replay = _GraphReplay(model, shape, device)
    except Exception as exc:  # whatever capture refused: the eager model computes the same
        path.append(f"eager (CUDA graph capture failed: {type(exc).__name__})")
        return model
    path.append(f"CUDA graph at batch {shape[0]}, {shape[2]}x{shape[3]}")
    return replay
