"""Pack CamVid train+val small enough to travel with the working tree to a device machine.

A device machine receives the working tree plus named ignored folders, at
most 64 MiB in all. CamVid's PNGs (train+val 119 MB) do not fit, and no
lossless format measured here does either (train+val, 468 images:
PNG at maximum compression 113 MiB, WebP lossless method 6 79 MiB, raw
arrays through lzma with a delta filter 103 MiB). So images are stored as
JPEG with full-resolution chroma (4:4:4) at the highest quality (at most 98)
that fits beside the working tree, the labels and the resumable state of
one cut Table 1 row; labels stay lossless PNG. The pack is an ordinary data
folder (``<split>/images/*.jpg``, ``<split>/labels/*.png``), so every
command reads it with ``--data device_data/CamVid``. The test split never
travels: rows are scored here on the original test PNGs.

``device_data/manifest.json`` records the format, the quality, the sizes,
the error against the original pixels (PSNR, largest difference, share of
values changed) and a checksum of the decoded pixels per split, which the
device runner compares with what it decodes there.

    python reproduce/pack_data.py [--data CAMVID] [--out device_data] [--quality N] [--check]
"""


from __future__ import annotations

import argparse
import sys
from pathlib import Path

from packing import MIB, PACK, TRAVEL_LIMIT, pack, travel_report
from converter.errors import run_command
from segnet.cli import add_common_options, add_data_option, data_root


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python reproduce/pack_data.py", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_data_option(p)
    p.add_argument("--out", type=Path, default=PACK, help=f"pack folder (default {PACK.name}/, ignored by git)")
    p.add_argument("--quality", type=int, choices=range(1, 101), metavar="1..100",
                   help="JPEG quality (default: the highest up to 98 that fits)")  # fmt: skip
    p.add_argument("--check", action="store_true", help="only report what a device call would carry")
    add_common_options(p)
    args = p.parse_args(argv)
    return run_command(lambda: _command(args))


def _command(args: argparse.Namespace) -> int:
    if not args.check:
        manifest = pack(Path(data_root(args.data)), args.out, args.quality)
        for split, entry in manifest["splits"].items():
            print(f"{split}: {entry['count']} images, {entry['image_bytes'] / MIB:.2f} MiB JPEG + "
                  f"{entry['label_bytes'] / MIB:.2f} MiB labels; PSNR {entry['psnr_db']} dB, largest error "
                  f"{entry['max_abs_error']}, {100 * entry['values_changed']:.1f}% of values changed")  # fmt: skip
        print(f"wrote {args.out} ({manifest['images']})")
    total, text = travel_report()
    print(text)
    if total > TRAVEL_LIMIT:
        print("too large to travel", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
