"""Element-wise layers: ReLU, Sigmoid, TanH, AbsVal, BNLL, Power, Exp, Log, Threshold."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import CaffeLayer, register


@register("ReLU")
class ReLU(CaffeLayer):
    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.negative_slope = param.relu_param.negative_slope
        #: Caffe's in-place form (top == bottom); the graph clears it for net inputs,
        #: whose tensors belong to the caller.
        self.inplace = list(param.top) == list(param.bottom)

    def forward(self, x):
        # Overwriting is only safe when no gradient needs the input: in inference.
        inplace = self.inplace and not torch.is_grad_enabled()
        if self.negative_slope:
            return (F.leaky_relu(x, self.negative_slope, inplace=inplace),)
        return (x.relu_() if inplace else F.relu(x),)


@register("Sigmoid")
class Sigmoid(CaffeLayer):
    def forward(self, x):
        return (torch.sigmoid(x),)


@register("TanH")
class TanH(CaffeLayer):
    def forward(self, x):
        return (torch.tanh(x),)


@register("AbsVal")
class AbsVal(CaffeLayer):

    def forward(self, x):
        return (x.abs(),)


@register("BNLL")
class BNLL(CaffeLayer):
    def forward(self, x):
        return (F.softplus(x),)


@register("Power")
class Power(CaffeLayer):
    """y = (shift + scale * x) ^ power."""

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        p = param.power_param
        self.power, self.scale, self.shift = p.power, p.scale, p.shift

    def forward(self, x):
        return ((self.shift + self.scale * x).pow(self.power),)


@register("Exp")
class Exp(CaffeLayer):
    """y = base ^ (shift + scale * x); base -1 means e, as caffe-segnet computes it.

    Caffe evaluates ``outer * exp(ln(base) * scale * x)`` with ``outer = 1``
    when shift is 0 and ``pow(base, shift)`` otherwise, taking base -1
    literally there: base -1 (e) with shift 1 gives -exp(scale * x), an even
    shift gives exp(scale * x). A non-integer shift with base -1 makes outer
    NaN (and the output depends on the BLAS), so it is refused.
    """

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        p = param.exp_param
        if p.base != -1 and p.base <= 0:
            raise self.fail(f"base must be positive (or -1 for e), got {p.base}")
        if p.base == -1 and p.shift != int(p.shift):
            raise self.fail(f"base -1 (e) with shift {p.shift}: caffe-segnet scales by pow(-1, {p.shift}) = NaN "
                            "here; for e^(shift + scale * x) give the base as a number (base: 2.718281828)")  # fmt: skip
        self.inner = (1.0 if p.base == -1 else math.log(p.base)) * p.scale
        self.outer = 1.0 if p.shift == 0 else math.pow(p.base, p.shift)

    def forward(self, x):
        y = torch.exp(x * self.inner if self.inner != 1 else x)
        return ((y * self.outer if self.outer != 1 else y),)


@register("Log")
class Log(CaffeLayer):
    """y = log_base(shift + scale * x); base -1 means e."""

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        p = param.log_param
        self.inv_log_base = 1.0 if p.base == -1 else 1.0 / math.log(p.base)
        self.scale, self.shift = p.scale, p.shift

    def forward(self, x):
        return (torch.log(self.shift + self.scale * x) * self.inv_log_base,)


@register("Threshold")
class Threshold(CaffeLayer):
    """y = 1 where x > threshold, else 0."""

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.threshold = param.threshold_param.threshold

    def forward(self, x):
        return ((x > self.threshold).to(x.dtype),)
