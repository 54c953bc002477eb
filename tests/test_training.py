import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import HANG_GUARD_S, ROOT, run_zoo
from training.engine import load_training_state, state_digest

# A tiny RotNet run: 192 images, 16 per step -> 12 steps per epoch, checkpoints after every step.
TINY = ("train", "rotnet", "--recipe", "tiny", "--limit", "192", "--batch-size", "16", "--epochs", "2",
        "--checkpoint-every", "1", "--no-progress")
# One thread per process: identical arithmetic in every run, and no OpenMP stalls on a busy machine.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def _weights(run):
    return load_file(str(run / "model" / "model.safetensors"))


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    res = run_zoo(*TINY, "--out", str(whole), env=ONE_THREAD)
    assert res.returncode == 0, res.stderr

    proc = subprocess.Popen([sys.executable, "-m", "zoo", *TINY, "--out", str(killed)], cwd=ROOT, env=ONE_THREAD,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + HANG_GUARD_S
    while not list((killed / "checkpoints").glob("step-0000000[3-9].pt")) and proc.poll() is None:
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (killed / "model").exists()

    res = run_zoo(*TINY, "--out", str(killed), "--resume", env=ONE_THREAD)
    assert res.returncode == 0, res.stderr
    resumed_at = int(res.stdout.split("(epoch 0, step ")[1].split(")")[0])
    assert 3 <= resumed_at < 12  # the kill landed in the middle of the first epoch

    config = json.loads((killed / "model" / "config.json").read_text())
    assert config["training"]["steps"] == 24 and config["training"]["epochs"] == 2
    assert (config["training"]["precision"], config["training"]["threads"]) == ("fp32", 1)  # tiny: fp32 everywhere
    steps = [r["step"] for r in _records(killed) if "event" not in r]
    assert steps == list(range(1, 25))  # records of the lost steps were dropped, none duplicated
    a, b = _weights(whole), _weights(killed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    end_a = load_training_state(whole / "checkpoints" / "step-00000024.pt")
    end_b = load_training_state(killed / "checkpoints" / "step-00000024.pt")
    assert all(torch.equal(end_a["method"][k], end_b["method"][k]) for k in end_a["method"])  # head too
    assert len(list((killed / "checkpoints").glob("step-*.pt"))) == 3  # keep-last-N


def test_two_process_gloo_ddp_ends_with_identical_weights(tmp_path):
    out = tmp_path / "ddp"
    zoo_script = Path(sys.executable).with_name("zoo")  # the README's form: torchrun starts the installed script
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "--no-python", str(zoo_script), "train", "rotnet", "--recipe", "tiny", "--limit", "128", "--batch-size", "16",
                          "--out", str(out), "--no-progress"], cwd=ROOT, env=ONE_THREAD, capture_output=True, text=True,
                         timeout=HANG_GUARD_S)
    assert res.returncode == 0, res.stderr[-3000:]
    end = [r for r in _records(out) if r.get("event") == "end"][0]
    assert len(end["rank_digests"]) == 2 and end["rank_digests"][0] == end["rank_digests"][1]
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["training"]["world_size"] == 2 and config["training"]["steps"] == 8  # 128 / 16 per step
    from training.methods.rotnet import RECIPES, RotNet

    final = load_training_state(out / "checkpoints" / "step-00000008.pt")
    method = RotNet(RECIPES["tiny"])
    method.load_state_dict(final["method"])
    assert state_digest(method) == end["rank_digests"][0]


def _write_png(path, seed):
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)


def test_unreadable_images_are_skipped_counted_and_reported(tmp_path):
    from training.data import ImageFolder, SampleView, SkipCounter, iterate_batches

    root = tmp_path / "folder"
    for i, cls in enumerate(("a", "a", "b", "b")):
        (root / cls).mkdir(parents=True, exist_ok=True)
        _write_png(root / cls / f"{i}.png", i)
    good = (root / "a" / "0.png").read_bytes()
    (root / "b" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "a" / "garbage.jpg").write_bytes(b"not an image at all")

    counter = SkipCounter()
    batches = list(iterate_batches(SampleView(ImageFolder(root), None), batch_size=4, counter=counter))
    assert counter.skipped == 2
    assert sorted(torch.cat([b["label"] for b in batches]).tolist()) == [0, 0, 1, 1]

    res = run_zoo("train", "rotnet", "--recipe", "tiny", "--data", str(root), "--batch-size", "2",
                  "--out", str(tmp_path / "run"), "--no-progress", env=ONE_THREAD)
    assert res.returncode == 0, res.stderr
    assert "skipped 2 unreadable image(s)" in res.stdout
    assert json.loads((tmp_path / "run" / "model" / "config.json").read_text())["training"]["skipped_images"] == 2


def test_paper_recipe_needs_its_data_and_says_so_in_one_line(tmp_path):
    from training.methods.rotnet import RECIPES

    from training.methods.rotnet import RotNet
    from zoo.photos import load_photo

    paper = RECIPES["paper"]
    assert (paper.model, paper.epochs, paper.batch_size, paper.optimizer.lr, paper.schedule.milestones) == \
        ("rotnet_alexnet", 50, 192, 0.01, (15, 30, 45))
    assert [round(paper.schedule.factor(e, 50) * paper.optimizer.lr, 8) for e in (0, 14.9, 15, 30, 45, 49.9)] == \
        [0.01, 0.01, 0.001, 0.0001, 0.00001, 0.00001]
    method = RotNet(paper)  # ImageNet AlexNet: random-resized 224 crops of RGB photos, a 4-way head on fc7
    assert method.head.in_features == 4096 and method.head.out_features == 4
    crop = method.train_transform()(torch.from_numpy(load_photo("chelsea")).permute(2, 0, 1))
    assert crop.shape == (3, 224, 224)
    out = method({"x": torch.stack([crop, crop.flip(-1)])})
    assert torch.isfinite(out["loss"]) and out["loss"].requires_grad
    for extra, needle in (((), "pass --data PATH"), (("--data", str(tmp_path / "nope")), "does not exist")):
        res = run_zoo("train", "rotnet", "--recipe", "paper", "--out", str(tmp_path / "p"), *extra)
        assert res.returncode != 0 and needle in res.stderr
        assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr


def test_cifar_batches_load_and_pickled_code_is_refused(tmp_path):
    from training.data import DataError, open_dataset

    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 255, (3, 3072), dtype=np.uint8), b"labels": [1, 2, 3]}
        (root / name).write_bytes(pickle.dumps(batch))
    train = open_dataset(str(tmp_path), "train")
    image, label = train[4]
    assert len(train) == 15 and image.shape == (3, 32, 32) and image.dtype == torch.uint8 and label == 2

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (root / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(DataError, match="refusing to load"):
        open_dataset(f"cifar:{root}", "test")


# Every method's tiny recipe with a checkpoint every 2 steps, killed (SIGKILL, by the fault hook)
# as it renames its second checkpoint into place: it resumes from step 2, in the middle of its
# first epoch, and must end bit for bit where an uninterrupted run ends. Each method is killed a
# second time, in another run, at one of three more points (taken in turn, so each point kills
# four or five methods; the shortest tiny recipes checkpoint twice): half-way through writing its
# first checkpoint, and renaming it, both resumed from the start beside the dead writer's
# temporary file; before the fsync of its second, resumed from step 2.
KILL_AT_SECOND_CHECKPOINT = "rename@step-*.pt:2:kill"
MORE_KILL_POINTS = ["write@step-*.pt:1:kill", "fsync@step-*.pt:2:kill", "rename@step-*.pt:1:kill"]
_TRAIN_ALL = """
import sys
from zoo.cli import main
out, flags = sys.argv[1], sys.argv[2:]
for method in {methods!r}:
    code = main(["train", method, "--recipe", "tiny", "--checkpoint-every", "2", "--no-progress",
                 "--out", f"{{out}}/{{method}}", *flags])
    if code:
        sys.exit(f"{{method}}: exit {{code}}")
"""


def test_every_method_resumed_after_a_kill_mid_epoch_equals_an_uninterrupted_run(tmp_path):
    from training.methods import method_names

    methods = method_names()
    script = _TRAIN_ALL.format(methods=methods)
    log = open(tmp_path / "reference.log", "w")  # a file, not a pipe that could fill while we wait
    reference = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "whole")], cwd=ROOT, env=ONE_THREAD,
                                 stdout=log, stderr=subprocess.STDOUT)

    def train(method, run, fault):
        return subprocess.Popen([sys.executable, "-m", "zoo", "train", method, "--recipe", "tiny", "--checkpoint-every",
                                 "2", "--no-progress", "--out", str(tmp_path / run / method)], cwd=ROOT,
                                env={**ONE_THREAD, "ZOO_TEST_FAULT": fault}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)

    # Fresh interpreters: a run forked from the kill tests' fork server (faiss and onnxruntime
    # imported) computed other numbers than `zoo train` (cpc: 98 of 114 tensors after resuming).
    for i, method in enumerate(methods):  # one process per kill (a kill ends a process), two at a time
        first, second = train(method, "killed", KILL_AT_SECOND_CHECKPOINT), \
            train(method, "killed2", MORE_KILL_POINTS[i % len(MORE_KILL_POINTS)])
        for proc in (first, second):
            _, err = proc.communicate(timeout=HANG_GUARD_S)
            assert proc.returncode == -signal.SIGKILL, f"{method}: {err[-2000:]}"
        assert [p.name for p in (tmp_path / "killed" / method / "checkpoints").glob("step-*.pt")] == \
            ["step-00000002.pt"]
    resumed = {run: subprocess.Popen([sys.executable, "-c", script, str(tmp_path / run), "--resume"], cwd=ROOT,
                                     env=ONE_THREAD, stdout=open(tmp_path / f"{run}.log", "w"), stderr=subprocess.STDOUT)
               for run in ("killed", "killed2")}  # side by side
    for run, proc in resumed.items():
        assert proc.wait(timeout=HANG_GUARD_S) == 0, (tmp_path / f"{run}.log").read_text()[-3000:]
    # each resumed in the middle of epoch 0
    assert (tmp_path / "killed.log").read_text().count("(epoch 0, step 2)") == len(methods)
    assert reference.wait(timeout=HANG_GUARD_S) == 0, (tmp_path / "reference.log").read_text()[-3000:]
    log.close()
    differ = {}
    for method, run in ((m, r) for r in ("killed", "killed2") for m in methods):
        final = max((tmp_path / "whole" / method / "checkpoints").glob("step-*.pt")).name
        a = load_training_state(tmp_path / "whole" / method / "checkpoints" / final)
        b = load_training_state(tmp_path / run / method / "checkpoints" / final)
        bad = [k for k in a["method"] if not torch.equal(a["method"][k], b["method"][k])]
        if bad:
            differ[f"{run}/{method}"] = f"{len(bad)} of {len(a['method'])} tensors differ, e.g. {bad[0]}"
        leftovers = [p.name for p in (tmp_path / run / method / "checkpoints").iterdir() if p.name.endswith(".tmp")]
        assert leftovers == [], f"{run}/{method}: {leftovers}"
    assert differ == {}


def test_a_copy_of_a_method_file_trains_under_its_own_name_from_the_method_path(tmp_path):
    """Adding a method is adding one file: rotnet.py copied, as it is, into a ZOO_METHOD_PATH
    folder as spin.py is the method "spin", and `zoo train spin --recipe tiny` trains it."""
    from training.methods import METHOD_PATH_ENV, method_names

    plugins = tmp_path / "methods"
    plugins.mkdir()
    shutil.copy(ROOT / "training" / "methods" / "rotnet.py", plugins / "spin.py")
    out = tmp_path / "run"
    res = run_zoo("train", "spin", "--recipe", "tiny", "--no-progress", "--out", str(out),
                  env={**ONE_THREAD, METHOD_PATH_ENV: str(plugins)})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "trained spin (tiny)" in res.stdout
    training = json.loads((out / "model" / "config.json").read_text())["training"]
    assert (training["method"], training["recipe"]) == ("spin", "tiny") and training["steps"] > 0
    assert "rotation_acc" in training["metrics"]
    assert "spin" not in method_names()  # this process has no method path
    clash = run_zoo("train", "spin", "--recipe", "tiny", env={METHOD_PATH_ENV: str(ROOT / "training" / "methods")})
    assert clash.returncode != 0 and "would replace the method" in clash.stderr


def test_resume_skips_a_checkpoint_with_flipped_bytes_with_a_one_line_warning(tmp_path):
    run = tmp_path / "run"
    args = ("train", "rotnet", "--recipe", "tiny", "--limit", "64", "--batch-size", "16", "--checkpoint-every", "1",
            "--no-progress", "--out", str(run))
    assert run_zoo(*args, env=ONE_THREAD).returncode == 0
    before = _weights(run)
    newest = run / "checkpoints" / "step-00000004.pt"
    state = torch.load(newest, weights_only=True)["method"]
    name = max(state, key=lambda k: state[k].numel())
    data = bytearray(newest.read_bytes())
    at = data.find(state[name].numpy().tobytes())
    assert at > 0
    data[at + 256:at + 320] = bytes(b ^ 0xFF for b in data[at + 256:at + 320])  # 64 bytes of bit rot
    newest.write_bytes(bytes(data))
    assert torch.load(newest, weights_only=True)["step"] == 4  # it still loads
    res = run_zoo(*args, "--resume", env=ONE_THREAD)
    assert res.returncode == 0, res.stderr
    warnings = [line for line in res.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "step-00000004.pt is damaged" in warnings[0]
    assert "resuming from" in res.stdout and "step-00000003.pt" in res.stdout
    after = _weights(run)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_full_disk_while_checkpointing_is_one_line_and_leaves_no_partial_file(tmp_path):
    run = tmp_path / "run"
    res = run_zoo("train", "rotnet", "--recipe", "tiny", "--limit", "64", "--batch-size", "16", "--checkpoint-every",
                  "1", "--no-progress", "--out", str(run), env={**ONE_THREAD, "ZOO_TEST_FAULT": "write@step-*.pt:2:enospc"})
    assert res.returncode == 1 and res.stderr.count("\n") == 1, res.stderr
    assert res.stderr.startswith(f"error: disk full while writing {run / 'checkpoints' / 'step-00000002.pt'} (")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000001.pt"]


def test_a_sample_draws_from_its_own_seed_and_leaves_the_global_generator_as_it_was():
    from training.data import SampleView, sample_seed

    images = [(torch.full((1, 4, 4), i, dtype=torch.uint8), i) for i in range(3)]
    view = SampleView(images, lambda image: image.float() + torch.rand(4), seed=7)
    view.epoch = 2
    torch.manual_seed(123)
    before = torch.get_rng_state()
    x, label, index = view[1]
    assert torch.equal(torch.get_rng_state(), before)  # the caller's random stream is untouched
    torch.manual_seed(sample_seed(7, 2, 1))  # what the sample's draws are defined to be
    assert torch.equal(x, images[1][0].float() + torch.rand(4)) and (label, index) == (1, 1)
    assert not torch.equal(view[1][0], view[2][0] - 1)  # another index, other draws
