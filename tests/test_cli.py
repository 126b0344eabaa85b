"""The training tools' command line: flags anywhere, data set shorthands, one clear message per error."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from d2ssl.engine.launch import launch_from_command_line, parse_command_line
from d2ssl.engine.train_loop import allows_pickle, setup_from_args
from d2ssl.engine.train_loop import main as train_main
from d2ssl.utils.errors import describe_error, reporting_errors

REPO = Path(__file__).resolve().parents[1]
TINY_ROTNET = str(REPO / "configs/tiny/rotnet.py")


def test_flags_may_follow_the_overrides():
    start = time.monotonic()
    args = parse_command_line(["--config-file", TINY_ROTNET, "train.max_iter=1", "--resume",
                               "optimizer.lr=-0.1", "--num-gpus", "2", "train.seed=3", "--allow-pickle"])
    assert time.monotonic() - start < 1.0
    assert args.resume and args.allow_pickle and not args.debug and args.num_gpus == 2
    assert args.opts == ["train.max_iter=1", "optimizer.lr=-0.1", "train.seed=3"]
    assert parse_command_line(["--config-file", TINY_ROTNET]).opts == []
    with pytest.raises(SystemExit):  # an unknown flag is refused at once, not taken as an override
        parse_command_line(["--config-file", TINY_ROTNET, "train.max_iter=1", "--frobnicate"])


def _image_folder(root: Path, fashion_mnist_train: list[dict], count: int = 40) -> Path:
    for i, d in enumerate(fashion_mnist_train[:count]):
        folder = root / f"class{d['label']}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(d["image"]).save(folder / f"{i:03d}.png")
    return root


def _tool(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-W", "ignore", *argv], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env)


def test_train_net_trains_from_a_folder_on_the_command_line_with_resume_last(tmp_path, fashion_mnist_train):
    # A tiny config pointed at a folder of real images from the command line, --resume after the overrides.
    root = _image_folder(tmp_path / "images", fashion_mnist_train)
    out = tmp_path / "out"
    result = _tool("tools/train_net.py", "--config-file", TINY_ROTNET,
                   f"dataloader.train.dataset=folder:{root}", f"train.output_dir={out}", "train.max_iter=2",
                   "dataloader.train.total_batch_size=4", "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    saved = torch.load(out / "model_final.pth", weights_only=True)
    assert saved["trainer"]["iteration"] == 1
    # The data set node is the folder loader alone: no key of the catalog loader it replaced lingers.
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["dataloader"]["train"]["dataset"] == {
        "_target_": "d2ssl.data.datasets.load_image_folder", "root": str(root)}


def test_tool_error_is_one_line_naming_the_cause_without_a_traceback(tmp_path):
    bad_key = _tool("tools/train_net.py", "--config-file", TINY_ROTNET, f"train.output_dir={tmp_path}",
                    "train.max_iterr=1")
    assert bad_key.returncode == 1
    first = bad_key.stderr.strip().splitlines()[0]
    assert first.startswith("error: unknown config key 'train.max_iterr'"), bad_key.stderr
    assert "Traceback" not in bad_key.stderr and "--debug" in bad_key.stderr
    # --debug lets the exception through, with its traceback.
    with pytest.raises(KeyError, match="train.max_iterr"):
        launch_from_command_line(train_main, ["--config-file", TINY_ROTNET, "train.max_iterr=1", "--debug"])


def _run_tool(capsys, *argv: str) -> str:
    """The tool's error line (stderr also holds what detectron2's setup logged before the failure)."""
    with pytest.raises(SystemExit) as stopped:
        launch_from_command_line(train_main, list(argv))
    assert stopped.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    return errors[0]


def test_missing_root_and_damaged_checkpoint_are_named_in_the_first_line(tmp_path, capsys):
    common = ["--config-file", TINY_ROTNET, f"train.output_dir={tmp_path / 'out'}", "train.max_iter=1"]
    first = _run_tool(capsys, *common, f"dataloader.train.dataset=folder:{tmp_path / 'nope'}")
    assert first.startswith(f"error: dataloader.train.dataset.root='{tmp_path / 'nope'}': image folder")
    assert "Traceback" in (tmp_path / "out" / "log.txt").read_text()  # the log file keeps it
    damaged = tmp_path / "init.pth"
    damaged.write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    first = _run_tool(capsys, *common, "dataloader.train.dataset=catalog:digits_train",
                      f"train.init_checkpoint={damaged}")
    assert first.startswith("error: cannot read checkpoint") and "init.pth" in first


def test_disk_full_leads_the_message_instead_of_torchs_unexpected_pos(tmp_path, capsys):
    # A real torch.save on a full device: torch raises on top of the OSError.
    with pytest.raises(SystemExit), reporting_errors():
        with open("/dev/full", "wb") as f:
            torch.save({"weights": torch.zeros(100_000)}, f)
    first = capsys.readouterr().err.strip().splitlines()[0]
    assert first.startswith("error: No space left on device"), first
    try:
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "model_final.pth.tmp"))
        except OSError:
            # As torch raises it: implicitly chained to the OSError.
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")  # noqa: B904
    except RuntimeError as e:
        message = describe_error(e)
    assert message.startswith(f"No space left on device: {tmp_path / 'model_final.pth.tmp'}")
    assert "unexpected pos" in message  # what was raised on top stays, after the cause


@pytest.mark.parametrize("config", ["tiny/rotnet.py", "detection/tiny/faster_rcnn_FPN_pasted_coco.py"])
def test_allow_pickle_flag_reaches_the_config(config, tmp_path):
    argv = ["--config-file", str(REPO / "configs" / config), f"train.output_dir={tmp_path}"]
    assert not allows_pickle(setup_from_args(parse_command_line(argv)))
    assert allows_pickle(setup_from_args(parse_command_line([*argv, "--allow-pickle"])))


def test_a_spawned_process_traceback_quoted_in_a_message_is_reduced_to_its_error_line():
    quoted = ("rank 1 (pid 12) exited with code 1; the job stopped.\nFirst error seen:\n"
              "-- Process 1 terminated with the following error:\nTraceback (most recent call last):\n"
              '  File "train_loop.py", line 3, in main\n    raise ValueError("boom")\nValueError: boom\n')
    message = describe_error(RuntimeError(quoted))
    assert message.startswith("RuntimeError: rank 1 (pid 12) exited with code 1")
    assert "Traceback" not in message and "File " not in message and message.endswith("ValueError: boom")


@pytest.mark.parametrize("tool", ["knn_eval.py", "linear_grid.py", "sweep.py"])
def test_feature_tools_report_a_missing_features_folder_in_one_line(tool, tmp_path):
    missing = tmp_path / "no_features"
    argv = [sys.executable, str(REPO / "tools" / tool), "--features-dir", str(missing)]
    if tool == "sweep.py":
        argv += ["--output-dir", str(tmp_path / "sweep"), "--param", "lr=0.01,0.1", "--n-trials", "1"]
    result = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and str(missing) in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
