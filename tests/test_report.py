"""`zoo report`: pictures of a real tiny run and of a shipped model, and one HTML page that shows them."""

import re
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from training.engine import fit
from training.methods import get_recipe, method_module
from training.report import filter_tiles, grid_database, size_bin_labels, top_hits
from zoo.cli import main


def _picture(path):
    """The decoded PNG as an array; it must hold a drawing, not one flat colour."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        pixels = np.asarray(image.convert("L"), dtype=np.float32)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100 and pixels.std() > 10
    return pixels


def _page_pictures(out):
    return re.findall(r'<img src="([^"]+)"', (out / "index.html").read_text(encoding="utf-8"))


def test_report_of_a_tiny_deepcluster_run_draws_its_curves_clusters_filters_and_hits(tmp_path, capsys):
    recipe = get_recipe("deepcluster", "tiny").replace(limit=64, batch_size=16, epochs=2, checkpoint_every=0)
    fit(method_module("deepcluster").METHOD, recipe, tmp_path / "run", progress=False)
    out = tmp_path / "report"
    assert main(["report", str(tmp_path / "run"), "-o", str(out)]) == 0
    said = capsys.readouterr().out
    drawn = ["training_curves.png", "clustering.png", "conv1_filters.png", "retrieval_grid.png"]
    for name in drawn:
        _picture(out / name)
    assert _page_pictures(out) == drawn
    # no recorded results were measured on these fresh weights: one line says so, and the page lists it
    assert re.search(r"skipped per-layer evaluation: .*measured on other weights", said)
    assert "Not drawn" in (out / "index.html").read_text(encoding="utf-8")


def test_report_of_a_shipped_model_draws_its_recorded_probes_and_skips_what_it_lacks(tmp_path, capsys):
    out = tmp_path / "sela"
    assert main(["report", "sela_resnet_small_fmnist", "-o", str(out), "--parts", "curves,probes,filters"]) == 0
    said = capsys.readouterr().out
    assert _page_pictures(out) == ["probe_curves.png", "conv1_filters.png"]
    for name in _page_pictures(out):
        _picture(out / name)
    assert "skipped training curves: no metrics.jsonl" in said


def test_without_matplotlib_report_says_so_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    assert main(["report", "sela_resnet_small_fmnist", "-o", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'sslzoo[report]'" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("args, message", [
    (["sela_resnet_small_fmnist"], "-o DIR is required"),
    (["--all", "-o", "x"], "leave out -o"),
    ([], "give a MODEL"),
    (["sela_resnet_small_fmnist", "-o", "x", "--parts", "filters,colours"], "choose from curves"),
])
def test_bad_report_arguments_are_one_line_errors(args, message, capsys):
    assert main(["report", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_grid_database_keeps_the_originals_and_draws_the_rest():
    picked = grid_database([7, 3, 7], total=1000, size=50, seed=0)
    assert len(picked) == 50 == len(set(picked.tolist())) and {3, 7} <= set(picked.tolist())
    assert (np.diff(picked) > 0).all() and picked.max() < 1000
    assert grid_database([1], total=20, size=50).tolist() == list(range(20))


def test_top_hits_rank_by_cosine_and_filters_scale_to_mid_grey():
    database = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    order, sims = top_hits(np.array([[0.0, 5.0]]), database, hits=2)
    assert order.tolist() == [[1, 2]] and np.allclose(sims, [[1.0, np.sqrt(0.5)]])
    tiles = filter_tiles(torch.tensor([[[[-2.0, 0.0], [1.0, 2.0]]]]))  # one grey 2x2 filter
    assert tiles.shape == (1, 2, 2, 3) and tiles[0, :, :, 0].tolist() == [[0.0, 0.5], [0.75, 1.0]]
    assert filter_tiles(torch.randn(4, 3, 5, 5)).shape == (4, 5, 5, 3)  # RGB filters stay RGB
    assert filter_tiles(torch.randn(4, 2, 3, 3)).shape == (4, 3, 6, 3)  # two channels side by side
    assert size_bin_labels(4) == ["0", "1", "2-3", "4-7"]


def test_results_of_other_weights_are_refused(tmp_path, capsys):
    other = tmp_path / "other.json"
    other.write_text('{"model": "sela_resnet_small_fmnist", "weights_sha256": "' + "0" * 64 + '", "results": []}')
    assert main(["report", "sela_resnet_small_fmnist", "-o", str(tmp_path / "r"), "--results", str(other)]) == 2
    assert "measured on other weights" in capsys.readouterr().err
