import numpy as np
import pytest
from PIL import Image

from zoo import UsageError
from zoo.retrieval import average_precision, copy_detection_set, rank_metrics, retrieval_metrics


def test_average_precision_by_hand():
    # relevant at ranks 1 and 3 of 4: (1/1 + 2/3) / 2
    assert average_precision(np.array([1, 0, 1, 0])) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(np.array([0, 0, 1])) == pytest.approx(1 / 3)
    assert average_precision(np.array([0, 0])) == 0.0


def test_rank_metrics_on_a_hand_made_case():
    db = np.array([[1, 0], [0, 1], [0.8, 0.6]], dtype=np.float32)
    q = np.array([[0, 1]], dtype=np.float32)  # sims: 0, 1, 0.6 -> ranking 1, 2, 0
    m = rank_metrics(q, db, np.array([0]), np.array([0, 1, 0]), ks=(1, 2))
    assert m["recall@1"] == 0.0 and m["recall@2"] == 1.0
    assert m["mAP"] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_leave_one_out_excludes_self_and_perfect_embeddings_score_one():
    groups = np.array([0, 0, 1, 1, 2, 2])
    emb = np.eye(3, dtype=np.float32)[groups]
    assert retrieval_metrics(emb, groups) == {"mAP": 1.0, "recall@1": 1.0, "recall@5": 1.0, "recall@10": 1.0}
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(6, 3)).astype(np.float32)
    assert retrieval_metrics(noise, groups)["mAP"] < 1.0
    with pytest.raises(UsageError, match="embeddings must be"):
        rank_metrics(np.zeros(3), np.zeros((2, 3)), groups, groups)


def test_copy_detection_set_is_deterministic_and_strongly_distorted():
    a, b = copy_detection_set(copies=3, seed=1), copy_detection_set(copies=3, seed=1)
    assert len(a.images) == len(a.groups) == len(a.names) and len(set(a.groups)) >= 12
    assert np.bincount(a.groups).tolist() == [4] * len(set(a.groups))
    assert all(np.array_equal(x, y) for x, y in zip(a.images, b.images)) and a.names == b.names
    original, copy = a.images[0], a.images[1]
    assert original.shape != copy.shape or np.abs(original.astype(int) - copy).mean() > 10
    # raw pixels are a weak baseline: downscaled thumbnails do not find every copy
    thumbs = np.stack([np.asarray(Image.fromarray(im).resize((8, 8))).ravel() for im in a.images]).astype(np.float32)
    thumbs -= thumbs.mean(1, keepdims=True)
    thumbs /= np.linalg.norm(thumbs, axis=1, keepdims=True)
    assert retrieval_metrics(thumbs, a.groups)["mAP"] < 0.9


def test_distortion_strengths_scale_the_steps_for_small_images():
    from zoo.retrieval import Strengths, distort

    rng = np.random.default_rng(0)
    image = np.zeros((28, 28, 3), np.uint8)
    image[::2] = 255  # stripes one pixel wide: any loss of resolution blurs them
    assert distort(image, rng, ["rotate"]).shape[0] > 28  # photos: the canvas grows to hold the rotation
    small = Strengths(rotate_degrees=(10, 10), rotate_expand=False, rescale=(0.5, 0.5))
    assert distort(image, rng, ["rotate"], small).shape == (28, 28, 3)
    rescaled = distort(image, rng, ["rescale"], small)
    assert rescaled.shape == image.shape and np.ptp(rescaled.astype(int)) < 128  # the stripes are gone
    with pytest.raises(UsageError, match="unknown distortion 'melt'"):
        distort(image, rng, ["melt"])


def test_copy_steps_draw_one_step_per_stage_and_sometimes_a_crop_first():
    from zoo.retrieval import COPY_STAGES, copy_steps

    rng = np.random.default_rng(0)
    chains = [copy_steps(rng) for _ in range(200)]
    assert {len(c) for c in chains} == {3, 4}
    assert all(c[-3] in COPY_STAGES[0] and c[-2] in COPY_STAGES[1] and c[-1] in COPY_STAGES[2] for c in chains)
    assert all(c[0] == "crop" for c in chains if len(c) == 4)
    two = [copy_steps(rng, (("flip",), ("jpeg", "blur")), extra_crop=0.0) for _ in range(50)]
    assert all(c[0] == "flip" and c[1] in ("jpeg", "blur") and len(c) == 2 for c in two)
