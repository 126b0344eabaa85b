"""Harmless warnings are silenced where d2ssl raises them; a trunk without weights is never silent."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from d2ssl.engine.launch import parse_command_line
from d2ssl.engine.run_folder import release_all_run_folders
from d2ssl.evaluation import linear

REPO = Path(__file__).resolve().parents[1]
HARMLESS = ("No CUDA runtime is found", "broadcast_buffers` is deprecated", "torch.jit.script` is deprecated")


def test_a_two_process_training_prints_none_of_the_known_harmless_warnings(tmp_path):
    # No -W flag and no PYTHONWARNINGS: what a user's terminal shows. Before, every process printed
    # torch.jit.script's deprecation at import and DDP's broadcast_buffers deprecation at setup.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    result = subprocess.run(
        [sys.executable, "tools/train_net.py", "--config-file", "configs/tiny/rotnet.py", "--num-gpus", "2",
         "train.max_iter=2", "train.knn_monitor.period=0", f"train.output_dir={tmp_path / 'run'}"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
        env=dict(env, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "iter: 1" in output  # trained: the warnings had their chance to appear
    assert [w for w in HARMLESS if w in output] == []


def test_no_cuda_runtime_log_line_is_dropped_and_other_lines_of_that_logger_kept():
    import d2ssl  # noqa: F401  (installs the filters)

    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    cpp_extension = logging.getLogger("torch.utils.cpp_extension")
    handler = Keep()
    cpp_extension.addHandler(handler)
    try:
        cpp_extension.warning("No CUDA runtime is found, using CUDA_HOME='%s'", "/usr/local/cuda")
        cpp_extension.warning("something else")
    finally:
        cpp_extension.removeHandler(handler)
    assert records == ["something else"]


class _Said:
    def __init__(self):
        self.lines = []

    def warning(self, message, *args):
        self.lines.append(("WARNING", message % args))

    def info(self, message, *args):
        self.lines.append(("INFO", message % args))


def _linear_main(monkeypatch, tmp_path, *argv: str) -> list:
    said = _Said()
    monkeypatch.setattr(linear, "logger", said)
    monkeypatch.setattr(linear, "do_linear_benchmark", lambda cfg, resume=False: {})  # the warning is before
    args = parse_command_line(["--config-file", str(REPO / "configs/eval/tiny/linear.py"),
                               f"train.output_dir={tmp_path / 'out'}", "train.seed=7", *argv])
    try:
        linear.main(args)
    finally:
        release_all_run_folders()  # as launch_from_command_line does after main
    return said.lines


def test_train_linear_without_weights_warns_naming_the_keys_to_set(monkeypatch, tmp_path):
    warnings = [line for level, line in _linear_main(monkeypatch, tmp_path) if level == "WARNING"]
    assert len(warnings) == 1
    assert "RANDOM trunk (train.seed=7)" in warnings[0]
    assert "train.weights_init.PARAMS_FILE=" in warnings[0] and "train.init_checkpoint=" in warnings[0]
    assert "--random-trunk" in warnings[0]


def test_an_asked_for_random_baseline_is_one_info_line_and_no_warning(monkeypatch, tmp_path):
    lines = _linear_main(monkeypatch, tmp_path, "--random-trunk")
    assert ("INFO", "random trunk (train.seed=7): a random baseline, as --random-trunk asks") in lines
    assert [line for level, line in lines if level == "WARNING"] == []


def test_random_trunk_with_weights_is_refused_naming_both(monkeypatch, tmp_path):
    weights = tmp_path / "w.pth"
    with pytest.raises(ValueError, match=r"--random-trunk .* train.weights_init.PARAMS_FILE='.*w\.pth'"):
        _linear_main(monkeypatch, tmp_path, "--random-trunk", f"train.weights_init.PARAMS_FILE={weights}")


def test_train_linear_with_weights_says_nothing_about_a_random_trunk(monkeypatch, tmp_path):
    lines = _linear_main(monkeypatch, tmp_path, f"train.weights_init.PARAMS_FILE={tmp_path / 'w.pth'}")
    assert not any("random" in line.lower() for _, line in lines)


def test_progress_line_is_the_running_steps_latest_eta_or_bar():
    from d2ssl.utils.progress import describe_progress

    d2 = ("== pretraining RotNet\n"
          "[12/06 00:01:40 d2.utils.events]:  eta: 0:03:10  iter: 19  total_loss: 1.5\n"
          "[12/06 00:01:47 d2.utils.events]:  eta: 0:02:55  iter: 39  total_loss: 1.4\n")
    assert describe_progress(d2) == "pretraining RotNet: iter 39, eta 0:02:55"
    bar = ("== evaluating rotnet (32 px)\nfeatures:  10%|#   | 1/10 [00:05<00:45]"
           "\rfeatures:  40%|####  | 4/10 [00:20<00:30]")
    assert describe_progress(d2 + bar) == "evaluating rotnet (32 px): features 4/10, eta 00:30"
    # a new step that has printed no counter yet is not credited with the previous step's
    assert describe_progress(d2 + "== detection transfer\n") == "detection transfer"
    assert describe_progress("nothing yet") is None


def test_extract_features_names_an_asked_for_random_trunk_and_its_seed(monkeypatch, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("extract_features_tool", REPO / "tools/extract_features.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    monkeypatch.setattr(tool, "extract_from_config", lambda cfg: {})
    said = _Said()
    monkeypatch.setattr(linear, "logger", said)
    for flags in ([], ["--random-trunk"]):
        tool.main(parse_command_line(["--config-file", str(REPO / "configs/eval/tiny/extract_features.py"),
                                      f"train.output_dir={tmp_path}", "train.seed=3", *flags]))
    assert [level for level, _ in said.lines] == ["WARNING", "INFO"]
    assert said.lines[1][1].startswith("random trunk (train.seed=3)")
