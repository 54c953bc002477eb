"""Evaluation protocols on frozen features, with held-out choices, several seeds and a random-init baseline.

Library functions first (each small and testable alone), then ``evaluate``, which scores one
model's checkpoints (one per training seed) and random-init copies of its architecture through
exactly the same code, and ``record_results``, which merges the numbers into a results file.

Data: the probe-training set (10,000 train-split images), a validation set (5,000 other
train-split images) and the test split. Every choice -- the layer, the pooled probe's L2 weight --
is made on the validation set; the test set is only reported. A result is the mean over the
checkpoints of the test score at each one's chosen layer, with the sample standard deviation.

* ``linear`` (the DeepCluster / linear-probes protocol): each frozen layer is pooled to about
  9,000 numbers -- AlexNet's conv layers with the fixed max-pools of yukimasano/linear-probes
  (6/6/3, 4/4/0, 3/3/1, 3/3/1, 2/2/0, i.e. 9,600/9,216/9,600/9,600/9,216 dims for DeepCluster's
  widths); other networks (ResNet stages, NIN blocks, ...) by adaptive average pooling to the
  largest square grid with at most ``dims`` values (ResNet-50: 64x12x12, 256x6x6, 512x4x4,
  1024x3x3, 2048x2x2) -- then BatchNorm without affine parameters (per channel) and one linear
  layer, trained with SGD (momentum 0.9, weight decay 1e-5, batch 192, lr 0.01 divided by 10 at
  epochs 10, 20 and 30 of 36). Features are computed once from centre crops and cached, so the
  probe sees no augmentation (the original re-crops every epoch and tests on ten crops).
* ``linear-pool`` (the ResNet protocol of SimCLR, BYOL, solo-learn): the embedding layer globally
  average-pooled, standardised, and a multinomial logistic regression fitted by L-BFGS, its L2
  weight chosen on the validation set. Random weights are much weaker here than in ``linear``.
* ``knn`` (NPID): cosine similarity of L2-normalised, globally average-pooled features; the k
  nearest training images vote for their class with weight exp(sim / T); k=200, T=0.07.
* ``cluster``: k-means (FAISS, k = number of classes) on the same pooled, normalised features;
  NMI and the accuracy of the best one-to-one cluster-to-class map (Hungarian algorithm).
* ``retrieval``: ``training.retrieval_benchmark`` (distorted copies of held-out images as queries,
  their originals among distractors), mAP and recall@1 with bootstrap intervals; the layer is
  chosen on the benchmark's validation variant.
* ``photo-retrieval`` (for colour-photo models; not part of ``all``): the same metrics on
  ``heldout_photo_benchmark``, copies of tiles of the held-out photos only, the layer chosen on its
  variant built from the training photos; raw pixels (16x16 RGB thumbnails) are scored beside the
  random-init networks, whose BatchNorm statistics then come from the training photos' tiles.

The random-init baseline re-estimates its BatchNorm statistics on real images first. Scores are
cached (``~/.cache/sslzoo/eval-scores``) by the weights' sha256 or the random-init seed and
architecture, with the protocol, data and settings: every model of one architecture is compared
with the same random networks, and adding a seed scores only the new checkpoint.
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

from training.data import (ImageList, SampleView, SkipCounter, describe, disjoint_subsets, iterate_batches,
                           limit_dataset, open_dataset)
from training.clustering import kmeans
from training.methods.mixup import MixupWithoutHesitation, draw_mixup, mix, mixed_loss
from training.recipes import Schedule
from training.transforms import eval_transform
from zoo.errors import UsageError, ZooError
from zoo.cli import progress_wanted
from zoo.fileset import read_json
from zoo.registry import RANDOM_PREFIX
from zoo.results import beats_random_init

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
def extract_features(model: nn.Module, dataset, layers: Sequence[str], pools: dict[Any, nn.Module],
                     batch_size: int = 256, counter: SkipCounter | None = None,
                     progress: str | None = None) -> tuple[dict[Any, torch.Tensor], torch.Tensor]:
    """Pooled, flattened features for every readable image, and the labels.

    ``pools`` maps a key to a pooling module: a layer name, or ``(anything, layer name)`` to pool
    one layer several ways in the same forward pass. Images get the model's reference
    preprocessing (``model.entry.input``).
    """
    model.eval()
    view = SampleView(dataset, eval_transform(model.entry.input))
    layer_of = {key: key[-1] if isinstance(key, tuple) else key for key in pools}
    feats: dict[Any, list[torch.Tensor]] = {key: [] for key in pools}
    labels = []
    batches = iterate_batches(view, batch_size, counter=counter)
    if progress and progress_wanted():
        from tqdm import tqdm

        batches = tqdm(batches, total=math.ceil(len(view) / batch_size), desc=progress, unit="batch",
                       leave=False, mininterval=1.0)
    for batch in batches:
        out = model.forward_features(batch["x"], list(layers))
        for key, pool in pools.items():
            feats[key].append(pool(out[layer_of[key]]).flatten(1).float())
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
    val_top1: float | None = None


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 num_classes: int, channels: int | None = None, epochs: int = 36, lr: float = 0.01,
                 milestones: Sequence[int] = (10, 20, 30), momentum: float = 0.9, weight_decay: float = 1e-5,
                 batch_size: int = 192, seed: int = 0, val_x: torch.Tensor | None = None,
                 val_y: torch.Tensor | None = None, mixup: MixupWithoutHesitation | None = None) -> ProbeResult:
    """Train BN(affine=False) + linear on frozen features; top-1 on the test (and validation) features.

    ``mixup``: train with mixup without hesitation on the probe's inputs (the frozen, pooled
    features: the images are not mixed, their features are), epoch by epoch as the paper does."""
    torch.manual_seed(seed)
    probe = LinearProbe(channels or train_x.shape[1], train_x.shape[1], num_classes)
    opt = torch.optim.SGD(probe.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    schedule = Schedule("step", milestones=tuple(milestones), gamma=0.1)  # the training recipes' step schedule
    for epoch in range(epochs):
        for g in opt.param_groups:
            g["lr"] = lr * schedule.factor(epoch, epochs)
        probe.train()
        order = torch.randperm(len(train_x), generator=gen)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            x, y = train_x[idx], train_y[idx]
            if mixup is None:
                loss = F.cross_entropy(probe(x), y)
            else:
                partner, lam = draw_mixup(mixup, epoch, epochs, len(idx))
                logits = probe(mix(x, partner, lam))
                loss = mixed_loss(lambda target: F.cross_entropy(logits, target), y, partner, lam)
            opt.zero_grad()
            loss.backward()
            opt.step()
    probe.eval()
    with torch.no_grad():
        test_top1 = _accuracy(probe, test_x, test_y)
        train_top1 = _accuracy(probe, train_x, train_y)
        val_top1 = _accuracy(probe, val_x, val_y) if val_x is not None else None
    return ProbeResult(test_top1, train_top1, train_x.shape[1], val_top1)


def _accuracy(probe: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 4096) -> float:
    hits = sum(int((probe(x[i:i + chunk]).argmax(1) == y[i:i + chunk]).sum()) for i in range(0, len(x), chunk))
    return hits / len(x)


# L2 weights the pooled probe tries; each fit starts from zero, so each is the same wherever it runs.
POOLED_WEIGHT_DECAYS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)


def logistic_regression(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float,
                        max_iter: int = 100) -> nn.Linear:
    """Multinomial logistic regression, ``mean CE + weight_decay / 2 * |W|^2``, fitted with L-BFGS.

    Full-batch and deterministic for a given thread count: no sampling, a zero start.
    """
    linear = nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.zero_()
    opt = torch.optim.LBFGS(linear.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(linear(x), y) + 0.5 * weight_decay * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return linear


@dataclass
class PooledProbeResult:
    val_top1: float
    test_top1: float
    weight_decay: float  # chosen on the validation features


def pooled_linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
                        test_x: torch.Tensor, test_y: torch.Tensor, num_classes: int,
                        weight_decays: Sequence[float] = POOLED_WEIGHT_DECAYS) -> PooledProbeResult:
    """The ResNet protocol on globally pooled features: standardise with the training features'
    mean and std, fit a linear classifier, choose its L2 weight on the validation features."""
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)

    def scaled(t: torch.Tensor) -> torch.Tensor:
        return (t - mean) / std

    x = scaled(train_x)
    best = None
    for wd in weight_decays:
        linear = logistic_regression(x, train_y, num_classes, wd)
        with torch.no_grad():
            val = _accuracy(linear, scaled(val_x), val_y)
            if best is None or val > best.val_top1:
                best = PooledProbeResult(val, _accuracy(linear, scaled(test_x), test_y), wd)
    return best


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
# Evaluation data: probe training, validation (every choice is made here), test (reported only)
# ---------------------------------------------------------------------------------------------

PROTOCOLS = ("linear", "linear-pool", "knn", "cluster", "retrieval")
# Protocols that must be asked for by name (``all`` is the Fashion-MNIST evaluation of every model).
PHOTO_PROTOCOLS = ("photo-retrieval",)
RAW_PIXELS = "raw-pixels"  # the no-network baseline of photo-retrieval
RAW_PIXEL_SIDE = 16
VAL_IMAGES = 5_000
# Bumped whenever a protocol changes what it computes: the score cache (random-init baselines
# included) keys on its protocol's version. Retrieval 3: non-square photos resized and centre-cropped
# as torchvision rounds (the benchmark's photos part changed; its Fashion-MNIST part did not).
PROTOCOL_VERSIONS = {"linear": 2, "linear-pool": 2, "knn": 2, "cluster": 2, "retrieval": 3, "photo-retrieval": 1}


@dataclass(frozen=True)
class EvalSettings:
    train_limit: int = 10_000   # probe training set / kNN memory: a fixed random subset of the train split
    val_size: int = VAL_IMAGES  # validation: other train-split images, disjoint from the above
    test_limit: int = 10_000    # the test split (reported, never used for a choice)
    k: int = 200
    temperature: float = 0.07
    probe_epochs: int = 36
    probe_dims: int = PROBE_DIMS
    seed: int = 0               # data subsets, probe initialisation, k-means
    probe_mixup: str | None = None  # "mwh": the per-layer linear probe trains with mixup without hesitation

    def probe_mixup_schedule(self) -> MixupWithoutHesitation | None:
        return PROBE_MIXUP[self.probe_mixup] if self.probe_mixup else None


# The linear probe's mixup schedules by name: "mwh" is mixup without hesitation with the authors'
# settings (alpha 0.5, mixup to 60 % of the epochs, alternating to 90 %, then fading; one-epoch periods).
PROBE_MIXUP = {"mwh": MixupWithoutHesitation()}


@dataclass
class EvalData:
    train: Any
    val: Any
    test: Any


def photo_evaluation_data(settings: EvalSettings) -> EvalData:
    """photo-retrieval alone needs no classification data: the random-init networks' BatchNorm
    statistics come from the training photos' tiles and copies (its validation variant)."""
    from training.retrieval_benchmark import heldout_photo_benchmark

    val, test = heldout_photo_benchmark("val", settings.seed), heldout_photo_benchmark("test", settings.seed)
    training = ImageList(val.database.images + val.queries.images, [0] * (len(val.database) + len(val.queries)),
                         "training photos' tiles and copies")
    return EvalData(training, training, test.queries)


def evaluation_data(data: str | None, settings: EvalSettings) -> EvalData:
    """Disjoint probe-training and validation subsets of the train split, and the test split."""
    train, val = disjoint_subsets(open_dataset(data, "train"), (settings.train_limit, settings.val_size), settings.seed)
    test = limit_dataset(open_dataset(data, "test"), settings.test_limit, settings.seed)
    return EvalData(train, val, test)


def _num_classes(*label_sets: torch.Tensor) -> int:
    top = max(int(y.max()) for y in label_sets)
    if min(int(y.min()) for y in label_sets) < 0:
        raise UsageError("evaluation needs labelled data (this data has images without labels)")
    return top + 1


# ---------------------------------------------------------------------------------------------
# Scores of every layer of one model, on the validation and on the test data
# ---------------------------------------------------------------------------------------------

class _Features:
    """Pooled features of one model, computed once per data set -- every pooling the protocols need in
    the same forward pass -- and reused by all protocols."""

    def __init__(self, model: nn.Module, layers: Sequence[str], settings: EvalSettings, counter: SkipCounter,
                 tag: str | None, poolings: Sequence[str] = ("global",)):
        from zoo.inspect import layer_shapes

        self.model, self.layers, self.settings, self.counter, self.tag = model, list(layers), settings, counter, tag
        self.shapes = layer_shapes(model, model.entry.input)
        self.poolings = list(poolings)
        self.cache: dict[tuple[str, str], tuple[dict[str, torch.Tensor], torch.Tensor]] = {}

    def _pools(self, pooling: str) -> dict[str, nn.Module]:
        if pooling == "probe":
            return {n: probe_pool(self.model, n, self.shapes[n], self.settings.probe_dims) for n in self.layers}
        return {n: (global_pool() if len(self.shapes[n]) == 3 else nn.Identity()) for n in self.layers}

    def get(self, name: str, dataset, pooling: str = "global") -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        if (name, pooling) not in self.cache:
            # the probe and pooled protocols share the classification splits; other sets need one pooling
            poolings = sorted({pooling, *self.poolings}) if name in ("train", "val", "test") else [pooling]
            pools = {(p, n): m for p in poolings for n, m in self._pools(p).items()}
            feats, labels = extract_features(self.model, dataset, self.layers, pools, counter=self.counter,
                                             progress=f"{self.tag} {name} features" if self.tag else None)
            for p in poolings:
                self.cache[(name, p)] = ({n: feats[(p, n)] for n in self.layers}, labels)
        return self.cache[(name, pooling)]

    def drop(self, pooling: str) -> None:
        self.cache = {k: v for k, v in self.cache.items() if k[1] != pooling}
        self.poolings = [p for p in self.poolings if p != pooling]


Scores = dict[str, dict[str, dict[str, Any]]]  # metric -> layer -> {"val": %, "test": %, extras}


def _pair(val: float, test: float, **extra: Any) -> dict[str, Any]:
    return {"val": 100 * val, "test": 100 * test, **extra}


def score_layers(feats: _Features, protocol: str, data: EvalData) -> Scores:
    """Every layer's metric(s) for one protocol, measured on the validation and the test data."""
    s = feats.settings
    if protocol in ("retrieval", "photo-retrieval"):
        return _score_retrieval(feats, protocol)
    if protocol == "cluster":
        (val_x, val_y), (test_x, test_y) = feats.get("val", data.val), feats.get("test", data.test)
        classes = _num_classes(val_y, test_y)
        out: Scores = {"nmi": {}, "acc": {}}
        for name in feats.layers:
            found = {}
            for split, x, y in (("val", val_x, val_y), ("test", test_x, test_y)):
                assign = kmeans(F.normalize(x[name], dim=1).float().numpy(), classes, seed=s.seed, all_points=False).assignments
                found[split] = (nmi(assign, y.numpy()), hungarian_accuracy(assign, y.numpy()))
            out["nmi"][name] = _pair(found["val"][0], found["test"][0])
            out["acc"][name] = _pair(found["val"][1], found["test"][1])
        return out
    pooling = "probe" if protocol == "linear" else "global"
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = (
        feats.get("train", data.train, pooling), feats.get("val", data.val, pooling), feats.get("test", data.test, pooling))
    classes = _num_classes(train_y, val_y, test_y)
    out = {"top1": {}}
    if protocol == "linear-pool":
        name = embedding_layer(feats.model, feats.layers)
        res = pooled_linear_probe(train_x[name], train_y, val_x[name], val_y, test_x[name], test_y, classes)
        out["top1"][name] = _pair(res.val_top1, res.test_top1, weight_decay=res.weight_decay,
                                  dims=int(train_x[name].shape[1]))
        return out
    for name in feats.layers:
        if protocol == "linear":
            res = linear_probe(train_x[name], train_y, test_x[name], test_y, classes, channels=feats.shapes[name][0],
                               epochs=s.probe_epochs, seed=s.seed, val_x=val_x[name], val_y=val_y,
                               mixup=s.probe_mixup_schedule())
            out["top1"][name] = _pair(res.val_top1, res.top1, dims=res.dims)
        else:
            out["top1"][name] = _pair(
                knn_accuracy(train_x[name], train_y, val_x[name], val_y, classes, s.k, s.temperature),
                knn_accuracy(train_x[name], train_y, test_x[name], test_y, classes, s.k, s.temperature))
    if protocol == "linear":
        feats.drop("probe")  # ~9,000 numbers per image and layer: free them as soon as the probes are done
    return out


def embedding_layer(model: nn.Module, layers: Sequence[str]) -> str:
    """The layer the pooled probe reads: the entry's embedding layer, else the deepest evaluated layer."""
    chosen = model.entry.embedding_layer
    return chosen if chosen in layers else list(layers)[-1]


def protocol_benchmark(protocol: str, split: str, seed: int):
    """The copy-detection benchmark a retrieval protocol scores."""
    from training.retrieval_benchmark import heldout_photo_benchmark, retrieval_benchmark

    return (heldout_photo_benchmark if protocol == "photo-retrieval" else retrieval_benchmark)(split, seed=seed)


def _score_retrieval(feats: _Features, protocol: str = "retrieval") -> Scores:
    from training.retrieval_benchmark import benchmark_metrics

    found: dict[str, dict[str, dict[str, Any]]] = {}
    for split in ("val", "test"):
        bench = protocol_benchmark(protocol, split, feats.settings.seed)
        queries, _ = feats.get(f"{bench.name} queries", bench.queries)
        database, _ = feats.get(f"{bench.name} database", bench.database)
        found[split] = {name: benchmark_metrics(F.normalize(queries[name], dim=1).numpy(),
                                                F.normalize(database[name], dim=1).numpy(), bench.positives,
                                                bench.part, seed=feats.settings.seed,
                                                database_parts=bench.database_part)
                        for name in feats.layers}
    out: Scores = {"map": {}, "r1": {}}
    for key in out:
        for name in feats.layers:
            val, test = _main_part(found["val"][name]), _main_part(found["test"][name])
            parts = {part: m[key] for part, m in found["test"][name].get("parts", {}).items()}
            out[key][name] = {"val": val[key], "test": test[key], "ci95": test[f"{key}_ci"], "parts": parts,
                              "queries": test.get("queries")}
    return out


def _main_part(metrics: dict[str, Any]) -> dict[str, Any]:
    """The Fashion-MNIST part of the benchmark is the headline; the photos part is reported beside it."""
    return metrics.get("parts", {}).get("fmnist", metrics)


# ---------------------------------------------------------------------------------------------
# Held-out selection and seeds
# ---------------------------------------------------------------------------------------------

def select_layer(by_layer: dict[str, dict[str, Any]]) -> str:
    """The layer with the best validation score (the earlier layer on a tie). The test score never chooses."""
    return max(by_layer, key=lambda name: by_layer[name]["val"])


def summarise_seeds(per_seed: Sequence[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Mean and sample std over seeds of the test score at each seed's validation-chosen layer."""
    chosen = [select_layer(by_layer) for by_layer in per_seed]
    values = [by_layer[layer]["test"] for by_layer, layer in zip(per_seed, chosen)]
    layers = list(per_seed[0])
    return {
        "value": float(np.mean(values)),
        "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
        "per_seed": [round(v, 2) for v in values],
        "layer": max(set(chosen), key=lambda name: (chosen.count(name), -layers.index(name))),
        "layer_per_seed": chosen,
        "per_layer": {name: float(np.mean([by_layer[name]["test"] for by_layer in per_seed])) for name in layers},
        "per_layer_std": ({name: float(np.std([by_layer[name]["test"] for by_layer in per_seed], ddof=1))
                           for name in layers} if len(per_seed) > 1 else None),
    }


# ---------------------------------------------------------------------------------------------
# Scores cached by what determines them: a checkpoint's weights (sha256), or a random-init seed of
# an architecture, with the protocol, layers, data and settings. Every model of one architecture
# is compared with the same random networks, and re-running an evaluation with more seeds scores
# only the new checkpoints.
# ---------------------------------------------------------------------------------------------

def _cache_dir() -> Path:
    import os

    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root).expanduser() / "sslzoo" / "eval-scores"


def _score_key(weights: dict[str, Any], model: nn.Module, protocol: str, layers: Sequence[str],
               settings: EvalSettings, data: str | None) -> str:
    import dataclasses
    import hashlib

    spec = {"weights": weights, "arch": model.entry.arch, "arch_kwargs": dict(getattr(model, "arch_kwargs", {})),
            "input": dataclasses.asdict(model.entry.input), "embedding": model.entry.embedding_layer,
            "protocol": protocol, "layers": list(layers), "settings": _settings_key(settings), "data": data,
            "version": PROTOCOL_VERSIONS[protocol], "torch": torch.__version__, "threads": torch.get_num_threads()}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=list).encode()).hexdigest()[:24]


def _settings_key(settings: EvalSettings) -> dict[str, Any]:
    """The settings as the score cache keys them: ``probe_mixup`` only when set, so that the scores
    cached before it existed stay valid."""
    import dataclasses

    key = dataclasses.asdict(settings)
    if key["probe_mixup"] is None:
        del key["probe_mixup"]
    return key


def cached_scores(weights: dict[str, Any], make_model, protocols: Sequence[str], layers: Sequence[str],
                  settings: EvalSettings, data_spec: str | None, data: EvalData, counter: SkipCounter,
                  tag: str | None) -> dict[str, Scores]:
    """``score_layers`` of every protocol for one model, read from the cache where these weights
    (``{"sha256": ...}`` or ``{"random-init": seed}``) were scored the same way before.
    ``make_model()`` builds the model only when something is missing."""
    from zoo.checkpoint import atomic_write_text

    found, missing, model = {}, [], None
    for protocol in protocols:
        if weights.get("sha256") is None and "random-init" not in weights:
            missing.append((protocol, None))  # weights without a hash are never cached
            continue
        if model is None:
            model = make_model()
        path = _cache_dir() / f"{_score_key(weights, model, protocol, layers, settings, data_spec)}.json"
        try:
            found[protocol] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            missing.append((protocol, path))
    if missing:
        model = model or make_model()
        feats = _Features(model, layers, settings, counter, tag, _poolings([p for p, _ in missing]))
        for protocol, path in missing:
            found[protocol] = score_layers(feats, protocol, data)
            if path is not None:
                try:
                    atomic_write_text(path, json.dumps(found[protocol]) + "\n")
                except OSError:
                    pass  # a read-only cache only costs time
    return {p: found[p] for p in protocols}


def _random_init_maker(model: nn.Module, seed: int, data: EvalData):
    def make() -> nn.Module:
        base = random_init(model.entry.name, dict(getattr(model, "arch_kwargs", {})), seed)
        return calibrate_batchnorm(base, data.train)
    return make


def _poolings(protocols: Sequence[str]) -> list[str]:
    return ["global", "probe"] if "linear" in protocols else ["global"]


# ---------------------------------------------------------------------------------------------
# zoo eval: one or more checkpoints (training seeds of one model) beside random init
# ---------------------------------------------------------------------------------------------

_METRICS = {  # protocol -> [(score key, card metric name, task)]
    "linear": [("top1", "top-1", "image-classification")],
    "linear-pool": [("top1", "top-1", "image-classification")],
    "knn": [("top1", "top-1", "image-classification")],
    "cluster": [("nmi", "NMI", "image-clustering"), ("acc", "accuracy (Hungarian)", "image-clustering")],
    "retrieval": [("map", "mAP", "image-retrieval"), ("r1", "recall@1", "image-retrieval")],
    "photo-retrieval": [("map", "mAP", "image-retrieval"), ("r1", "recall@1", "image-retrieval")],
}


def protocol_list(protocol: str) -> list[str]:
    if protocol == "all":
        return list(PROTOCOLS)
    if protocol not in PROTOCOLS + PHOTO_PROTOCOLS:
        raise UsageError(f"unknown protocol {protocol!r}; use {', '.join(PROTOCOLS + PHOTO_PROTOCOLS)} or all")
    return [protocol]


def _mixup_text(settings: EvalSettings) -> str:
    if not settings.probe_mixup:
        return ""
    m = settings.probe_mixup_schedule()
    return (f"; mixup without hesitation on the pooled features: alpha {m.alpha:g}, every batch mixed up to "
            f"{m.p:.0%} of the epochs, mixed and plain epochs alternating up to {m.q:.0%}, then fading out")


def _protocol_text(protocol: str, settings: EvalSettings, train_desc: str, val_desc: str, dims: int | None = None,
                   weight_decay: float | None = None, bench: str = "") -> str:
    chosen = f"the layer is chosen on the validation split ({val_desc}), never on the test split"
    if protocol == "linear":
        return (f"linear probe on each frozen layer (pooled to about {settings.probe_dims:,} dims, BatchNorm without "
                f"affine, linear layer; SGD momentum 0.9, wd 1e-5, batch 192, lr 0.01 /10 at epochs 10/20/30, "
                f"{settings.probe_epochs} epochs; trained on {train_desc}, centre crops{_mixup_text(settings)}); "
                f"{chosen}")
    if protocol == "linear-pool":
        return (f"linear classifier on globally average-pooled features of the last stage ({dims} dims, standardised; "
                f"multinomial logistic regression by L-BFGS, L2 weight chosen on the validation split ({val_desc}) "
                f"from {', '.join(f'{w:g}' for w in POOLED_WEIGHT_DECAYS)}; trained on {train_desc}, centre crops)")
    if protocol == "knn":
        return (f"weighted kNN on globally average-pooled features (cosine, k={settings.k}, votes "
                f"exp(sim/{settings.temperature:g})); memory: {train_desc}; {chosen}")
    if protocol == "photo-retrieval":
        return (f"{bench}: each distorted copy queries the tiles by cosine similarity of L2-normalised, globally "
                f"average-pooled features; its tile is the one positive; 95% interval by bootstrap over queries; the "
                f"layer is chosen on the benchmark's variant built from the training photos, never on the held-out "
                f"photos; raw pixels: {RAW_PIXEL_SIDE}x{RAW_PIXEL_SIDE} RGB thumbnails, L2-normalised")
    if protocol == "retrieval":
        return (f"{bench}: each distorted copy queries the database by cosine similarity of "
                f"L2-normalised, globally average-pooled features; its original is the one positive; 95% interval "
                f"by bootstrap over queries; the layer is chosen on the benchmark's validation variant (built from "
                f"train-split images), never on the test variant")
    return (f"k-means (FAISS, k = number of classes) on L2-normalised, globally average-pooled features; {chosen} "
            f"(k-means on the validation images)")


def _load_seed_models(models: Sequence[str]) -> list[LoadedModel]:
    loaded = [load_model(m) for m in models]
    names = {m.name for m in loaded}
    if len(names) > 1:
        raise UsageError(f"several checkpoints evaluate as the seeds of one model; these are of {', '.join(sorted(names))}")
    if any(m.source == "random-init" for m in loaded) and len(loaded) > 1:
        raise UsageError("random:NAME evaluates alone (its seeds are --baseline-seeds)")
    shas = [((m.config or {}).get("weights") or {}).get("sha256") for m in loaded]
    if len(loaded) > 1 and len(set(shas)) < len(shas):
        raise UsageError("the same weights are given twice; pass one checkpoint per training seed")
    return loaded


def _seed_of(loaded: LoadedModel, position: int) -> int:
    training = (loaded.config or {}).get("training") or {}
    return int(training.get("seed", position))


def evaluate(models: Sequence[str], protocols: Sequence[str], data: str | None = None,
             layers: Sequence[str] | None = None, settings: EvalSettings = EvalSettings(), baseline_seeds: int = 3,
             command: str = "", progress: bool = True) -> dict[str, Any]:
    """Evaluate one model's checkpoints (one per training seed) under ``protocols``, beside
    ``baseline_seeds`` random-init copies of its architecture, and return the results JSON.

    Every choice (layer, probe L2 weight) is made on validation data; the test data is only
    reported. Values are means over the checkpoints with their sample standard deviation.
    ``progress=False``: no feature-extraction bars (they are drawn only on a terminal anyway).
    """
    protocols = [p for name in protocols for p in protocol_list(name)]
    if {"retrieval", *PHOTO_PROTOCOLS} & set(protocols) and data is not None:
        raise UsageError("the retrieval protocols use their own copy-detection benchmarks; --data does not apply to "
                         "them")
    loaded = _load_seed_models(models)
    first = loaded[0].model
    layers = first.resolve_layers(layers)
    command = command or f"zoo eval {' '.join(map(str, models))} --protocol {','.join(protocols)}"
    photos_only = set(protocols) <= set(PHOTO_PROTOCOLS)
    # random-init BN statistics come from its train images, always
    eval_data = photo_evaluation_data(settings) if photos_only else evaluation_data(data, settings)
    data = "photo-retrieval: training photos" if photos_only else data  # keys the score cache
    counter = SkipCounter()
    model_scores: list[dict[str, Scores]] = []
    for i, m in enumerate(loaded):
        if m.source == "random-init":
            weights, make = {"random-init": settings.seed}, _random_init_maker(m.model, settings.seed, eval_data)
        else:
            weights, make = {"sha256": ((m.config or {}).get("weights") or {}).get("sha256")}, lambda m=m: m.model
        model_scores.append(cached_scores(weights, make, protocols, layers, settings, data, eval_data, counter,
                                          f"{m.name} seed {_seed_of(m, i)}" if progress else None))
    base_scores = [cached_scores({"random-init": seed}, _random_init_maker(first, seed, eval_data), protocols, layers,
                                 settings, data, eval_data, counter, f"random-init seed {seed}" if progress else None)
                   for seed in range(baseline_seeds)]
    train_desc, val_desc = describe(eval_data.train), describe(eval_data.val)
    results = []
    for protocol in protocols:
        bench = ""
        if protocol in ("retrieval", "photo-retrieval"):
            bench = protocol_benchmark(protocol, "test", settings.seed).description
        for key, metric, task in _METRICS[protocol]:
            per_seed = [scores[protocol][key] for scores in model_scores]
            summary = summarise_seeds(per_seed)
            chosen = per_seed[0][summary["layer_per_seed"][0]]
            entry: dict[str, Any] = {
                "task": task,
                "dataset": _RETRIEVAL_DATASETS.get(protocol) or _dataset_name(eval_data.test),
                "split": "test",
                "split_size": chosen.get("queries") if protocol in _RETRIEVAL_DATASETS else len(eval_data.test),
                "metric": metric, "protocol_id": protocol,
                "value": round(summary["value"], 2),
                **({} if summary["std"] is None else {"std": round(summary["std"], 2)}),  # no spread from one seed
                "seeds": [_seed_of(m, i) for i, m in enumerate(loaded)],
                "per_seed": summary["per_seed"], "layer": summary["layer"], "layer_per_seed": summary["layer_per_seed"],
                "layer_selected_on": _LAYER_SELECTED_ON.get(protocol, f"validation: {val_desc}"),
                "per_layer": _rounded_layers(summary["per_layer"]),
                **({} if summary["per_layer_std"] is None
                   else {"per_layer_std": _rounded_layers(summary["per_layer_std"])}),
                "protocol": _protocol_text(protocol, settings, train_desc, val_desc, chosen.get("dims"),
                                           chosen.get("weight_decay"), bench),
                "command": command,
            }
            if protocol == "linear-pool":
                entry["weight_decay_per_seed"] = [by_layer[layer]["weight_decay"] for by_layer, layer
                                                  in zip(per_seed, summary["layer_per_seed"])]
            if protocol in _RETRIEVAL_DATASETS:
                entry["ci95"] = [round(v, 2) for v in chosen["ci95"]]
                entry["parts"] = _retrieval_parts(per_seed, summary["layer_per_seed"])
            if baseline_seeds:
                entry.update(_random_init_fields(summary, [scores[protocol][key] for scores in base_scores]))
            if protocol == "photo-retrieval":
                entry.setdefault("baseline", {})[RAW_PIXELS] = round(raw_pixel_scores(settings.seed)[key], 2)
            results.append(entry)
    return _report(loaded, protocols, command, eval_data, counter, results)


def _random_init_fields(summary: dict, base_per_seed: list) -> dict[str, Any]:
    """The random-init baseline's entries of a result beside the model's ``summary``."""
    base = summarise_seeds(base_per_seed)
    fields: dict[str, Any] = {"baseline": {"random-init": round(base["value"], 2)}}
    if base["std"] is not None:
        fields["baseline_std"] = {"random-init": round(base["std"], 2)}
    fields["baseline_per_seed"] = {"random-init": base["per_seed"]}
    fields["baseline_layer"] = {"random-init": base["layer"]}
    fields["baseline_per_layer"] = {"random-init": _rounded_layers(base["per_layer"])}
    if base["per_layer_std"] is not None:  # no spread from one seed
        fields["baseline_per_layer_std"] = {"random-init": _rounded_layers(base["per_layer_std"])}
    beats = beats_random_init(summary["value"], summary["std"], base["value"], base["std"])
    if beats is not None:  # untested without a spread on both sides
        fields["beats_baseline"] = beats
    return fields


def _rounded_layers(values: dict[str, float]) -> dict[str, float]:
    """Per-layer numbers as results files keep them: two decimals."""
    return {n: round(v, 2) for n, v in values.items()}


_RETRIEVAL_DATASETS = {"retrieval": "Fashion-MNIST copy detection", "photo-retrieval": "held-out photo copy detection"}
_LAYER_SELECTED_ON = {"retrieval": "validation variant of the benchmark (train-split images)",
                      "photo-retrieval": "the benchmark's variant built from the training photos"}


def raw_pixel_scores(seed: int = 0) -> dict[str, float]:
    """photo-retrieval's mAP and recall@1 (%) of raw pixels (``RAW_PIXEL_SIDE`` RGB thumbnails)."""
    from training.retrieval_benchmark import benchmark_metrics, heldout_photo_benchmark, raw_pixels

    bench = heldout_photo_benchmark("test", seed)
    return benchmark_metrics(raw_pixels(bench.queries.images, RAW_PIXEL_SIDE),
                             raw_pixels(bench.database.images, RAW_PIXEL_SIDE), bench.positives, seed=seed)


def _dataset_name(dataset) -> str:
    """"Fashion-MNIST" for a subset of "Fashion-MNIST test": the split is recorded on its own."""
    while hasattr(dataset, "base"):
        dataset = dataset.base
    name = getattr(dataset, "name", "data")
    head, _, split = name.rpartition(" ")
    return head if head and split in ("train", "test") else name


def _retrieval_parts(per_seed: Sequence[dict[str, dict[str, Any]]], chosen: Sequence[str]) -> dict[str, Any]:
    parts: dict[str, Any] = {}
    for name in per_seed[0][chosen[0]].get("parts", {}):
        values = [by_layer[layer]["parts"][name] for by_layer, layer in zip(per_seed, chosen)]
        parts[name] = {"value": round(float(np.mean(values)), 2),
                       "std": round(float(np.std(values, ddof=1)), 2) if len(values) > 1 else None,
                       "per_seed": [round(v, 2) for v in values]}
    return parts


def _report(loaded: Sequence[LoadedModel], protocols, command, eval_data, counter, results) -> dict[str, Any]:
    configs = [m.config or {} for m in loaded]
    seeds = {str(_seed_of(m, i)): {"weights_sha256": (c.get("weights") or {}).get("sha256"),
                                   "training_seconds": (c.get("training") or {}).get("seconds"),
                                   "source": m.source}
             for i, (m, c) in enumerate(zip(loaded, configs))}
    return {
        "model": loaded[0].name, "source": loaded[0].source, "sources": [m.source for m in loaded],
        "weights_sha256": (configs[0].get("weights") or {}).get("sha256"), "shipped_seed": _seed_of(loaded[0], 0),
        "seeds": seeds, "protocols": list(protocols), "command": command,
        "data": {"train": describe(eval_data.train), "val": describe(eval_data.val), "test": describe(eval_data.test)},
        "skipped_images": counter.skipped, "training": configs[0].get("training"), "results": results,
    }


def _fmt(value: float, std: float | None) -> str:
    return f"{value:.2f}" if std is None else f"{value:.2f} +- {std:.2f}"


def print_report(report: dict[str, Any]) -> None:
    import click

    from zoo.cli import print_table

    seeds = ", ".join(report["seeds"])
    click.echo(f"{report['model']} (seeds {seeds}: {', '.join(report['sources'])})")
    for entry in report["results"]:
        base = entry.get("baseline_per_layer", {}).get("random-init", {})
        rows = [(layer, f"{value:.2f}", f"{base[layer]:.2f}" if layer in base else "-")
                for layer, value in entry["per_layer"].items()]
        click.echo(f"\n{entry['protocol_id']}: {entry['metric']} (%), test, mean over seeds")
        print_table(("layer", "model", "random-init"), rows)
        line = (f"chosen on validation: {', '.join(entry['layer_per_seed'])} -> {_fmt(entry['value'], entry.get('std'))}")
        if "baseline" in entry:
            line += (f"; random-init {_fmt(entry['baseline']['random-init'], entry.get('baseline_std', {}).get('random-init'))}"
                     + {True: " (beats it by > 2 std)", False: " (not by > 2 std)", None: ""}[entry.get("beats_baseline")])
        if RAW_PIXELS in entry.get("baseline", {}):
            line += f"; raw pixels {entry['baseline'][RAW_PIXELS]:.2f}"
        click.echo(line)
    if report["skipped_images"]:
        click.echo(f"skipped {report['skipped_images']} unreadable image(s)")


def _card_training(training: dict[str, Any] | None) -> dict[str, Any] | None:
    if not training:
        return None
    keys = ("recipe", "command", "epochs", "seconds", "data", "metrics", "steps", "method", "world_size", "seed",
            "batch_size", "threads", "precision", "cpu")
    return {k: training[k] for k in keys if k in training}


def user_cards_dir() -> Path:
    """Where ``zoo eval --record`` writes unless told otherwise: ``$ZOO_CARDS``, else a folder in
    the user's cache, never the repository's shipped ``MODEL_CARDS``."""
    import os

    if os.environ.get("ZOO_CARDS"):
        return Path(os.environ["ZOO_CARDS"]).expanduser()
    return _cache_dir().parent / "cards"


def record_results(report: dict[str, Any], cards_dir: str | Path | None = None) -> Path:
    """Merge ``report`` into ``<cards_dir>/results/<model>.json`` (default ``user_cards_dir()``).

    An entry with the same task, dataset, metric and protocol replaces the old one; the others are
    kept, unless they were measured on other weights or other seeds: then the file starts afresh,
    so a card never mixes numbers of different checkpoints.
    """
    from zoo.cards import results_path
    from zoo.checkpoint import atomic_write_text

    if report["source"] == "random-init":
        raise UsageError(f"nothing to record: {report['model']} was evaluated with random weights; pass a "
                         "checkpoint folder (the random-init baseline is recorded beside a trained model's numbers)")
    path = results_path(report["model"], cards_dir or user_cards_dir())
    doc: dict[str, Any] = {"model": report["model"], "results": []}
    if path.is_file():
        doc = read_json(path, ZooError, "fix or delete it, nothing was written")
        if doc.get("model") != report["model"]:
            raise ZooError(f"{path} belongs to model {doc.get('model')!r}, not {report['model']!r}")
        same = (doc.get("weights_sha256") == report.get("weights_sha256")
                and doc.get("seeds", {}).keys() == report.get("seeds", {}).keys())
        if not same:
            doc = {"model": report["model"], "results": []}
    for key in ("weights_sha256", "shipped_seed", "seeds"):
        if report.get(key) is not None:
            doc[key] = report[key]
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
