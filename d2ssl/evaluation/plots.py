"""Pictures of evaluations, written as PNG by matplotlib's object-oriented API (``Figure``, no pyplot:
no display and no global backend state).

- ``plot_embedding_map``: t-SNE (scikit-learn) of cached features, a point per image coloured by
  label; features are subsampled per class first (t-SNE is quadratic in the number of points).
- ``plot_sweep``: accuracy of every finished sweep trial against each swept value.
- ``plot_series``: named series of (x, value) points as lines (kNN top-1 against k, top-1 against
  pretraining iteration) or, with categorical x, as grouped bars (top-1 per layer).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import matplotlib
import numpy as np
from detectron2.utils.file_io import PathManager
from matplotlib.figure import Figure
from sklearn.manifold import TSNE

from d2ssl.evaluation.features import load_features

logger = logging.getLogger(__name__)


def subsample_per_class(labels: np.ndarray, max_points: int, seed: int = 0) -> np.ndarray:
    """Sorted row indices of at most ``max_points`` rows, the same share of every class."""
    if len(labels) <= max_points:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    fraction = max_points / len(labels)
    rows = [rng.permutation(np.flatnonzero(labels == c))[: max(1, int(fraction * (labels == c).sum()))]
            for c in np.unique(labels)]
    return np.sort(np.concatenate(rows))


def embedding_2d(features: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """``(N, D) -> (N, 2)`` t-SNE of L2-normalised features (the geometry kNN sees), PCA-initialised."""
    x = np.asarray(features, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return TSNE(n_components=2, perplexity=min(perplexity, (len(x) - 1) / 3), init="pca", random_state=seed,
                learning_rate="auto").fit_transform(x)


def plot_embedding_map(
    features: np.ndarray,
    labels: np.ndarray,
    path: str,
    max_points: int = 3000,
    class_names: Sequence[str] | None = None,
    title: str = "",
    seed: int = 0,
) -> np.ndarray:
    """Writes a t-SNE map of ``(N, D)`` features coloured by ``(N,)`` labels to ``path`` (PNG).
    Returns the ``(n, 2)`` coordinates of the plotted (subsampled) points."""
    labels = np.asarray(labels)
    rows = subsample_per_class(labels, max_points, seed)
    xy = embedding_2d(np.asarray(features)[rows], seed)
    fig = Figure(figsize=(7, 7))
    ax = fig.subplots()
    cmap = matplotlib.colormaps["tab10" if labels.max() < 10 else "tab20"]
    for c in np.unique(labels[rows]):
        mask = labels[rows] == c
        name = class_names[c] if class_names is not None and c < len(class_names) else str(c)
        ax.scatter(xy[mask, 0], xy[mask, 1], s=4, color=cmap(int(c) % cmap.N), label=name)
    ax.set_xticks([]), ax.set_yticks([])
    ax.set_title(title or f"t-SNE of {len(rows)} images")
    if len(np.unique(labels)) <= 20:
        ax.legend(markerscale=3, fontsize=7, loc="best")
    _save(fig, path)
    return xy


def embedding_map_of_cached_features(features_dir: str, split: str, path: str, layer: str = "res5",
                                     max_points: int = 3000, seed: int = 0) -> np.ndarray:
    """``plot_embedding_map`` of the ``split`` features ``extract_features`` wrote to ``features_dir``."""
    features = load_features(features_dir, split, (layer,))
    if features.labels is None:
        raise ValueError(f"{features_dir}: the {split!r} features have no labels to colour the map by")
    return plot_embedding_map(features.features[layer], features.labels, path, max_points,
                              title=f"t-SNE of {split} {layer} features", seed=seed)


def plot_sweep(rows: Sequence[dict], params: Sequence[str], path: str, log_scale: Sequence[str] = (),
               metric: str = "value") -> None:
    """One panel per swept parameter: ``metric`` of each finished trial against its value."""
    fig = Figure(figsize=(4 * len(params), 3.5))
    axes = fig.subplots(1, len(params), squeeze=False)
    done = [r for r in rows if r.get(metric) is not None]
    for ax, name in zip(axes[0], params):
        values = [r[name] for r in done]
        categorical = any(isinstance(v, str) for v in values)
        xs = [str(v) for v in values] if categorical else values
        ax.scatter(xs, [r[metric] for r in done], s=16)
        if name in log_scale and not categorical:
            ax.set_xscale("log")
        ax.set_xlabel(name), ax.set_ylabel("val top-1 (%)")
    fig.suptitle(f"{len(done)} finished trials")
    _save(fig, path)


def plot_series(series: dict[str, Sequence[tuple]], path: str, xlabel: str, ylabel: str, title: str = "",
                categorical: bool = False) -> None:
    """``{name: [(x, value), ...]}`` as one line per name (``categorical``: bars per x, in order)."""
    fig = Figure(figsize=(5.5, 3.5))
    ax = fig.subplots()
    for i, (name, points) in enumerate(series.items()):
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        if categorical:
            width = 0.8 / len(series)
            ax.bar(np.arange(len(xs)) + i * width, ys, width, label=name)
            ax.set_xticks(np.arange(len(xs)) + 0.4 - width / 2, [str(x) for x in xs])
        else:
            ax.plot(xs, ys, marker="o", label=name)
    ax.set_xlabel(xlabel), ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize=7, loc="best")
    _save(fig, path)


def _save(fig: Figure, path: str) -> None:
    fig.tight_layout()
    with PathManager.open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    logger.info("wrote %s", path)
