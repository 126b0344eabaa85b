"""The command line shared by d2ssl's training tools: detectron2's argument parser and launcher."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from detectron2.engine import default_argument_parser, launch


def launch_from_command_line(main: Callable, argv: Sequence[str] | None = None) -> None:
    """Parses detectron2's standard flags (``--config-file``, ``--num-gpus``, ``--num-machines``,
    ``--machine-rank``, ``--dist-url``, ``--resume``, ``--eval-only``, ``key=value`` overrides) and
    runs ``main(args)`` in each process through detectron2's ``launch``."""
    args = default_argument_parser().parse_args(argv)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
