import hashlib
import json

import pytest
import torch

import zoo
from zoo import WeightsError
from zoo.checkpoint import CONFIG_NAME, WEIGHTS_NAME


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = zoo.create_model("rotnet_nin_fmnist")
    model.save_pretrained(tmp_path / "ckpt")
    return model.eval(), tmp_path / "ckpt"


def test_round_trip_is_bit_identical(saved):
    model, path = saved
    loaded = zoo.from_pretrained(path)
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        a, b = model.forward_features(x), loaded.forward_features(x)
    assert all(torch.equal(a[k], b[k]) for k in a)
    config = json.loads((path / CONFIG_NAME).read_text())
    assert config["name"] == "rotnet_nin_fmnist" and len(config["weights"]["sha256"]) == 64


def test_corrupt_truncated_and_mismatched_weights_are_refused(saved):
    _, path = saved
    weights = path / WEIGHTS_NAME
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="sha256"):
        zoo.from_pretrained(path)
    config = json.loads((path / CONFIG_NAME).read_text())
    config["weights"]["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()  # to reach the parser
    (path / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        zoo.from_pretrained(path)


def test_strict_load_names_missing_unexpected_and_misshapen_keys():
    from zoo.checkpoint import load_state_dict_strict

    model = zoo.create_model("rotnet_nin_fmnist")
    state = model.state_dict()
    with pytest.raises(WeightsError, match="missing key 'block1.0.0.weight'"):
        load_state_dict_strict(model, {k: v for k, v in state.items() if k != "block1.0.0.weight"}, "f")
    with pytest.raises(WeightsError, match="unexpected key 'head.weight'"):
        load_state_dict_strict(model, {**state, "head.weight": torch.zeros(1)}, "f")
    with pytest.raises(WeightsError, match=r"'block1.0.0.weight' has shape \(1,\)"):
        load_state_dict_strict(model, {**state, "block1.0.0.weight": torch.zeros(1)}, "f")


def test_saving_never_reads_the_working_directory(tmp_path, monkeypatch):
    # An installed zoo has no source tree: its cards show no results, whatever the current folder holds.
    import zoo.results

    monkeypatch.setattr(zoo.results, "source_cards_dir", lambda: None)
    results = tmp_path / "MODEL_CARDS" / "results"
    results.mkdir(parents=True)
    (results / "rotnet_nin_fmnist.json").write_text("not json")  # reading it would fail
    monkeypatch.chdir(tmp_path)
    zoo.create_model("rotnet_nin_fmnist").save_pretrained(tmp_path / "ckpt")
    assert zoo.from_pretrained(tmp_path / "ckpt").entry.name == "rotnet_nin_fmnist"
