"""Resolution (local folder -> local hub -> Hugging Face), publishing and strict loading."""

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import HANG_GUARD_S, ROOT
from hubtools import (
    FIXTURE_VALUE, assert_same_features, assert_same_weights, edit_config, features, lay_out_hf_cache,
    publishable_checkpoint, random_model, rewrite_weights,
)

import zoo
from zoo import UsageError, WeightsError, WeightsNotAvailableError, ZooError
from zoo.backbones import ARCHITECTURES
from zoo.checkpoint import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME
from zoo.cli import main as zoo_main
from zoo.hub import CHECKPOINT_FILES, LocalHub, publish, snapshot_id_of

REPO = "sslzoo/rotnet-nin-fmnist"  # the registry repo of rotnet_nin_fmnist
# A registry repo with no shipped weights, so that the Hugging Face cache is where loading ends up.
HF_MODEL, HF_REPO = "rotnet_nin_cifar10", "sslzoo/rotnet-nin-cifar10"


def _smallest_model_per_architecture() -> dict[str, str]:
    with torch.device("meta"):
        sizes = {n: sum(p.numel() for p in zoo.create_model(n).parameters()) for n in zoo.list_models()}
    smallest = {}
    for name in sorted(sizes, key=sizes.get):
        smallest.setdefault(zoo.get_model_entry(name).arch, name)
    return smallest


SMALLEST = _smallest_model_per_architecture()


def test_every_architecture_has_a_registry_model():
    assert set(SMALLEST) == set(ARCHITECTURES)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_round_trip_through_local_hub_is_bit_identical(arch, tmp_path, isolated_hubs):
    name = SMALLEST[arch]
    model = random_model(name)
    repo = zoo.get_model_entry(name).weights.hub_repo
    ckpt = publishable_checkpoint(model, tmp_path / "ckpt", tmp_path / "cards")
    publish(ckpt, repo)  # into $ZOO_HUB
    shutil.rmtree(ckpt)  # the hub holds its own copy

    loaded = zoo.from_pretrained(repo)
    assert loaded.checkpoint_source.source == "local hub"
    assert loaded.checkpoint_source.path.parent.parent.parent == isolated_hubs / "zoo-hub"
    assert_same_weights(model, loaded)
    assert_same_features(features(model), features(loaded))
    # Loaded weights stay trainable (fine-tuning), the fixed Sobel front end stays frozen.
    assert all(p.requires_grad != n.startswith("sobel.") for n, p in loaded.named_parameters())


def test_save_pretrained_writes_config_weights_and_card(tmp_path):
    model = random_model("rotnet_nin_fmnist")
    model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == sorted(CHECKPOINT_FILES)
    card = (tmp_path / "ckpt" / CARD_NAME).read_text()
    config = json.loads((tmp_path / "ckpt" / CONFIG_NAME).read_text())
    assert config["weights"]["sha256"] in card and "library_name: sslzoo" in card
    # rotnet_nin_fmnist has recorded results, but for the trained weights, not these random ones
    assert "No sslzoo results for these weights yet" in card
    other = random_model("rotnet_nin_cifar10")  # a converted release: sslzoo records no results for it
    other.save_pretrained(tmp_path / "other")
    assert "No sslzoo results yet" in (tmp_path / "other" / CARD_NAME).read_text()


def test_publish_keeps_revisions_and_pins_snapshots(tmp_path):
    cards = tmp_path / "cards"
    first, second = random_model("rotnet_nin_fmnist", seed=1), random_model("rotnet_nin_fmnist", seed=2)
    a = publishable_checkpoint(first, tmp_path / "a", cards)
    b = publishable_checkpoint(second, tmp_path / "b", cards)
    hub = LocalHub()
    v1 = publish(a, REPO, revision="v1")
    assert publish(a, REPO).version == v1.version  # same content, same snapshot: no second copy
    publish(b, REPO)
    assert hub.revisions(REPO) == {"main": snapshot_id_of(b), "v1": v1.version}
    assert len(list((hub.repo_dir(REPO) / "snapshots").iterdir())) == 2

    assert_same_features(features(zoo.from_pretrained(REPO)), features(second))
    assert_same_features(features(zoo.from_pretrained(REPO, revision="v1")), features(first))
    assert_same_features(features(zoo.from_pretrained(REPO, revision=v1.version)), features(first))
    with pytest.raises(WeightsNotAvailableError, match="v2"):
        zoo.from_pretrained(REPO, revision="v2")
    (hub.repo_dir(REPO) / "refs" / "v1").write_text("../../../elsewhere")
    with pytest.raises(WeightsError, match="refs/v1 is damaged"):
        zoo.from_pretrained(REPO, revision="v1")


@pytest.mark.parametrize("failure", ["copy", "ref"])
def test_failed_or_interrupted_publish_leaves_previous_version(tmp_path, monkeypatch, failure):
    import zoo.hub as hub_module

    cards = tmp_path / "cards"
    old, new = random_model("rotnet_nin_fmnist", seed=1), random_model("rotnet_nin_fmnist", seed=2)
    publish(publishable_checkpoint(old, tmp_path / "old", cards), REPO)
    new_dir = publishable_checkpoint(new, tmp_path / "new", cards)
    hub = LocalHub()
    before = hub.revisions(REPO)

    if failure == "copy":  # Ctrl-C half way through copying the weights
        real_copy = shutil.copyfile

        def interrupted_copy(src, dst):
            if Path(src).name == WEIGHTS_NAME:
                Path(dst).write_bytes(Path(src).read_bytes()[:1000])
                raise KeyboardInterrupt
            return real_copy(src, dst)

        monkeypatch.setattr(hub_module.shutil, "copyfile", interrupted_copy)
        with pytest.raises(KeyboardInterrupt):
            publish(new_dir, REPO)
    else:  # the disk fills up when the ref is rewritten
        def full_disk(path, text):
            raise OSError(28, "No space left on device", str(path))

        monkeypatch.setattr(hub_module, "atomic_write_text", full_disk)
        with pytest.raises(OSError):
            publish(new_dir, REPO)

    assert hub.revisions(REPO) == before
    assert not (hub.repo_dir(REPO) / ".incoming").exists()  # nothing left behind, not even the folder
    assert_same_features(features(zoo.from_pretrained(REPO)), features(old))


def test_hf_offline_cache_loads_through_huggingface_hub(tmp_path):
    """The real huggingface_hub code path, configured only through the environment."""
    model = random_model(HF_MODEL, seed=3)
    model.save_pretrained(tmp_path / "ckpt")
    commit = "0123456789abcdef0123456789abcdef01234567"
    lay_out_hf_cache(tmp_path / "hf-cache", HF_REPO, tmp_path / "ckpt", commit)
    torch.save(features(model), tmp_path / "expected.pt")
    script = f"""
import torch, zoo
from hubtools import assert_same_features, features
expected = torch.load({str(tmp_path / 'expected.pt')!r})
for how in ("repo", "pinned", "registry"):
    model = {{"repo": lambda: zoo.from_pretrained({HF_REPO!r}),
              "pinned": lambda: zoo.from_pretrained({HF_REPO!r}, revision={commit!r}),
              "registry": lambda: zoo.create_model({HF_MODEL!r}, pretrained=True)}}[how]()
    assert model.checkpoint_source.source == "huggingface", model.checkpoint_source
    assert {commit!r} in str(model.checkpoint_source.path)
    assert_same_features(features(model), expected)
try:
    zoo.from_pretrained({HF_REPO!r}, revision="v9")
except zoo.ZooError as err:
    print("ERROR", err)
print("OK")
"""
    env = {"HF_HUB_CACHE": str(tmp_path / "hf-cache"), "HF_HUB_OFFLINE": "1", "ZOO_HUB": str(tmp_path / "empty"),
           "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                         env={**__import__("os").environ, **env}, timeout=HANG_GUARD_S)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[-1] == "OK"
    error = res.stdout.splitlines()[0]
    assert f"{HF_REPO}@v9 not found" in error and "HF_HUB_OFFLINE=1 forbids downloading" in error


def test_hf_cache_damaged_blob_is_refused(tmp_path):
    model = random_model(HF_MODEL)
    model.save_pretrained(tmp_path / "ckpt")
    snapshot = lay_out_hf_cache(Path(__import__("huggingface_hub").constants.HF_HUB_CACHE), HF_REPO,
                                tmp_path / "ckpt", "f" * 40)
    blob = (snapshot / WEIGHTS_NAME).resolve()
    blob.write_bytes(blob.read_bytes()[:-10] + b"0" * 10)
    with pytest.raises(WeightsError, match=r"model\.safetensors has sha256 .* config\.json expects"):
        zoo.from_pretrained(HF_REPO)


def test_nothing_found_says_where_it_looked_and_what_to_do(monkeypatch):
    with pytest.raises(WeightsNotAvailableError) as err:
        zoo.from_pretrained("someone/missing")
    msg = str(err.value)
    assert "\n" not in msg and "local hub" in msg and "Hugging Face cache" in msg and "HF_HUB_OFFLINE=1" in msg
    with pytest.raises(WeightsNotAvailableError, match="no published weights yet.*zoo publish DIR --repo sslzoo/"):
        zoo.create_model("cpc_resnet50", pretrained=True)  # trained by sslzoo: nothing else to look at
    # a converted release is fetched from the authors last, but HF_HUB_OFFLINE=1 forbids it
    with pytest.raises(WeightsNotAvailableError, match="no published weights yet.*HF_HUB_OFFLINE=1 forbids "
                                                       "downloading the authors' release.*`zoo fetch rotnet_alexnet`"):
        zoo.create_model("rotnet_alexnet", pretrained=True)
    with pytest.raises(WeightsNotAvailableError, match="not a checkpoint folder, a registry model name"):
        zoo.from_pretrained("no_such_thing")
    with pytest.raises(UsageError, match="not a revision name"):
        zoo.from_pretrained(REPO, revision="../main")
    # Online but unreachable: the connection error, in one line, with what to do.
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(WeightsNotAvailableError) as err:
        zoo.hub._hf_snapshot("someone/missing", "main", download=True, hub=LocalHub())
    assert "\n" not in str(err.value) and "could not reach" in str(err.value) and "HF_HUB_OFFLINE=1" in str(err.value)


def test_pretrained_checks_the_checkpoint_is_the_entrys(tmp_path):
    cards = tmp_path / "cards"
    other = publishable_checkpoint(random_model("rotnet_nin_cifar10"), tmp_path / "other", cards)
    publish(other, REPO)  # the wrong model under rotnet_nin_fmnist's repo
    with pytest.raises(WeightsError, match="holds a checkpoint of 'rotnet_nin_cifar10', not of 'rotnet_nin_fmnist'"):
        zoo.create_model("rotnet_nin_fmnist", pretrained=True)
    publish(publishable_checkpoint(random_model("rotnet_nin_fmnist"), tmp_path / "right", cards), REPO)
    assert zoo.create_model("rotnet_nin_fmnist", pretrained=True, in_channels=1).arch_kwargs["in_channels"] == 1
    with pytest.raises(UsageError, match="num_blocks=3 would change the architecture"):
        zoo.create_model("rotnet_nin_fmnist", pretrained=True, num_blocks=3)


def test_publish_to_hf_is_one_commit_of_exactly_the_checkpoint_files(tmp_path, monkeypatch):
    """HfApi is mocked where it would talk to the Hub; which files go up is decided by
    huggingface_hub's own pattern filter over the folder."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import CommitInfo, RepoUrl
    from huggingface_hub.utils import filter_repo_objects

    calls = []

    def create_repo(self, repo_id, **kw):
        calls.append(("create_repo", repo_id, kw))
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_branch(self, repo_id, **kw):
        calls.append(("create_branch", repo_id, kw))

    def upload_folder(self, *, repo_id, folder_path, allow_patterns=None, ignore_patterns=None, **kw):
        names = sorted(p.name for p in Path(folder_path).iterdir())
        sent = {n: (Path(folder_path) / n).read_bytes()
                for n in filter_repo_objects(names, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns)}
        calls.append(("upload_folder", repo_id, {**kw, "files": sent}))
        return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/{'a' * 40}", commit_message="",
                          commit_description="", oid="a" * 40)

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_branch", create_branch)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)

    ckpt = publishable_checkpoint(random_model("rotnet_nin_fmnist"), tmp_path / "ckpt", tmp_path / "cards")
    (ckpt / "optimizer.pt").write_bytes(b"training state that must not be published")
    (ckpt / "train.log").write_text("epoch 1")
    sha = json.loads((ckpt / CONFIG_NAME).read_text())["weights"]["sha256"]

    done = publish(ckpt, "someone/rotnet-test", hf=True, private=True, revision="v2")
    assert [c[0] for c in calls] == ["create_repo", "create_branch", "upload_folder"]
    assert calls[0][2] == {"repo_type": "model", "private": True, "exist_ok": True}
    assert calls[1][2]["branch"] == "v2"
    upload = calls[2][2]
    assert sorted(upload["files"]) == sorted(CHECKPOINT_FILES)
    assert all(upload["files"][n] == (ckpt / n).read_bytes() for n in CHECKPOINT_FILES)
    assert upload["commit_message"] == f"Publish rotnet_nin_fmnist (sslzoo {zoo.__version__}, weights sha256 {sha[:12]})"
    assert upload["revision"] == "v2"
    assert done.version == "a" * 40 and done.url.endswith("/commit/" + "a" * 40)

    # A failed commit is one line, and says nothing was committed.
    from huggingface_hub.errors import HfHubHTTPError

    import httpx2

    def failing_upload(self, **kw):
        request = httpx2.Request("POST", "https://huggingface.co/api/models/someone/rotnet-test/commit/main")
        raise HfHubHTTPError("500 Server Error: Internal Server Error", response=httpx2.Response(500, request=request))

    monkeypatch.setattr(HfApi, "upload_folder", failing_upload)
    with pytest.raises(ZooError, match="nothing was committed, the previous version is unchanged") as err:
        publish(ckpt, "someone/rotnet-test", hf=True)
    assert "\n" not in str(err.value)


def _bad_checkpoints(tmp_path):
    """(label, mutate(dir), expected message fragment) for each bad input the issue lists."""
    def drop_key(d):
        state = random_model("rotnet_nin_fmnist").state_dict()
        del state["block1.0.0.weight"]
        rewrite_weights(d, state)

    def extra_key(d):
        rewrite_weights(d, {**random_model("rotnet_nin_fmnist").state_dict(), "head.weight": torch.zeros(4, 192)})

    def wrong_shape(d):
        rewrite_weights(d, {**random_model("rotnet_nin_fmnist").state_dict(), "block1.0.0.weight": torch.zeros(3)})

    def corrupt(d):
        data = bytearray((d / WEIGHTS_NAME).read_bytes())
        data[-1] ^= 0xFF
        (d / WEIGHTS_NAME).write_bytes(bytes(data))

    def truncated(d):
        rewrite_weights(d, raw=(d / WEIGHTS_NAME).read_bytes()[:5000])

    class Payload:  # a pickle that would create a file if anything unpickled it
        def __reduce__(self):
            return open, (str(tmp_path / "pwned"), "w")

    def pickle_file(d):
        rewrite_weights(d, raw=pickle.dumps({"state_dict": Payload()}))

    def retyped(dtype):
        def mutate(d):
            state = random_model("rotnet_nin_fmnist").state_dict()
            rewrite_weights(d, {**state, "block1.0.0.weight": state["block1.0.0.weight"].to(dtype)})
        return mutate

    def poisoned(key, value):
        def mutate(d):
            state = random_model("rotnet_nin_fmnist").state_dict()
            state[key].view(-1)[0] = value
            rewrite_weights(d, state)
        return mutate

    def no_sha256(d):
        config = json.loads((d / CONFIG_NAME).read_text())
        del config["weights"]["sha256"]
        (d / CONFIG_NAME).write_text(json.dumps(config))

    def input_change(**changes):
        return lambda d: edit_config(d, input={**json.loads((d / CONFIG_NAME).read_text())["input"], **changes})

    def drop_number_from_text(d):
        _, front, body = (d / CARD_NAME).read_text().split("---\n", 2)
        (d / CARD_NAME).write_text(f"---\n{front}---\n{body.replace(str(FIXTURE_VALUE), '?')}")

    return [
        ("missing key", drop_key, "missing key 'block1.0.0.weight'"),
        ("unexpected key", extra_key, "unexpected key 'head.weight'"),
        ("shape", wrong_shape, "key 'block1.0.0.weight' has shape (3,)"),
        ("sha256", corrupt, "model.safetensors has sha256"),
        ("unknown arch", lambda d: edit_config(d, arch="alexnet_v9"), "config.json names unknown architecture 'alexnet_v9'"),
        ("other arch", lambda d: edit_config(d, arch="resnet18"), "config.json names architecture 'resnet18' but model 'rotnet_nin_fmnist' is a 'nin'"),
        ("unknown model", lambda d: edit_config(d, name="rotnet_vit"), "config.json names model 'rotnet_vit'"),
        ("truncated", truncated, "model.safetensors is not a readable safetensors file"),
        ("pickle", pickle_file, "model.safetensors is not a readable safetensors file"),
        ("no card", lambda d: (d / CARD_NAME).unlink(), "README.md not found"),
        ("no numbers", drop_number_from_text, "is in the model-index but not in the card's text"),
        ("no config", lambda d: (d / CONFIG_NAME).unlink(), "config.json not found"),
        ("float16", retyped(torch.float16), "key 'block1.0.0.weight' is float16, the model expects float32"),
        ("float64", retyped(torch.float64), "key 'block1.0.0.weight' is float64, the model expects float32"),
        ("int32", retyped(torch.int32), "key 'block1.0.0.weight' is int32, the model expects float32"),
        ("nan", poisoned("block2.0.0.weight", float("nan")), "key 'block2.0.0.weight' holds NaN or infinite values"),
        ("inf", poisoned("block1.0.1.bias", float("inf")), "key 'block1.0.1.bias' holds NaN or infinite values"),
        ("negative var", poisoned("block1.0.1.running_var", -1.0), "key 'block1.0.1.running_var' holds negative"),
        ("no sha256", no_sha256, "config.json gives no sha256 of the weights"),
        ("std 0", input_change(std=[0.0]), "bad input spec: std must be positive"),
        ("other input", input_change(resize=64), "its input is not that model's"),
        ("another model", lambda d: edit_config(d, name="rotnet_nin_cifar10"),
         "names model 'rotnet_nin_cifar10' but its input is not that model's"),
    ]


def test_bad_checkpoints_are_one_line_errors_from_the_cli(tmp_path, capsys):
    good = publishable_checkpoint(random_model("rotnet_nin_fmnist"), tmp_path / "good", tmp_path / "cards")
    hub = tmp_path / "hub"
    for label, mutate, message in _bad_checkpoints(tmp_path):
        bad = tmp_path / label.replace(" ", "_")
        shutil.copytree(good, bad)
        mutate(bad)
        code = zoo_main(["publish", str(bad), "--repo", "someone/bad", "--local-hub", str(hub)])
        err = capsys.readouterr().err
        assert code == 1, (label, err)
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, (label, err)
        if label not in ("no card", "no numbers"):  # the loader says the same without the CLI
            with pytest.raises(WeightsError) as loader_err:
                zoo.from_pretrained(bad)
            assert message in str(loader_err.value) and "\n" not in str(loader_err.value)
    assert not (tmp_path / "pwned").exists()
    assert not (hub / "models--someone--bad" / "refs").exists()  # nothing was published


def test_publish_cli_end_to_end(tmp_path, zoo_cli, capsys):
    ckpt = publishable_checkpoint(random_model("rotnet_nin_fmnist"), tmp_path / "ckpt", tmp_path / "cards")
    res = zoo_cli("publish", str(ckpt), "--repo", REPO, "--local-hub", str(tmp_path / "hub"), "--revision", "v1")
    assert res.returncode == 0, res.stderr
    assert f"published {REPO}@v1 to {tmp_path / 'hub'}" in res.stdout
    assert LocalHub(tmp_path / "hub").revisions(REPO) == {"v1": snapshot_id_of(ckpt)}
    # Offline (HF_HUB_OFFLINE=1 in the tests), an upload fails in one line before anything is sent.
    assert zoo_main(["publish", str(ckpt), "--repo", REPO, "--hf"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nothing was committed" in err
    assert zoo_main(["publish", str(ckpt), "--repo", "not a repo"]) == 2
    assert "is not a Hub repo id" in capsys.readouterr().err
    assert zoo_main(["publish", str(ckpt), "--repo", REPO, "--hf", "--local-hub", str(tmp_path)]) == 2
    assert "choose one destination" in capsys.readouterr().err


def test_local_path_problems(tmp_path):
    (tmp_path / "weights.safetensors").write_bytes(b"x")
    with pytest.raises(WeightsError, match="is a file; pass the checkpoint folder"):
        zoo.from_pretrained(tmp_path / "weights.safetensors")
    with pytest.raises(UsageError, match="applies to Hub repo ids"):
        zoo.from_pretrained(tmp_path, revision="main")
    with pytest.raises(WeightsError, match="config.json not found"):
        zoo.from_pretrained(tmp_path)


def test_a_snapshot_id_cannot_be_republished_to_other_weights(tmp_path, capsys):
    cards = tmp_path / "cards"
    first = publish(publishable_checkpoint(random_model("rotnet_nin_fmnist", seed=1), tmp_path / "a", cards), REPO)
    other = publishable_checkpoint(random_model("rotnet_nin_fmnist", seed=2), tmp_path / "b", cards)
    for revision in (first.version, first.version.upper()):
        assert zoo_main(["publish", str(other), "--repo", REPO, "--revision", revision]) == 2
        err = capsys.readouterr().err
        assert "reads as a snapshot id" in err and err.count("\n") == 1
    assert LocalHub().revisions(REPO) == {"main": first.version}
    assert snapshot_id_of(LocalHub().snapshot(REPO, first.version)) == first.version


def test_a_full_disk_while_publishing_names_the_hub_not_the_source(tmp_path, monkeypatch, capsys):
    cards = tmp_path / "cards"
    hub = LocalHub(tmp_path / "hub")
    old = publish(publishable_checkpoint(random_model("rotnet_nin_fmnist", seed=1), tmp_path / "a", cards), REPO,
                  local_hub=hub.root)
    new = publishable_checkpoint(random_model("rotnet_nin_fmnist", seed=2), tmp_path / "b", cards)
    monkeypatch.setenv("ZOO_TEST_FAULT", "write@model.safetensors:1:enospc")
    assert zoo_main(["publish", str(new), "--repo", REPO, "--local-hub", str(hub.root)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: disk full while writing {hub.repo_dir(REPO)}") and err.count("\n") == 1, err
    assert str(new) not in err and "needed" in err
    assert hub.revisions(REPO) == {"main": old.version} and not (hub.repo_dir(REPO) / ".incoming").exists()


def test_a_killed_publish_leaves_nothing_that_the_next_one_does_not_remove(tmp_path):
    cards = tmp_path / "cards"
    hub = LocalHub(tmp_path / "hub")
    first = publishable_checkpoint(random_model("rotnet_nin_fmnist", seed=1), tmp_path / "a", cards)
    repo = hub.repo_dir(REPO)
    left = {"write@model.safetensors:1:kill": lambda: [p.name[:8] for p in (repo / ".incoming").iterdir()],
            "rename@main:1:kill": lambda: [p.name[:6] for p in (repo / "refs").iterdir()]}
    for fault, leftovers in left.items():  # killed mid-copy; killed writing the ref
        res = subprocess.run([sys.executable, "-m", "zoo", "publish", str(first), "--repo", REPO, "--local-hub",
                              str(hub.root)], cwd=ROOT, capture_output=True, text=True,
                             env={**os.environ, "ZOO_TEST_FAULT": fault})
        assert res.returncode == -9, res.stderr
        assert leftovers() in (["publish."], [".main."])
    second = publishable_checkpoint(random_model("rotnet_nin_fmnist", seed=2), tmp_path / "b", cards)
    published = publish(second, REPO, local_hub=hub.root)
    assert not (repo / ".incoming").exists()
    assert sorted(p.name for p in (repo / "refs").iterdir()) == ["main"]
    assert hub.revisions(REPO) == {"main": published.version}
