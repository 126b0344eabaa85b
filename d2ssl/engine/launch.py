"""The command line shared by d2ssl's training tools: detectron2's argument parser and launcher."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from detectron2.engine import default_argument_parser, launch

from d2ssl.utils.errors import reporting_errors


def argument_parser() -> argparse.ArgumentParser:
    """detectron2's standard flags (``--config-file``, ``--num-gpus``, ``--num-machines``,
    ``--machine-rank``, ``--dist-url``, ``--resume``, ``--eval-only``) and ``key=value`` overrides,
    plus ``--debug`` (tracebacks) and ``--allow-pickle`` (``train.weights_init.ALLOW_PICKLE=True``).
    Parse with ``parse_command_line``: flags may come anywhere among the overrides."""
    parser = default_argument_parser()
    # detectron2 takes everything after the first override as overrides (nargs=REMAINDER), so a
    # trailing --resume became a malformed override; "*" with parse_intermixed_args accepts flags anywhere.
    opts = next(a for a in parser._actions if a.dest == "opts")
    opts.nargs, opts.default = "*", []
    opts.help = "config overrides, path.key=value (anywhere among the flags)"
    parser.add_argument("--debug", action="store_true", help="on an error, print the full traceback")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="unpickle Python objects besides tensors in checkpoint and weight files, which "
                             "runs code stored in them (trusted files only); sets "
                             "train.weights_init.ALLOW_PICKLE")
    return parser


def parse_command_line(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``argument_parser()``'s flags and overrides, in any order."""
    return argument_parser().parse_intermixed_args(argv)


def launch_from_command_line(main: Callable, argv: Sequence[str] | None = None) -> None:
    """Parses the command line (``parse_command_line``) and runs ``main(args)`` in each process
    through detectron2's ``launch``; an error ends the tool with one message (``reporting_errors``)."""
    args = parse_command_line(argv)
    with reporting_errors(debug=args.debug):
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
