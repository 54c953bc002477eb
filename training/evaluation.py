"""Evaluation protocols on frozen features: per-layer linear probes, weighted kNN, clustering.

Library functions first (each small and testable alone), then ``run_protocol``, which evaluates
a checkpoint and a random-init model of the same architecture through exactly the same code,
and ``record_results``, which merges the numbers into ``MODEL_CARDS/results/<name>.json``.

* Linear probe (the DeepCluster / linear-probes protocol): each frozen layer is pooled to about
  9,000 numbers -- AlexNet's conv layers with the fixed max-pools of yukimasano/linear-probes
  (6/6/3, 4/4/0, 3/3/1, 3/3/1, 2/2/0, i.e. 9,600/9,216/9,600/9,600/9,216 dims for DeepCluster's
  widths); other networks (ResNet stages, NIN blocks, ...) by adaptive average pooling to the
  largest square grid with at most ``dims`` values (ResNet-50: 64x12x12, 256x6x6, 512x4x4,
  1024x3x3, 2048x2x2) -- then BatchNorm without affine parameters (per channel) and one linear
  layer, trained with SGD (momentum 0.9, weight decay 1e-5, batch 192, lr 0.01 divided by 10 at
  epochs 10, 20 and 30 of 36). Features are computed once from centre crops and cached, so the
  probe sees no augmentation (the original re-crops every epoch and tests on ten crops).
* Weighted kNN (NPID): cosine similarity of L2-normalised, globally average-pooled features; the
  k nearest training images vote for their class with weight exp(sim / T); k=200, T=0.07.
* Clustering: k-means (FAISS, k = number of classes) on the same pooled, normalised features;
  NMI and the accuracy of the best one-to-one cluster-to-class map (Hungarian algorithm).
* Retrieval: the copy-detection set of ``zoo.retrieval`` (strong distortions of the shipped
  photos); the same pooled, L2-normalised features; leave-one-out mAP and recall@1 from
  ``zoo.retrieval.retrieval_metrics``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from training.data import ImageList, SampleView, SkipCounter, describe, iterate_batches, limit_dataset, open_dataset
from training.transforms import eval_transform
from zoo.errors import UsageError, ZooError

PROBE_DIMS = 9216
# yukimasano/linear-probes: pooling of AlexNet conv1..conv5 before BN + linear (kernel, stride, padding).
ALEXNET_PROBE_POOLS = {"conv1": (6, 6, 3), "conv2": (4, 4, 0), "conv3": (3, 3, 1), "conv4": (3, 3, 1), "conv5": (2, 2, 0)}


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------

@dataclass
class LoadedModel:
    model: nn.Module
    name: str                     # registry name
    source: str                   # checkpoint folder, or "random-init"
    config: dict[str, Any] | None


def checkpoint_folder(model_or_dir: str | Path) -> Path | None:
    """The checkpoint folder ``model_or_dir`` names (itself, or a run folder's ``model/``), if any."""
    path = Path(model_or_dir)
    for candidate in (path / "model", path):
        if (candidate / "config.json").is_file():
            return candidate
    return None


RANDOM_PREFIX = "random:"


def load_model(model_or_dir: str | Path, seed: int = 0) -> LoadedModel:
    """A checkpoint folder, a training run folder (its ``model/``), a registry name or Hub repo id
    (published weights, through ``zoo.from_pretrained``), or ``random:NAME`` (random init)."""
    import zoo
    from zoo.registry import get_model_entry

    spec = str(model_or_dir)
    if spec.startswith(RANDOM_PREFIX):
        name = get_model_entry(spec[len(RANDOM_PREFIX):]).name
        return LoadedModel(random_init(name, {}, seed), name, "random-init", None)  # calibrated in run_protocol
    folder = checkpoint_folder(model_or_dir)
    model = zoo.from_pretrained(folder if folder is not None else spec)
    source = str(folder) if folder is not None else spec
    return LoadedModel(model, model.entry.name, source, getattr(model, "checkpoint_config", None))


def random_init(name: str, arch_kwargs: dict[str, Any], seed: int = 0) -> nn.Module:
    """The architecture of registry model ``name`` with fresh (seeded) weights: the baseline."""
    from zoo.registry import create_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_model(name, **arch_kwargs).eval()


# Images whose statistics a random-init baseline's BatchNorm layers are re-estimated on.
BN_CALIBRATION_IMAGES = 2_000


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, dataset, images: int = BN_CALIBRATION_IMAGES,
                        batch_size: int = 250) -> nn.Module:
    """Re-estimate BN running statistics on ``images`` images (a cumulative average over batches).

    A random-init network's BN layers hold mean 0 and variance 1, so in eval mode they pass the
    activations through unnormalised and deep layers of a random network fade towards zero; with
    statistics measured on real images the baseline is the random network as it would run in
    training, which is the fairer (and stronger) baseline.
    """
    from torch.nn.modules.batchnorm import _BatchNorm

    norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    if not norms:
        return model
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.train()
    view = SampleView(limit_dataset(dataset, images, seed=1), eval_transform(model.entry.input))
    for batch in iterate_batches(view, batch_size):
        model(batch["x"])
    for m in norms:
        m.momentum = 0.1
    return model.eval()


# ---------------------------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------------------------

def probe_pool(model: nn.Module, layer: str, shape: Sequence[int], dims: int = PROBE_DIMS) -> nn.Module:
    """The pooling in front of a layer's linear probe (see the module docstring)."""
    from zoo.backbones import AlexNet

    if len(shape) == 1:
        return nn.Identity()
    if isinstance(model, AlexNet) and layer in ALEXNET_PROBE_POOLS:
        k, s, p = ALEXNET_PROBE_POOLS[layer]
        return nn.MaxPool2d(k, stride=s, padding=p)
    channels, height = shape[0], min(shape[1:])
    side = max(1, min(height, math.isqrt(max(dims // channels, 1))))
    return nn.AdaptiveAvgPool2d(side)


def global_pool() -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())


@torch.no_grad()
def extract_features(model: nn.Module, dataset, layers: Sequence[str], pools: dict[str, nn.Module],
                     batch_size: int = 256, counter: SkipCounter | None = None,
                     progress: str | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Pooled, flattened features of ``layers`` for every readable image, and the labels.

    Images get the model's reference preprocessing (``model.entry.input``).
    """
    model.eval()
    view = SampleView(dataset, eval_transform(model.entry.input))
    feats: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    labels = []
    batches = iterate_batches(view, batch_size, counter=counter)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, total=math.ceil(len(view) / batch_size), desc=progress, unit="batch",
                       leave=False, mininterval=1.0)
    for batch in batches:
        out = model.forward_features(batch["x"], layers)
        for name in layers:
            feats[name].append(pools[name](out[name]).flatten(1).float())
        labels.append(batch["label"])
    if not labels:
        raise ZooError("no readable images to extract features from")
    return {k: torch.cat(v) for k, v in feats.items()}, torch.cat(labels)


# ---------------------------------------------------------------------------------------------
# Linear probe
# ---------------------------------------------------------------------------------------------

class LinearProbe(nn.Module):
    """BatchNorm without affine parameters per channel, then one linear layer."""

    def __init__(self, channels: int, dims: int, num_classes: int):
        super().__init__()
        if dims % channels:
            raise UsageError(f"{dims} feature dims do not split into {channels} channels")
        self.channels = channels
        self.bn = nn.BatchNorm1d(channels, affine=False)
        self.linear = nn.Linear(dims, num_classes)
        nn.init.xavier_uniform_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.bn(x.view(len(x), self.channels, -1)).flatten(1))


@dataclass
class ProbeResult:
    top1: float         # test accuracy in [0, 1]
    train_top1: float
    dims: int


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 num_classes: int, channels: int | None = None, epochs: int = 36, lr: float = 0.01,
                 milestones: Sequence[int] = (10, 20, 30), momentum: float = 0.9, weight_decay: float = 1e-5,
                 batch_size: int = 192, seed: int = 0) -> ProbeResult:
    """Train BN(affine=False) + linear on frozen features; top-1 on the test features."""
    torch.manual_seed(seed)
    probe = LinearProbe(channels or train_x.shape[1], train_x.shape[1], num_classes)
    opt = torch.optim.SGD(probe.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        for g in opt.param_groups:
            g["lr"] = lr * 0.1 ** sum(epoch >= m for m in milestones)
        probe.train()
        order = torch.randperm(len(train_x), generator=gen)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            loss = F.cross_entropy(probe(train_x[idx]), train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    probe.eval()
    with torch.no_grad():
        test_top1 = _accuracy(probe, test_x, test_y)
        train_top1 = _accuracy(probe, train_x, train_y)
    return ProbeResult(test_top1, train_top1, train_x.shape[1])


def _accuracy(probe: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 4096) -> float:
    hits = sum(int((probe(x[i:i + chunk]).argmax(1) == y[i:i + chunk]).sum()) for i in range(0, len(x), chunk))
    return hits / len(x)


# ---------------------------------------------------------------------------------------------
# Weighted kNN
# ---------------------------------------------------------------------------------------------

def knn_scores(train_x: torch.Tensor, train_y: torch.Tensor, query: torch.Tensor, num_classes: int,
               k: int = 200, temperature: float = 0.07, chunk: int = 1024) -> torch.Tensor:
    """(Q, num_classes) class votes: each of the k most cosine-similar training features votes for
    its label with weight exp(sim / temperature) (NPID's weighted kNN)."""
    train = F.normalize(train_x.float(), dim=1)
    k = min(k, len(train))
    scores = torch.zeros(len(query), num_classes)
    for i in range(0, len(query), chunk):
        sim = F.normalize(query[i:i + chunk].float(), dim=1) @ train.T
        top_sim, top_idx = sim.topk(k, dim=1)
        scores[i:i + chunk].scatter_add_(1, train_y[top_idx], (top_sim / temperature).exp())
    return scores


def knn_accuracy(train_x, train_y, test_x, test_y, num_classes: int, k: int = 200, temperature: float = 0.07) -> float:
    pred = knn_scores(train_x, train_y, test_x, num_classes, k, temperature).argmax(1)
    return float((pred == test_y).float().mean())


# ---------------------------------------------------------------------------------------------
# Clustering
# ---------------------------------------------------------------------------------------------

def kmeans(x: torch.Tensor, k: int, seed: int = 0, niter: int = 20) -> np.ndarray:
    """Cluster index of each row of ``x`` (FAISS k-means)."""
    import faiss

    data = np.ascontiguousarray(x.float().numpy())
    km = faiss.Kmeans(data.shape[1], k, niter=niter, seed=seed, verbose=False, spherical=False)
    km.train(data)
    _, assign = km.index.search(data, 1)
    return assign[:, 0]


def _contingency(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    table = np.zeros((ai.max() + 1, bi.max() + 1), dtype=np.int64)
    np.add.at(table, (ai, bi), 1)
    return table


def nmi(a: Sequence[int], b: Sequence[int]) -> float:
    """Normalised mutual information, I(a; b) / mean(H(a), H(b)) (arithmetic normalisation)."""
    table = _contingency(np.asarray(a).ravel(), np.asarray(b).ravel()).astype(np.float64)
    p = table / table.sum()
    pa, pb = p.sum(1), p.sum(0)
    nz = p > 0
    mi = float((p[nz] * np.log(p[nz] / np.outer(pa, pb)[nz])).sum())
    ha, hb = float(-(pa * np.log(pa)).sum()), float(-(pb * np.log(pb)).sum())
    if ha == 0.0 and hb == 0.0:
        return 1.0
    return max(0.0, mi / ((ha + hb) / 2)) if ha + hb > 0 else 0.0


def hungarian_accuracy(pred: Sequence[int], labels: Sequence[int]) -> float:
    """Accuracy of ``pred`` after the one-to-one relabelling of clusters to classes that maximises it."""
    from scipy.optimize import linear_sum_assignment

    table = _contingency(np.asarray(pred).ravel(), np.asarray(labels).ravel())
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / table.sum())


# ---------------------------------------------------------------------------------------------
# Protocols over all layers, with the random-init baseline
# ---------------------------------------------------------------------------------------------

def _num_classes(*label_sets: torch.Tensor) -> int:
    top = max(int(y.max()) for y in label_sets)
    if min(int(y.min()) for y in label_sets) < 0:
        raise UsageError("evaluation needs labelled data (this data has images without labels)")
    return top + 1


def evaluate_layers(model: nn.Module, protocol: str, train_set, test_set, layers: Sequence[str], *, k: int = 200,
                    temperature: float = 0.07, probe_epochs: int = 36, probe_dims: int = PROBE_DIMS, seed: int = 0,
                    counter: SkipCounter | None = None, tag: str = "") -> dict[str, dict[str, float]]:
    """{layer: {metric: value in %}} for one model under one protocol."""
    from zoo.inspect import layer_shapes

    shapes = layer_shapes(model, model.entry.input)
    results: dict[str, dict[str, float]] = {}
    if protocol == "linear":
        pools = {name: probe_pool(model, name, shapes[name], probe_dims) for name in layers}
    else:
        pools = {name: (global_pool() if len(shapes[name]) == 3 else nn.Identity()) for name in layers}
    test_x, test_y = extract_features(model, test_set, layers, pools, counter=counter, progress=f"{tag} test features")
    if protocol == "retrieval":
        from zoo.retrieval import retrieval_metrics

        for name in layers:
            found = retrieval_metrics(F.normalize(test_x[name], dim=1).numpy(), test_y.numpy(), ks=(1,))
            results[name] = {"map": 100 * found["mAP"], "r1": 100 * found["recall@1"]}
        return results
    if protocol == "cluster":
        classes = _num_classes(test_y)
        for name in layers:
            assign = kmeans(F.normalize(test_x[name], dim=1), classes, seed)
            results[name] = {"nmi": 100 * nmi(assign, test_y.numpy()),
                             "acc": 100 * hungarian_accuracy(assign, test_y.numpy())}
        return results
    train_x, train_y = extract_features(model, train_set, layers, pools, counter=counter,
                                        progress=f"{tag} train features")
    classes = _num_classes(train_y, test_y)
    for name in layers:
        if protocol == "linear":
            channels = shapes[name][0]
            res = linear_probe(train_x[name], train_y, test_x[name], test_y, classes, channels=channels,
                               epochs=probe_epochs, seed=seed)
            results[name] = {"top1": 100 * res.top1, "dims": res.dims}
        else:
            results[name] = {"top1": 100 * knn_accuracy(train_x[name], train_y, test_x[name], test_y, classes, k,
                                                         temperature)}
    return results


_METRICS = {  # protocol -> [(metric key, card metric name, task)]
    "linear": [("top1", "top-1", "image-classification")],
    "knn": [("top1", "top-1", "image-classification")],
    "cluster": [("nmi", "NMI", "image-clustering"), ("acc", "accuracy (Hungarian)", "image-clustering")],
    "retrieval": [("map", "mAP", "image-retrieval"), ("r1", "recall@1", "image-retrieval")],
}


def _protocol_text(protocol: str, layer: str, dims: int | None, train_desc: str, test_desc: str, k: int,
                   temperature: float, epochs: int, classes_hint: str = "") -> str:
    if protocol == "linear":
        return (f"linear probe on frozen {layer} features (pooled to {dims:,} dims, BatchNorm without affine, "
                f"linear layer; SGD momentum 0.9, wd 1e-5, batch 192, lr 0.01 /10 at epochs 10/20/30, {epochs} "
                f"epochs; trained on {train_desc}, centre crops)")
    if protocol == "knn":
        return (f"weighted kNN on globally average-pooled {layer} features (cosine, k={k}, votes exp(sim/{temperature:g})); "
                f"memory: {train_desc}")
    if protocol == "retrieval":
        return (f"copy detection: each image queries all the others by cosine similarity of globally average-pooled "
                f"{layer} features; positives are the other copies of its photo (zoo.retrieval, leave-one-out)")
    return (f"k-means (FAISS, k = number of classes) on L2-normalised, globally average-pooled {layer} features of "
            f"{test_desc}{classes_hint}")


def run_protocol(model_or_dir: str | Path, protocol: str, data: str | None = None, layers: Sequence[str] | None = None,
                 train_limit: int | None = 10_000, test_limit: int | None = 10_000, baseline: bool = True,
                 k: int = 200, temperature: float = 0.07, probe_epochs: int | None = None, seed: int = 0,
                 command: str = "") -> dict[str, Any]:
    """Evaluate a model (and a random-init copy of its architecture) and return the results JSON."""
    if protocol not in _METRICS:
        raise UsageError(f"unknown protocol {protocol!r}; use {', '.join(_METRICS)}")
    if protocol == "retrieval" and data is not None:
        raise UsageError("the retrieval protocol uses the copy-detection set made from the shipped photos; "
                         "--data does not apply to it")
    loaded = load_model(model_or_dir, seed)
    model = loaded.model
    layers = model.resolve_layers(layers)
    epochs = probe_epochs or 36
    command = command or f"zoo eval {model_or_dir} --protocol {protocol}"
    if protocol == "retrieval":
        from zoo.retrieval import copy_detection_set

        cds = copy_detection_set(seed=seed)
        photos = int(cds.groups.max()) + 1
        test_set = ImageList(cds.images, cds.groups, f"copy-detection set of the shipped photos: {photos} originals + "
                             f"{len(cds.images) - photos} strongly distorted copies")
    else:
        test_set = limit_dataset(open_dataset(data, "test"), test_limit, seed)
    train_set = None if protocol in ("cluster", "retrieval") else limit_dataset(open_dataset(data, "train"), train_limit, seed)
    if loaded.source == "random-init":
        calibrate_batchnorm(model, train_set or test_set)
    counter = SkipCounter()
    kw = dict(k=k, temperature=temperature, probe_epochs=epochs, seed=seed, counter=counter)
    per_layer = evaluate_layers(model, protocol, train_set, test_set, layers, tag=loaded.name, **kw)
    base_per_layer = None
    if baseline:
        arch_kwargs = dict(getattr(model, "arch_kwargs", {}))
        base = calibrate_batchnorm(random_init(loaded.name, arch_kwargs, seed), train_set or test_set)
        base_per_layer = evaluate_layers(base, protocol, train_set, test_set, layers, tag="random-init", **kw)
    train_desc = describe(train_set) if train_set is not None else ""
    calibration = (f"{min(BN_CALIBRATION_IMAGES, len(train_set)):,} training images" if train_set is not None
                   else f"{min(BN_CALIBRATION_IMAGES, len(test_set)):,} of the evaluated images, labels unused")
    test_desc = describe(test_set)
    metrics = []
    for key, metric, task in _METRICS[protocol]:
        best = max(layers, key=lambda name: per_layer[name][key])
        entry: dict[str, Any] = {
            "task": task, "dataset": test_desc, "metric": metric, "value": round(per_layer[best][key], 2),
            "layer": best, "protocol_id": protocol,
            "protocol": _protocol_text(protocol, best, per_layer[best].get("dims"), train_desc, test_desc, k,
                                       temperature, epochs),
            "per_layer": {name: round(per_layer[name][key], 2) for name in layers},
            "command": command,
        }
        if base_per_layer is not None:
            base_best = max(layers, key=lambda name: base_per_layer[name][key])
            entry["protocol"] += (f"; random-init baseline: the same architecture with fresh weights (BN statistics "
                                  f"re-estimated on {calibration}), same protocol, its best layer {base_best}")
            entry["baseline"] = {"random-init": round(base_per_layer[base_best][key], 2)}
            entry["baseline_layer"] = {"random-init": base_best}
            entry["baseline_per_layer"] = {"random-init": {n: round(base_per_layer[n][key], 2) for n in layers}}
        metrics.append(entry)
    weights = (loaded.config or {}).get("weights", {})
    return {
        "model": loaded.name, "source": loaded.source, "weights_sha256": weights.get("sha256"),
        "protocol": protocol, "command": command,
        "data": {"train": train_desc, "test": test_desc}, "skipped_images": counter.skipped,
        "training": (loaded.config or {}).get("training"), "results": metrics,
    }


def print_report(report: dict[str, Any]) -> None:
    import click

    from zoo.cli import print_table

    click.echo(f"{report['model']} ({report['source']}), protocol {report['protocol']}: test {report['data']['test']}"
               + (f", train {report['data']['train']}" if report["data"]["train"] else ""))
    for entry in report["results"]:
        base = entry.get("baseline_per_layer", {}).get("random-init", {})
        rows = [(layer, f"{value:.2f}", f"{base[layer]:.2f}" if layer in base else "-")
                for layer, value in entry["per_layer"].items()]
        click.echo(f"\n{entry['metric']} (%)")
        print_table(("layer", "model", "random-init"), rows)
        line = f"best: {entry['layer']} {entry['value']:.2f}"
        if "baseline" in entry:
            line += f"; random-init best: {entry['baseline_layer']['random-init']} {entry['baseline']['random-init']:.2f}"
        click.echo(line)
    if report["skipped_images"]:
        click.echo(f"skipped {report['skipped_images']} unreadable image(s)")


def _card_training(training: dict[str, Any] | None) -> dict[str, Any] | None:
    if not training:
        return None
    keys = ("recipe", "command", "epochs", "seconds", "data", "metrics", "steps", "method", "world_size", "seed",
            "batch_size")
    return {k: training[k] for k in keys if k in training}


def record_results(report: dict[str, Any], cards_dir: str | Path | None = None) -> Path:
    """Merge ``report`` into ``<cards_dir>/results/<model>.json`` (``zoo.cards``' folder by default).

    An entry with the same task, dataset, metric and protocol replaces the old one; the others are
    kept, unless they were measured on other weights (another ``weights_sha256``): then the file
    starts afresh, so a card never mixes numbers of two checkpoints.
    """
    from zoo.cards import results_path
    from zoo.checkpoint import atomic_write_text

    if report["source"] == "random-init":
        raise UsageError(f"nothing to record: {report['model']} was evaluated with random weights; pass a "
                         "checkpoint folder (the random-init baseline is recorded beside a trained model's numbers)")
    path = results_path(report["model"], cards_dir)
    doc: dict[str, Any] = {"model": report["model"], "results": []}
    if path.is_file():
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ZooError(f"{path} is not valid JSON ({err}); fix or delete it, nothing was written") from None
        if doc.get("model") != report["model"]:
            raise ZooError(f"{path} belongs to model {doc.get('model')!r}, not {report['model']!r}")
        if doc.get("weights_sha256") != report.get("weights_sha256"):
            doc = {"model": report["model"], "results": []}
    if report.get("weights_sha256"):
        doc["weights_sha256"] = report["weights_sha256"]
    training = _card_training(report.get("training"))
    if training:
        doc["training"] = training
    doc.setdefault("results", [])
    for entry in report["results"]:
        key = (entry["task"], entry["dataset"], entry["metric"], entry["protocol_id"])
        doc["results"] = [r for r in doc["results"]
                          if (r.get("task"), r.get("dataset"), r.get("metric"), r.get("protocol_id")) != key]
        doc["results"].append(entry)
    atomic_write_text(path, json.dumps(doc, indent=2) + "\n")
    return path
