import hashlib

import numpy as np
import pytest

from training.data import SampleView
from training.retrieval_benchmark import (FMNIST_COUNTS, PHOTO_COPIES, benchmark_metrics, benchmark_part,
                                          bootstrap_ci, l2_normalise, query_ap_and_hit, retrieval_benchmark,
                                          split_originals)
from training.transforms import eval_transform
from zoo import UsageError
from zoo.photos import photo_paths
from zoo.registry import get_model_entry


def _digest(images) -> str:
    h = hashlib.sha256()
    for im in images:
        h.update(np.ascontiguousarray(im).tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Metrics on hand-worked rankings
# ---------------------------------------------------------------------------------------------

def test_query_ap_and_hit_by_hand():
    scores = np.array([0.9, 0.1, 0.5, 0.7])  # ranking: 0, 3, 2, 1
    assert query_ap_and_hit(scores, np.array([2])) == (pytest.approx(1 / 3), False)
    assert query_ap_and_hit(scores, np.array([0, 2])) == (pytest.approx((1 / 1 + 2 / 3) / 2), True)
    assert query_ap_and_hit(scores, np.array([1])) == (pytest.approx(1 / 4), False)
    # the database limited to items 1-3: the positive 2 now comes second, after 3
    assert query_ap_and_hit(scores, np.array([2]), np.array([False, True, True, True])) == (0.5, False)
    # ties count against the query: constant features rank the positive last
    assert query_ap_and_hit(np.zeros(3), np.array([0])) == (pytest.approx(1 / 3), False)
    with pytest.raises(UsageError, match="at least one positive"):
        query_ap_and_hit(scores, np.array([], dtype=int))


def test_benchmark_metrics_on_a_hand_made_case():
    # database rows point along 0, 45 and 90 degrees (the 45-degree row is not normalised yet)
    database = np.array([[1.0, 0.0], [3.0, 3.0], [0.0, 1.0]])
    queries = np.array([[1.0, 0.1],    # order 0, 1, 2: positive 0 at rank 1 -> AP 1, hit
                        [0.1, 1.0],    # order 2, 1, 0: positive 0 at rank 3 -> AP 1/3
                        [0.3, 1.0]])   # order 2, 1, 0: positives {1, 2} at ranks 2, 1 -> AP 1, hit
    positives = [np.array([0]), np.array([0]), np.array([1, 2])]
    m = benchmark_metrics(queries, database, positives, parts=["a", "a", "b"], bootstrap=200)
    assert m["map"] == pytest.approx(100 * (1 + 1 / 3 + 1) / 3)
    assert m["r1"] == pytest.approx(100 * 2 / 3)
    assert m["queries"] == 3
    assert m["parts"]["a"]["map"] == pytest.approx(100 * (1 + 1 / 3) / 2) and m["parts"]["a"]["r1"] == 50.0
    assert m["parts"]["b"] == {"map": 100.0, "map_ci": [100.0, 100.0], "r1": 100.0, "r1_ci": [100.0, 100.0],
                               "queries": 1}
    assert m["map_ci"][0] <= m["map"] <= m["map_ci"][1]
    # with the database split by part, query 1 ranks only rows 0 and 1: positive 0 second -> AP 1/2
    split = benchmark_metrics(queries, database, positives, parts=["a", "a", "b"], bootstrap=10,
                              database_parts=["a", "a", "b"])
    assert split["parts"]["a"]["map"] == pytest.approx(100 * (1 + 1 / 2) / 2)


def test_benchmark_metrics_rejects_mismatched_inputs():
    with pytest.raises(UsageError, match="features must be"):
        benchmark_metrics(np.zeros((2, 3)), np.zeros((4, 2)), [np.array([0])] * 2)
    with pytest.raises(UsageError, match="2 queries but 1 positive"):
        benchmark_metrics(np.ones((2, 2)), np.ones((4, 2)), [np.array([0])])
    with pytest.raises(UsageError, match="database_parts needs parts"):
        benchmark_metrics(np.ones((1, 2)), np.ones((2, 2)), [np.array([0])], database_parts=["a", "a"])


def test_l2_normalise_leaves_zero_rows_at_zero():
    out = l2_normalise(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])


def test_bootstrap_ci_contains_the_mean_is_seeded_and_shrinks_with_more_queries():
    rng = np.random.default_rng(0)
    hits = (rng.random(200) < 0.4).astype(float)
    lo, hi = bootstrap_ci(hits, 1000, seed=3)
    assert lo < hits.mean() < hi
    assert bootstrap_ci(hits, 1000, seed=3) == (lo, hi)
    # 200 Bernoulli(0.4) draws: the 95 % interval is about +-1.96 * sqrt(0.4 * 0.6 / 200) = +-0.068
    assert 0.10 < hi - lo < 0.17
    lo10, hi10 = bootstrap_ci(np.tile(hits, 10), 1000, seed=3)  # the same rate over 10x the queries
    assert lo10 < hits.mean() < hi10
    assert (hi10 - lo10) < 0.45 * (hi - lo)  # ~ 1/sqrt(10) as wide
    assert bootstrap_ci(np.full(50, 0.25), 100) == (0.25, 0.25)
    with pytest.raises(UsageError, match="bootstrap needs"):
        bootstrap_ci(np.zeros(0), 100)


# ---------------------------------------------------------------------------------------------
# The benchmark itself
# ---------------------------------------------------------------------------------------------

def test_split_originals_are_disjoint_sorted_and_seeded():
    a, b = split_originals(100, 30, 50, np.random.default_rng(0))
    assert len(a) == 30 and len(b) == 50 and not set(a) & set(b)
    assert list(a) == sorted(a) and list(b) == sorted(b)
    a2, _ = split_originals(100, 30, 50, np.random.default_rng(0))
    assert np.array_equal(a, a2)
    with pytest.raises(UsageError, match="exceed the 100 images"):
        split_originals(100, 60, 50, np.random.default_rng(0))


@pytest.fixture(scope="module")
def test_bench():
    return retrieval_benchmark("test")


@pytest.fixture(scope="module")
def val_bench():
    return retrieval_benchmark("val")


def test_test_benchmark_counts_and_parts(test_bench):
    b = test_bench
    originals, distractors = FMNIST_COUNTS["test"]
    photos = len(photo_paths())
    assert originals >= 1_000
    assert (b.part == "fmnist").sum() == originals and (b.part == "photos").sum() == photos * PHOTO_COPIES["test"]
    assert (b.database_part == "fmnist").sum() == originals + distractors
    assert (b.database_part == "photos").sum() == photos
    assert len(b.queries) == len(b.positives) == len(b.part)
    assert b.queries.labels == [int(p[0]) for p in b.positives]
    assert b.database.labels == list(range(len(b.database)))
    # every positive lies in its query's part of the database; each Fashion-MNIST original is the answer once
    assert all(b.database_part[p[0]] == part for p, part in zip(b.positives, b.part))
    fm = [int(p[0]) for p, part in zip(b.positives, b.part) if part == "fmnist"]
    assert len(set(fm)) == originals
    assert f"{originals:,} strongly distorted copies" in b.description
    assert f"{distractors:,} other test images" in b.description


def test_originals_and_distractors_are_distinct_images_and_copies_differ_from_originals(test_bench):
    b = test_bench
    fmnist_db = [im for im, part in zip(b.database.images, b.database_part) if part == "fmnist"]
    assert len({im.tobytes() for im in fmnist_db}) == len(fmnist_db)  # no image is both original and distractor
    for q in np.flatnonzero(b.part == "fmnist")[:200]:
        query, original = b.queries.images[q], b.database.images[b.positives[q][0]]
        assert query.shape == original.shape == (28, 28, 3) and query.dtype == np.uint8
        assert not np.array_equal(query, original)


def test_val_is_built_from_other_images_than_test(test_bench, val_bench):
    assert set(val_bench.part) == {"fmnist"} and len(val_bench.queries) == FMNIST_COUNTS["val"][0]
    assert len(val_bench.database) == sum(FMNIST_COUNTS["val"]) == sum(FMNIST_COUNTS["test"])
    test_images = {im.tobytes() for im in test_bench.database.images}
    assert not any(im.tobytes() in test_images for im in val_bench.database.images)
    assert "train images" in val_bench.description
    with pytest.raises(UsageError, match="split must be one of test, val"):
        retrieval_benchmark("train")


def test_benchmark_is_deterministic_per_seed_and_cached(test_bench):
    assert retrieval_benchmark("test") is test_bench
    fresh = retrieval_benchmark.__wrapped__("test", 0)
    assert _digest(fresh.queries.images) == _digest(test_bench.queries.images)
    assert _digest(fresh.database.images) == _digest(test_bench.database.images)
    other = retrieval_benchmark.__wrapped__("val", 1)
    assert _digest(other.queries.images) != _digest(retrieval_benchmark("val").queries.images)


def test_images_feed_a_grey_models_reference_preprocessing(test_bench):
    spec = get_model_entry("simclr_resnet_small_fmnist").input
    view = SampleView(test_bench.queries, eval_transform(spec))
    x, label, index = view[0]
    assert x.shape == (1, 32, 32) and label == int(test_bench.positives[0][0]) and index == 0
    photo = SampleView(test_bench.database, eval_transform(spec))[len(test_bench.database) - 1][0]
    assert photo.shape == (1, 32, 32)


def test_a_part_alone_scores_as_it_does_within_the_whole(test_bench):
    b = test_bench
    rng = np.random.default_rng(0)
    db_x = rng.normal(size=(len(b.database), 8))
    positive = np.array([p[0] for p in b.positives])
    q_x = db_x[positive] + rng.normal(scale=1.5, size=(len(positive), 8))  # noisy copies of the originals
    whole = benchmark_metrics(q_x, db_x, b.positives, b.part, bootstrap=100, database_parts=b.database_part)
    photos = benchmark_part(b, "photos")
    keep_q, keep_db = b.part == "photos", b.database_part == "photos"
    alone = benchmark_metrics(q_x[keep_q], db_x[keep_db], photos.positives, photos.part, bootstrap=100)
    assert alone["parts"]["photos"] == whole["parts"]["photos"]
    assert 0 < whole["parts"]["fmnist"]["map"] < 100
    assert len(photos.database) == keep_db.sum() and photos.database_part.tolist() == ["photos"] * keep_db.sum()
    with pytest.raises(UsageError, match="no part 'cifar'"):
        benchmark_part(b, "cifar")


# ---------------------------------------------------------------------------------------------
# The colour-photo models' held-out photos
# ---------------------------------------------------------------------------------------------

def test_heldout_and_training_photos_are_a_fixed_disjoint_split_of_the_shipped_photos():
    from zoo.photos import _SHIPPED, EXCLUDED_PHOTOS, HELDOUT_PHOTOS, TRAINING_PHOTOS

    shipped = [name for _, _, name in _SHIPPED]
    # fixed: the held-out photos are the colour models' test set and the quickstart's query
    assert HELDOUT_PHOTOS == ("astronaut", "chelsea", "coffee", "motorcycle_left")
    assert set(HELDOUT_PHOTOS).isdisjoint(TRAINING_PHOTOS) and set(EXCLUDED_PHOTOS).isdisjoint(TRAINING_PHOTOS)
    assert sorted(HELDOUT_PHOTOS + EXCLUDED_PHOTOS + TRAINING_PHOTOS) == sorted(shipped)
    assert len(TRAINING_PHOTOS) == 10
    assert all(_SHIPPED[shipped.index(n)][0] == "skimage" for n in HELDOUT_PHOTOS)  # always installed


def test_training_photos_data_never_crops_a_heldout_photo():
    from training.data import open_dataset
    from zoo.photos import HELDOUT_PHOTOS, training_photos

    data = open_dataset("training-photos")
    found = training_photos()
    assert 1 <= len(data.images) == len(found) and not set(found) & set(HELDOUT_PHOTOS)
    crop, label = SampleView(data, None, seed=0)[3][:2]
    assert tuple(crop.shape) == (3, 64, 64) and crop.dtype.is_floating_point is False and label == -1
    with pytest.raises(Exception, match="no held-out split"):
        open_dataset("training-photos", "test")


def test_photo_tiles_cut_each_photo_into_a_grid_of_equal_tiles():
    from training.retrieval_benchmark import photo_tiles

    photo = np.arange(300 * 450 * 3, dtype=np.uint32).reshape(300, 450, 3).astype(np.uint8)
    tiles = photo_tiles({"p": photo}, tiles=3, max_side=450)
    assert list(tiles) == [f"p@{r},{c}" for r in range(3) for c in range(3)]
    assert all(t.shape == (100, 150, 3) for t in tiles.values())
    np.testing.assert_array_equal(tiles["p@1,2"], photo[100:200, 300:450])
    assert max(photo_tiles({"p": photo}, tiles=2, max_side=225)["p@0,0"].shape[:2]) == 112


def test_raw_pixels_are_rgb_thumbnails_that_find_each_tile_itself():
    from training.retrieval_benchmark import photo_tiles, raw_pixels
    from zoo.photos import load_photo

    tiles = list(photo_tiles({"coffee": load_photo("coffee")}, tiles=2, max_side=128).values())
    x = raw_pixels(tiles, side=16)
    assert x.shape == (4, 16 * 16 * 3)
    metrics = benchmark_metrics(x, x, [np.array([i]) for i in range(4)])
    assert metrics["map"] == 100.0 and metrics["r1"] == 100.0
    assert not np.allclose(x[0], x[1])  # different tiles, different thumbnails
