"""Re-run the paper's Table 1: 8 decoder variants x 2 class balancings on CamVid.

Each (variant, balancing) is trained from scratch on CamVid train with the
paper's recipe (segnet.train: SGD lr 0.1, momentum 0.9, He init, weighted
cross-entropy), the checkpoint with the best validation global accuracy is
kept, and it is scored on the 233 test images with G, C, mIoU and BF (the
protocol of segnet.evaluate; predictions made at a reduced size are resized
to the 360x480 labels first). Every run is its own resumable job under
reproduce/results/runs/; its result is cached as JSON and reused when the
same job and budget are asked for again.

Budgets: with no flags, a reduced one that finishes in minutes on a CPU
(smaller images, few iterations; every reduced setting is printed in the
table's header); ``--full`` is the full budget (360x480, batch 12, 16000
iterations, validation every 1000; the paper's image size and batch, an
iteration count of this project's choosing: the paper trains until the
loss converges), for a GPU. The output is a Markdown table
(paper | ours | delta) and a PNG plot in reproduce/results/.

    python reproduce/table1.py [--full] [--variants A,B] [--balancing median,natural]
                               [--iterations N] [--image-size H,W] [--device cuda] [--data CAMVID]

The full budget on a GPU machine lent for minutes is reproduce/device.py's
work (reproduce/DEVICE.md): it trains rows in bf16 from packed data and brings
them back; ``--report`` scores them here on the original test PNGs and
assembles reproduce/results/table1_full.md and .png, rows not yet run marked.

"Median frequency" uses the weights derived from the training labels with
the paper's definition (segnet.class_weights); "natural" uses none.
"""


from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

from converter.errors import UserError, run_command
from experiment import (BALANCINGS, CPU_BUDGET, FULL_BUDGET, RESULTS, SCRATCH, Budget, assemble_table,
                        bf16_available, plot, recorded_hardware, reproducing_command, run_job, write_if_changed,
                        write_report)
from segnet.cli import add_input_size_option, add_common_options, add_data_option, data_root
from segnet.models.variants import VARIANTS


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python reproduce/table1.py", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--full", action="store_true", help="the full budget: 16000 iterations of batch 12 at 360x480 (for a GPU)")
    p.add_argument("--report", action="store_true",
                   help="no training: assemble reproduce/results/table1_full.md and .png from the rows the GPU runner "
                        "brought back (reproduce/results/runs/full/), scoring new ones on the test set first")  # fmt: skip
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated Table 1 names (default: all 8)")
    p.add_argument("--balancing", default="median,natural", help="median, natural or both (default)")
    p.add_argument("--iterations", type=int)
    p.add_argument("--batch-size", type=int)
    add_input_size_option(p, "image_size")
    p.add_argument("--val-every", type=int)
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast even where the hardware has it")
    p.add_argument("--device", default="auto")
    add_data_option(p)
    p.add_argument("--out", help="results folder (default: reproduce/results for the full default re-run, whose "
                   "results are committed; reproduce/results/scratch/<budget>/, which git ignores, for any other)")
    p.add_argument("--tag", help="name of the budget and its report files (default: cpu, full, or one that spells "
                   "out a changed budget)")
    add_common_options(p)
    args = p.parse_args(argv)
    return run_command(lambda: _command(args, argv))


def _command(args: argparse.Namespace, argv: list[str] | None) -> int:
    if args.report:
        return write_report(Path(args.out) if args.out else RESULTS, args.tag or "full", args.data, args.progress)
    data = Path(data_root(args.data))
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    balancings = [b.strip() for b in args.balancing.split(",") if b.strip()]
    if unknown or any(b not in BALANCINGS for b in balancings):
        raise UserError(f"unknown variant(s) {unknown} or balancing {balancings}; variants: {', '.join(VARIANTS)}")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))  # fmt: skip
    base = FULL_BUDGET if args.full else CPU_BUDGET
    budget = Budget(
        iterations=args.iterations or base.iterations, batch_size=args.batch_size or base.batch_size,
        image_size=args.image_size or base.image_size, val_every=args.val_every or base.val_every,
        bf16=bf16_available(device) and not args.fp32 and not args.full, name=base.name,
    )  # fmt: skip
    if budget != base:  # another budget: its own name, so it never takes the place of the committed results
        budget = replace(budget, name=f"{base.name}-{budget.iterations}it-b{budget.batch_size}-{budget.image_size[0]}x"
                                      f"{budget.image_size[1]}-val{budget.val_every}-{'bf16' if budget.bf16 else 'fp32'}")
    if args.tag:
        budget = replace(budget, name=args.tag)
    everything = variants == VARIANTS and sorted(balancings) == sorted(BALANCINGS)
    committed = budget == CPU_BUDGET and everything  # the re-run whose results reproduce/results/ holds
    out = Path(args.out) if args.out else (RESULTS if committed else SCRATCH / budget.name)
    results = []
    for variant in variants:
        for balancing in balancings:
            print(f"== {variant}, {balancing} frequency: {budget.describe()}", flush=True)
            result = run_job(variant, balancing, budget, data, out, str(device), progress=args.progress,
                             reuse=RESULTS)  # fmt: skip
            if "test" in result:
                print("   test " + ", ".join(f"{k} {v:.1f}" for k, v in result["test"].items()), flush=True)
            else:
                print(f"   {result['diverged']}", flush=True)
            results.append(result)
    report = assemble_table(results, budget, reproducing_command(args, budget), recorded_hardware(results))
    md, png = out / f"table1_{budget.name}.md", out / f"table1_{budget.name}.png"
    print(report)
    if write_if_changed(md, report) or not png.exists():
        plot(results, png)
        print(f"wrote {md} and {png}")
    else:
        print(f"{md} is up to date (every cell came from its cache)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
