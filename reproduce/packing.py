"""The data pack that travels to a device machine: its folders, its size against the limit, its checks.

Images as JPEG 4:4:4 at the best quality that fits, labels as lossless PNG,
and a manifest with the error against the original pixels and a checksum of
the decoded pixels per split. pack_data.py says why and writes the pack;
device.py reads it and checks it with :func:`verify`.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

from converter.errors import UserError
from experiment import MIB, row_state_bytes
from segnet.models.variants import VARIANTS
from segnet.data.imageio import read_image_bgr, read_label
from segnet.data.labels import get_label_space
from segnet.data.splits import list_samples

ROOT = Path(__file__).resolve().parents[1]
PACK = ROOT / "device_data"  # ignored by git; named in the device call's carry list
STATE = ROOT / "device_state"  # the resumable state of a cut row, carried beside the pack
SPLITS = ("train", "val")
TRAVEL_LIMIT = 64 * MIB  # the working tree plus carried folders, as the device tool accepts them
MARGIN = 1 * MIB  # the working tree grows with commits between packing and the device run
QUALITIES = range(98, 79, -1)  # tried from the best down; below 80 is not worth training on


def tree_bytes(root: Path = ROOT) -> int:
    """Bytes of what travels without being named: tracked files and untracked files git does not ignore."""
    listed = []
    for extra in ([], ["--others", "--exclude-standard"]):
        out = subprocess.run(["git", "ls-files", "-z", *extra], cwd=root, capture_output=True, check=True).stdout
        listed += [name for name in out.decode().split("\0") if name]
    return sum((root / name).stat().st_size for name in set(listed) if (root / name).is_file())


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def state_reserve() -> int:
    """Bytes the resumable state of the largest Table 1 row takes (see experiment.row_state_bytes)."""
    return max(row_state_bytes(variant) for variant in VARIANTS)


def pixel_digest(arrays: list[np.ndarray]) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def encode_jpeg(bgr: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(bgr[:, :, ::-1])).save(buffer, "JPEG", quality=quality, subsampling=0)
    return buffer.getvalue()


def encode_png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def read_split(data: Path, split: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(stem, HxWx3 BGR image, HxW label) of every sample of a split, checked against CamVid's label space."""
    space = get_label_space("camvid")
    return [(s.image.stem, read_image_bgr(s.image), read_label(s.label, space)) for s in list_samples(data, split)]


def pack(data: Path, out: Path, quality: int | None, limit: int = TRAVEL_LIMIT, say=print) -> dict:
    """Write the pack under ``out``; returns its manifest. ``quality`` None: the best that fits ``limit``."""
    splits = {split: read_split(data, split) for split in SPLITS}
    labels = {split: [encode_png(label) for _, _, label in samples] for split, samples in splits.items()}
    room = limit - MARGIN - tree_bytes() - state_reserve() - sum(len(b) for bs in labels.values() for b in bs)
    chosen = None
    for q in [quality] if quality else QUALITIES:
        images = {split: [encode_jpeg(image, q) for _, image, _ in samples] for split, samples in splits.items()}
        size = sum(len(b) for bs in images.values() for b in bs)
        say(f"JPEG quality {q}, 4:4:4: {size / MIB:.2f} MiB of images (room: {room / MIB:.2f} MiB)")
        if size <= room or quality:
            chosen = q
            break
    if chosen is None:
        raise UserError(f"even JPEG quality {QUALITIES[-1]} does not fit in {room / MIB:.1f} MiB")
    if out.exists():
        shutil.rmtree(out)
    manifest: dict = {"source": str(data), "images": f"JPEG quality {chosen}, 4:4:4 (no chroma subsampling)",
                      "quality": chosen, "labels": "PNG, lossless", "splits": {},
                      "state_room_bytes": room + state_reserve() - size}  # fmt: skip
    for split, samples in splits.items():
        folder = out / "CamVid" / split
        (folder / "images").mkdir(parents=True)
        (folder / "labels").mkdir()
        decoded, squared, worst, changed, values = [], 0.0, 0, 0, 0
        for (stem, original, _), jpeg, png in zip(samples, images[split], labels[split]):
            (folder / "images" / f"{stem}.jpg").write_bytes(jpeg)
            (folder / "labels" / f"{stem}.png").write_bytes(png)
            image = read_image_bgr(folder / "images" / f"{stem}.jpg")
            diff = image.astype(np.int16) - original
            squared += float(np.square(diff, dtype=np.float64).sum())
            worst, changed, values = max(worst, int(np.abs(diff).max())), changed + int(np.count_nonzero(diff)), values + diff.size
            decoded.append(image)
        space = get_label_space("camvid")
        assert all(np.array_equal(read_label(folder / "labels" / f"{stem}.png", space), label)
                   for stem, _, label in samples)  # fmt: skip
        manifest["splits"][split] = {
            "count": len(samples),
            "image_bytes": sum(map(len, images[split])),
            "label_bytes": sum(map(len, labels[split])),
            "psnr_db": round(10 * math.log10(255**2 * values / squared), 2) if squared else None,
            "max_abs_error": worst,
            "values_changed": round(changed / values, 4),
            "decoded_sha256": pixel_digest(decoded),
        }
    manifest["pack_bytes"] = folder_bytes(out) + 4096  # state_room_bytes: what a call can carry of cut rows' state
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def verify(pack_root: Path) -> dict[str, bool]:
    """Per split: do the pixels decoded on this machine equal those the pack was made from (its manifest)?"""
    manifest = json.loads((pack_root / "manifest.json").read_text())
    result = {}
    for split, entry in manifest["splits"].items():
        samples = list_samples(pack_root / "CamVid", split)
        result[split] = pixel_digest([read_image_bgr(s.image) for s in samples]) == entry["decoded_sha256"]
    return result


def travel_report(root: Path = ROOT) -> tuple[int, str]:
    """What a device call carrying device_data and device_state sends, against the limit."""
    tree, data, state = tree_bytes(root), folder_bytes(root / PACK.name), folder_bytes(root / STATE.name)
    total = tree + data + state
    return total, (f"working tree {tree / MIB:.2f} MiB + device_data {data / MIB:.2f} MiB + device_state "
                   f"{state / MIB:.2f} MiB = {total / MIB:.2f} MiB of {TRAVEL_LIMIT / MIB:.0f} MiB")  # fmt: skip
