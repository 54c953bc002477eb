"""Shared clustering pieces: PCA-whitening, FAISS k-means with re-seeding, the uniform cluster sampler."""

import numpy as np
import pytest

from training.clustering import (cluster_size_log2_histogram, kmeans, pca_whiten_l2, reseed_empty_clusters,
                                 uniform_cluster_indices)
from training.evaluation import nmi


def test_pca_whiten_l2_gives_unit_rows_with_whitened_directions():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 8)) * np.array([10, 5, 3, 1, 1, 1, 1, 0.1])
    y = pca_whiten_l2(x, dim=4)
    assert y.shape == (2000, 4)
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, rtol=1e-5)
    # whitened before the L2 step: the 4 kept directions carry roughly equal energy
    energy = (y**2).mean(0)
    assert energy.max() / energy.min() < 1.3
    assert pca_whiten_l2(x, dim=256).shape == (2000, 8)  # dim capped at the feature dimension


def test_reseed_splits_a_cluster_into_the_empty_one():
    # two tight groups of 4 points, three centroids: the third sits far away and owns nothing
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1], [10, 10], [10, 11], [11, 10], [11, 11]], np.float32)
    centroids = np.array([[0.5, 0.5], [10.5, 10.5], [100, 100]], np.float32)
    assignments = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    new_c, new_a = reseed_empty_clusters(x, centroids, assignments, np.random.default_rng(1))
    counts = np.bincount(new_a, minlength=3)
    assert (counts > 0).all() and counts.sum() == 8
    # the new cluster took its points from exactly one donor, whose other points stayed put
    donor_group = new_a[:4] if 2 in new_a[:4] else new_a[4:]
    assert set(donor_group) <= {0, 2} or set(donor_group) <= {1, 2}
    assert np.linalg.norm(new_c[2]) < 20  # the re-seeded centroid moved next to its donor
    assert (assignments == [0, 0, 0, 0, 1, 1, 1, 1]).all()  # inputs untouched


def test_kmeans_reseeds_when_points_coincide():
    # 3 distinct points repeated: plain k-means can fill at most 3 of 5 clusters
    x = np.repeat(np.eye(3, dtype=np.float32), 7, axis=0)
    result = kmeans(x, 5, seed=0)
    assert result.reseeded >= 2
    assert (np.bincount(result.assignments, minlength=5) > 0).all()
    # clusters never mix distinct points
    for c in range(5):
        assert len({tuple(p) for p in x[result.assignments == c]}) == 1


def test_kmeans_recovers_separated_blobs():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 16)) * 10
    truth = np.repeat(np.arange(4), 50)
    x = centres[truth] + rng.standard_normal((200, 16))
    result = kmeans(x, 4, seed=3)
    assert nmi(result.assignments, truth) == pytest.approx(1.0)


def test_uniform_indices_draw_every_nonempty_cluster_equally_often():
    # very unbalanced clusters 0 (90 images), 3 (6 images) and 7 (4 images); the others empty
    labels = np.array([0] * 90 + [3] * 6 + [7] * 4)
    np.random.default_rng(0).shuffle(labels)
    drawn = uniform_cluster_indices(labels, num_samples=150, seed=5)
    assert len(drawn) == 150
    counts = np.bincount(labels[drawn], minlength=8)
    assert counts[[0, 3, 7]].tolist() == [50, 50, 50]
    assert counts.sum() == counts[[0, 3, 7]].sum()  # empty clusters are never drawn
    assert len(set(drawn[labels[drawn] == 0])) == 50  # a big cluster is drawn without repeats
    assert set(drawn[labels[drawn] == 7]) == set(np.flatnonzero(labels == 7))  # a small one with repeats
    # not a multiple: the cut after shuffling leaves counts within a few of each other
    counts = np.bincount(labels[uniform_cluster_indices(labels, seed=1)], minlength=8)[[0, 3, 7]]
    assert counts.sum() == 100 and counts.max() - counts.min() <= 4


def test_uniform_indices_depend_only_on_the_seed():
    labels = np.arange(50) % 5
    assert (uniform_cluster_indices(labels, seed=1) == uniform_cluster_indices(labels, seed=1)).all()
    assert (uniform_cluster_indices(labels, seed=1) != uniform_cluster_indices(labels, seed=2)).any()


def test_cluster_size_histogram_counts_clusters_in_doubling_bins():
    # cluster 0 holds 3 images, 1 holds 1, 2 holds 2, 3 and 4 none; -1 (unreadable) is left out
    assert cluster_size_log2_histogram([0, 0, 0, 1, 2, 2, -1], k=5) == [2, 1, 2]
    # one cluster of 1,024 images: bin 11 holds sizes 1,024..2,047
    assert cluster_size_log2_histogram([0] * 1024, k=1) == [0] * 11 + [1]
    assert cluster_size_log2_histogram([], k=3) == [3]
    # every cluster counted once, whatever the sizes
    sizes = np.random.default_rng(0).integers(0, 50, size=1000)
    assert sum(cluster_size_log2_histogram(sizes, k=50)) == 50
