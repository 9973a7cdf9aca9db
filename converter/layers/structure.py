"""Layers that combine or reshape blobs: Eltwise, Concat, Slice, Split, Silence, Flatten, Reshape."""

from __future__ import annotations

import math

import torch

from caffe_proto import caffe_pb2

from .base import CaffeLayer, canonical_axis, register


@register("Eltwise")
class Eltwise(CaffeLayer):
    """SUM (with optional per-bottom coefficients), PROD, or MAX (first maximum wins)."""

    n_bottoms = (2, None)

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        p = param.eltwise_param
        self.operation = caffe_pb2.EltwiseParameter.EltwiseOp.Name(p.operation)
        self.coeff = list(p.coeff) or None
        if self.coeff is not None:
            if self.operation != "SUM":
                raise self.fail("coeff applies to the SUM operation only")
            if len(self.coeff) != len(bottom_shapes):
                raise self.fail(f"{len(self.coeff)} coeff values for {len(bottom_shapes)} bottoms")
        if any(tuple(s) != tuple(bottom_shapes[0]) for s in bottom_shapes):
            raise self.fail(f"bottoms differ in shape: {[list(s) for s in bottom_shapes]}")

    def forward(self, *xs):
        if self.operation == "SUM":
            coeff = self.coeff or [1.0] * len(xs)
            out = xs[0] * coeff[0] if coeff[0] != 1 else xs[0]
            for c, x in zip(coeff[1:], xs[1:]):
                out = out + (x * c if c != 1 else x)
            return (out,)
        if self.operation == "PROD":
            out = xs[0]
            for x in xs[1:]:
                out = out * x
            return (out,)
        return (torch.stack(xs).max(dim=0).values,)  # first bottom wins ties, as in Caffe


@register("Concat")
class Concat(CaffeLayer):
    n_bottoms = (1, None)

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        p = param.concat_param
        axis = p.concat_dim if p.HasField("concat_dim") else p.axis
        self.axis = canonical_axis(axis, len(bottom_shapes[0]), self.caffe_name)
        for s in bottom_shapes[1:]:
            if len(s) != len(bottom_shapes[0]) or any(
                a != b for i, (a, b) in enumerate(zip(s, bottom_shapes[0])) if i != self.axis
            ):
                raise self.fail(f"bottoms {[list(s) for s in bottom_shapes]} differ outside axis {self.axis}")

    def top_shapes(self, bottom_shapes):
        shape = list(bottom_shapes[0])
        shape[self.axis] = sum(s[self.axis] for s in bottom_shapes)
        return [tuple(shape)]

    def forward(self, *xs):
        return (torch.cat(xs, dim=self.axis),)


@register("Slice")
class Slice(CaffeLayer):
    n_tops = (1, None)

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        p = param.slice_param
        axis = p.slice_dim if p.HasField("slice_dim") else p.axis
        shape = bottom_shapes[0]
        self.axis = canonical_axis(axis, len(shape), self.caffe_name)
        size = shape[self.axis]
        if p.slice_point:
            points = list(p.slice_point)
            if len(points) != self.num_tops - 1:
                raise self.fail(f"{len(points)} slice points for {self.num_tops} tops")
            edges = [0, *points, size]
            self.sizes = [b - a for a, b in zip(edges, edges[1:])]
            if any(s <= 0 for s in self.sizes):
                raise self.fail(f"slice points {points} must increase within 1..{size - 1}")
        else:
            if size % self.num_tops:
                raise self.fail(f"axis size {size} does not split evenly into {self.num_tops} tops")
            self.sizes = [size // self.num_tops] * self.num_tops

    def top_shapes(self, bottom_shapes):
        out = []
        for s in self.sizes:
            shape = list(bottom_shapes[0])
            shape[self.axis] = s
            out.append(tuple(shape))
        return out

    def forward(self, x):
        return tuple(torch.split(x, self.sizes, dim=self.axis))


@register("Split")
class Split(CaffeLayer):
    n_tops = (1, None)

    def forward(self, x):
        return (x,) * self.num_tops


@register("Silence")
class Silence(CaffeLayer):
    n_bottoms = (1, None)
    n_tops = (0, 0)

    def top_shapes(self, bottom_shapes):
        return []

    def forward(self, *xs):
        return ()


@register("Flatten")
class Flatten(CaffeLayer):

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        p = param.flatten_param
        n = len(bottom_shapes[0])
        self.start = canonical_axis(p.axis, n, self.caffe_name)
        self.end = canonical_axis(p.end_axis, n, self.caffe_name)

    def top_shapes(self, bottom_shapes):
        shape = bottom_shapes[0]
        middle = math.prod(shape[self.start : self.end + 1])
        return [(*shape[: self.start], middle, *shape[self.end + 1 :])]

    def forward(self, x):
        return (x.flatten(self.start, self.end),)


@register("Reshape")
class Reshape(CaffeLayer):
    """Caffe's Reshape: 0 copies a bottom dimension, -1 is inferred."""

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        p = param.reshape_param
        self.dims = list(p.shape.dim)
        self.axis, self.num_axes = p.axis, p.num_axes
        if self.dims.count(-1) > 1:
            raise self.fail("at most one -1 dimension")
        self.top_shapes(bottom_shapes)  # validate now

    def top_shapes(self, bottom_shapes):
        shape = list(bottom_shapes[0])
        start = self.axis if self.axis >= 0 else len(shape) + self.axis + 1
        end = len(shape) if self.num_axes == -1 else start + self.num_axes
        if not 0 <= start <= end <= len(shape):
            raise self.fail(f"axis {self.axis} / num_axes {self.num_axes} out of range for {shape}")
        new = [shape[start + i] if d == 0 else d for i, d in enumerate(self.dims)]
        out = shape[:start] + new + shape[end:]
        total = math.prod(shape)
        if -1 in out:
            known = math.prod(d for d in out if d != -1)
            if known == 0 or total % known:
                raise self.fail(f"cannot reshape {shape} into {out}")
            out[out.index(-1)] = total // known
        count = math.prod(out)
        if count != total:
            raise self.fail(f"cannot reshape {shape} ({total} values) into {out} ({count} values)")
        return [tuple(out)]

    def forward(self, x):
        return (x.reshape(self.top_shapes([tuple(x.shape)])[0]),)
