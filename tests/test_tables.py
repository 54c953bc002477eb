"""`zoo results`: the README's results and ranking tables come from the results files."""

from __future__ import annotations

import json

import pytest
from conftest import run_zoo

from zoo import tables
from zoo.registry import LinearReference, PaperResult


def _result(protocol, metric, value, std, base, base_std, beats):
    return {"task": "image-classification", "dataset": "Fashion-MNIST", "split": "test", "metric": metric,
            "protocol_id": protocol, "protocol": "fixture", "command": "pytest", "value": value, "std": std,
            "seeds": [0, 1, 2], "per_seed": [value - std, value, value + std], "baseline": {"random-init": base}, "baseline_std": {"random-init": base_std},
            "beats_baseline": beats}


def _write(cards, name, results):
    path = cards / "results" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"model": name, "weights_sha256": "0" * 64, "results": results}))


@pytest.fixture
def cards(tmp_path):
    _write(tmp_path, "simclr_resnet_small_fmnist", [_result("knn", "top-1", 74.0, 0.3, 66.0, 0.4, True),
                                                    _result("linear-pool", "top-1", 80.0, 0.5, 60.0, 1.0, True)])
    _write(tmp_path, "npid_resnet_small_fmnist", [_result("knn", "top-1", 66.5, 0.3, 66.0, 0.4, False),
                                                  _result("linear-pool", "top-1", 70.0, 0.5, 60.0, 1.0, True)])
    _write(tmp_path, "byol_resnet_small_fmnist", [_result("knn", "top-1", 75.0, 0.3, 66.0, 0.4, True),
                                                  _result("linear-pool", "top-1", 85.0, 0.5, 60.0, 1.0, True)])
    _write(tmp_path, "proxynca_resnet_small_fmnist", [_result("linear-pool", "top-1", 90.0, 0.1, 60.0, 1.0, True)])
    return tmp_path


def test_results_table_shows_mean_std_bold_winners_and_one_baseline_row(cards):
    table = tables.results_table(cards)
    lines = table.splitlines()
    assert lines[0].startswith("| model | seeds | kNN top-1 | pooled linear top-1")
    npid = next(line for line in lines if line.startswith("| npid_"))
    assert "| 66.50 ± 0.30 |" in npid and "**70.00 ± 0.50**" in npid  # not bold: within 2 std of random init
    assert sum(line.startswith("| random init (resnet_small)") for line in lines) == 1
    assert "66.00 ± 0.40" in lines[-1] and "60.00 ± 1.00" in lines[-1]
    assert tables.beats_count(cards) == {"knn": (2, 3), "linear-pool": (4, 4)}


def test_kendall_tau_by_hand():
    assert tables.kendall_tau([1, 2, 3, 4], [10, 20, 30, 40])[0] == pytest.approx(1.0)
    assert tables.kendall_tau([1, 2, 3, 4], [40, 30, 20, 10])[0] == pytest.approx(-1.0)
    # one discordant pair of six: (5 - 1) / 6
    assert tables.kendall_tau([1, 2, 3, 4], [1, 2, 4, 3])[0] == pytest.approx(4 / 6)


def test_ranking_puts_paper_and_ours_side_by_side_and_says_what_is_left_out(cards, monkeypatch):
    def ref(value):
        return LinearReference(PaperResult("image-classification", "ImageNet-1k", "top-1", value, "ResNet-50 linear",
                                           "paper", url="https://arxiv.org/abs/0000.00000"))

    paper = {"simclr": ref(69.3), "npid": ref(54.0), "byol": ref(74.3),
             "proxynca": LinearReference(None, "supervised metric learning: no ImageNet linear probe")}
    monkeypatch.setattr("zoo.registry.IMAGENET_LINEAR_REFERENCE", paper)
    rows, left_out = tables.ranking_rows("linear-pool", "top-1", cards)
    assert [r.method for r in rows] == ["byol", "simclr", "npid"]
    assert left_out == ["proxynca: supervised metric learning: no ImageNet linear probe"]
    text = tables.ranking_table(cards_dir=cards)
    assert "| byol | 74.3 (ResNet-50 linear; paper) | 85.00 ± 0.50 | 75.00 ± 0.30 |" in text
    assert "Kendall's tau, paper vs ours (pooled linear, 3 methods): +1.00" in text
    assert "Kendall's tau, paper vs ours (kNN, 3 methods): +1.00" in text


def test_cli_prints_the_tables(cards):
    res = run_zoo("results", "--cards-dir", str(cards))
    assert res.returncode == 0, res.stderr
    assert "| simclr_resnet_small_fmnist | 3 | **74.00 ± 0.30** |" in res.stdout
    assert "beat random init by more than two standard deviations: knn 2 of 3; linear-pool 4 of 4" in res.stdout
