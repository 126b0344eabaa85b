"""Split edge cases that benchmarks/mutation.py found untested (mutants of d2ssl/data/splits.py that
survived the other tests): the bounds of ratios, fractions and parts, the exact cut sizes, the names of
the written parts. Expected counts are worked out by hand from the documented rule
``round(n_k * cumsum(ratios))``, never by calling the function under test."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from d2ssl.data.datasets import DatasetError
from d2ssl.data.splits import (
    class_balanced_subset,
    holdout_indices,
    holdout_split,
    split_part,
    stratified_indices,
    stratified_split,
    subset_from_list,
    write_list_file,
    write_split_lists,
)


def _dataset(counts: dict[int, int]) -> list[dict]:
    """In-memory images: ``counts[label]`` images of each label, image ids 0..N-1 interleaved by label."""
    labels = [label for label, n in counts.items() for _ in range(n)]
    order = np.random.default_rng(0).permutation(len(labels))
    return [{"image_id": i, "label": labels[j]} for i, j in enumerate(order)]


def test_cut_sizes_are_rounded_cumulative_ratios_of_every_class():
    data = _dataset({0: 10, 1: 7, 2: 1})
    parts = stratified_split(data, ratios=(0.7, 0.15, 0.15), seed=0)
    per_part = [Counter(d["label"] for d in p) for p in parts]
    # class 0: cuts round(7.0)=7, round(8.5)=8 -> 7, 1, 2; class 1: round(4.9)=5, round(5.95)=6 -> 5, 1, 1;
    # class 2: round(0.7)=1, round(0.85)=1 -> 1, 0, 0
    assert [(c[0], c[1], c[2]) for c in per_part] == [(7, 5, 1), (1, 1, 0), (2, 1, 0)]
    ids = [d["image_id"] for p in parts for d in p]
    assert sorted(ids) == list(range(len(data)))  # disjoint and covering
    assert all([d["image_id"] for d in p] == sorted(d["image_id"] for d in p) for p in parts)


def test_a_zero_ratio_is_allowed_and_gives_an_empty_part():
    first, second = stratified_indices([0, 0, 1, 1, 1], ratios=(1.0, 0.0), seed=0)
    assert first.tolist() == [0, 1, 2, 3, 4] and second.tolist() == []


@pytest.mark.parametrize("ratios", [(1.1, -0.1), (0.5, 0.5 + 2e-6), (), (0.5, 0.4999)])
def test_negative_ratios_or_a_sum_off_one_are_refused(ratios):
    with pytest.raises(ValueError, match="non-negative and sum to 1"):
        stratified_indices([0, 1, 0, 1], ratios=ratios)


def test_a_class_draw_does_not_depend_on_the_other_classes():
    alone = stratified_indices([5] * 8, ratios=(0.5, 0.5), seed=2)
    with_others = stratified_indices([5] * 8 + [6] * 9, ratios=(0.5, 0.5), seed=2)
    assert [p.tolist() for p in alone] == [[i for i in p.tolist() if i < 8] for p in with_others]


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5, 1.5])
def test_holdout_fraction_must_be_strictly_between_zero_and_one(fraction):
    with pytest.raises(ValueError, match=r"validation fraction must be in \(0, 1\)"):
        holdout_indices([0, 0, 1, 1], fraction)


def test_holdout_names_the_training_side_when_it_loses_a_class():
    # fraction 0.9 of class 1's two images: round(0.2)=0 stay for training
    with pytest.raises(DatasetError, match=r"training part misses classes \[1\]"):
        holdout_indices([0] * 20 + [1] * 2, 0.9, seed=0)


def test_full_fraction_subset_is_the_whole_data_set_in_order():
    data = _dataset({0: 3, 1: 4})
    assert [d["image_id"] for d in class_balanced_subset(data, 1.0)] == list(range(7))


@pytest.mark.parametrize("fraction", [0.0, 1.01])
def test_subset_fraction_outside_zero_one_is_refused(fraction):
    with pytest.raises(ValueError, match=r"subset fraction must be in \(0, 1\]"):
        class_balanced_subset(_dataset({0: 3}), fraction)


def test_subset_takes_round_fraction_of_each_class():
    data = _dataset({0: 10, 1: 5})
    counts = Counter(d["label"] for d in class_balanced_subset(data, 0.5, seed=1))
    assert counts == {0: 5, 1: 2}  # round(5.0)=5, round(2.5)=2 (banker's rounding)


@pytest.mark.parametrize("part, ok", [(0, True), (2, True), (3, False), (-1, False)])
def test_split_part_bounds(part, ok):
    data = _dataset({0: 10})
    if ok:
        assert split_part(data, part) == stratified_split(data)[part]
    else:
        with pytest.raises(ValueError, match=r"split part must be in \[0, 3\)"):
            split_part(data, part)


def test_written_lists_are_named_after_the_parts_and_hold_one_name_per_line(tmp_path):
    data = _dataset({0: 2, 1: 1})
    paths = write_split_lists([data[:1], data[1:]], str(tmp_path / "sub" / "dir"), names=("a", "b"))
    assert paths == [str(tmp_path / "sub" / "dir" / "a.txt"), str(tmp_path / "sub" / "dir" / "b.txt")]
    assert (tmp_path / "sub" / "dir" / "a.txt").read_text() == "0\n"
    assert (tmp_path / "sub" / "dir" / "b.txt").read_text() == "1\n2\n"
    with pytest.raises(ValueError, match=r"2 parts but 1 names"):
        write_split_lists([data[:1], data[1:]], str(tmp_path), names=("a",))


def test_a_list_file_in_the_current_folder_needs_no_parent(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_list_file(_dataset({0: 2}), "here.txt")
    assert (tmp_path / "here.txt").read_text() == "0\n1\n"


def test_duplicate_base_names_cannot_be_written(tmp_path):
    data = [{"file_name": "/a/x.png", "label": 0}, {"file_name": "/b/x.png", "label": 0}]
    with pytest.raises(DatasetError, match="share a base name"):
        write_list_file(data, str(tmp_path / "l.txt"))


def test_path_suffix_lines_pick_one_of_two_equal_base_names(tmp_path):
    data = [{"file_name": "/d/cat/x.png", "label": 0}, {"file_name": "/d/dog/x.png", "label": 1},
            {"file_name": "/d/dog/y.png", "label": 1}]
    (tmp_path / "l.txt").write_text("dog/x.png\n/d/cat/x.png\n")
    assert [d["file_name"] for d in subset_from_list(data, str(tmp_path / "l.txt"))] == [
        "/d/cat/x.png", "/d/dog/x.png"]
    (tmp_path / "amb.txt").write_text("x.png\n")
    with pytest.raises(DatasetError, match=r"several images.*'x\.png'"):
        subset_from_list(data, str(tmp_path / "amb.txt"))


def test_default_ratios_are_70_15_15():
    parts = stratified_indices([3] * 20)  # cuts at round(14.0) = 14 and round(17.0) = 17
    assert [len(p) for p in parts] == [14, 3, 3]
    data = _dataset({0: 20})
    assert [len(p) for p in stratified_split(data)] == [14, 3, 3]
    assert len(split_part(data, 1)) == 3


def _documented_draw(seed: int, label: int, n: int) -> list[int]:
    # The module's rule: one numpy stream per (seed, class), a permutation of the class's images.
    return np.random.default_rng([seed, label]).permutation(n).tolist()


def test_default_seed_is_zero_and_each_class_is_cut_from_its_own_stream():
    labels = [7] * 10  # one class: its rows are 0..9
    fit, val = holdout_indices(labels, 0.3)  # cut at round(0.7 * 10) = 7
    order = _documented_draw(0, 7, 10)
    assert val.tolist() == sorted(order[7:]) and fit.tolist() == sorted(order[:7])
    parts = stratified_indices(labels, (0.7, 0.3))
    assert [p.tolist() for p in parts] == [sorted(order[:7]), sorted(order[7:])]
    data = [{"image_id": i, "label": 7} for i in range(10)]
    fit_d, val_d = holdout_split(data, 0.3)
    assert [d["image_id"] for d in val_d] == sorted(order[7:])
    # class_balanced_subset: a prefix of the same permutation, round(0.5 * 10) = 5 images
    assert [d["image_id"] for d in class_balanced_subset(data, 0.5)] == sorted(order[:5])


def test_a_refusal_names_at_most_ten_classes():
    labels = list(range(12)) + [12] * 20  # classes 0..11 have one image: none left for validation
    shown = r"validation part misses classes \[0, 1, 2, 3, 4, 5, 6, 7, 8, 9\]\."
    with pytest.raises(DatasetError, match=shown):
        holdout_indices(labels, 0.1)


def test_list_file_errors_show_the_first_five_names(tmp_path):
    data = [{"file_name": f"/d/{c}/x{i}.png", "label": 0} for c in ("a", "b") for i in range(6)]
    (tmp_path / "missing.txt").write_text("".join(f"y{i}.png\n" for i in range(6)))
    first = r"6 of 6 listed images .* first: \['y0\.png', 'y1\.png', 'y2\.png', 'y3\.png', 'y4\.png'\]$"
    with pytest.raises(DatasetError, match=first):
        subset_from_list(data, str(tmp_path / "missing.txt"))
    (tmp_path / "amb.txt").write_text("".join(f"x{i}.png\n" for i in range(6)))
    with pytest.raises(DatasetError, match=r"\['x0\.png', 'x1\.png', 'x2\.png', 'x3\.png', 'x4\.png'\]$"):
        subset_from_list(data, str(tmp_path / "amb.txt"))
