"""hubconf.py: generated from the registry, imports only zoo, loads through real torch.hub."""

import ast
import importlib.util
import os
import subprocess
import sys

import pytest
import torch
from conftest import HANG_GUARD_S, ROOT
from hubtools import features, publishable_checkpoint, random_model

import zoo
from zoo.hub import publish

HUBCONF = ROOT / "hubconf.py"


def _load_hubconf():
    spec = importlib.util.spec_from_file_location("hubconf_under_test", HUBCONF)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hubconf_imports_nothing_but_zoo():
    for node in ast.walk(ast.parse(HUBCONF.read_text())):
        if isinstance(node, ast.Import):
            assert all(a.name.split(".")[0] == "zoo" for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module.split(".")[0] == "zoo"


def test_one_entrypoint_per_registry_model_with_its_numbers():
    hubconf = _load_hubconf()
    entrypoints = sorted(n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith("_"))
    assert entrypoints == zoo.list_models()  # what torch.hub.list shows
    doc = hubconf.rotnet_alexnet.__doc__
    assert "39.51 (VISSL MODEL_ZOO.md)" in doc and "54.4 (RotNet paper, abstract)" in doc and "pretrained" in doc
    assert "Weights: downloaded and converted on first use" in doc
    assert "sslzoo results: none yet" in hubconf.npid_resnet18.__doc__
    model = hubconf.rotnet_nin_fmnist(num_blocks=3)  # **kwargs reach the architecture
    assert model.feature_layers == ("block1", "block2", "block3")
    with pytest.raises(zoo.UsageError, match="bad arguments for architecture 'nin'"):
        hubconf.rotnet_nin_fmnist(num_blocks=2)
    for name in hubconf.dependencies:  # import names that exist
        assert importlib.util.find_spec(name) is not None, name


def test_hubconf_dependencies_cover_what_loading_imports():
    """Third-party imports of the modules a torch.hub load goes through are all declared."""
    loading_modules = ["__init__.py", "registry.py", "checkpoint.py", "hub.py", "cards.py", "preprocess.py",
                       "errors.py", "inspect.py", "fetch.py",  # pretrained=True may fetch and convert a release
                       *[f"backbones/{p.name}" for p in (ROOT / "zoo/backbones").glob("*.py")],
                       *[f"convert/{p.name}" for p in (ROOT / "zoo/convert").glob("*.py")]]
    third_party = set()
    for rel in loading_modules:
        for node in ast.walk(ast.parse((ROOT / "zoo" / rel).read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            third_party |= {n.split(".")[0] for n in names}
    third_party -= set(sys.stdlib_module_names) | {"zoo"}
    assert third_party <= set(_load_hubconf().dependencies), third_party


def test_torch_hub_load_from_another_project(tmp_path):
    """A project with its own `training` and `export` packages loads an sslzoo model through
    torch.hub (source="local", as from a clone) and gets the same features as from_pretrained."""
    model = random_model("rotnet_nin_fmnist", seed=5)
    publish(publishable_checkpoint(model, tmp_path / "ckpt", tmp_path / "cards"), "sslzoo/rotnet-nin-fmnist")
    torch.save({"state": model.state_dict(), "features": features(model)}, tmp_path / "expected.pt")

    project = tmp_path / "project"
    for package in ("training", "export"):
        (project / package).mkdir(parents=True)
        (project / package / "__init__.py").write_text(f"OWNER = 'the other project'\nNAME = {package!r}\n")
    script = f"""
import sys, torch
import training, export  # the project's own packages, imported first
model = torch.hub.load({str(ROOT)!r}, "rotnet_nin_fmnist", source="local", pretrained=True, trust_repo=True)
import zoo
assert zoo.__file__.startswith({str(ROOT)!r}), zoo.__file__
assert sys.modules["training"].OWNER == sys.modules["export"].OWNER == "the other project"
assert model.checkpoint_source.source == "local hub", model.checkpoint_source
expected = torch.load({str(tmp_path / 'expected.pt')!r})
sys.path.insert(0, {str(ROOT / 'tests')!r})
from hubtools import assert_same_features, features
state = model.state_dict()
assert list(state) == list(expected["state"]) and all(torch.equal(state[k], expected["state"][k]) for k in state)
assert_same_features(features(model), expected["features"])  # another process's forward: within summation order
print("same features")
"""
    env = {**os.environ, "PYTHONPATH": str(project)}  # the project, not sslzoo's checkout
    res = subprocess.run([sys.executable, "-c", script], cwd=project, env=env, capture_output=True, text=True,
                         timeout=HANG_GUARD_S)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == "same features"
