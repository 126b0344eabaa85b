"""The training tools' command line: flags anywhere, data set shorthands, one clear message per error."""

from __future__ import annotations

import argparse
import errno
import os
import pickle
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
from d2ssl.utils.errors import describe_error, reporting_errors, summarize

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
    assert not (tmp_path / "out").exists()  # checked before the launch: no run folder, no log
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


@pytest.mark.parametrize("override, message", [
    ("train.seed=abc", "train.seed='abc' (str) has the wrong type: train.seed takes int"),
    ("train.channels_last=3", "train.channels_last=3 (int) has the wrong type: train.channels_last takes "
                              "bool"),
])
def test_wrongly_typed_train_value_names_key_value_and_type_in_one_line(override, message, tmp_path, capsys):
    first = _run_tool(capsys, "--config-file", TINY_ROTNET, f"train.output_dir={tmp_path}", override)
    assert first == f"error: {TINY_ROTNET}: {message}"


@pytest.mark.parametrize("empty", ["train.output_dir=''", "train.output_dir=' '"])
def test_empty_output_dir_says_so_in_one_line(empty, capsys):
    first = _run_tool(capsys, "--config-file", TINY_ROTNET, empty)
    assert first == f"error: {TINY_ROTNET}: train.output_dir is empty: set it to a folder"


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


def test_converter_names_a_plain_pickle_what_it_holds_and_the_flag_that_reads_it(tmp_path):
    # pickle.dump, not torch.save, of weights and the training script's arguments (as MoCo keeps them).
    from d2ssl.checkpoint import to_detectron2
    from d2ssl.modeling.backbone import build_resnet_trunk

    plain = tmp_path / "checkpoint.pth"
    weights = to_detectron2(build_resnet_trunk(18, base_channels=16).state_dict())["model"]
    with open(plain, "wb") as f:
        pickle.dump({"model": weights, "args": argparse.Namespace(lr=0.03)}, f)
    output = tmp_path / "out.pkl"
    convert = ["tools/convert_checkpoint.py", str(plain), str(output), "--to", "detectron2"]
    first = _one_error_line(_tool(*convert))
    assert first == (
        f"error: {plain} is a plain pickle, not a torch zip file; it holds a dict with argparse.Namespace in "
        f"it; loading it runs code: pass --allow-pickle if you trust it "
        f"(train.weights_init.ALLOW_PICKLE=True in a config)"
    )
    assert not output.exists()
    # The hint holds: with the flag the same file converts.
    result = _tool(*convert, "--allow-pickle")
    assert result.returncode == 0, result.stderr[-3000:]
    assert output.exists()


def test_a_directory_given_as_weights_is_called_a_directory_with_its_checkpoints(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    first = _one_error_line(_tool("tools/convert_checkpoint.py", str(folder), str(tmp_path / "o.pkl"),
                                  "--to", "detectron2"))
    assert first.startswith(f"error: {folder} is a directory, not a weights file; it holds no checkpoint")
    for name in ("model_final.pth", "model_0000099.pth", "notes.txt"):
        (folder / name).write_bytes(b"")
    # train.init_checkpoint (the training checkpointer) says the same. A process of its own: loggers set
    # up in this one by earlier tests write to streams pytest has closed.
    first = _one_error_line(_tool(
        "tools/train_net.py", "--config-file", TINY_ROTNET, f"train.output_dir={tmp_path / 'out'}",
        "train.max_iter=1", "dataloader.train.dataset=catalog:digits_train",
        f"train.init_checkpoint={folder}"))
    assert first == (f"error: {folder} is a directory, not a checkpoint; checkpoint-like files in it: "
                     f"model_0000099.pth, model_final.pth")


def test_summarize_keeps_whole_sentences_on_one_line():
    text = "First sentence here. Second one,\nover two lines. " + "Third sentence is long. " * 20
    short = summarize(text, limit=60)
    assert short == "First sentence here. Second one, over two lines. [...]"
    assert summarize("One sentence that is longer than the limit.", limit=10) == (
        "One sentence that is longer than the limit.")
    assert summarize("Short.\nTwo lines.") == "Short. Two lines."


def test_sweep_grid_points_below_one_is_refused_by_the_parser():
    # 0 points per range would reach numpy's "'a' cannot be empty" deep in the grid sampler.
    result = subprocess.run([sys.executable, str(REPO / "tools/sweep.py"), "--grid-points", "0"],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2
    assert "error: argument --grid-points: 0 is not >= 1" in result.stderr
    assert "Traceback" not in result.stderr
