"""``python -m segnet.class_weights``: a label space's released class weights beside median frequency weights.

Usage: ``python -m segnet.class_weights --data ROOT [--split train]
[--labels camvid]`` (the balancings: segnet.training.class_weights).
"""

from __future__ import annotations

import argparse
import sys

from converter.errors import run_command
from segnet.cli import add_common_options, add_data_option, data_root
from segnet.data.labels import get_label_space
from segnet.training.class_weights import format_table, split_class_statistics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m segnet.class_weights",
        description="Print a label space's released class weights beside median frequency weights "
        "derived from the labels of a data set.",
    )
    add_data_option(parser)
    parser.add_argument("--split", default="train", help="split to count (default: train)")
    parser.add_argument("--labels", default="camvid", help="label space: a name, a class count or a JSON file "
                        "(default camvid)")  # fmt: skip
    add_common_options(parser)  # accepted for uniform scripting; this command shows no progress bar
    args = parser.parse_args(argv)

    def command() -> int:
        space = get_label_space(args.labels)
        print(format_table(split_class_statistics(data_root(args.data), space, args.split), space, args.split))
        return 0

    return run_command(command)


if __name__ == "__main__":
    sys.exit(main())
