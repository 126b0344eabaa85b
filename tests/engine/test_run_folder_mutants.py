"""Resume state and run identity, each decision pinned on hand-made folders: which checkpoints a run owns,
what a checkpoint says about itself, which run a folder resumes, what marks a folder as taken, where a run
is moved aside, and who may take or release the lock (the mutants of benchmarks/mutation.py that the
broader test_run_folder.py lets through)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

import pytest
import torch

from d2ssl.engine import run_folder as rf
from d2ssl.engine.run_folder import (
    LOCK_FILE,
    PREVIOUS_RUNS,
    RUN_FILE,
    Run,
    RunFolderError,
    acquire_lock,
    checkpoint_identity,
    claim_run_folder,
    move_run_aside,
    read_run_file,
    release_lock,
    release_run_folder,
    run_from_folder,
)

A, B = "a" * 32, "b" * 32


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    return int(done.stdout)


def _write_lock(folder, pid, host=None, run_id="r") -> None:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, LOCK_FILE), "w") as f:
        json.dump({"pid": pid, "host": host or socket.gethostname(), "run_id": run_id, "started": "t"}, f)


def _checkpoint(folder, name, run_id=None, iteration=1, max_iter=None) -> str:
    os.makedirs(folder, exist_ok=True)
    data = {"model": {"w": torch.zeros(1)}, "iteration": iteration}
    if run_id is not None:
        data["run"] = {"id": run_id, "config_digest": "d", "max_iter": max_iter}
    path = os.path.join(folder, name)
    torch.save(data, path)
    return path


def _run_json(folder, run_id, **extra) -> None:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, RUN_FILE), "w") as f:
        json.dump({"run_id": run_id, **extra}, f)


def _claim(folder, **kwargs) -> Run:
    try:
        return claim_run_folder(str(folder), **kwargs)
    finally:
        release_run_folder(str(folder))


# ---------------------------------------------------------------- Run
def test_a_run_owns_its_own_checkpoints_and_legacy_ones_only_when_legacy():
    run, legacy = Run(A, "o"), Run(A, "o", legacy=True)
    assert run.owns(A) and legacy.owns(A)
    assert not run.owns(B) and not legacy.owns(B)
    assert not run.owns(None) and legacy.owns(None)


def test_stamp_and_record_hold_the_identity():
    run = Run(A, "o", config_digest="c", max_iter=7, legacy=True, created="T")
    assert run.stamp() == {"id": A, "config_digest": "c", "max_iter": 7}
    assert run.record() == {"run_id": A, "config_digest": "c", "max_iter": 7, "legacy_checkpoints": True,
                            "created": "T"}


# ---------------------------------------------------------------- checkpoint_identity
def test_checkpoint_identity_reads_run_iteration_and_keys(tmp_path):
    path = _checkpoint(tmp_path, "m.pth", run_id=A, iteration=4, max_iter=9)
    got = checkpoint_identity(path)
    assert (got.run_id, got.iteration, got.max_iter, got.error) == (A, 4, 9, None)
    assert got.keys == ("model", "iteration", "run")


def test_checkpoint_identity_without_run_or_integer_iteration(tmp_path):
    path = str(tmp_path / "old.pth")
    torch.save({"model": {}, "iteration": "5", "run": "not a dict"}, path)
    got = checkpoint_identity(path)
    assert (got.run_id, got.iteration, got.max_iter, got.error) == (None, None, None, None)


def test_checkpoint_identity_of_a_list_or_garbage_is_an_error(tmp_path):
    path = str(tmp_path / "list.pth")
    torch.save([1, 2], path)
    assert checkpoint_identity(path).error == "holds a list, not a checkpoint dict"
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    got = checkpoint_identity(str(tmp_path / "junk.pth"))
    assert got.error and got.run_id is None and got.iteration is None


# ---------------------------------------------------------------- run.json
def test_run_json_absent_is_none_and_broken_is_an_error_naming_it(tmp_path):
    assert read_run_file(str(tmp_path)) is None
    assert run_from_folder(str(tmp_path)) is None
    (tmp_path / RUN_FILE).write_text("{not json")
    with pytest.raises(RunFolderError, match=rf"^{tmp_path / RUN_FILE} is unreadable"):
        read_run_file(str(tmp_path))
    (tmp_path / RUN_FILE).write_text(json.dumps({"run_id": 3}))
    with pytest.raises(RunFolderError, match="no 'run_id' string"):
        read_run_file(str(tmp_path))
    (tmp_path / RUN_FILE).write_text(json.dumps([A]))
    with pytest.raises(RunFolderError, match="no 'run_id' string"):
        read_run_file(str(tmp_path))


def test_run_from_folder_takes_every_field(tmp_path):
    _run_json(tmp_path, A, config_digest="c", max_iter=5, legacy_checkpoints=True, created="T")
    assert run_from_folder(str(tmp_path)) == Run(A, str(tmp_path), "c", 5, True, "T")
    _run_json(tmp_path, B)
    assert run_from_folder(str(tmp_path)) == Run(B, str(tmp_path), "", None, False, "")


# ---------------------------------------------------------------- what marks a folder as taken
def test_only_checkpoints_and_non_empty_markers_hold_a_folder(tmp_path):
    out = tmp_path / "o"
    assert rf._checkpoint_files(str(out)) == [] and rf._run_files(str(out)) == []
    out.mkdir()
    (out / "metrics.json").write_text("")
    (out / "last_checkpoint").write_text("")
    (out / "config.yaml").write_text("x")
    (out / "b.pth").write_bytes(b"x")
    (out / "a.pth").write_bytes(b"x")
    assert rf._checkpoint_files(str(out)) == ["a.pth", "b.pth"]
    assert rf._run_files(str(out)) == ["a.pth", "b.pth"]
    (out / "metrics.json").write_text("{}\n")
    (out / "last_checkpoint").write_text("a.pth")
    assert rf._run_files(str(out)) == ["a.pth", "b.pth", "last_checkpoint", "metrics.json"]
    (out / "last_checkpoint").write_text("  b.pth \n")
    assert rf._last_checkpoint_name(str(out)) == "b.pth"
    assert rf._last_checkpoint_name(str(tmp_path)) == ""


# ---------------------------------------------------------------- move_run_aside
def test_moving_aside_keeps_every_file_under_the_run_id(tmp_path):
    out = tmp_path / "o"
    _run_json(out, A)
    (out / "m.pth").write_bytes(b"1")
    (out / "sub").mkdir()
    (out / "sub" / "f").write_text("2")
    _write_lock(out, os.getpid())
    (out / PREVIOUS_RUNS).mkdir()
    target = move_run_aside(str(out))
    assert target == str(out / PREVIOUS_RUNS / A)
    assert sorted(os.listdir(target)) == sorted([RUN_FILE, "m.pth", "sub"])
    assert sorted(os.listdir(out)) == sorted([LOCK_FILE, PREVIOUS_RUNS])
    assert move_run_aside(str(out)) is None  # nothing left to move
    # The same run moved aside again gets another folder beside the first.
    _run_json(out, A)
    second = move_run_aside(str(out))
    assert second != target and os.path.basename(second).startswith(A + "-")
    assert os.listdir(second) == [RUN_FILE] and os.listdir(target)


def test_a_folder_without_or_with_a_broken_run_json_is_moved_under_a_dated_name(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "m.pth").write_bytes(b"1")
    assert os.path.basename(move_run_aside(str(out))).startswith("legacy-")
    (out / RUN_FILE).write_text("{")
    assert os.path.basename(move_run_aside(str(out))).startswith("unreadable-")


# ---------------------------------------------------------------- the lock
def test_lock_holder_must_name_an_integer_pid(tmp_path):
    path = tmp_path / LOCK_FILE
    assert rf._read_lock(str(path)) is None
    path.write_text(json.dumps({"pid": 12, "host": "h"}))
    assert rf._read_lock(str(path)) == {"pid": 12, "host": "h"}
    path.write_text(json.dumps({"pid": "12"}))
    assert rf._read_lock(str(path)) is None
    path.write_text("[12]")
    assert rf._read_lock(str(path)) is None
    path.write_text("{")
    assert rf._read_lock(str(path)) is None


def test_a_holder_is_alive_unless_its_pid_ended_on_this_host():
    here = socket.gethostname()
    assert rf._alive_here({"pid": os.getpid(), "host": here})
    assert not rf._alive_here({"pid": _dead_pid(), "host": here})
    assert rf._alive_here({"pid": _dead_pid(), "host": here + "-elsewhere"})
    assert rf._alive_here({"pid": 1, "host": here})  # init: another user's live process


def test_acquire_writes_this_process_and_refuses_a_second(tmp_path):
    path = acquire_lock(str(tmp_path), A)
    assert path == str(tmp_path / LOCK_FILE)
    holder = json.loads((tmp_path / LOCK_FILE).read_text())
    assert (holder["pid"], holder["host"], holder["run_id"]) == (os.getpid(), socket.gethostname(), A)
    with pytest.raises(RunFolderError, match=rf"in use by another run: pid {os.getpid()} "):
        acquire_lock(str(tmp_path), B)
    assert json.loads((tmp_path / LOCK_FILE).read_text())["run_id"] == A


def test_an_unreadable_lock_is_refused_and_left(tmp_path):
    (tmp_path / LOCK_FILE).write_text("{")
    with pytest.raises(RunFolderError, match="locked by an unreadable"):
        acquire_lock(str(tmp_path), A)
    assert (tmp_path / LOCK_FILE).read_text() == "{"


def test_a_stale_lock_is_taken_over_with_a_note(tmp_path):
    dead = _dead_pid()
    _write_lock(tmp_path, dead, run_id=B)
    notes: list[str] = []
    acquire_lock(str(tmp_path), A, notes)
    assert json.loads((tmp_path / LOCK_FILE).read_text())["run_id"] == A
    assert len(notes) == 1 and f"pid {dead}" in notes[0] and "stale lock" in notes[0]
    assert sorted(os.listdir(tmp_path)) == [LOCK_FILE]  # the renamed stale copy is gone


def test_release_removes_only_this_process_lock(tmp_path):
    _write_lock(tmp_path, os.getpid(), host=socket.gethostname() + "-elsewhere")
    release_lock(str(tmp_path))
    assert (tmp_path / LOCK_FILE).exists()
    _write_lock(tmp_path, os.getpid() + 1)
    release_lock(str(tmp_path))
    assert (tmp_path / LOCK_FILE).exists()
    _write_lock(tmp_path, os.getpid())
    release_lock(str(tmp_path))
    assert not (tmp_path / LOCK_FILE).exists()
    release_lock(str(tmp_path))  # nothing to release: no error


# ---------------------------------------------------------------- claiming and deciding
def test_resume_and_start_over_exclude_each_other(tmp_path):
    with pytest.raises(RunFolderError, match="exclude each other"):
        claim_run_folder(str(tmp_path / "o"), resume=True, start_over=True)
    assert not (tmp_path / "o").exists()


def test_a_second_claim_returns_the_held_run(tmp_path):
    out = str(tmp_path / "o")
    first = claim_run_folder(out, resume=False)
    try:
        assert claim_run_folder(out, resume=True) is first
    finally:
        release_run_folder(out)
    assert not os.path.exists(os.path.join(out, LOCK_FILE))


def test_a_fresh_claim_writes_run_json_and_keeps_its_lock(tmp_path):
    out = tmp_path / "o"
    run = claim_run_folder(str(out), resume=False, digest="dg")
    try:
        assert json.loads((out / LOCK_FILE).read_text())["run_id"] == run.id
        record = json.loads((out / RUN_FILE).read_text())
        assert (record["run_id"], record["config_digest"]) == (run.id, "dg")
        assert record["legacy_checkpoints"] is False
        assert run.notes == [] and not run.legacy and len(run.id) == 32
    finally:
        release_run_folder(str(out))


def test_resuming_names_the_resumed_run_in_the_lock(tmp_path):
    out = tmp_path / "o"
    _run_json(out, A, config_digest="dg")
    run = claim_run_folder(str(out), resume=True, digest="dg")
    try:
        assert run.id == A and run.notes == []
        assert json.loads((out / LOCK_FILE).read_text())["run_id"] == A
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()
    finally:
        release_run_folder(str(out))


def test_a_failed_decision_releases_the_lock(tmp_path):
    out = tmp_path / "o"
    _checkpoint(out, "model_0000001.pth", run_id=A)
    with pytest.raises(RunFolderError, match="--resume"):
        claim_run_folder(str(out), resume=False)
    assert not (out / LOCK_FILE).exists()
    assert not (out / RUN_FILE).exists()


def test_resume_with_another_config_digest_notes_it_and_records_the_new_one(tmp_path):
    out = tmp_path / "o"
    _run_json(out, A, config_digest="old")
    run = _claim(out, resume=True, digest="new")
    assert run.id == A and run.config_digest == "new"
    assert len(run.notes) == 1 and "new differs" in run.notes[0] and "(old)" in run.notes[0]
    # No digest given (a library caller): the recorded one stays, nothing noted.
    run = _claim(out, resume=True, digest="")
    assert run.config_digest == "new" and run.notes == []
    # A run.json without a digest takes the new one silently.
    _run_json(out, B)
    run = _claim(out, resume=True, digest="x")
    assert (run.id, run.config_digest, run.notes) == (B, "x", [])


def test_resume_of_an_empty_folder_starts_a_new_run(tmp_path):
    run = _claim(tmp_path / "o", resume=True, digest="d")
    assert not run.legacy and run.notes == [] and run.config_digest == "d"


def test_resume_without_run_json_follows_the_run_that_wrote_last(tmp_path):
    out = tmp_path / "o"
    _checkpoint(out, "model_0000001.pth", run_id=B)
    _checkpoint(out, "model_0000002.pth", run_id=A)
    (out / "last_checkpoint").write_text("model_0000002.pth")
    run = _claim(out, resume=True, digest="d")
    assert (run.id, run.legacy, run.config_digest) == (A, False, "d")
    assert run.notes == [f"{out} has no {RUN_FILE}: resuming run {A}, which wrote model_0000002.pth"]


def test_resume_of_checkpoints_without_ids_is_a_legacy_run(tmp_path):
    out = tmp_path / "o"
    _checkpoint(out, "model_0000001.pth")
    (out / "last_checkpoint").write_text("model_0000001.pth")
    run = _claim(out, resume=True)
    assert run.legacy and len(run.id) == 32 and "written before run ids" in run.notes[0]
    assert json.loads((out / RUN_FILE).read_text())["legacy_checkpoints"] is True
    # last_checkpoint naming a file that is not there: no run to follow, legacy too.
    out2 = tmp_path / "o2"
    _checkpoint(out2, "model_0000001.pth", run_id=A)
    (out2 / "last_checkpoint").write_text("model_0000009.pth")
    assert _claim(out2, resume=True).legacy


def test_a_fresh_run_after_one_that_left_only_run_json_is_noted(tmp_path):
    out = tmp_path / "o"
    _run_json(out, A)
    run = _claim(out, resume=False)
    assert run.id != A and run.notes == [f"run {A} in {out} stopped before it saved or logged anything: "
                                         f"starting a new run there"]


def test_start_over_moves_the_run_and_notes_where(tmp_path):
    out = tmp_path / "o"
    _run_json(out, A)
    _checkpoint(out, "model_0000001.pth", run_id=A)
    run = _claim(out, start_over=True, resume=False)
    assert run.id != A
    assert os.path.isfile(out / PREVIOUS_RUNS / A / "model_0000001.pth")
    assert len(run.notes) == 1 and run.notes[0].startswith(f"--start-over: moved run {A} ")
    assert run.notes[0].endswith(f"to {out / PREVIOUS_RUNS / A}")
    # Nothing to move: nothing noted.
    empty = tmp_path / "e"
    assert _claim(empty, start_over=True, resume=False).notes == []


def test_the_resume_flags_are_keyword_only(tmp_path):
    # claim_run_folder(out, True) must not silently mean resume (or start over): the flags are named.
    out = str(tmp_path / "o")
    with pytest.raises(TypeError):
        claim_run_folder(out, True)  # type: ignore[misc]
    with pytest.raises(TypeError):
        rf._claim_on_main(out, True, False, "")  # type: ignore[misc]
    with pytest.raises(TypeError):
        rf._decide(out, A, True, False, "", [])  # type: ignore[misc]
    assert not os.path.exists(out)


def test_a_pid_of_another_user_counts_as_alive(monkeypatch):
    # Root may signal every pid, so another user's process is simulated: kill(pid, 0) -> EPERM.
    def eperm(pid, sig):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(rf.os, "kill", eperm)
    assert rf._alive_here({"pid": 4242, "host": socket.gethostname()}) is True


def test_notes_are_not_part_of_a_runs_identity():
    assert Run(A, "o", created="T", notes=["took over a stale lock"]) == Run(A, "o", created="T")


class _Opaque:
    pass


def test_checkpoint_identity_does_not_unpickle_python_objects_by_default(tmp_path):
    path = str(tmp_path / "objects.pth")
    torch.save({"iteration": 3, "run": {"id": A}, "args": _Opaque()}, path)
    refused = checkpoint_identity(path)
    assert refused.error and refused.run_id is None
    allowed = checkpoint_identity(path, allow_pickle=True)
    assert (allowed.error, allowed.run_id, allowed.iteration) == (None, A, 3)


def test_rank_zero_decides_and_tells_the_other_ranks(tmp_path, monkeypatch):
    # Two ranks simulated: what rank 0 hands to all_gather is what every other rank acts on.
    sent = []

    def gather(outcome):
        sent.append(outcome)
        return [outcome]

    monkeypatch.setattr(rf.comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(rf.comm, "all_gather", gather)
    out = tmp_path / "o"
    _checkpoint(out, "model_0000001.pth", run_id=A)
    with pytest.raises(RunFolderError) as e:
        claim_run_folder(str(out), resume=False)
    assert sent == [("error", str(e.value))]  # a RunFolderError's own line, no type name before it
    # Another error (here: the folder is a file) reaches the other ranks with its type named.
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError) as e:
        claim_run_folder(str(tmp_path / "file"), resume=False)
    assert sent[1] == ("error", f"FileExistsError: {e.value}")
    # A rank other than 0 takes rank 0's decision: its refusal, or its run.
    monkeypatch.setattr(rf.comm, "is_main_process", lambda: False)
    monkeypatch.setattr(rf.comm, "all_gather", lambda outcome: [("error", "rank 0 says no")])
    with pytest.raises(RunFolderError, match="^rank 0 says no$"):
        claim_run_folder(str(tmp_path / "p"), resume=False)
    decided = Run(B, str(tmp_path / "q"))
    monkeypatch.setattr(rf.comm, "all_gather", lambda outcome: [("ok", decided)])
    try:
        assert claim_run_folder(str(tmp_path / "q"), resume=True) is decided
    finally:
        release_run_folder(str(tmp_path / "q"))
    assert not (tmp_path / "p").exists() and not (tmp_path / "q").exists()  # only rank 0 writes


def test_checking_a_holder_sends_no_signal(monkeypatch):
    sent = []
    monkeypatch.setattr(rf.os, "kill", lambda pid, sig: sent.append((pid, sig)))
    assert rf._alive_here({"pid": 4242, "host": socket.gethostname()})
    assert sent == [(4242, 0)]  # signal 0: existence only


def test_an_unreadable_checkpoint_error_keeps_the_first_300_characters(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise ValueError("x" * 400)

    monkeypatch.setattr(rf, "load_torch_file", fail)
    assert checkpoint_identity(str(tmp_path / "m.pth")).error == "ValueError: " + "x" * 300


def test_a_one_byte_marker_holds_the_folder(tmp_path):
    (tmp_path / "last_checkpoint").write_text("m")
    assert rf._run_files(str(tmp_path)) == ["last_checkpoint"]


def test_a_run_moved_aside_twice_gets_a_dated_random_suffix(tmp_path):
    out = tmp_path / "o"
    for _ in range(2):
        _run_json(out, A)
        second = move_run_aside(str(out))
    assert re.fullmatch(rf"{A}-\d{{8}}T\d{{6}}Z-[0-9a-f]{{6}}", os.path.basename(second))


def test_the_lock_file_is_readable_by_all_and_writable_by_its_owner(tmp_path):
    old = os.umask(0o022)
    try:
        acquire_lock(str(tmp_path), A)
    finally:
        os.umask(old)
    assert os.stat(tmp_path / LOCK_FILE).st_mode & 0o777 == 0o644


def test_a_stale_lock_taken_over_by_another_process_first_is_retried(tmp_path, monkeypatch):
    _write_lock(tmp_path, _dead_pid())
    real_rename, calls = os.rename, []

    def rename(src, dst):  # the other process removed the stale lock just before us
        calls.append(src)
        if len(calls) == 1:
            os.remove(src)
            raise FileNotFoundError(src)
        real_rename(src, dst)

    monkeypatch.setattr(rf.os, "rename", rename)
    assert acquire_lock(str(tmp_path), A) == str(tmp_path / LOCK_FILE)
    assert json.loads((tmp_path / LOCK_FILE).read_text())["run_id"] == A


def test_a_live_lock_created_during_a_takeover_is_given_back(tmp_path, monkeypatch):
    _write_lock(tmp_path, _dead_pid())
    real_rename = os.rename

    def rename(src, dst):  # between our read and our rename, a live run replaced the stale lock
        if src.endswith(LOCK_FILE):
            _write_lock(tmp_path, os.getpid(), run_id=B)
        real_rename(src, dst)

    monkeypatch.setattr(rf.os, "rename", rename)
    with pytest.raises(RunFolderError, match=rf"in use by another run: pid {os.getpid()} .*run {B}"):
        acquire_lock(str(tmp_path), A)
    assert json.loads((tmp_path / LOCK_FILE).read_text())["run_id"] == B


def test_a_lock_that_keeps_changing_is_tried_five_times(tmp_path, monkeypatch):
    _write_lock(tmp_path, _dead_pid())
    opens, real_open = [], os.open

    def counted_open(*args, **kwargs):
        opens.append(args[0])
        return real_open(*args, **kwargs)

    def rename(src, dst):  # every takeover loses the race, the stale lock stays
        raise FileNotFoundError(src)

    monkeypatch.setattr(rf.os, "open", counted_open)
    monkeypatch.setattr(rf.os, "rename", rename)
    with pytest.raises(RunFolderError, match="kept changing; run again"):
        acquire_lock(str(tmp_path), A)
    assert len(opens) == 5
