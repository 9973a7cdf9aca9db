"""``python -m segnet.train``: train or fine-tune a SegNet model with the paper's recipe.

Defaults follow the paper: SGD with a fixed learning rate of 0.1 and
momentum 0.9, batches of 12, the training set shuffled every epoch, He
initialisation, class-weighted cross-entropy normalised by the number of
labelled pixels (void ignored), and model selection by the best global
accuracy on the validation set, checked every ``--val-every`` iterations
(and once before the first step) and scored at the labels' own size.
Learning-rate and decay multipliers are Caffe's from SegNet-Tutorial's
prototxts (biases: twice the rate, no weight decay), or a converted net's
own ``param`` settings, and weight decay is its solver's 0.0005, as the
paper does not state one.

``--init`` fine-tunes any checkpoint: a converted Caffe net (trained as the
readable model when one computes the same, else as the converted graph
itself), or a segnet checkpoint; BN layers keep the mode they were saved in
(see segnet.models.finetune). ``--labels`` (a label-space name, a class count or a
JSON file) sets the classes; when their number differs from the
checkpoint's, the classifier is re-initialised. Images are resized to
``--image-size``, else to the size the model declares, else kept as stored.

Training resumes from ``OUT/last.pt`` with ``--resume`` (an error when there is
none, or when it was written with another model, label space, batch size,
image size or seed; ``--resume auto`` starts afresh when there is none);
``OUT/best.pt`` holds the selected model; ``OUT/log.jsonl`` one JSON line per
log event, up to the iteration a resumed run continues from. Several
GPUs (or CPU processes): ``torchrun --nproc_per_node N -m segnet.train ...``.
``--time-limit MINUTES`` stops cleanly, ``last.pt`` written, for ``--resume``.

The training split is held on the device as uint8 and batched there
(segnet.training.resident), and the host waits for the device only every
``--log-every`` iterations, when the summed loss is read and checked; on
CUDA cuDNN picks its fastest algorithms, and ``--bf16``, ``--channels-last``
and ``--compile`` (torch.compile) make steps faster still. The log's
images/s count training time only.
"""


from __future__ import annotations

import argparse
import sys
from pathlib import Path

from converter.errors import UserError, run_command

from segnet.cli import add_input_size_option, add_common_options, add_data_option, data_root, positive_int
from segnet.models.registry import MODEL_NAMES
from segnet.training.class_weights import BALANCINGS
from segnet.training.config import TrainConfig
from segnet.training.loop import train


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m segnet.train",
        description=__doc__.split("\n\n")[0].split(": ", 1)[1],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = TrainConfig(data="")
    add_data_option(p)
    p.add_argument("--out", default=d.out, help=f"run folder (default {d.out}, which git ignores)")
    p.add_argument("--model", choices=MODEL_NAMES, help="architecture (default: the --init checkpoint's, else "
                   "segnet-basic)")  # fmt: skip
    p.add_argument("--labels", help="label space: a name (camvid, sun-rgbd), a class count or a JSON file "
                   "(default: the checkpoint's, else camvid)")  # fmt: skip
    p.add_argument("--num-classes", type=positive_int, help="N classes 0..N-1, void 255 (same as --labels N)")
    p.add_argument("--iterations", type=int, default=d.iterations, help=f"SGD steps (default {d.iterations})")
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size,
                   help=f"images per step, all processes together (default {d.batch_size})")  # fmt: skip
    p.add_argument("--lr", type=float, default=d.lr, help=f"fixed learning rate (default {d.lr})")
    p.add_argument("--momentum", type=float, default=d.momentum)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--class-weights", choices=BALANCINGS,
                   help="loss weights: the label space's released ones (default when it has them), median frequency "
                        "from the data (default otherwise), or none")  # fmt: skip
    add_input_size_option(p, "image_size",
                   help="resize images (default: the size the model declares, else as stored)")  # fmt: skip
    p.add_argument("--val-every", type=int, default=d.val_every, help="validate every N iterations; 0: never")
    p.add_argument("--val-split", default=d.val_split)
    p.add_argument("--log-every", type=positive_int, default=d.log_every)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (fast on recent GPUs and CPUs)")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    p.add_argument("--compile", action="store_true", help="torch.compile the model on CUDA (eager if that fails)")
    p.add_argument("--time-limit", type=float, metavar="MINUTES",
                   help="stop cleanly after this long (checked every --log-every iterations), last.pt written; "
                        "--resume continues")  # fmt: skip
    p.add_argument("--init", help="start from a converted Caffe net (.pt from python -m converter) or a segnet checkpoint")
    p.add_argument("--resume", nargs="?", const="last", choices=("last", "auto"),
                   help="continue from OUT/last.pt, which must exist and come from a run with the same model, "
                        "labels, batch size, image size and seed; --resume auto: start afresh when there is none")  # fmt: skip
    p.add_argument("--limit", type=positive_int, help="use only the first N training images")
    add_common_options(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    args.pop("memory_limit")  # applied while parsing (converter.budget)
    return run_command(lambda: _command(TrainConfig(**args)))


def _command(cfg: TrainConfig) -> int:
    cfg.data = data_root(cfg.data)
    if cfg.iterations < 0 or cfg.val_every < 0 or (cfg.time_limit is not None and cfg.time_limit < 0):
        raise UserError("--iterations, --val-every and --time-limit must be 0 or more")
    summary = train(cfg)
    out = Path(cfg.out) / "best.pt"
    if summary["stopped_at"]:
        print(f"stopped by --time-limit after iteration {summary['stopped_at']} of {summary['iterations']}; "
              f"--resume continues from {Path(cfg.out) / 'last.pt'}")  # fmt: skip
    elif summary["best"] is not None:
        print(f"best validation global accuracy {summary['best']['accuracy']:.4f} at iteration "
              f"{summary['best']['iteration']}; model in {out}")  # fmt: skip
    else:
        print(f"no validation (--val-every 0): the model after iteration {summary['iterations']} is in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
