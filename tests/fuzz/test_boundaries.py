"""The readers' boundary rules one by one: types, ranges and sizes checked before use, parsers' errors wrapped."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

import converter
from converter import budget
from converter.arrays import ArrayFileError, read_arrays
from converter.checkpoint import CHECKSUM, read_payload, write_payload
from converter.errors import BUG_STATUS, CaffeFormatError, UserError, run_command
from converter.prototxt import phase_value

from fuzz.findings import edited_payload, npy_with_header, png_chunk_claims
from fuzz.targets import NET, tiny_net, tiny_segnet


@pytest.fixture(autouse=True)
def _fresh_limit():
    budget.set_limit(None)
    yield
    budget.set_limit(None)


def test_phases_are_names_or_caffe_numbers():
    assert [phase_value(p) for p in ("TEST", "train", 0, 1)] == [1, 0, 0, 1]
    for bad in (2, -1, float("inf"), 1.0, True, "", "TESTING", None, torch.tensor(1), [0]):
        with pytest.raises(CaffeFormatError, match="unknown phase"):
            phase_value(bad)


@pytest.mark.parametrize("shape", [[1, 3, 8.0, 8], [1, 3, float("inf"), 8], [1, 3, "8", 8], [1, True, 8, 8],
                                   [0, 3, 8, 8], [1] * 33, 8])  # fmt: skip
def test_input_shapes_are_whole_positive_numbers(shape):
    with pytest.raises(CaffeFormatError, match="input 'data'"):
        converter.CaffeNet(converter.parse_net_text(NET), input_shapes={"data": shape})
    converter.CaffeNet(converter.parse_net_text(NET), input_shapes={"data": np.array([2, 3, 5, 7])})


def test_resize_sizes_are_checked_before_allocating():
    from segnet.data.resize import resize_bilinear, resize_nearest

    image = np.zeros((4, 6, 3), np.uint8)
    for bad in ((0, 4), (-2, 4), (2.0, 4), ("2", 4), (2,), (True, 4), None):
        with pytest.raises(UserError, match="image size"):
            resize_bilinear(image, bad)
    budget.set_limit("1M")
    with pytest.raises(budget.MemoryLimitError, match="resizing an image to 2147483647x1"):
        resize_bilinear(image, (2**31 - 1, 1))
    with pytest.raises(budget.MemoryLimitError, match="resizing an image to 100000x100000"):
        resize_nearest(image[..., 0], (100_000, 100_000))
    assert resize_bilinear(image, (3, 5)).shape == (3, 5, 3)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(("header", "words"), [
    (b"{'descr': '<f4', 'fortran_order': False, 'shape': (-2,)}", "shape \\[-2\\]"),
    (b"{'descr': '<f4', 'fortran_order': False, 'shape': (%s)}" % (b"1, " * 33), "at most 32 sizes"),
    (b"{'descr': '<f4', 'fortran_order': False, 'shape': (0, 1099511627776)}", "each 0 to 2147483647"),
    (b"{'descr': '<U3', 'fortran_order': False, 'shape': (1,)}", "plain numbers"),
    (b"{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,)}", "plain numbers"),
    (b"{'descr': ('<f4', (1000, 1000)), 'fortran_order': False, 'shape': (1,)}", "plain numbers"),
    (b"{'descr': '<c8', 'fortran_order': False, 'shape': (1,)}", "plain numbers"),
    (b"{'descr': (), 'fortran_order': False, 'shape': (1,)}", "IndexError"),
    (b"{'descr': '<f4', 'fortran_order': False, 'shape': {{}}}", "TypeError"),
])  # fmt: skip
def test_npy_headers_are_checked_before_the_data_is_read(tmp_path, header, words):
    with pytest.raises(ArrayFileError, match=words) as caught:
        read_arrays(_write(tmp_path / "x.npy", npy_with_header(header) + bytes(64)))
    assert "\n" not in str(caught.value) and str(tmp_path / "x.npy") in str(caught.value)


def test_parser_errors_are_chained_as_the_cause(tmp_path):
    with pytest.raises(ArrayFileError) as caught:
        read_arrays(_write(tmp_path / "x.npy", npy_with_header(b"{'descr': '<f4', '''")))
    assert type(caught.value.__cause__).__name__ == "TokenError"


def test_png_chunks_cannot_claim_more_than_the_file_or_the_limit(tmp_path):
    from PIL import Image

    from segnet.data.imageio import DataError, read_image_bgr, read_size

    with pytest.raises(DataError, match="declares 3300000000 bytes, but only 4 follow"):
        read_size(_write(tmp_path / "claims.png", png_chunk_claims(3_300_000_000)))
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(buffer, format="PNG")
    text = b"x" * 4096
    chunk = struct.pack(">I", len(text)) + b"tEXt" + text + struct.pack(">I", zlib.crc32(b"tEXt" + text))
    raw = buffer.getvalue()
    with_text = _write(tmp_path / "text.png", raw[:33] + chunk + raw[33:])
    assert read_image_bgr(with_text).shape == (2, 2, 3)
    budget.set_limit("2K")
    with pytest.raises(budget.MemoryLimitError, match="PNG chunk b'tEXt'"):
        read_size(with_text)


def test_checkpoint_payloads_hold_only_plain_values(tmp_path):
    shared: list = []
    for _ in range(30):  # 2^31 values when walked, a few hundred bytes when pickled
        shared = [shared, shared]
    torch.save({"format": "caffe-net", "x": shared}, tmp_path / "expands.pt")
    with pytest.raises(CaffeFormatError, match="more values than its size allows"):
        read_payload(tmp_path / "expands.pt")
    deep: list = []
    for _ in range(40):
        deep = [deep]
    torch.save({"x": deep}, tmp_path / "deep.pt")
    with pytest.raises(CaffeFormatError, match="nests values more than 32 deep"):
        read_payload(tmp_path / "deep.pt")
    for name, value, words in (("big", 1 << 70, "71 bits"), ("sparse", torch.eye(2).to_sparse(), "sparse"),
                               ("complex", 1j, "type complex"), ("key", {(1, 2): 0}, "keyed by a tuple")):  # fmt: skip
        torch.save({"x": value}, tmp_path / f"{name}.pt")
        with pytest.raises(CaffeFormatError, match=words):
            read_payload(tmp_path / f"{name}.pt")
    torch.save({"format": "caffe-net", CHECKSUM: torch.zeros(2)}, tmp_path / "tensor_checksum.pt")
    with pytest.raises(CaffeFormatError, match="do not match the checksum"):
        read_payload(tmp_path / "tensor_checksum.pt")


def _segnet_payload(tmp_path: Path) -> dict:
    from segnet.models.checkpoint import save_model

    save_model(tmp_path / "base.pt", tiny_segnet(), input_size=(8, 8))
    return {k: v for k, v in read_payload(tmp_path / "base.pt").items() if k != CHECKSUM}


@pytest.mark.parametrize(("fields", "words"), [
    ({"architecture.kernel": 2}, "must be odd"),
    ({"architecture.kernel": 0}, "architecture field 'kernel' is 0"),
    ({"architecture.encoder": [[4], [4], [4]]}, "cannot run: its stages do not fit together"),
    ({"architecture.decoder": [[8], [4]]}, "cannot run"),
    ({"architecture.encoder": [[4]], "architecture.naming": "vgg"}, "2 decoder stages for 1 encoder stages"),
    ({"architecture.decoder_relu": 1}, "architecture field 'decoder_relu' is 1, not bool"),
    ({"architecture.surprise": 1}, "not the fields of an Architecture"),
    ({"num_classes": True}, "declares True classes"),
    ({"bn.conv1": "pytorch"}, "not a BN layer of the model"),
    ({"bn.conv1_bn": "batch"}, "not BN kinds"),
    ({"model": "no-such-model", "architecture": None}, "unknown model 'no-such-model'"),
    ({"label_space": {"names": ["a"], "void": float("inf")}}, "its label space"),
    ({"version": 2}, "written by a newer version"),
    ({"input_size": [40000, 40000]}, "an image of its input size 40000x40000"),
])  # fmt: skip
def test_segnet_checkpoint_fields_are_checked(tmp_path, fields, words):
    from segnet.models.checkpoint import CheckpointError, load_model

    payload = edited_payload(_segnet_payload(tmp_path), fields)
    if payload.get("architecture") is None:
        del payload["architecture"]
    write_payload(payload, tmp_path / "edited.pt")
    budget.set_limit("256M")
    with pytest.raises(CheckpointError, match=words):
        load_model(tmp_path / "edited.pt")


def test_models_refuse_images_of_another_channel_count():
    from segnet.models.caffe_graph import CaffeSegmenter

    for model in (tiny_segnet(), CaffeSegmenter(tiny_net())):
        with pytest.raises(UserError, match="takes 3-channel images .*given 1-channel images"):
            model(torch.zeros(1, 1, 8, 8))
        with pytest.raises(UserError, match="given a 3-D tensor"):
            model(torch.zeros(3, 8, 8))


def test_torch_running_out_of_memory_is_the_users_error_line(capsys):
    def allocates() -> None:
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory")

    assert run_command(allocates) == 2
    assert capsys.readouterr().err.startswith("error: out of memory")
    assert run_command(lambda: [][1]) == BUG_STATUS
