"""Data layers become named inputs of the converted net.

The network is fed by the caller, so a data layer contributes only the names
and shapes of its tops. Shapes come from the layer's parameters where they
tell them (batch size, resize target, crop), and otherwise from the caller.
A Python layer counts as a data layer only without bottoms (a data source);
with bottoms it runs user code on the net's blobs and is refused (see
refused.py). DummyData computes its blobs from fillers: a layer of its own
(dummy_data.py).
"""

from __future__ import annotations

from caffe_proto import caffe_pb2

from ..errors import CaffeFormatError

DATA_LAYER_TYPES = {
    "Data", "ImageData", "DenseImageData", "HDF5Data", "MemoryData", "WindowData", "Input", "Python",
}  # fmt: skip

#: The image size SegNet's CamVid models were trained at, used when a data
#: layer does not say.
DEFAULT_IMAGE_SIZE = (360, 480)


def implied_input_shapes(
    layer: caffe_pb2.LayerParameter, image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE
) -> dict[str, tuple[int, ...] | None]:
    """Top name -> shape the data layer implies (None where it cannot tell)."""
    tops = list(layer.top)
    kind = layer.type
    if kind == "Input":
        shapes = list(layer.input_param.shape)
        if len(shapes) not in (1, len(tops)):
            raise CaffeFormatError(f"{len(shapes)} shapes for {len(tops)} tops", layer=layer.name)
        return {t: tuple(shapes[min(i, len(shapes) - 1)].dim) for i, t in enumerate(tops)}
    if kind == "MemoryData":
        p = layer.memory_data_param
        shapes = [(p.batch_size, p.channels, p.height, p.width), (p.batch_size, 1, 1, 1)]
        return {t: shapes[i] if i < 2 else None for i, t in enumerate(tops)}
    if kind == "DenseImageData":
        p = layer.dense_image_data_param
        h = p.new_height or image_size[0]
        w = p.new_width or image_size[1]
        if p.crop_height and p.crop_width:
            h, w = p.crop_height, p.crop_width
        n = p.batch_size or 1
        channels = 3 if p.is_color else 1
        shapes = [(n, channels, h, w), (n, 1, h, w)]
        return {t: shapes[i] if i < 2 else None for i, t in enumerate(tops)}
    if kind == "ImageData":
        p = layer.image_data_param
        h = p.new_height or image_size[0]
        w = p.new_width or image_size[1]
        crop = layer.transform_param.crop_size or p.crop_size
        if crop:
            h = w = crop
        n = p.batch_size or 1
        shapes = [(n, 3 if p.is_color else 1, h, w), (n,)]
        return {t: shapes[i] if i < 2 else None for i, t in enumerate(tops)}
    # Data (LMDB/LevelDB), HDF5Data, WindowData, Python: the file decides.
    return {t: None for t in tops}
