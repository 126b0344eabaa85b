"""A real resume on another number of processes: 1 CPU process trains and checkpoints, 2 gloo
processes resume with the same total batch size, and end where the uninterrupted 1-process run ends:
the same images at every step, the same weights up to float32 summation order.

Each run is this file launched as a script (``main`` of ``tools/train_net.py`` in each process), which
records the ``image_id`` of every sample each rank trains on, and the 1-process run's batch of the
first resumed iteration (the gradient's term sums are computed from it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from detectron2.config import instantiate
from detectron2.utils import comm

from d2ssl.engine import train_loop
from d2ssl.engine.launch import launch_from_command_line

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs/tiny/rotnet.py"
# RotNet (16 photos x 4 rotations per step, trunk and linear head) with SyncBN, so that 2 processes
# normalise over the global batch as 1 does; the checkpoint after iteration 1 is resumed at iteration 2.
MAX_ITER, RESUME_AT = 3, 2
OPTS = ["dataloader.train.dataset.limit=256", "dataloader.train.total_batch_size=16",
        f"train.max_iter={MAX_ITER}", f"train.checkpointer.period={RESUME_AT}", "train.log_period=1",
        "train.reference_world_size=0", "model.trunk.norm=SyncBN", "train.knn_monitor.period=0"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")


def _recording_main(args) -> None:
    """``train_loop.main`` recording, per iteration, the image ids this rank trained on."""
    out = Path(next(o for o in args.opts if o.startswith("train.output_dir=")).split("=", 1)[1])
    seen: dict[int, list[int]] = {}
    build_trainer = train_loop.build_trainer

    def recording_trainer(model, *rest, **kwargs):
        trainer = build_trainer(model, *rest, **kwargs)
        module = getattr(model, "module", model)

        def record(module, inputs):
            batch = inputs[0]
            if module.training and isinstance(batch, list) and batch and "image_id" in batch[0]:
                seen[trainer.iter] = [int(d["image_id"]) for d in batch]
                if trainer.iter == RESUME_AT and comm.get_world_size() == 1:
                    torch.save(batch, out / "resumed_batch.pth")

        module.register_forward_pre_hook(record)
        return trainer

    train_loop.build_trainer = recording_trainer
    train_loop.main(args)
    (out / f"seen.rank{comm.get_rank()}.json").write_text(json.dumps(seen))


def _train(output: Path, processes: int, resume: bool = False) -> None:
    command = [sys.executable, __file__, f"train.output_dir={output}", "--config-file", str(CONFIG),
               "--num-gpus", str(processes), *(["--resume"] if resume else []), *OPTS]
    proc = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def _seen(output: Path, processes: int) -> dict[int, list[int]]:
    """Iteration -> the image ids of the global batch, rank 0's then rank 1's."""
    ranks = [json.loads((output / f"seen.rank{r}.json").read_text()) for r in range(processes)]
    return {int(i): [x for rank in ranks for x in rank[i]] for i in ranks[0]}


def test_resume_from_one_process_on_two_matches_the_one_process_run(tmp_path):
    from tolerances import U32, assert_close_sum_order, gradient_term_sums, sum_order_tolerance

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _train(straight, processes=1)
    checkpoint = f"model_{RESUME_AT - 1:07d}.pth"
    resumed.mkdir()
    for name in (checkpoint, checkpoint + ".sha256"):
        shutil.copy(straight / name, resumed / name)
    (resumed / "last_checkpoint").write_text(checkpoint)
    _train(resumed, processes=2, resume=True)

    # The data: the resumed run trained only the iterations after the checkpoint, on the same images
    # (each rank every 2nd position of the same stream).
    one, two = _seen(straight, 1), _seen(resumed, 2)
    assert sorted(one) == list(range(MAX_ITER)) and sorted(two) == list(range(RESUME_AT, MAX_ITER))
    for i in two:
        assert sorted(two[i]) == sorted(one[i]), f"iteration {i}: other images"
        assert len(set(two[i])) == 16

    # The weights: one SGD step from the same checkpoint state (weights, momentum, schedule), with a
    # gradient that differs by summation order only (SyncBN's statistics over 2 ranks, DDP's all-reduce).
    # w - lr (m buf + g + wd w) then differs by lr |dg| plus one rounding of w (2 u |w|).
    cfg = train_loop.setup_config(str(CONFIG), [f"train.output_dir={tmp_path / 'unused'}", *OPTS])
    model = instantiate(cfg.model).train()
    state = torch.load(straight / checkpoint, weights_only=True)["model"]
    model.load_state_dict(state)
    batch = torch.load(straight / "resumed_batch.pth", weights_only=False)
    term_sums, path_terms = gradient_term_sums(model, lambda: sum(model(batch).values()))
    terms = path_terms + 2 * 4  # + the 4-way cross-entropy's sums
    lr = cfg.optimizer.lr  # the schedule's multiplier is at most 1
    got = torch.load(resumed / "model_final.pth", weights_only=True)["model"]
    want = torch.load(straight / "model_final.pth", weights_only=True)["model"]
    assert got.keys() == want.keys()
    assert set(term_sums) == {k for k, _ in model.named_parameters()}
    moved = total = 0
    for key, (scale, _) in term_sums.items():
        upstream = 2 * U32 * want[key].abs()
        assert_close_sum_order(got[key], want[key], terms=terms, scale=lr * scale, upstream=upstream,
                               name=key)
        # How many weights the step moved by more than that tolerance: a resume that skipped the step,
        # or took it with another batch, learning rate or momentum, would show on them.
        step = (want[key].double() - state[key].double()).abs()
        moved += int((step > sum_order_tolerance(terms, lr * scale) + upstream).sum())
        total += step.numel()
    assert moved > 0.5 * total, (moved, total)  # measured: 63% (the bound, 2 gamma_n ~ 11% of sum |t_i|)


if __name__ == "__main__":
    launch_from_command_line(_recording_main, sys.argv[1:])
