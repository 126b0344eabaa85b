import itertools

import numpy as np
import pytest

from d2ssl.data.permutations import (
    generate_permutations,
    hamming_distances,
    load_or_create_permutations,
    validate_permutations,
)


def _reference_max_hamming(num_tiles, num_perms, first, method):
    """Noroozi's Algorithm 1 written the slow, obvious way: full distance matrix every step."""
    pool = [tuple(p) for p in itertools.permutations(range(num_tiles))]
    chosen = [pool.pop(first)]
    while len(chosen) < num_perms:
        d = np.array([[sum(a != b for a, b in zip(c, p)) for p in pool] for c in chosen])
        score = d.mean(axis=0) if method == "max_avg" else d.min(axis=0)
        chosen.append(pool.pop(int(np.argmax(score))))
    return np.array(chosen)


@pytest.mark.parametrize("method", ["max_avg", "max_min"])
def test_greedy_selection_matches_the_obvious_algorithm(method):
    perms = generate_permutations(4, 12, seed=3, method=method)
    first = next(i for i, p in enumerate(itertools.permutations(range(4))) if p == tuple(perms[0]))
    np.testing.assert_array_equal(perms, _reference_max_hamming(4, 12, first, method))


def test_every_row_is_a_valid_distinct_permutation():
    perms = generate_permutations(9, 100, seed=0)
    assert perms.shape == (100, 9)
    assert (np.sort(perms, axis=1) == np.arange(9)).all()
    assert len(np.unique(perms, axis=0)) == 100
    validate_permutations(perms, 9)


def test_set_is_deterministic_for_a_seed_and_differs_across_seeds():
    a = generate_permutations(9, 30, seed=5)
    np.testing.assert_array_equal(a, generate_permutations(9, 30, seed=5))
    assert not np.array_equal(a, generate_permutations(9, 30, seed=6))


def test_max_hamming_set_is_farther_apart_than_random_permutations():
    perms = generate_permutations(9, 100, seed=0, method="max_min")
    rng = np.random.default_rng(0)
    random_perms = np.stack([rng.permutation(9) for _ in range(100)])
    off_diagonal = ~np.eye(100, dtype=bool)
    chosen_d, random_d = hamming_distances(perms)[off_diagonal], hamming_distances(random_perms)[off_diagonal]
    # Greedy max-min keeps every pair at least 6 of 9 positions apart; 100 random permutations
    # always contain closer pairs.
    assert chosen_d.min() > random_d.min()
    assert chosen_d.mean() > random_d.mean()


def test_saved_set_is_reloaded_and_one_indexed_files_are_shifted(tmp_path):
    path = str(tmp_path / "perms.npy")
    created = load_or_create_permutations(path, 4, 10, seed=1)
    np.testing.assert_array_equal(load_or_create_permutations(path, 4, 10, seed=1), created)
    np.save(tmp_path / "matlab.npy", created + 1)
    np.testing.assert_array_equal(load_or_create_permutations(str(tmp_path / "matlab.npy"), 4, 10), created)


def test_a_generated_set_is_not_reused_for_another_seed_or_method(tmp_path):
    path = str(tmp_path / "perms.npy")
    load_or_create_permutations(path, 4, 10, seed=1)
    with pytest.raises(ValueError, match=r"perms\.npy.*generated with seed=1.*asks for seed=0"):
        load_or_create_permutations(path, 4, 10, seed=0)
    with pytest.raises(ValueError, match=r"method='max_avg'.*method='max_min'"):
        load_or_create_permutations(path, 4, 10, seed=1, method="max_min")


def test_bad_permutation_files_are_rejected_with_the_path(tmp_path):
    np.save(tmp_path / "bad.npy", np.array([[0, 0, 1, 2]]))
    with pytest.raises(ValueError, match="bad.npy.*not permutations"):
        load_or_create_permutations(str(tmp_path / "bad.npy"), 4, 1)
    with pytest.raises(ValueError, match="num_permutations=5 must be between 1 and"):
        generate_permutations(2, 5)
