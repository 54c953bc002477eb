"""`--engine auto`: the choice given measurements, the cache key and cache, and one real extraction."""

import json

import numpy as np
import pytest

from conftest import run_zoo

from zoo.errors import ZooError

from export import autoselect
from export.autoselect import Choice, Measurement

INTEL = "model name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu sse avx2 avx512f amx_bf16 amx_int8\n"
AMD = "model name\t: AMD EPYC 7B13 64-Core Processor\nflags\t\t: fpu sse avx2\n"


def _m(name, speed, passed=True, cosine=0.999, drop=0.0, note=""):
    return Measurement(name, speed, cosine, drop, passed, note)


def test_the_fastest_candidate_that_passes_wins():
    ms = [_m("torch-cpu", 15.0), _m("onnxruntime-cpu", 30.0), _m("onnxruntime-cpu-int8", 83.0)]
    assert autoselect.choose(ms).name == "onnxruntime-cpu-int8"
    # the same numbers where int8 is slower (an AVX2-only CPU without VNNI): fp32 wins
    ms[2].images_per_second = 21.0
    assert autoselect.choose(ms).name == "onnxruntime-cpu"


def test_a_candidate_failing_accuracy_or_not_timed_is_excluded():
    ms = [_m("torch-cpu", 15.0), _m("onnxruntime-cpu", 30.0),
          _m("onnxruntime-cpu-int8", 83.0, passed=False, cosine=0.95, note="accuracy"),
          _m("torch-cpu-channels-last-bf16", None, note="too slow")]
    assert autoselect.choose(ms).name == "onnxruntime-cpu"
    with pytest.raises(ZooError, match="no engine passed the accuracy check.*int8: accuracy"):
        autoselect.choose([ms[2], ms[3]])


def test_the_accuracy_bound_on_real_embedding_geometry():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(12), 4)
    centres = rng.normal(size=(12, 64))
    ref = centres[groups] + 0.3 * rng.normal(size=(48, 64))
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    cosine, drop = autoselect.accuracy_against(ref, ref, groups)
    assert cosine == pytest.approx(1.0) and drop == 0.0
    assert autoselect.accuracy_passes(cosine, drop, len(groups))
    slightly = ref + 1e-3 * rng.normal(size=ref.shape)  # what int8 costs: passes
    assert autoselect.accuracy_passes(*autoselect.accuracy_against(ref, slightly, groups), len(groups))
    shuffled = ref[rng.permutation(len(ref))]  # a broken kernel: fails on both counts
    cosine, drop = autoselect.accuracy_against(ref, shuffled, groups)
    assert cosine < autoselect.MIN_COSINE and drop > autoselect.MAP_SLACK_QUERIES / len(groups)
    assert not autoselect.accuracy_passes(cosine, drop, len(groups))
    assert not autoselect.accuracy_passes(float("nan"), 0.0, len(groups))


def test_the_cache_key_changes_with_the_cpu_its_flags_the_versions_and_the_model():
    model = {"model": "sela_resnet50", "state_dict_sha256": "ab" * 32, "layer": "layer4"}
    versions = {"torch": "2.14.1", "onnxruntime": "1.24.1"}
    intel = {**autoselect.cpu_description(INTEL), "gpus": []}
    base = autoselect.key_digest(autoselect.cache_key(model, 32, 2, versions, intel))
    assert base == autoselect.key_digest(autoselect.cache_key(dict(model), 32, 2, dict(versions), dict(intel)))
    amd = {**autoselect.cpu_description(AMD), "gpus": []}
    no_amx = {**autoselect.cpu_description(INTEL.replace(" amx_bf16 amx_int8", "")), "gpus": []}  # a VM hiding AMX
    assert no_amx["cpu"] == intel["cpu"]
    others = [autoselect.cache_key(model, 32, 2, versions, amd), autoselect.cache_key(model, 32, 2, versions, no_amx),
              autoselect.cache_key(model, 32, 2, {**versions, "onnxruntime": "1.25.0"}, intel),
              autoselect.cache_key({**model, "state_dict_sha256": "cd" * 32}, 32, 2, versions, intel),
              autoselect.cache_key(model, 32, 1, versions, intel), autoselect.cache_key(model, 16, 2, versions, intel),
              autoselect.cache_key(model, 32, 2, versions, {**intel, "gpus": ["NVIDIA H200"]})]
    digests = {autoselect.key_digest(k) for k in others}
    assert base not in digests and len(digests) == len(others)


def test_the_cache_round_trips_and_refuses_another_key_or_a_damaged_file(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "cache"))
    key = autoselect.cache_key({"onnx_sha256": "ef" * 32}, 32, 2, {"torch": "2.14.1"}, autoselect.cpu_description(AMD))
    choice = Choice("onnxruntime-cpu", "onnxruntime-cpu", [_m("onnxruntime-cpu", 15.4), _m("onnxruntime-cpu-int8", 9.0)],
                    key=key, measured_at="2026-12-02T12:00:00Z")
    assert str(tmp_path / "cache" / "engine-choice") in autoselect.write_cached(choice)
    back = autoselect.read_cached(key)
    assert back.chosen == "onnxruntime-cpu" and back.measurements == choice.measurements
    assert autoselect.read_cached({**key, "threads": 1}) is None
    autoselect.cache_file(key).write_text("{not json")
    assert autoselect.read_cached(key) is None  # measured again, nothing lost


class _Fixed:
    """An engine whose embeddings are fixed rows (the selection logic needs nothing more)."""

    def __init__(self, name, rows):
        self.name, self.rows = name, rows

    def embed(self, batch):
        return self.rows[np.asarray(batch)[:, 0]]


def test_select_measures_then_uses_the_cache_opening_only_the_winner(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(6), 4)
    rows = np.eye(6)[groups] + 0.2 * rng.normal(size=(24, 6))
    images = np.arange(24)[:, None]
    opened = []

    def candidate(name, emb):
        return lambda: opened.append(name) or _Fixed(name, emb)

    candidates = {"reference": candidate("reference", rows), "close": candidate("close", rows + 1e-4),
                  "broken": candidate("broken", rows[::-1].copy())}
    key = autoselect.cache_key({"model": "made-up"}, 8, 1, {}, autoselect.cpu_description(AMD))
    engine, choice, line = autoselect.select(candidates, key, images[:8], lambda: (images, groups), rounds=1)
    by_name = {m.name: m for m in choice.measurements}
    assert not by_name["broken"].passed and by_name["broken"].images_per_second is None
    assert "accuracy" in by_name["broken"].note and "excluded broken" in line
    assert engine.name == choice.chosen in ("reference", "close") and "measured now; cached in" in line
    opened.clear()
    again, cached, line = autoselect.select(candidates, key, images[:8], lambda: (images, groups))
    assert opened == [choice.chosen] and cached.chosen == choice.chosen and "[cached " in line
    opened.clear()
    autoselect.select(candidates, key, images[:8], lambda: (images, groups), rounds=1, remeasure=True)
    assert opened == ["reference", "close", "broken"]


def test_extract_with_engine_auto_measures_says_what_it_chose_and_caches_it(tmp_path):
    from zoo.photos import photo_paths

    photos = [str(p) for p in list(photo_paths().values())[:3]]
    cache = tmp_path / "cache"
    res = run_zoo("extract", "random:rotnet_nin_fmnist", *photos, "-o", str(tmp_path / "emb"), "--batch-size", "4",
                  "--engine", "auto", "--measure-rounds", "1", "--no-progress", env={"ZOO_CACHE": str(cache), "ZOO_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.startswith("engine auto: chose ")]
    assert len(lines) == 1 and "measured now; cached in" in lines[0], res.stderr
    [cached] = (cache / "engine-choice").glob("*.json")
    record = json.loads(cached.read_text())
    meta = json.loads((tmp_path / "emb" / "meta.json").read_text())
    assert record["chosen"] == meta["engine"] and lines[0].startswith(f"engine auto: chose {meta['engine']} (")
    names = [m["name"] for m in record["measurements"]]
    assert names[:2] == ["torch-cpu", "onnxruntime-cpu"] and "onnxruntime-cpu-int8" in names
    assert record["key"]["model"]["model"] == "rotnet_nin_fmnist" and record["key"]["threads"] == 1
    assert all(m["images_per_second"] or m["note"] for m in record["measurements"])
    assert (tmp_path / "emb" / "model.onnx").is_file() and meta["count"] == 3


def test_extract_keeps_the_onnx_file_its_engine_ran_for_zoo_search(tmp_path):
    from types import SimpleNamespace

    from export.cli import _model_file_to_keep

    given, exported, int8 = tmp_path / "r50.onnx", tmp_path / "work" / "model.onnx", tmp_path / "work" / "model-int8.onnx"
    assert _model_file_to_keep(str(given), SimpleNamespace(path=given), exported) is None  # it is the file given
    assert _model_file_to_keep(str(given), SimpleNamespace(path=int8), exported) == int8  # auto chose int8
    assert _model_file_to_keep("sela_resnet50", SimpleNamespace(), exported) is None  # eager, nothing exported
    exported.parent.mkdir()
    exported.write_bytes(b"onnx")
    assert _model_file_to_keep("sela_resnet50", SimpleNamespace(), exported) == exported  # auto chose eager
