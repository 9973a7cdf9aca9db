"""``python -m segnet.variants``: the Table 1 decoder variants' parameter counts beside the paper's.

The variants themselves: segnet.models.variants.
"""

from __future__ import annotations

import argparse

from segnet.cli import add_common_options
from segnet.models.variants import parameter_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m segnet.variants",
        description="Print the trainable parameter counts of the paper's Table 1 decoder variants beside the paper's.",
    )
    add_common_options(parser)  # accepted for uniform scripting; nothing here shows progress
    parser.parse_args(argv)
    print(parameter_table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
