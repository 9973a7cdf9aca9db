"""Layer types Caffe has that a converted net cannot be: the reason, and what to do instead.

Every other type caffe-segnet or mainline Caffe registers is either a layer
of this package or a data layer whose tops become net inputs (data.py). A Python layer without
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
    "RNN": (
        "RNN layers (mainline Caffe) unroll a recurrent net over the time steps of their input, which this "
        "converter does not build; layer '{name}' cannot be converted: compute that part "
        "yourself (its recurrence and blob layout are Caffe's own) and declare its tops as net inputs"
    ),
    "LSTM": (
        "LSTM layers (mainline Caffe) unroll a recurrent net over the time steps of their input, which this "
        "converter does not build; layer '{name}' cannot be converted: compute that part "
        "yourself (Caffe orders the gates i, f, o, g) and declare its tops as net inputs"
    ),
    "LSTMUnit": (
        "LSTMUnit layers (mainline Caffe) are one time step of an unrolled LSTM, which this converter does not "
        "build; layer '{name}' cannot be converted: compute the recurrent part "
        "yourself and declare its tops as net inputs"
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
