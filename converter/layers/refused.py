"""Layer types caffe-segnet has that a converted net cannot be: the reason, and what to do instead.

Every other type caffe-segnet registers is either a layer of this package or
a data layer whose tops become net inputs (data.py). A Python layer without
bottoms is a data source written in Python and is treated as a data layer;
with bottoms it computes with user code and is refused.
"""

from __future__ import annotations

from caffe_proto import caffe_pb2

#: Caffe type -> why it is refused and what to do instead ({name}, {module}, {cls} filled in).
REFUSED_TYPES: dict[str, str] = {
    "HDF5Output": (
        "HDF5Output layers only write their bottoms to an HDF5 file ('{file}') during the forward pass, which a "
        "converted net does not do; remove layer '{name}' and take those blobs by name instead "
        "(net(..., blobs=[...]) or --dump)"
    ),
    "Python": (
        "Python layers run user code (module '{module}', class '{cls}'), which cannot be converted; replace "
        "layer '{name}' by built-in layers, or remove it and declare its tops as net inputs that you compute"
    ),
}


def refusal(layer: caffe_pb2.LayerParameter) -> str | None:
    """Why ``layer`` cannot be converted, or None when it can."""
    if layer.type == "Python" and not layer.bottom:
        return None  # a data source: its tops are net inputs
    reason = REFUSED_TYPES.get(layer.type)
    if reason is None:
        return None
    return reason.format(
        name=layer.name,
        module=layer.python_param.module,
        cls=layer.python_param.layer,
        file=layer.hdf5_output_param.file_name,
    )
