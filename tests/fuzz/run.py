"""Fuzz one file reader with atheris (coverage-guided, libFuzzer underneath).

    python tests/fuzz/run.py READER --seconds N [--work DIR] [-- LIBFUZZER_OPTIONS...]

READER is one of caffemodel, prototxt, checkpoint, checkpoint_contents,
segnet_checkpoint, image, arrays (see targets.py). The fuzzer starts from
the seed corpus (made by seeds.py) and the crash corpus in
``tests/fuzz/corpus/READER``; it keeps what it learns in ``--work``
(default: a folder under the system's temporary folder) and writes an input
that raises anything but the project's UserError, or that takes more than
3 GiB, as ``crash-*`` there (add it to the crash corpus once fixed). The
process runs under the same 3 GiB address-space cap as the hostile-file
tests. Needs the ``fuzz`` extra: ``pip install -e ".[fuzz]"``.

At the end libFuzzer prints its statistics: executions
(``stat::number_of_executed_units``) and coverage (``cov:``, the edges of
the instrumented code reached; ``ft:``, features).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CAP = 3 << 30  # bytes of address space, as tests/commands/test_hostile.py allows its workers
READERS = ("caffemodel", "prototxt", "checkpoint", "checkpoint_contents", "segnet_checkpoint", "image", "arrays")
#: What is instrumented for coverage: the project, and the pure-Python parsers its readers call.
INSTRUMENTED = ["converter", "segnet", "caffe_proto", "fuzz", "zipfile", "numpy.lib._format_impl", "PIL",
                "google.protobuf.text_format", "tokenize", "ast"]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reader", choices=READERS)
    parser.add_argument("--seconds", type=int, default=600, help="how long to fuzz (default 600)")
    parser.add_argument("--work", type=Path, help="folder for the corpus the fuzzer grows and its crashes")
    parser.add_argument("libfuzzer", nargs="*", help="more libFuzzer options (after --)")
    args = parser.parse_args()
    try:
        import atheris
    except ImportError:
        print("atheris is not installed: pip install -e \".[fuzz]\" (the replay, pytest tests/fuzz, needs none)",
              file=sys.stderr)  # fmt: skip
        return 2
    resource.setrlimit(resource.RLIMIT_AS, (CAP, CAP))
    sys.path[:0] = [str(ROOT), str(HERE.parent)]  # the project before tests/, whose folders share its names
    with atheris.instrument_imports(include=INSTRUMENTED):
        import numpy  # noqa: F401 - instrumented here, before torch imports it
        import PIL.BmpImagePlugin, PIL.JpegImagePlugin, PIL.PngImagePlugin, PIL.TiffImagePlugin  # noqa: F401, E401
        import zipfile  # noqa: F401
        from fuzz import seeds, targets
    import torch

    torch.set_num_threads(1)
    work = args.work or Path(tempfile.gettempdir()) / "segnet-fuzz" / args.reader
    corpus = work / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    seed_folder = seeds.write_seeds(args.reader, work / "seeds")
    crashes = HERE / "corpus" / args.reader
    scratch = targets.Workspace()

    def one_input(data: bytes) -> None:
        targets.run(args.reader, data, scratch)

    folders = [str(corpus), str(seed_folder)] + ([str(crashes)] if crashes.is_dir() else [])
    options = [f"-dict={prototxt_dictionary(work / 'prototxt.dict')}"] if args.reader == "prototxt" else []
    atheris.Setup([sys.argv[0], f"-max_total_time={args.seconds}", "-rss_limit_mb=3072", "-timeout=30",
                   "-max_len=65536", "-print_final_stats=1", f"-artifact_prefix={work}/", *options,
                   *args.libfuzzer, *folders], one_input)  # fmt: skip
    atheris.Fuzz()
    return 0


def prototxt_dictionary(path: Path) -> Path:
    """A libFuzzer dictionary of prototxt words: caffe.proto's field and enum names, the layer types."""
    from caffe_proto import caffe_pb2
    from converter.layers import DATA_LAYER_TYPES, LAYER_TYPES

    words = {"{", "}", ":", '"', "layer {", "layers {", "input_shape { dim: ", "bottom: ", "top: "}
    for message in caffe_pb2.DESCRIPTOR.message_types_by_name.values():
        words.update(f"{field.name}: " for field in message.fields)
        words.update(value.name for enum in message.enum_types for value in enum.values)
    words.update(f'type: "{name}"' for name in (*LAYER_TYPES, *DATA_LAYER_TYPES))
    path.write_text("".join(_dictionary_entry(word) + "\n" for word in sorted(words)))
    return path


def _dictionary_entry(word: str) -> str:
    """A word as libFuzzer's dictionaries write it: quoted, with quotes and backslashes as \\xNN escapes."""
    return '"' + "".join(c if c.isprintable() and c not in '"\\' else f"\\x{ord(c):02x}" for c in word) + '"'


if __name__ == "__main__":
    sys.exit(main())
