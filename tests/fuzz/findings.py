"""Hostile files that once broke a reader, rebuilt from their description, and the commands that read them.

``BYTE_FINDINGS`` builds the files that are bytes (a caffemodel, zip
archives, an image, arrays); the crash corpus under ``corpus/<reader>/``
holds exactly these bytes (``test_replay`` checks that), and the fuzzer
adds what it finds there. ``CONTENT_FINDINGS`` are checkpoints whose
checksum is valid but whose fields are not: they are edits of a valid
payload, written by :func:`build_cases`.

:func:`build_cases` writes every finding into a folder and returns the
command line that reads it (for ``tests/commands/hostile_runner.py``), with
words its one ``error:`` line must hold.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import converter
from caffe_proto import caffe_pb2
from converter.checkpoint import CHECKSUM, read_payload, write_payload
from converter.wire import WIRE_VARINT, encode_key, encode_varint, length_delimited

from .targets import NET, tiny_net, tiny_segnet

CORPUS = Path(__file__).resolve().parent / "corpus"


# ---------------------------------------------------------------- bytes


def blob_data_varint() -> bytes:
    """A caffemodel whose blob holds its float data as a varint, where packed floats belong."""
    blob = encode_key(5, WIRE_VARINT) + encode_varint(3)
    return length_delimited(100, caffe_pb2.LayerParameter(name="conv1").SerializeToString() + length_delimited(7, blob))


def _zip(name: str, data: bytes, method: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data, compress_type=method)
    return buffer.getvalue()


def _patch_central(raw: bytes, offset: int, value: bytes) -> bytes:
    """``raw`` with the bytes at ``offset`` of its (one) central directory record replaced."""
    at = raw.rindex(b"PK\x01\x02") + offset
    return raw[:at] + value + raw[at + len(value) :]


def _patch_both(raw: bytes, local: int, central: int, value: bytes) -> bytes:
    at = raw.index(b"PK\x03\x04") + local
    return _patch_central(raw[:at] + value + raw[at + len(value) :], central, value)


def zip_name_not_utf8(name: str) -> bytes:
    """A zip whose entry says its name is UTF-8 (flag 0x800) but whose name is not."""
    raw = _zip(name, b"x").replace(name.encode()[-4:], b"\xff\xfe\xfd\xfc")
    return _patch_both(raw, 6, 8, struct.pack("<H", 0x800))


def zip_version(name: str, version: int) -> bytes:
    """A zip whose entry needs zip version ``version / 10`` to extract (zipfile knows up to 6.3)."""
    return _patch_central(_zip(name, b"x"), 6, struct.pack("<H", version))


def png_chunk_claims(length: int) -> bytes:
    """A 1x1 greyscale PNG whose IDAT chunk declares ``length`` bytes and holds 8 (49 bytes in all)."""
    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    head = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return head + struct.pack(">I", length) + b"IDAT" + zlib.compress(b"\0\0")[:8]


def npy_with_header(header: bytes, version: tuple[int, int] = (1, 0)) -> bytes:
    width = "<H" if version == (1, 0) else "<I"
    return b"\x93NUMPY" + bytes(version) + struct.pack(width, len(header)) + header


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def npz_method(method: int) -> bytes:
    """An .npz whose member claims compression ``method`` (6: implode, which zipfile cannot read)."""
    return _patch_both(_zip("data.npy", _npy(np.zeros(2, np.float32))), 8, 10, struct.pack("<H", method))


def npz_encrypted() -> bytes:
    return _patch_both(_zip("data.npy", _npy(np.zeros(2, np.float32))), 6, 8, struct.pack("<H", 0x1))


def npz_bad_deflate() -> bytes:
    """An .npz whose deflated member's data is damaged (zlib: invalid block type)."""
    raw = _zip("data.npy", _npy(np.zeros(64, np.float32)), zipfile.ZIP_DEFLATED)
    start = raw.index(b"data.npy") + len("data.npy")
    return raw[:start] + b"\xff\xff\xff\xff" + raw[start + 4 :]


#: (reader, file name) -> the bytes of a finding
BYTE_FINDINGS: dict[tuple[str, str], Callable[[], bytes]] = {
    ("caffemodel", "blob-data-varint.caffemodel"): blob_data_varint,
    ("checkpoint", "zip-name-not-utf8.pt"): lambda: zip_name_not_utf8("archive/data.pkl"),
    ("checkpoint", "zip-version-14.8.pt"): lambda: zip_version("archive/data.pkl", 148),
    ("image", "png-chunk-3gb.png"): lambda: png_chunk_claims(3_300_000_000),
    ("arrays", "header-token-error.npy"): lambda: npy_with_header(b"{'descr': '<f4', '''"),
    ("arrays", "header-syntax-error.npy"): lambda: npy_with_header(
        b"{'descr': ',S', 'fortran_order': False, 'shape': (1,)}"),
    ("arrays", "header-indentation-error.npy"): lambda: npy_with_header(b"\n  a\n b"),
    ("arrays", "npz-method-not-supported.npz"): lambda: npz_method(6),
    ("arrays", "npz-encrypted.npz"): npz_encrypted,
    ("arrays", "npz-name-not-utf8.npz"): lambda: zip_name_not_utf8("data.npy"),
    ("arrays", "npz-bad-deflate.npz"): npz_bad_deflate,
    ("arrays", "npy-header-claims-3gb.npy"): lambda: b"\x93NUMPY\x02\x00" + struct.pack("<I", 3_000_000_000),
}


# ---------------------------------------------------------------- checkpoint contents (valid checksums)


#: name -> (which base payload, the fields to set: a dotted path -> value, words its error line must hold)
CONTENT_FINDINGS: dict[str, tuple[str, dict[str, Any], str]] = {
    "version-string": ("converted", {"version": "1"}, "format version is '1'"),
    "version-tensor": ("converted", {"version": torch.tensor([1, 1])}, "format version is a torch.int64 tensor"),
    "version-complex": ("converted", {"version": 1 + 2j}, "holds a value of type complex"),
    "phase-infinite": ("converted", {"phase": float("inf")}, "phase is inf"),
    "phase-not-a-phase": ("converted", {"phase": 2**64 - 1}, "phase is 18446744073709551615"),
    "input-shape-infinite": ("converted", {"input_shapes.data": [1, 3, float("inf"), 8]}, "input 'data' has shape"),
    "net-a-tensor": ("graph", {"net": torch.zeros(3)}, "the net is described by a torch.float32 tensor"),
    "input-size-short": ("segnet", {"input_size": [8]}, "got [8]"),
    "input-size-string": ("segnet", {"input_size": "8,8"}, "got '8,8'"),
    "input-size-none": ("segnet", {"input_size": [None, 8]}, "got [None, 8]"),
    "input-size-zero": ("segnet", {"input_size": [0, 8]}, "got [0, 8]"),
    "input-size-negative": ("segnet", {"input_size": [-8, 8]}, "got [-8, 8]"),
    "input-size-2^63": ("segnet", {"input_size": [2**63, 8]}, "got [9223372036854775808, 8]"),
    "input-size-2^31": ("segnet", {"input_size": [2**31, 1]}, "got [2147483648, 1]"),
    # a size of whole numbers in range, but too large for the memory limit
    "input-size-2^31-1": ("segnet", {"input_size": [2**31 - 1, 1]}, "an image of its input size 2147483647x1"),
}


def edited_payload(base: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    payload = {**base}
    for dotted, value in fields.items():
        *parents, last = dotted.split(".")
        place = payload
        for key in parents:
            place[key] = dict(place[key])
            place = place[key]
        place[last] = value
    return payload


# ---------------------------------------------------------------- the command lines


def _valid_files(root: Path) -> dict[str, Path]:
    """The valid files the findings are made from or read with."""
    from PIL import Image

    from segnet.models.caffe_graph import CaffeSegmenter
    from segnet.models.checkpoint import save_model

    files = {"net": root / "net.prototxt", "converted": root / "converted.pt", "segnet": root / "segnet.pt",
             "graph": root / "graph.pt", "image": root / "image.png", "weights": root / "net.caffemodel"}  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    files["net"].write_text(NET)
    torch.manual_seed(0)
    net = tiny_net()
    converter.save(net, files["converted"])
    save_model(files["segnet"], tiny_segnet(), input_size=(8, 8))
    save_model(files["graph"], CaffeSegmenter(net))
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)).save(files["image"])
    from converter.writer import save_caffemodel

    save_caffemodel(net, files["weights"])
    return files


def _four_channels(root: Path) -> Path:
    """A valid converted net that takes 4-channel images."""
    path = root / "four_channels.pt"
    converter.save(converter.CaffeNet(converter.parse_net_text(NET.replace("dim: 1 dim: 3", "dim: 1 dim: 4"))), path)
    return path


#: words the error line of each byte finding must hold
BYTE_WORDS = {
    "blob-data-varint.caffemodel": "blob data of wire type 0",
    "zip-name-not-utf8.pt": "UnicodeDecodeError", "zip-version-14.8.pt": "zip file version 14.8",
    "png-chunk-3gb.png": "declares 3300000000 bytes", "header-token-error.npy": "TokenError",
    "header-syntax-error.npy": "SyntaxError", "header-indentation-error.npy": "IndentationError",
    "npz-method-not-supported.npz": "NotImplementedError", "npz-encrypted.npz": "encrypted",
    "npz-name-not-utf8.npz": "UnicodeDecodeError", "npz-bad-deflate.npz": "zlib",
    "npy-header-claims-3gb.npy": "header claims 3000000000 bytes",
}  # fmt: skip
def build_cases(root: Path) -> list[dict]:
    """Every finding as a file under ``root`` and the command that reads it: {id, command, argv, expect}."""
    files = _valid_files(root)
    out = root / "out"
    cases = []

    def case(name: str, command: str, argv: list, expect: str) -> None:
        cases.append({"id": f"finding/{name}", "command": command, "argv": [str(a) for a in argv], "expect": expect})

    for (reader, name), build in BYTE_FINDINGS.items():
        path = root / name
        path.write_bytes(build())
        words = BYTE_WORDS[name]
        if reader == "caffemodel":
            case(name, "converter", [files["net"], path, "-q", "-o", out / "x.pt"], words)
        elif reader == "checkpoint":
            case(name, "segnet.predict", [path, files["image"], "-o", out], words)
        elif reader == "image":
            case(name, "segnet.predict", [files["segnet"], path, "-o", out], words)
        else:
            spec = path if name.endswith(".npz") else f"data={path}"
            case(name, "converter", [files["net"], files["weights"], "-q", "--input", spec, "--dump",
                                     out / "blobs.npz"], words)  # fmt: skip
    payloads = {kind: read_payload(files[kind]) for kind in ("converted", "segnet", "graph")}
    for name, (kind, fields, words) in CONTENT_FINDINGS.items():
        base = {k: v for k, v in payloads[kind].items() if k != CHECKSUM}
        path = root / f"{name}.pt"
        write_payload(edited_payload(base, fields), path)
        case(name, "segnet.predict", [path, files["image"], "-o", out], words)
    case("rgb-image-for-a-4-channel-model", "segnet.predict", [_four_channels(root), files["image"], "-o", out],
         "takes 4-channel images (N x 4 x H x W); it was given 3-channel images")  # fmt: skip
    return cases


def write_corpus(folder: Path = CORPUS) -> None:
    """(Re)write the byte findings into the crash corpus."""
    for (reader, name), build in BYTE_FINDINGS.items():
        (folder / reader).mkdir(parents=True, exist_ok=True)
        (folder / reader / name).write_bytes(build())
