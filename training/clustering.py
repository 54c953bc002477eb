"""Clustering pieces shared by the clustering methods (DeepCluster, DeeperCluster) and evaluation.

DeepCluster (Caron et al. 2018) turns the features of the whole training set into pseudo-labels:
PCA to 256 dimensions with whitening, L2 normalisation, k-means with FAISS, and a sampler that
draws every cluster equally often so that one huge cluster cannot dominate an epoch. When k-means
leaves a cluster empty, the paper splits a random non-empty cluster in two (its centroid and a
slightly perturbed copy) and shares that cluster's points between them; ``reseed_empty_clusters``
does exactly that, so every one of the k pseudo-classes has at least one image.

NMI and Hungarian accuracy live in ``training.evaluation`` (``nmi``, ``hungarian_accuracy``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss
import numpy as np

from training.features import deepest_feature_dim, deepest_features  # noqa: F401  (what the clustering methods read)


# ------------------------------------------------------------------------------------------
# Features -> pseudo-labels
# ------------------------------------------------------------------------------------------

def pca_whiten_l2(features: np.ndarray, dim: int = 256) -> np.ndarray:
    """PCA to ``dim`` dimensions with whitening (eigenvalue power -1/2), then L2-normalised rows.

    ``dim`` is capped at the feature dimension (small networks have fewer than 256 features).
    """
    x = np.ascontiguousarray(features, dtype=np.float32)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need a (N >= 2, D) feature matrix, got shape {x.shape}")
    dim = min(dim, x.shape[1])
    pca = faiss.PCAMatrix(x.shape[1], dim, -0.5)
    # A tiny floor on the eigenvalues keeps whitening finite for directions with no variance.
    pca.epsilon = 1e-6 * float(np.var(x, axis=0).sum() + 1e-12)
    pca.train(x)
    y = pca.apply(x)
    return y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)


@dataclass
class KMeansResult:
    assignments: np.ndarray  # (N,) int64 cluster id per point, every id in [0, k) used
    centroids: np.ndarray  # (k, D) float32
    loss: float  # k-means objective (sum of squared distances) of the last FAISS iteration
    reseeded: int  # how many empty clusters were re-seeded after FAISS


def kmeans(x: np.ndarray, k: int, niter: int = 20, seed: int = 0, all_points: bool = True) -> KMeansResult:
    """Lloyd's k-means with FAISS, the one k-means of training and evaluation.

    ``all_points=True`` (the clustering methods): trained on every point (no subsampling), then
    empty clusters re-seeded (``reseed_empty_clusters``). ``all_points=False`` (the ``cluster``
    evaluation protocol): FAISS's defaults, which train on at most 256 points per centroid, and
    empty clusters stay empty (``empty_before`` still counts them).
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= number of points ({n}), got k={k}")
    clus = faiss.Clustering(d, k)
    clus.niter = niter
    clus.seed = int(seed)
    if all_points:
        clus.max_points_per_centroid = max(n, 1)  # DeepCluster clusters every point, no sampling
        clus.min_points_per_centroid = 1  # silences FAISS's warning for small k-means
    index = faiss.IndexFlatL2(d)
    clus.train(x, index)
    centroids = faiss.vector_to_array(clus.centroids).reshape(k, d).copy()
    _, nearest = index.search(x, 1)
    stats = clus.iteration_stats
    loss = float(stats.at(stats.size() - 1).obj) if stats.size() else float("nan")
    assignments = nearest[:, 0].astype(np.int64)
    empty_before = k - len(np.unique(assignments))
    if all_points:
        centroids, assignments = reseed_empty_clusters(x, centroids, assignments, np.random.default_rng(seed))
    return KMeansResult(assignments, centroids, loss, empty_before)


def reseed_empty_clusters(x: np.ndarray, centroids: np.ndarray, assignments: np.ndarray,
                          rng: np.random.Generator, perturbation: float = 1e-3,
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Give every empty cluster points by splitting a random non-empty cluster in two.

    As in DeepCluster: the empty cluster takes the donor's centroid plus a small random
    perturbation, the donor keeps its centroid minus it, and the donor's points go to whichever of
    the two is nearer. If the split still leaves one side empty (the donor's points coincide), one
    donor point moves over, so each cluster ends non-empty whenever there are at least k points.
    Returns new ``(centroids, assignments)``; the inputs are not modified.
    """
    centroids = np.array(centroids, dtype=np.float32, copy=True)
    assignments = np.array(assignments, dtype=np.int64, copy=True)
    k = len(centroids)
    if len(x) < k:
        raise ValueError(f"cannot fill {k} clusters with {len(x)} points")
    counts = np.bincount(assignments, minlength=k)
    for empty in np.flatnonzero(counts == 0):
        donors = np.flatnonzero(counts > 1)
        donor = int(rng.choice(donors, p=counts[donors] / counts[donors].sum()))
        members = np.flatnonzero(assignments == donor)
        scale = perturbation * max(float(np.abs(centroids[donor]).mean()), 1e-6)
        delta = rng.standard_normal(centroids.shape[1]).astype(np.float32) * scale
        base = centroids[donor].copy()
        centroids[empty], centroids[donor] = base + delta, base - delta
        d_new = ((x[members] - centroids[empty]) ** 2).sum(1)
        d_old = ((x[members] - centroids[donor]) ** 2).sum(1)
        to_new = d_new < d_old
        if to_new.all() or not to_new.any():
            to_new[:] = False
            to_new[rng.integers(len(members))] = True
            centroids[empty] = x[members[to_new]][0]
            centroids[donor] = base
        assignments[members[to_new]] = empty
        counts[empty], counts[donor] = int(to_new.sum()), int((~to_new).sum())
    return centroids, assignments


# ------------------------------------------------------------------------------------------
# Sampling uniformly over pseudo-labels
# ------------------------------------------------------------------------------------------

def uniform_cluster_indices(assignments, num_samples: int | None = None, seed: int | tuple[int, ...] = 0) -> np.ndarray:
    """Dataset indices for one epoch, every non-empty cluster drawn equally often (DeepCluster).

    Each non-empty cluster contributes ``ceil(num_samples / clusters)`` of its images, drawn
    without replacement when it has enough and with replacement otherwise; the pooled list is
    shuffled and cut to ``num_samples`` (default: as many as there are images). When
    ``num_samples`` is a multiple of the number of non-empty clusters, every cluster appears
    exactly equally often. The draw depends only on ``seed`` (the engine passes seed and epoch).
    """
    labels = np.asarray(assignments, dtype=np.int64)
    order = np.argsort(labels, kind="stable")
    _, starts = np.unique(labels[order], return_index=True)
    members = np.split(order, starts[1:])  # one index array per non-empty cluster
    num_samples = len(labels) if num_samples is None else int(num_samples)
    rng = np.random.default_rng(seed)
    per_cluster = math.ceil(num_samples / len(members))
    pooled = np.concatenate([rng.choice(m, per_cluster, replace=len(m) < per_cluster) for m in members])
    rng.shuffle(pooled)
    return pooled[:num_samples]


# ------------------------------------------------------------------------------------------
# What the clustering methods log each epoch: how the images spread over the clusters
# ------------------------------------------------------------------------------------------

CLUSTER_SIZES_KEY = "cluster_size_log2_hist"


def cluster_size_log2_histogram(assignments, k: int) -> list[int]:
    """How many of the ``k`` clusters hold how many images, in doubling bins: entry 0 counts the
    empty clusters, entry i >= 1 those holding ``2**(i-1)`` to ``2**i - 1`` images. A few dozen
    numbers at any k (a per-cluster list at k = 10,000 would swell metrics.jsonl), enough to see
    a collapse into a few huge clusters. Images with a negative id (unreadable) are left out."""
    labels = np.asarray(assignments, dtype=np.int64)
    sizes = np.bincount(labels[labels >= 0], minlength=k)[:k]
    bit_lengths = np.frexp(sizes.astype(np.float64))[1]  # 0 -> 0, 1 -> 1, 2..3 -> 2, 4..7 -> 3, ...
    return np.bincount(bit_lengths, minlength=1).tolist()
