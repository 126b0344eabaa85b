"""Mutation testing of the modules whose bugs change a number or lose data (issue 25).

Each mutant is one edit made by one of cosmic-ray's mutation operators (``+`` -> ``-``, ``<`` -> ``<=``,
a number +-1, ``not`` added to a condition, a loop that never runs, ...) to a COPY of the repository in a
temporary folder; the module's own tests then run against that copy, one mutant at a time, stopping at the
first failure. A mutant that no test notices (``survived``) is a change of behaviour the tests would let
through, unless it is equivalent: the reason is then written in ``EQUIVALENT`` below, keyed by the edit's
text, so a reader can check it.

    python benchmarks/mutation.py                       # every module of DEFAULT_MAP
    python benchmarks/mutation.py --module d2ssl/losses/nce.py --tests tests/losses/test_nce.py \\
        --functions nce,weighted_terms --max-mutants 50 --timeout 60

Results go to ``benchmarks/results/mutation_cpu.json`` (and a Markdown summary beside it). The run is
resumable: a mutant already in the results for the same module digest (sha256 of the module's text) is not
run again, except a survivor whose test files changed since (a new test may now kill it). The real working
tree is never written: the copy lives in a temporary folder removed at exit, and each test run imports the
copy's ``d2ssl`` (checked, since an editable install would otherwise win).

Test runs are forked from a process that has already imported torch and pytest, so each mutant costs its
tests, not a 3-second import; ``--no-fork`` runs each in a fresh ``python -m pytest`` instead.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "mutation_cpu.json"
# What a test run needs besides the module: the package, its tests and configs (tests load tiny configs),
# the tools (some tests run them), and pyproject.toml (pytest's options and rootdir).
COPIED = ("d2ssl", "tests", "configs", "tools", "pyproject.toml")

# Module -> (tests that cover it, functions or classes to mutate; empty: the whole module). Test files are
# those that exercise the module's behaviour directly (not the slow end-to-end recipes, which a survivor
# would pay in full), the small *_mutants.py files first so that -x stops early; "file::test" picks one.
DEFAULT_MAP: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "d2ssl/evaluation/knn.py": (
        ("tests/evaluation/test_knn_mutants.py", "tests/evaluation/test_knn_protocols.py",
         "tests/evaluation/test_knn.py::test_separable_features_give_100_percent",
         "tests/evaluation/test_knn.py::test_real_photos_well_above_chance_and_shuffled_labels_at_chance",
         "tests/evaluation/test_knn.py::test_votes_are_summed_exp_similarity_over_temperature"),
        ("l2_normalize", "nearest_neighbors", "knn_scores", "ranked_classes", "knn_topk_accuracy",
         "knn_evaluate", "knn_on_cached_features"),
    ),
    "d2ssl/utils/safe_io.py": (
        ("tests/utils/test_safe_io_mutants.py", "tests/utils/test_checksum_covers_the_whole_file.py",
         "tests/checkpoint/test_legacy_checkpoint_integrity.py", "tests/checkpoint/test_safe_loading.py"),
        (),
    ),
    "d2ssl/data/splits.py": (
        ("tests/data/test_splits_mutants.py", "tests/data/test_splits.py",
         "tests/data/test_validation_holdout.py"),
        # The cut and the draw; write_dataset_split's record files and knn_monitor_part were being written
        # when this map was made.
        ("_labels_of", "_indices_per_class", "_class_rng", "stratified_indices", "stratified_split",
         "holdout_indices", "holdout_split", "class_balanced_subset", "subset_from_list", "write_list_file",
         "write_split_lists", "split_part"),
    ),
    "d2ssl/losses/nce.py": (
        ("tests/losses/test_nce_mutants.py", "tests/losses/test_nce.py",
         "tests/losses/test_nce_fast_paths.py", "tests/losses/test_nce_distributed.py"),
        ("_chunks", "_gathered_scores", "_whole_bank_scores", "bank_rows_weighted_sum", "bank_scores",
         "sample_negatives", "logits", "_rows", "_loss_of_logits", "_scored_loss", "nce",
         "estimate_norm_constant", "update_memory", "weighted_terms", "_initial_memory"),
    ),
    "d2ssl/checkpoint/export.py": (
        ("tests/checkpoint/test_export.py", "tests/checkpoint/test_export_mutants.py"),
        (),
    ),
    "d2ssl/evaluation/clustering.py": (
        # (test_clustering_outputs_written_atomically.py failed at the time, summary["inputs"] in flux)
        ("tests/evaluation/test_clustering_mutants.py", "tests/evaluation/test_clustering.py"),
        ("_as_float32_matrix", "l2_normalize", "WhiteningPCA", "fit_pca", "preprocess_features", "run_kmeans",
         "assign_to_centroids", "cluster_sizes", "size_summary", "clustering_quality", "cluster_and_label"),
    ),
    "d2ssl/evaluation/linear_grid.py": (
        ("tests/evaluation/test_linear_grid.py", "tests/evaluation/test_linear_grid_mutants.py"),
        (),
    ),
    # Checkpoint loading: which keys of which file become which weights of the trunk.
    "d2ssl/checkpoint/layouts.py": (
        ("tests/checkpoint/test_layouts_mutants.py", "tests/checkpoint/test_layouts.py"),
        ("torchvision_to_detectron2_key", "detectron2_to_torchvision_key", "is_detectron2_trunk_key",
         "_candidates", "_choose", "find_trunk", "_detectron2_rename"),
    ),
    "d2ssl/checkpoint/load.py": (
        ("tests/checkpoint/test_load_mutants.py", "tests/checkpoint/test_load.py"),
        ("_is_state_dict", "unwrap_state_dict", "read_state_dict", "model_trunk_prefix",
         "load_pretrained_weights", "resnet_location", "load_weights_init", "check_one_trunk_source"),
    ),
    # Resume state: which run a folder holds, which checkpoints are its own, the lock (the two tests that
    # train in subprocesses take half a minute: the fast ones only).
    "d2ssl/engine/run_folder.py": (
        ("tests/engine/test_run_folder_mutants.py",
         "tests/engine/test_run_folder.py::test_a_fresh_run_into_a_folder_holding_a_run_is_refused_in_one_line",
         "tests/engine/test_run_folder.py::test_the_tool_refuses_before_writing_config_yaml_into_the_folder",
         "tests/engine/test_run_folder.py::test_a_second_run_on_a_locked_folder_fails_at_once_naming_the_holder",
         "tests/engine/test_run_folder.py::test_a_stale_lock_is_taken_over_and_named_in_the_log",
         "tests/engine/test_run_folder.py::test_the_lock_is_released_when_training_raises",
         "tests/engine/test_run_folder.py::test_max_to_keep_deletes_only_this_runs_checkpoints",
         "tests/engine/test_run_folder.py::test_a_run_that_saved_and_logged_nothing_does_not_block_the_folder",
         "tests/engine/test_run_folder.py::"
         "test_a_tool_that_fails_before_training_unlocks_its_folder_and_a_rerun_may_start"),
        ("Run", "checkpoint_identity", "read_run_file", "run_from_folder", "_checkpoint_files", "_run_files",
         "_last_checkpoint_name", "move_run_aside", "_read_lock", "_alive_here", "acquire_lock",
         "release_lock", "claim_run_folder", "_claim_on_main", "_decide"),
    ),
    # The views' random draws (the mapper tests on real photos take minutes: only the fast ones).
    "d2ssl/data/tiles.py": (("tests/data/test_draws_mutants.py",), ()),
    "d2ssl/data/permutations.py": (
        ("tests/data/test_draws_mutants.py", "tests/data/test_permutations.py"),
        (),
    ),
    "d2ssl/data/resize.py": (("tests/data/test_draws_mutants.py",), ("random_resized_crop_box",)),
    "d2ssl/data/mappers/rotation.py": (
        ("tests/data/test_draws_mutants.py",
         "tests/data/test_rotation.py::test_quarter_turn_is_counter_clockwise_and_exact",
         "tests/data/test_rotation.py::test_rejects_more_rotations_than_exist"),
        ("rotate", "RotationMapper.__call__"),
    ),
    "d2ssl/evaluation/features.py": (
        # The reuse key: what decides that cached features are the ones asked for.
        ("tests/evaluation/test_features_mutants.py",
         "tests/evaluation/test_feature_reuse_by_content.py::test_digests_see_every_field_and_the_order"),
        ("_record", "_feed_array", "_feed_value", "_feed_tensor", "array_digest", "weights_digest",
         "dataset_digest", "_unidentified", "_code_digest", "_describe", "view_description", "_changes",
         "_reusable"),
    ),
    # Resume and load: which file is resumed (the run's own, latest stored iteration), what is refused
    # (damaged, another architecture, no trainer state), what a save writes. Left out: _examples,
    # _log_resume and _other_checkpoints_hint, which only word a message (no file chosen, no number).
    # The tests that train in subprocesses or through the tool are left out (seconds each per mutant).
    "d2ssl/engine/checkpointer.py": (
        ("tests/engine/test_checkpointer_mutants.py", "tests/engine/test_resume_same_run.py",
         "tests/engine/test_checkpointer.py::test_damaged_checkpoint_is_refused_and_resume_uses_the_previous_one",
         "tests/engine/test_checkpointer.py::test_damaged_checkpoint_without_a_previous_one_is_an_error_naming_it",
         "tests/engine/test_checkpointer.py::test_init_checkpoint_written_elsewhere_with_a_flipped_byte_is_refused",
         "tests/engine/test_checkpointer.py::test_resume_refuses_another_architecture_before_loading_anything",
         "tests/engine/test_checkpointer.py::test_resume_from_a_weights_only_file_is_an_error",
         "tests/engine/test_checkpointer.py::test_init_checkpoint_may_cover_part_of_the_model_but_must_fit_it",
         "tests/engine/test_checkpointer.py::"
         "test_resume_fallback_takes_the_latest_training_checkpoint_never_model_best",
         "tests/engine/test_pyth_safe_loading.py",
         "tests/engine/test_numerical_faults.py::test_checkpointer_refuses_to_save_non_finite_weights"),
        ("non_finite_tensors", "AtomicCheckpointer.__init__", "AtomicCheckpointer.save",
         "AtomicCheckpointer.tag_last_checkpoint", "AtomicCheckpointer._remove_stale_checksums",
         "AtomicCheckpointer.resume_or_load", "AtomicCheckpointer._resume_run", "AtomicCheckpointer._resume",
         "AtomicCheckpointer._not_a_resume_target", "AtomicCheckpointer._training_checkpoints",
         "AtomicCheckpointer.load", "AtomicCheckpointer._load_file", "AtomicCheckpointer._torch_load",
         "AtomicCheckpointer._load_model", "AtomicCheckpointer._check_fits", "_model_zoo_checkpoint",
         "_pycls_checkpoint", "_same_file"),
    ),
    # Resume state kept by hooks: the data order's start, the random states of each rank, the periodic
    # checkpoints kept across restarts and nothing written after a failure. Every function is mutated (the
    # warnings inside them included: a test reads them). The tests that train end to end in subprocesses
    # (test_resume_after_kill_matches_straight_run, test_preemption) are left out: a minute per mutant.
    "d2ssl/engine/hooks.py": (
        ("tests/engine/test_resume_state_mutants.py",
         "tests/engine/test_resume.py::test_random_states_survive_a_weights_only_checkpoint",
         "tests/engine/test_resume.py::test_each_rank_gets_its_own_random_state_back",
         "tests/engine/test_resume.py::test_resume_on_a_data_set_of_another_size_is_an_error",
         "tests/engine/test_distributed.py::test_resume_on_another_number_of_processes",
         "tests/engine/test_run_folder.py::test_max_to_keep_deletes_only_this_runs_checkpoints",
         "tests/engine/test_engine_never_imports_evaluation.py::test_a_hook_node_is_instantiated_and_none_means_no_hook",
         "tests/engine/test_engine_never_imports_evaluation.py::"
         "test_an_old_style_monitor_section_is_an_error_naming_the_key_and_the_fix",
         "tests/engine/test_numerical_faults.py",
         "tests/engine/test_checkpointer.py::test_keeps_the_last_k_checkpoints_across_a_resume"),
        (),
    ),
    # What number the linear benchmark reports, on which split, what it selects on. Left out: main (the
    # tool's dispatch to do_linear_benchmark or evaluate_only, each mutated) and evaluate_only (detectron2's
    # inference_on_dataset on a loaded model: no choice of its own). The end-to-end runs of
    # test_linear_benchmark.py (15 s, and a kill) are left out; test_linear_mutants.py covers the held-out
    # split they exercise.
    "d2ssl/evaluation/linear.py": (
        ("tests/evaluation/test_linear_mutants.py", "tests/evaluation/test_linear_selection.py",
         "tests/evaluation/test_params_file_and_init_checkpoint_both_set_is_refused_by_every_tool.py::"
         "test_linear_benchmark_and_its_evaluation_refuse_both",
         "tests/test_progress_and_warnings.py::test_train_linear_without_weights_warns_naming_the_keys_to_set",
         "tests/test_progress_and_warnings.py::test_an_asked_for_random_baseline_is_one_info_line_and_no_warning",
         "tests/test_progress_and_warnings.py::test_random_trunk_with_weights_is_refused_naming_both",
         "tests/test_progress_and_warnings.py::test_train_linear_with_weights_says_nothing_about_a_random_trunk"),
        ("_BestFileCheckpointer", "_is_accuracy", "validation_source", "BestAccuracy", "EvaluationHooks",
         "write_summary", "do_linear_benchmark", "announce_trunk_source"),
    ),
    # Which study a sweep continues, how many trials it runs, what a trial returns and is compared by.
    # Left out: _tracker_callback (sends finished trials to TensorBoard/W&B, optional, no number of its own).
    "d2ssl/evaluation/sweep.py": (
        ("tests/evaluation/test_sweep_mutants.py", "tests/evaluation/test_sweep.py"),
        ("Objective", "file_sha256", "_stable_name", "_sha256_json", "SearchParam", "_number", "parse_param",
         "_study", "study_identity", "_differences", "bind_study", "_finished", "run_sweep", "trial_rows",
         "write_sweep_report", "cached_features_objective", "_weights_digests", "linear_benchmark_objective"),
    ),
}

# cosmic-ray offers every operator -> every other operator (12 mutants per '+'); one or two plausible
# slips per site keep the run within a CPU budget and still catch a test that does not look at the value.
OPERATORS = (
    "core/ReplaceBinaryOperator_Add_Sub", "core/ReplaceBinaryOperator_Sub_Add",
    "core/ReplaceBinaryOperator_Mul_Div", "core/ReplaceBinaryOperator_Div_Mul",
    "core/ReplaceBinaryOperator_FloorDiv_Div", "core/ReplaceBinaryOperator_Mod_FloorDiv",
    "core/ReplaceBinaryOperator_Pow_Mul", "core/ReplaceBinaryOperator_BitAnd_BitOr",
    "core/ReplaceBinaryOperator_BitOr_BitAnd",
    "core/ReplaceComparisonOperator_Eq_NotEq", "core/ReplaceComparisonOperator_NotEq_Eq",
    "core/ReplaceComparisonOperator_Lt_LtE", "core/ReplaceComparisonOperator_LtE_Lt",
    "core/ReplaceComparisonOperator_Gt_GtE", "core/ReplaceComparisonOperator_GtE_Gt",
    "core/ReplaceComparisonOperator_Is_IsNot", "core/ReplaceComparisonOperator_IsNot_Is",
    "core/ReplaceUnaryOperator_USub_UAdd", "core/ReplaceUnaryOperator_Delete_Not",
    "core/AddNot", "core/ReplaceTrueWithFalse", "core/ReplaceFalseWithTrue",
    "core/ReplaceAndWithOr", "core/ReplaceOrWithAnd",
    "core/ReplaceBreakWithContinue", "core/ReplaceContinueWithBreak",
    "core/NumberReplacer", "core/ZeroIterationForLoop", "core/ExceptionReplacer",
)

# (the reason shared by the four get_trials(deepcopy=...) mutants of sweep.py)
_READ_ONLY_TRIALS = ("deepcopy only decides whether Optuna hands out copies of the stored trials; sweep.py "
                     "only reads them, so every count, value and parameter is the same")

# Survivors that are equivalent: (module, original line, mutated line) -> why no test can tell them apart.
# Keyed by the text of the edit, not by mutant id, so a reason follows its line when code moves.
EQUIVALENT: dict[tuple[str, str, str], str] = {
    ("d2ssl/evaluation/knn.py",
     "num_classes = int(max(memory.labels.max(), queries.labels.max())) + 1",
     "num_classes = int(max(memory.labels.max(), queries.labels.max())) + 2"):
        "the extra class column has the highest index and no votes, so the stable descending sort ranks it "
        "after every real class, and no label is that class: every top-k hit is unchanged",
    ("d2ssl/evaluation/knn.py", "json.dump(report, f, indent=2)", "json.dump(report, f, indent= 3)"):
        "indentation of the JSON report: the parsed content, what every reader uses, is the same",
    ("d2ssl/data/splits.py",
     "if not ratios or any(r < 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6:",
     "if not ratios or any(r < 0 for r in ratios) or abs(sum(ratios) - 1.0) >= 1e-6:"):
        "differs only when |sum(ratios) - 1| is exactly the double nearest 1e-6; a tolerance's boundary, "
        "not a behaviour: ratios off by more are refused and ratios off by less accepted either way",
    ("d2ssl/losses/nce.py",
     "small_bank = memory.shape[0] < BANK_SCORING_ROWS_PER_NEGATIVE * rows.shape[1]",
     "small_bank = memory.shape[0] <= BANK_SCORING_ROWS_PER_NEGATIVE * rows.shape[1]"):
        "which scoring path 'auto' takes at the exact boundary; both paths give the same scores "
        "(test_fast_scoring_equals_straightforward_gather), only their speed differs",
    ("d2ssl/losses/nce.py",
     "for lo, hi in _chunks(rows.shape[0], memory.shape[0], BANK_CHUNK_ENTRIES):",
     "for lo, hi in _chunks(rows.shape[0], memory.shape[ 1], BANK_CHUNK_ENTRIES):"):
        "changes only the block size (the memory bound of the whole-bank product); every sample is still "
        "scored once, so the scores are the same",
    ("d2ssl/losses/nce.py",
     "if self.loss_type == \"nce\" and self.norm_constant.item() < 0:",
     "if self.loss_type == \"nce\" and self.norm_constant.item() <= 0:"):
        "Z is never 0: the constructor accepts -1 or a positive value and an estimate is N * mean(exp) > 0",
    ("d2ssl/losses/nce.py",
     "if not (v.requires_grad and torch.is_grad_enabled()):",
     "if not (v.requires_grad or torch.is_grad_enabled()):"):
        "the loss value is the same on both branches; the mutant computes a gradient nobody asked for "
        "(in no_grad, or for a v without grad), which _PrecomputedGradient then attaches to nothing",
    ("d2ssl/losses/nce.py", "if unique.numel() < y.numel():", "if unique.numel() <= y.numel():"):
        "keeping the last occurrence of each index when there are no repeats reorders the rows but "
        "index_copy_ with distinct indices writes the same bank",
    ("d2ssl/losses/nce.py", "if unique.numel() < y.numel():", "if not unique.numel() < y.numel():"):
        "on the CPU index_copy_ applies repeated indices in order, so the last occurrence wins exactly "
        "as the de-duplication chooses (test_repeated_index_in_a_batch_keeps_the_last_embedding passes "
        "either way); the de-duplication exists for GPUs, where that order is unspecified: not "
        "observable on this machine",
    ("d2ssl/evaluation/clustering.py",
     "eigenvalues = np.where(eigenvalues < floor, floor, eigenvalues)",
     "eigenvalues = np.where(eigenvalues <= floor, floor, eigenvalues)"):
        "an eigenvalue equal to the floor is replaced by the floor: the same value",
    ("d2ssl/evaluation/clustering.py",
     'logger.info("clustering summary: %s", {k: v for k, v in summary.items() if k != "objective"})',
     'logger.info("clustering summary: %s", {k: v for k, v in summary.items() if k == "objective"})'):
        "what one log line shows; the summary file, the labels and every number are unchanged",
    ("d2ssl/evaluation/clustering.py",
     "distances, assignments = kmeans.index.search(features, 1)",
     "distances, assignments = kmeans.index.search(features, 2)"):
        "asks faiss for the two nearest centroids and keeps column 0, the nearest: the same ids and "
        "distances",
    ("d2ssl/evaluation/clustering.py", "distances, ids = index.search(features, 1)",
     "distances, ids = index.search(features, 2)"):
        "asks faiss for the two nearest centroids and keeps column 0, the nearest: the same ids and "
        "distances",
    ("d2ssl/evaluation/clustering.py",
     "contingency = np.zeros((assignments.max() + 1, labels.max() + 1), dtype=np.int64)",
     "contingency = np.zeros((assignments.max() + 2, labels.max() + 1), dtype=np.int64)"):
        "an extra all-zero cluster row adds 0 to the sum of row maxima: the same purity",
    ("d2ssl/evaluation/clustering.py",
     "contingency = np.zeros((assignments.max() + 1, labels.max() + 1), dtype=np.int64)",
     "contingency = np.zeros((assignments.max() + 1, labels.max() + 2), dtype=np.int64)"):
        "an extra all-zero label column never is a row's maximum above the real ones: the same purity",
    ("d2ssl/evaluation/clustering.py", '"kmeans_seconds": round(result.seconds, 3),',
     '"kmeans_seconds": round(result.seconds, 4),'):
        "the rounding of a wall-clock time in the summary: not a result, and not reproducible anyway",
    ("d2ssl/evaluation/clustering.py",
     'atomic_write(outputs.summary_file, lambda f: json.dump(summary, f, indent=2), mode="w")',
     'atomic_write(outputs.summary_file, lambda f: json.dump(summary, f, indent= 3), mode="w")'):
        "indentation of the JSON summary: the parsed content is the same",
    ("d2ssl/utils/safe_io.py",
     "_LEGACY_HEAD = 64  # bytes that hold the pickled magic number at any pickle protocol",
     "_LEGACY_HEAD = 65  # bytes that hold the pickled magic number at any pickle protocol"):
        "one more byte read ahead of the magic number: the unpickler stops at the first pickle's STOP "
        "either way, so the same files are recognised",
    ("d2ssl/losses/nce.py",
     'last = torch.full_like(unique, -1).scatter_reduce(0, inverse, positions, reduce="amax")',
     'last = torch.full_like(unique, - 2).scatter_reduce(0, inverse, positions, reduce="amax")'):
        "the start value of a max over positions >= 0: -1 and -2 both lose to every position",
    ("d2ssl/utils/safe_io.py", "def readline(self, limit: int = -1) -> bytes:",
     "def readline(self, limit: int = - 2) -> bytes:"):
        "file.readline treats every negative limit as no limit",
    ("d2ssl/utils/safe_io.py",
     "if f.read(1):  # pickle.load stops at the first pickle's end and would return only that",
     "if f.read( 2):  # pickle.load stops at the first pickle's end and would return only that"):
        "only the truthiness of what follows the pickle is used: one byte or two, non-empty either way",
    ("d2ssl/utils/safe_io.py", 'names = re.findall(r"GLOBAL ([\\w.]+)", message)[:1]',
     'names = re.findall(r"GLOBAL ([\\w.]+)", message)[: 2]'):
        "torch's weights_only refusal names one global (it stops at the first), so the first one or two "
        "matches are the same list; zip files take the other branch (get_unsafe_globals_in_checkpoint)",
    ("d2ssl/utils/safe_io.py", "def read(self, n: int = -1) -> bytes:",
     "def read(self, n: int = - 2) -> bytes:"):
        "every negative size means 'to the bound' (n < 0): -1 and -2 read the same",
    ("d2ssl/utils/safe_io.py", "except ImportError:  # pragma: no cover",
     "except CosmicRayTestingException:  # pragma: no cover"):
        "the numpy < 2 fallback import: with numpy 2 (installed here and required by torch's wheels) the "
        "first import succeeds, so the handler is never reached",
    ("d2ssl/checkpoint/export.py",
     "if trunk.classifier is not None and num_classes in (None, trunk.classifier[0].shape[0]):",
     "if trunk.classifier is not None and num_classes in (None, trunk.classifier[ 1].shape[0]):"):
        "the classifier is (weight (C, D), bias (C,)): the bias's length is the weight's row count, C",
    ("d2ssl/evaluation/linear_grid.py",
     "lr_factor(schedule, 0, epochs, milestones, gamma)  # rejects an unknown schedule before any work",
     "lr_factor(schedule, 1, epochs, milestones, gamma)  # rejects an unknown schedule before any work"):
        "the call only validates the schedule name; its value is discarded",
    ("d2ssl/evaluation/linear_grid.py",
     'for epoch in tqdm.trange(epochs, desc="linear grid epochs", mininterval=5, disable=None):',
     'for epoch in tqdm.trange(epochs, desc="linear grid epochs", mininterval= 6, disable=None):'):
        "how often the progress bar redraws",
    ("d2ssl/evaluation/linear_grid.py",
     "chunks = [logits_of(rows.to(device), weight, bias) for rows in x.split(4096)]",
     "chunks = [logits_of(rows.to(device), weight, bias) for rows in x.split( 4097)]"):
        "the scoring chunk size (a memory bound): every row is scored once either way",
    ("d2ssl/evaluation/linear_grid.py", "train_seconds=round(train_seconds, 2))",
     "train_seconds=round(train_seconds, 3))"):
        "the rounding of a wall-clock time in the report: not a result",
    ("d2ssl/evaluation/linear_grid.py", "json.dump(report, f, indent=2)", "json.dump(report, f, indent= 3)"):
        "indentation of the JSON report: the parsed content is the same",
    ("d2ssl/utils/safe_io.py", "READ_CHUNK = 1 << 20  # bytes sha256_of reads at a time",
     "READ_CHUNK = 2 << 20  # bytes sha256_of reads at a time"):
        "the read size of the hash: sha256 over the same bytes in other chunks is the same digest",
    ("d2ssl/utils/safe_io.py", "READ_CHUNK = 1 << 20  # bytes sha256_of reads at a time",
     "READ_CHUNK = 1 << 21  # bytes sha256_of reads at a time"):
        "the read size of the hash: sha256 over the same bytes in other chunks is the same digest",
    ("d2ssl/data/resize.py", "if in_ratio < min(ratio):", "if in_ratio <= min(ratio):"):
        "at width / height == min(ratio) the clamped height is round(width / (width / height)) = height: "
        "the whole image, as the else branch gives",
    ("d2ssl/data/resize.py", "elif in_ratio > max(ratio):", "elif in_ratio >= max(ratio):"):
        "at width / height == max(ratio) the clamped width is round(height * width / height) = width: "
        "the whole image, as the else branch gives",
    ("d2ssl/data/permutations.py", "total = int(np.prod(np.arange(1, num_tiles + 1)))",
     "total = int(np.prod(np.arange( 2, num_tiles + 1)))"):
        "n! without its factor 1: the same product (and 1 for n < 2 either way, an empty product)",
    ("d2ssl/data/permutations.py", "j = int(np.argmax(np.where(available, score, -1)))",
     "j = int(np.argmax(np.where(available, score, +1)))"):
        "the score given to chosen permutations only has to lose to every available one, whose score is "
        "at least 2 (two distinct permutations differ in two positions or more): -1 and +1 both lose",
    ("d2ssl/data/permutations.py", "j = int(np.argmax(np.where(available, score, -1)))",
     "j = int(np.argmax(np.where(available, score, - 2)))"):
        "the score given to chosen permutations only has to lose to every available one (scores >= 2)",
    ("d2ssl/checkpoint/load.py",
     "return isinstance(node, Mapping) and len(node) > 0 and all(_is_tensor_like(v) for v in node.values())",
     "return isinstance(node, Mapping) and len(node) >= 0 "
     "and all(_is_tensor_like(v) for v in node.values())"):
        "an empty mapping ends the descent either way: counted as a state dict the loop stops, not counted "
        "it has no wrapper key to descend into and breaks; both then report 'no tensors' at the same place",
    ("d2ssl/engine/run_folder.py", "if comm.get_world_size() > 1:", "if comm.get_world_size() >= 1:"):
        "in a world of one, detectron2's comm.all_gather returns [outcome] without communicating: the same "
        "outcome (world sizes above one: test_rank_zero_decides_and_tells_the_other_ranks)",
    ("d2ssl/engine/run_folder.py", "data = load_torch_file(path, allow_pickle, mmap=True)",
     "data = load_torch_file(path, allow_pickle, mmap=False)"):
        "reads the tensors instead of mapping them: the same run id, iteration and keys, only slower on a "
        "large checkpoint",
    ("d2ssl/engine/checkpointer.py",
     'ranked.append((-1 if stored is None else stored, match.group(1) != "final", path))',
     'ranked.append((- 2 if stored is None else stored, match.group(1) != "final", path))'):
        "the rank of a file whose iteration cannot be read only has to lose to every stored iteration, "
        "which the trainer writes as 0 or more: -1 and -2 both lose "
        "(test_a_checkpoint_whose_iteration_cannot_be_read_is_resumed_last_even_after_iteration_0)",
    ("d2ssl/engine/hooks.py",
     "if comm.get_world_size() > 1 and self._gathered is not None:",
     "if comm.get_world_size() >= 1 and self._gathered is not None:"):
        "differs only in a process of one, where _gathered is always None (gather() sets it only when the "
        "world size is above one): the same branch is taken",
    ("d2ssl/evaluation/linear.py", 'return key.rsplit("/", 1)[-1].startswith("top")',
     'return key.rsplit("/", 2)[-1].startswith("top")'):
        "the last element of rsplit('/', n) is the text after the last '/' for any n >= 1: the same test",
    ("d2ssl/evaluation/linear.py", "json.dump(summary, f, indent=2)", "json.dump(summary, f, indent= 3)"):
        "indentation of summary.json: the parsed content, what every reader uses, is the same",
    ("d2ssl/evaluation/sweep.py",
     "study.optimize(optuna_objective, n_trials=n_trials - already, callbacks=callbacks)",
     "study.optimize(optuna_objective, n_trials=n_trials + already, callbacks=callbacks)"):
        "an upper bound the loop never reaches: MaxTrialsCallback stops it once n_trials are finished, and "
        "each trial of this process either finishes (counted) or raises (ends the loop), so at most "
        "n_trials - already run either way "
        "(test_n_trials_is_the_number_of_finished_trials_to_reach_not_to_add)",
    ("d2ssl/evaluation/sweep.py", "if already < n_trials:", "if already <= n_trials:"):
        "differs only when already == n_trials, where the mutant calls study.optimize(n_trials=0), which "
        "runs no trial: the same study and report",
    ("d2ssl/evaluation/sweep.py",
     "identity = json.loads(json.dumps(identity, sort_keys=True, default=_stable_name))  # as stored: JSON",
     "identity = json.loads(json.dumps(identity, sort_keys=False, default=_stable_name))  # as stored: JSON"):
        "only the key order of the normalised identity changes: it is compared as dicts (_differences sorts "
        "the keys, == ignores order) and digested with sorted keys, so the same studies bind and refuse",
    ("d2ssl/evaluation/sweep.py", 'if study.get_trials(deepcopy=False):',
     'if study.get_trials(deepcopy=True):'):
        _READ_ONLY_TRIALS,
    ("d2ssl/evaluation/sweep.py",
     "return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))",
     "return len(study.get_trials(deepcopy=True, states=(TrialState.COMPLETE,)))"):
        _READ_ONLY_TRIALS,
    ("d2ssl/evaluation/sweep.py", 'frozen = trial.study.get_trials(deepcopy=False)[trial.number]',
     'frozen = trial.study.get_trials(deepcopy=True)[trial.number]'):
        _READ_ONLY_TRIALS,
    ("d2ssl/evaluation/sweep.py", 'for t in study.get_trials(deepcopy=False):',
     'for t in study.get_trials(deepcopy=True):'):
        _READ_ONLY_TRIALS,
    ("d2ssl/evaluation/sweep.py", "resolved = OmegaConf.to_container(cfg, resolve=False)",
     "resolved = OmegaConf.to_container(cfg, resolve=True)"):
        "d2ssl's configs interpolate only keys of the same config (no resolver reads the environment), so "
        "the resolved values are a function of the digested content: any change of what a trial evaluates "
        "changes both digests. They differ only between a config writing ${key} and one writing its value, "
        "which measure the same thing",
    ("d2ssl/evaluation/sweep.py", 'for block in iter(lambda: f.read(1 << 20), b""):',
     'for block in iter(lambda: f.read( 2 << 20), b""):'):
        "the read size of the hash: sha256 over the same bytes in other chunks is the same digest",
    ("d2ssl/evaluation/sweep.py", 'for block in iter(lambda: f.read(1 << 20), b""):',
     'for block in iter(lambda: f.read(1 << 21), b""):'):
        "the read size of the hash: sha256 over the same bytes in other chunks is the same digest",
    ("d2ssl/evaluation/sweep.py",
     "return trial.suggest_categorical(self.name, self.grid(grid_points or 1))",
     "return trial.suggest_categorical(self.name, self.grid(grid_points or 2))"):
        "differs only when grid_points is 0 (None comes with choices, whose grid ignores the count): then a "
        "choices parameter's grid is its choices either way, and a range's grid is empty, which GridSampler "
        "fails on before this line is reached, the same error either way",
    ("d2ssl/evaluation/sweep.py", '"identity": identity, "trials": rows}, f, indent=2)',
     '"identity": identity, "trials": rows}, f, indent= 3)'):
        "indentation of trials.json: the parsed content, what every reader uses, is the same",
}


@dataclass
class Mutant:
    operator: str
    occurrence: int
    line: int  # 1-based line of the mutated node in the original module
    code: str  # the whole mutated module

    @property
    def id(self) -> str:
        return f"{self.operator.split('/', 1)[1]}#{self.occurrence}"


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def tests_digest(root: Path, tests: list[str]) -> str:
    """One digest of the covering test files' contents (and of the shared conftest), in the given order."""
    h = hashlib.sha256()
    for name in [*tests, "tests/conftest.py"]:
        path = root / name.split("::")[0]
        h.update(name.encode() + b"\0" + (path.read_bytes() if path.exists() else b"<missing>") + b"\0")
    return h.hexdigest()


def function_lines(source: str, names: tuple[str, ...]) -> set[int] | None:
    """Lines inside the named functions or classes (a method by its bare name or Class.method); None: all."""
    if not names:
        return None
    lines: set[int] = set()
    found: set[str] = set()

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                qualname = prefix + child.name
                if child.name in names or qualname in names:
                    found.update({child.name, qualname})
                    first = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                    lines.update(range(first, child.end_lineno + 1))
                visit(child, qualname + ".")

    visit(ast.parse(source), "")
    missing = [n for n in names if n not in found]
    if missing:
        raise SystemExit(f"--functions: {missing} not defined in the module; name its functions or classes "
                         f"(a method as Class.method), or drop --functions to mutate the whole module")
    return lines


def generate_mutants(source: str, in_scope: set[int] | None) -> list[Mutant]:
    """Every mutant of the OPERATORS in source, in a stable order (operator, then position)."""
    from cosmic_ray.ast import Visitor, get_ast
    from cosmic_ray.mutating import mutate_code
    from cosmic_ray.plugins import get_operator

    class Positions(Visitor):
        def __init__(self, operator):
            self.operator, self.lines = operator, []

        def visit(self, node):
            for index, _ in enumerate(self.operator.mutation_positions(node)):
                self.lines.append((node.start_pos, index))
            return node

    annotations = _annotation_spans(source)
    mutants = []
    for name in OPERATORS:
        operator = get_operator(name)()
        positions = Positions(operator)
        positions.walk(get_ast(source))
        for occurrence, ((line, column), index) in enumerate(positions.lines):
            if in_scope is not None and line not in in_scope:
                continue
            if any(start <= (line, column) < end for start, end in annotations):
                continue
            if name == "core/NumberReplacer" and index != 0:  # n+1 only: n-1 rarely finds another gap
                continue
            try:
                code = mutate_code(source, operator, occurrence)
            except AttributeError:  # cosmic-ray's ExceptionReplacer cannot rename a dotted exception name
                continue
            if code is None or code == source:
                continue
            try:  # e.g. Pow -> Mul on a '**kwargs' unpacking: not a program, not a mutant
                compile(code, "<mutant>", "exec")
            except SyntaxError:
                continue
            mutants.append(Mutant(name, occurrence, line, code))
    return mutants


def _annotation_spans(source: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """((line, col), (end line, end col)) of each annotation, if the module postpones their evaluation.

    Under ``from __future__ import annotations`` an annotation is a string nobody evaluates, so a mutant in
    ``int | None`` is equivalent by construction: not worth a test run, nor a reason each.
    """
    tree = ast.parse(source)
    postponed = any(isinstance(n, ast.ImportFrom) and n.module == "__future__"
                    and any(a.name == "annotations" for a in n.names) for n in tree.body)
    if not postponed:
        return []
    spans = []
    for node in ast.walk(tree):
        found = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found.append(node.returns)
        elif isinstance(node, ast.arg) or isinstance(node, ast.AnnAssign):
            found.append(node.annotation)
        spans += [((a.lineno, a.col_offset), (a.end_lineno, a.end_col_offset)) for a in found if a]
    return spans


def edit_of(original: str, mutated: str) -> tuple[str, str, int]:
    """(original line(s), mutated line(s), first line number) of a one-site edit, stripped."""
    a, b = original.split("\n"), mutated.split("\n")
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if tag != "equal":
            return " / ".join(s.strip() for s in a[i1:i2]), " / ".join(s.strip() for s in b[j1:j2]), i1 + 1
    return "", "", 0


# ---------------------------------------------------------------------------------------------------------
# Running the tests of one mutant


class _FirstFailure:
    """pytest plugin: remembers the node id of the first failing test (the one that killed the mutant)."""

    def __init__(self) -> None:
        self.nodeid: str | None = None

    def pytest_runtest_logreport(self, report) -> None:
        if report.failed and self.nodeid is None:
            self.nodeid = report.nodeid


def _child(copy: Path, tests: list[str], module: str, result_file: Path) -> None:
    """In the forked process: run pytest on the copy, write {"rc", "killer"} to result_file, exit."""
    os.setpgid(0, 0)  # its own group, so a timeout kills the tests' subprocesses too
    os.chdir(copy)
    sys.path.insert(0, str(copy))
    import importlib

    import pytest

    with open(os.devnull, "w") as null:  # the tests' own output is not read: the plugin records the killer
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
    importlib.invalidate_caches()
    dotted = module[:-3].replace("/", ".")
    imported = importlib.import_module(dotted)
    if not str(Path(imported.__file__).resolve()).startswith(str(copy.resolve())):
        wrong = f"imported {imported.__file__}, not the copy"
        result_file.write_text(json.dumps({"rc": -1, "killer": wrong}))
        os._exit(3)
    recorder = _FirstFailure()
    rc = int(pytest.main(["-x", "-q", "-p", "no:cacheprovider", *tests], plugins=[recorder]))
    result_file.write_text(json.dumps({"rc": rc, "killer": recorder.nodeid}))
    os._exit(0)


def run_tests(
    copy: Path, tests: list[str], module: str, timeout: float, fork: bool
) -> tuple[str, str | None, float]:
    """("passed" | "failed" | "timeout" | "error", killing test or None, seconds) of the tests on the copy."""
    start = time.monotonic()
    result_file = copy / ".mutation_result.json"
    result_file.unlink(missing_ok=True)
    if fork:
        pid = os.fork()
        if pid == 0:
            try:
                _child(copy, tests, module, result_file)
            finally:
                os._exit(4)
        deadline = start + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                for target in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
                    try:
                        target()
                    except ProcessLookupError:
                        pass
                os.waitpid(pid, 0)
                return "timeout", None, time.monotonic() - start
            time.sleep(0.05)
        if not result_file.exists():  # the mutant crashed the interpreter (or os._exit'ed): a kill
            return "failed", f"<process exit status {status}>", time.monotonic() - start
        out = json.loads(result_file.read_text())
        if out["rc"] == -1:
            raise SystemExit(f"the tests did not import the copy: {out['killer']}")
        return ("passed" if out["rc"] == 0 else "failed"), out["killer"], time.monotonic() - start
    env = dict(os.environ, PYTHONPATH=str(copy), PYTHONDONTWRITEBYTECODE="1")
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                              cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", None, time.monotonic() - start
    killer = next((line.split(" ", 1)[1].split(" - ")[0] for line in proc.stdout.splitlines()
                   if line.startswith("FAILED ")), None)
    return ("passed" if proc.returncode == 0 else "failed"), killer, time.monotonic() - start


def make_copy() -> Path:
    copy = Path(tempfile.mkdtemp(prefix="mut-"))
    for name in COPIED:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, copy / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, copy / name)
    return copy


# ---------------------------------------------------------------------------------------------------------


def load_results(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {"modules": {}}


def write_results(path: Path, results: dict, module: str) -> None:
    """Merges this run's entry for ``module`` into the file (under a lock: runs of other modules may be
    writing theirs) and rewrites the Markdown summary."""
    import fcntl

    # The lock lives outside the repository: nothing of it should be committed beside the results.
    lock_name = f"d2ssl-mutation-{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}.lock"
    with open(os.path.join(tempfile.gettempdir(), lock_name), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        merged = load_results(path)
        merged["machine"] = results["machine"]
        merged["modules"][module] = results["modules"][module]
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(merged, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)
        path.with_suffix(".md").write_text(summary_markdown(merged))


def counts(entry: dict) -> dict:
    statuses = [m["status"] for m in entry["mutants"].values()]
    return {s: statuses.count(s) for s in ("killed", "timeout", "survived", "equivalent", "error")}


def summary_markdown(results: dict) -> str:
    lines = ["# Mutation testing (benchmarks/mutation.py)", "",
             "Operators: cosmic-ray's, the subset in `OPERATORS`; each mutant runs its module's tests with "
             "`pytest -x`; a timeout (an endless loop) counts as a kill. Each survivor is either killed by a "
             "test added since (rerun: its status is then killed) or listed below with why it is "
             "equivalent.", "",
             "| module | sha256 (12) | mutants | killed | timeout | equivalent | survived |",
             "|---|---|---|---|---|---|---|"]
    for module, entry in sorted(results["modules"].items()):
        c = counts(entry)
        lines.append(f"| {module} | {entry['sha256'][:12]} | {len(entry['mutants'])} | {c['killed']} | "
                     f"{c['timeout']} | {c['equivalent']} | {c['survived']} |")
    lines += ["", "## Tests run for each module (and the functions mutated; none listed: all)", ""]
    for module, entry in sorted(results["modules"].items()):
        scope = f" (functions: {', '.join(entry['functions'])})" if entry.get("functions") else ""
        lines.append(f"- {module}{scope}: {', '.join(entry.get('tests', []))}")
    lines += ["", "## Survivors of a first run, killed since by the test named", ""]
    for module, entry in sorted(results["modules"].items()):
        for mid, m in sorted(entry["mutants"].items(), key=lambda kv: kv[1]["line"]):
            if m["status"] in ("killed", "timeout") and m.get("survived_before"):
                lines.append(f"- {module}:{m['line']} `{m['after']}` ({mid}): {m['killed_by']}")
    lines += ["", "## Survivors and equivalents", ""]
    for module, entry in sorted(results["modules"].items()):
        for mid, m in sorted(entry["mutants"].items(), key=lambda kv: kv[1]["line"]):
            if m["status"] in ("survived", "equivalent"):
                why = m.get("reason", "") if m["status"] == "equivalent" else "NOT KILLED"
                lines.append(f"- {module}:{m['line']} `{m['before']}` -> `{m['after']}` ({mid}): {why}")
    return "\n".join(lines) + "\n"


def mutate_module(module: str, tests: list[str], functions: tuple[str, ...], args, results: dict) -> None:
    source = (REPO / module).read_text()
    digest = sha256_text(source)
    tdigest = tests_digest(REPO, tests)
    entry = results["modules"].get(module)
    if entry is None or entry["sha256"] != digest:
        entry = {"sha256": digest, "mutants": {}}
        results["modules"][module] = entry
    entry.update(tests=tests, functions=list(functions), operators=list(OPERATORS))

    mutants = generate_mutants(source, function_lines(source, functions))
    current = {m.id for m in mutants}
    for stale in [mid for mid in entry["mutants"] if mid not in current]:  # operators or scope changed
        del entry["mutants"][stale]
    if args.max_mutants:
        mutants = mutants[: args.max_mutants]
    todo = []
    for m in mutants:
        old = entry["mutants"].get(m.id)
        if old is None or (old["status"] in ("survived", "error") and old["tests_sha256"] != tdigest) \
                or (args.rerun_survivors and old["status"] == "survived"):
            todo.append(m)
        elif old["status"] in ("survived", "equivalent"):  # a reason may have been written since
            _classify(module, old)
    print(f"{module}: {len(mutants)} mutants, {len(todo)} to run", flush=True)
    if not todo:
        write_results(args.results, results, module)
        return

    copy = make_copy()
    try:
        # The copy must be the tree the results name: the module as digested, the tests as digested.
        (copy / module).write_text(source)
        status, killer, seconds = run_tests(copy, tests, module, max(args.timeout, 600), args.fork)
        if status != "passed":
            raise BaselineFailed(f"{module}: its tests fail without any mutant ({killer}); fix them first: "
                                 f"a mutation run needs a green baseline")
        timeout = args.timeout or max(20.0, 3 * seconds + 10)
        print(f"  baseline {seconds:.1f}s, timeout {timeout:.0f}s", flush=True)
        for i, m in enumerate(todo, 1):
            (copy / module).write_text(m.code)
            status, killer, seconds = run_tests(copy, tests, module, timeout, args.fork)
            before, after, _ = edit_of(source, m.code)
            record = {"operator": m.operator, "line": m.line, "before": before, "after": after,
                      "status": {"failed": "killed", "passed": "survived"}.get(status, status),
                      "killed_by": killer, "seconds": round(seconds, 1), "tests_sha256": tdigest}
            _classify(module, record)
            old = entry["mutants"].get(m.id)
            if old is not None and (old["status"] == "survived" or old.get("survived_before")):
                record["survived_before"] = True  # what the tests written for survivors changed
            entry["mutants"][m.id] = record
            print(f"  [{i}/{len(todo)}] {m.id} L{m.line} {record['status']} {seconds:.1f}s  "
                  f"{before[:60]!r} -> {after[:60]!r}", flush=True)
            write_results(args.results, results, module)
    finally:
        (copy / module).write_text(source)
        shutil.rmtree(copy, ignore_errors=True)
    write_results(args.results, results, module)


class BaselineFailed(RuntimeError):
    """The module's tests fail on the unmutated copy: no mutant of it can be judged."""


def _classify(module: str, record: dict) -> None:
    reason = EQUIVALENT.get((module, record["before"], record["after"]))
    if record["status"] in ("survived", "equivalent"):
        record["status"] = "equivalent" if reason else "survived"
        record.pop("reason", None)
        if reason:
            record["reason"] = reason


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--module", action="append", help="module path (repeat); default: all of DEFAULT_MAP")
    parser.add_argument("--tests", nargs="+", help="test files of the one --module; default: the map's")
    parser.add_argument("--functions", help="comma-separated functions/classes to mutate; default: the map's")
    parser.add_argument("--max-mutants", type=int, default=0, help="first N mutants per module (0: all)")
    parser.add_argument("--timeout", type=float, default=0, help="seconds per mutant; 0: 3x baseline + 10")
    parser.add_argument("--rerun-survivors", action="store_true", help="run recorded survivors again")
    parser.add_argument("--no-fork", dest="fork", action="store_false", help="a fresh python per mutant")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    modules = args.module or list(DEFAULT_MAP)
    if args.tests and len(modules) != 1:
        parser.error("--tests applies to exactly one --module")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    sys.dont_write_bytecode = True  # a same-size mutant written within a second would reuse a stale .pyc
    # SIGTERM (a killed run) unwinds like Ctrl-C, so the temporary copy is removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.fork:
        # Imported once here, so each forked test run skips them (never d2ssl: the copy's must be imported).
        import pytest  # noqa: F401
        import torch  # noqa: F401

        for heavy in ("detectron2.config", "detectron2.modeling", "detectron2.checkpoint", "faiss",
                      "torchvision", "sklearn.metrics", "PIL.Image", "fvcore.common.checkpoint"):
            try:
                __import__(heavy)
            except ImportError:
                pass

    results = load_results(args.results)
    results["machine"] = f"{os.cpu_count()} CPUs, {sys.platform}, python {sys.version.split()[0]}"
    failed: list[str] = []
    for module in modules:
        if not (REPO / module).is_file():
            parser.error(f"--module {module}: no such file under {REPO}")
        tests, functions = DEFAULT_MAP.get(module, ((), ()))
        # A map's test file that does not exist yet (a *_mutants.py to come) is skipped.
        tests = [t for t in (args.tests or tests) if (REPO / t.split("::")[0]).exists()]
        if not tests:
            parser.error(f"--module {module}: no test files; pass --tests")
        if args.functions is not None:
            functions = tuple(f for f in args.functions.split(",") if f)
        try:
            mutate_module(module, tests, functions, args, results)
        except BaselineFailed as e:  # the other modules can still be judged
            print(e, flush=True)
            failed.append(module)
    for module in modules:
        if module in results["modules"]:
            entry = results["modules"][module]
            print(module, len(entry["mutants"]), counts(entry))
    if failed:
        print(f"not judged (red baseline): {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
