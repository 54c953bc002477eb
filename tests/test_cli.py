import ast
import json

import pytest
from conftest import ROOT, run_zoo

from zoo import list_models
from zoo.quickstart import QUICKSTART_MODEL


def test_list_json_lists_every_model():
    res = run_zoo("list", "--json")
    assert res.returncode == 0, res.stderr
    assert [m["name"] for m in json.loads(res.stdout)] == list_models()


def test_list_takes_a_name_pattern_and_pretrained(capsys):
    from zoo.cli import main

    assert main(["list", "*resnet50*", "--json"]) == 0
    assert [m["name"] for m in json.loads(capsys.readouterr().out)] == list_models("*resnet50*")
    assert main(["list", "*_fmnist", "--pretrained", "--method", "rotnet"]) == 0
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:] if line.strip()]
    assert rows[0] == "rotnet_nin_fmnist" and rows[1] == "weights:"  # one model, then the legend
    assert main(["list", "--pretrained", "--json"]) == 0
    assert [m["name"] for m in json.loads(capsys.readouterr().out)] == list_models(pretrained=True)


def test_info_prints_input_spec_and_layer_shapes():
    res = run_zoo("info", "rotnet_nin_fmnist")
    assert res.returncode == 0, res.stderr
    assert "centre crop 32, grey" in res.stdout and "block4   32 x 4 x 4" in res.stdout
    data = json.loads(run_zoo("info", "deepcluster_alexnet", "--json").stdout)
    assert data["layers"]["conv1"] == [96, 55, 55] and data["input"]["sobel_in_model"] is True


def test_unknown_names_are_one_line_exit_2():
    for args, needle in ((("info", "rotnet_alexnt"), "did you mean 'rotnet_alexnet'"),
                         (("lst",), "did you mean 'list'")):
        res = run_zoo(*args)
        assert res.returncode == 2
        assert res.stderr.count("\n") == 1 and needle in res.stderr and "Traceback" not in res.stderr


def test_zoo_package_never_imports_training_or_export():
    for path in (ROOT / "zoo").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            assert not any(n.split(".")[0] in ("training", "export") for n in names), path


def test_quickstart_runs_on_shipped_photos(tmp_path):
    res = run_zoo("quickstart", "--fast", "--out", str(tmp_path / "qs"))
    assert res.returncode == 0, res.stderr
    assert "rotnet_nin_fmnist" in res.stdout and "summary" in res.stdout
    assert "ran on 4 real photos" in res.stdout
    assert "from_pretrained and torch.hub.load give bit-identical weights" in res.stdout
    summary = res.stdout[res.stdout.index("\nsummary\n"):].splitlines()[4:]
    stages = [line.split("  ")[0] for line in summary if line and not line.startswith("quickstart finished")]
    assert stages == ["backbones", "pretrained", "export", "extract", "index", "search", "train", "eval linear",
                      "eval knn", "publish+load"]  # what a user does first comes first
    pretrained = next(line for line in summary if line.startswith("pretrained"))
    assert f"{QUICKSTART_MODEL}: shipped weights" in pretrained and "offline" in pretrained
    search = next(line for line in summary if line.startswith("search"))
    # a held-out photo: the colour model never trained on it, and finds it
    assert "query astronaut: top hit " in search and "(the same photo)" in search, search


BAD_OPTIONS = [
    (("extract", "m.onnx", "a.jpg", "-o", "out", "--threads", "100000"), "'--threads': 100000 is not in the range"),
    (("extract", "m.onnx", "a.jpg", "-o", "out", "--batch-size", "0"), "'--batch-size'"),
    (("extract", "m.onnx", "a.jpg", "-o", "out", "--workers", "-1"), "'--workers'"),
    (("extract", "m.onnx", "a.jpg", "-o", ""), "'-o' / '--out': is empty"),
    (("index", "build", "emb", "-o", "ix", "--hnsw-m", "-5"), "'--hnsw-m': -5 is not in the range"),
    (("index", "build", "emb", "-o", "ix", "--hnsw-m", "0"), "'--hnsw-m': 0 is not in the range"),
    (("index", "build", "emb", "-o", "ix", "--whiten", "0"), "'--whiten': 0 is not in the range"),
    (("index", "build", "emb", "-o", "ix", "-k", "0"), "'--k': 0 is not in the range"),
    (("index", "build", "emb", "-o", "ix", "--recall", "0"), "'--recall'"),
    (("index", "build", "emb", "-o", ""), "is empty"),
    (("index", "build", "emb", "-o", "//"), "must not be the root folder"),
    (("search", "ix", "q.jpg", "-k", "0"), "'--k': 0 is not in the range"),
    (("serve", "ix", "--port", "0"), "'--port': 0 is not in the range"),
    (("serve", "ix", "--max-upload-mb", "0"), "'--max-upload-mb': 0.0 is not in the range"),
    (("export", "random:rotnet_nin_fmnist", "--onnx", "--opset", "99"), "'--opset': 99 is not in the range"),
    (("export", "random:rotnet_nin_fmnist", "--onnx", "-o", ""), "is empty"),
    (("train", "rotnet", "--recipe", "tiny", "--out", ""), "'--out': is empty"),
    (("eval", "random:rotnet_nin_fmnist", "--temperature", "0"), "'--temperature': 0.0 is not in the range"),
    (("publish", "ckpt", "--repo", "a/b", "--local-hub", ""), "'--local-hub': is empty"),
    (("list", "--method", "nosuch"), "unknown method 'nosuch'"),
    (("list", "resnet50"), "unknown model pattern 'resnet50'; did you mean"),
    # found by tests/test_cli_fuzz.py: each was accepted, or refused only after the model was opened
    (("export", "random:rotnet_nin_fmnist", "--onnx", "--batch-profile", "-1,32,128"), "--batch-profile needs 1 <="),
    (("export", "random:rotnet_nin_fmnist", "--onnx", "--layer", ""), "'--layer': is empty"),
    (("export", "random:rotnet_nin_fmnist", "--onnx", "-o", "/etc/hostname/m.onnx"), "'/etc/hostname' is not a folder"),
    (("extract", "random:rotnet_nin_fmnist", "", "-o", "out"), "an empty IMAGES argument"),
    (("extract", "random:rotnet_nin_fmnist", "a.jpg", "-o", "out", "--rank", "3", "--world-size", "2"),
     "rank 3 is outside 0..1"),
    (("train", "rotnet", "--recipe", "tiny", "--workers", "99999999999999999999"), "'--workers': 99999999999999999999"),
    (("train", "rotnet", "--recipe", ""), "'--recipe': is empty"),
    (("eval", "random:rotnet_nin_fmnist", "--protocol", ","), "names no protocol"),
    (("eval", "random:rotnet_nin_fmnist", "--seed", "-1"), "'--seed': -1 is not in the range"),
    (("quickstart", "--out", ""), "'--out': is empty"),
    (("results", "--cards-dir", "nosuch"), "'nosuch' does not exist"),
    (("fetch", "rotnet_alexnet", "--local-hub", ""), "'--local-hub': is empty"),
]


@pytest.mark.parametrize("args, needle", BAD_OPTIONS, ids=[" ".join(a[:2]) + " " + a[-2] for a, _ in BAD_OPTIONS])
def test_out_of_range_numbers_and_empty_outputs_are_one_line_errors(args, needle, tmp_path, monkeypatch, capsys):
    from zoo.cli import main

    monkeypatch.chdir(tmp_path)
    code = main(list(args))
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
    assert list(tmp_path.iterdir()) == []  # nothing written, in the current folder or elsewhere


def test_a_refused_training_run_leaves_no_empty_run_folder(tmp_path, monkeypatch, capsys):
    from zoo.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["train", "rotnet", "--recipe", "tiny", "--batch-size", "1000000"]) == 2
    err = capsys.readouterr().err
    assert "too small for batch size 1000000" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []  # no runs/rotnet-tiny left behind


def test_threads_out_of_range_from_the_environment_is_one_line(tmp_path):
    res = run_zoo("extract", "m.onnx", "a.jpg", "-o", str(tmp_path / "out"), env={"ZOO_THREADS": "640966"})
    assert res.returncode == 2 and "ZOO_THREADS='640966'" in res.stderr and res.stderr.count("\n") == 1


def test_an_index_of_no_vectors_is_refused_when_built(tmp_path, capsys):
    import numpy as np

    from zoo.cli import main
    from export.engines import OnnxRuntimeEngine
    from export.embedding import build_embedding_model, load_backbone
    from export.extract import extract
    from export.onnx_export import export_onnx

    backbone, weights = load_backbone("random:rotnet_nin_fmnist")
    onnx = export_onnx(*build_embedding_model(backbone, "rotnet_nin_fmnist", weights, layer="block1"), tmp_path / "m.onnx")
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    extract(OnnxRuntimeEngine(onnx), [tmp_path / "broken.jpg"], tmp_path / "emb", progress=False)
    assert np.load(tmp_path / "emb" / "embeddings.npy").shape[0] == 0
    assert main(["index", "build", str(tmp_path / "emb"), "-o", str(tmp_path / "ix")]) == 2
    err = capsys.readouterr().err
    assert "no embeddings to index" in err and err.count("\n") == 1 and not (tmp_path / "ix").exists()
