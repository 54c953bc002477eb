"""bench/single_image_study.py: the README table of the single-image study from zoo eval JSON files."""

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "single_image_study.py"


def _module():
    spec = importlib.util.spec_from_file_location("single_image_study", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _report(per_layer, std, base, base_std=None):
    entry = {"protocol_id": "linear", "seeds": [0, 1, 2], "per_layer": per_layer, "per_layer_std": std,
             "baseline_per_layer": {"random-init": base}, "baseline_per_seed": {"random-init": [1.0, 2.0, 3.0]}}
    if base_std:
        entry["baseline_per_layer_std"] = {"random-init": base_std}
    return {"results": [{"protocol_id": "knn"}, entry]}


def test_rows_per_training_data_with_random_init_from_the_first_file(tmp_path):
    (tmp_path / "rotnet-1img.json").write_text(json.dumps(
        _report({"block1": 87.5, "block2": 86.0}, {"block1": 0.25, "block2": 1.0}, {"block1": 87.0, "block2": 86.7},
                {"block1": 0.5, "block2": 0.1})))
    (tmp_path / "rotnet-full.json").write_text(json.dumps(
        _report({"block1": 88.0, "block2": 89.0}, None, {"block1": 99.0, "block2": 99.0})))
    lines = _module().table(tmp_path).splitlines()
    assert lines[0] == "| RotNet: trained on | seeds | block1 | block2 |"
    assert lines[2] == "| 1 image (rocket) | 3 | 87.50 ± 0.25 | 86.00 ± 1.00 |"
    assert lines[3] == "| Fashion-MNIST (full data) | 3 | 88.00 | 89.00 |"  # no per-layer spread recorded
    assert lines[4] == "| random init | 3 | 87.00 ± 0.50 | 86.70 ± 0.10 |"
    assert len(lines) == 5  # no BiGAN or DeepCluster file: no table for them
