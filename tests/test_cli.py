import ast
import json
from pathlib import Path

from conftest import ROOT, run_zoo

from zoo import list_models
from zoo.quickstart import QUICKSTART_MODEL


def test_list_json_lists_every_model():
    res = run_zoo("list", "--json")
    assert res.returncode == 0, res.stderr
    assert [m["name"] for m in json.loads(res.stdout)] == list_models()


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
    assert "from_pretrained and torch.hub.load give bit-identical features" in res.stdout
    summary = res.stdout[res.stdout.index("\nsummary\n"):].splitlines()[4:]
    stages = [line.split("  ")[0] for line in summary if line and not line.startswith("quickstart finished")]
    assert stages == ["backbones", "pretrained", "export", "extract", "index", "search", "train", "eval linear",
                      "eval knn", "publish+load"]  # what a user does first comes first
    pretrained = next(line for line in summary if line.startswith("pretrained"))
    assert f"{QUICKSTART_MODEL}: shipped weights" in pretrained and "offline" in pretrained
