#!/usr/bin/env python
"""Submit a d2ssl tool to SLURM through submitit: one task per GPU, requeued with --resume on
preemption or time-out, several configs or sweep trials as one job array.

    # PIRL's published setup, 4 nodes x 8 GPUs; print the sbatch script without submitting:
    python tools/submit.py --nodes 4 --gpus-per-node 8 --partition learnfair --time 4320 --dry-run \\
        train_net --config-file configs/pirl_R50.py train.output_dir=output/pirl_R50
    # 1 node x 8 GPUs:
    python tools/submit.py --gpus-per-node 8 train_net --config-file configs/jigsaw_R50.py
    # two configs as one array:
    python tools/submit.py --array-configs configs/npid_R50.py configs/pirl_R50.py train_net

Options come before the tool; everything after the tool name goes to it unchanged.
"""

import argparse
import sys

from d2ssl.engine.slurm import Resources, build_executor, make_jobs, sbatch_script, submit


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--tasks-per-node", type=int, default=None,
                        help="default: one per GPU (set it for CPU-only jobs)")
    parser.add_argument("--cpus-per-task", type=int, default=10)
    parser.add_argument("--mem-gb", type=float, default=None, help="memory per node")
    parser.add_argument("--time", type=int, default=72 * 60, help="time limit in minutes")
    parser.add_argument("--partition")
    parser.add_argument("--account")
    parser.add_argument("--qos")
    parser.add_argument("--constraint")
    parser.add_argument("--job-name", default="d2ssl")
    parser.add_argument("--log-folder", default="output/submitit/%j", help="submitit logs and pickles")
    parser.add_argument("--sbatch", action="append", default=[], metavar="LINE",
                        help='extra sbatch line, e.g. --sbatch=--exclusive --sbatch="--mail-type=END"')
    parser.add_argument("--max-requeues", type=int, default=3, help="preemptions and time-outs together")
    parser.add_argument("--cluster", choices=["slurm", "local", "debug"], default=None,
                        help="default: SLURM if sbatch exists, else local")
    parser.add_argument("--array-configs", nargs="+", default=(), metavar="CONFIG",
                        help="one array job per config (replaces the tool's --config-file)")
    parser.add_argument("--array-overrides", nargs="+", default=(), metavar="'K=V ...'",
                        help="one array job per entry of key=value overrides (sweep trials)")
    parser.add_argument("--dry-run", action="store_true", help="print the sbatch script, submit nothing")
    parser.add_argument("tool", help="train_net, train_detection, an evaluation tool, or a path")
    parser.add_argument("tool_args", nargs=argparse.REMAINDER, help="the tool's arguments, unchanged")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    resources = Resources(
        nodes=args.nodes, gpus_per_node=args.gpus_per_node, tasks_per_node=args.tasks_per_node,
        cpus_per_task=args.cpus_per_task, mem_gb=args.mem_gb, timeout_min=args.time,
        partition=args.partition, account=args.account, qos=args.qos, constraint=args.constraint,
        job_name=args.job_name, extra_sbatch=args.sbatch,
    )
    jobs = make_jobs(args.tool, args.tool_args, args.array_configs, args.array_overrides, args.max_requeues)
    if args.dry_run:
        sys.stdout.write(sbatch_script(jobs, args.log_folder, resources, args.max_requeues))
        return
    executor = build_executor(args.log_folder, resources, args.max_requeues, cluster=args.cluster)
    for job in submit(jobs, executor):
        print(f"submitted {job.job_id}: logs in {job.paths.stdout.parent}")


if __name__ == "__main__":
    main()
