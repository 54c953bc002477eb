"""``zoo results``: the measured results of every model as one table, and whether the small scale
keeps the papers' ranking.

Both tables are read from the results files the model cards are rendered from
(``MODEL_CARDS/results/*.json``, written by ``zoo eval ... --record``), so the README's tables are
the output of a command, never typed by hand.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

from zoo.results import RESULTS_DIRNAME, default_cards_dir, load_results
from zoo.errors import UsageError
from zoo.registry import get_model_entry

# The columns of the results table: (protocol_id, metric, heading).
COLUMNS = (
    ("knn", "top-1", "kNN top-1"),
    ("linear-pool", "top-1", "pooled linear top-1"),
    ("linear", "top-1", "per-layer linear top-1"),
    ("cluster", "NMI", "k-means NMI"),
    ("retrieval", "mAP", "copy-detection mAP"),
)


def _find(results: dict[str, Any], protocol: str, metric: str) -> dict[str, Any] | None:
    return next((r for r in results.get("results", [])
                 if r.get("protocol_id") == protocol and r.get("metric") == metric), None)


def _mean_std(value: float, std: float | None) -> str:
    return f"{value:.2f}" if std is None else f"{value:.2f} ± {std:.2f}"


def _cell(r: dict[str, Any] | None) -> str:
    if r is None:
        return "-"
    text = _mean_std(r["value"], r.get("std"))
    return f"**{text}**" if r.get("beats_baseline") else text


def _names(cards_dir: str | os.PathLike | None) -> list[str]:
    folder = os.path.join(cards_dir or default_cards_dir(), RESULTS_DIRNAME)
    return sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".json")) if os.path.isdir(folder) else []


def results_table(cards_dir: str | os.PathLike | None = None, names: Sequence[str] | None = None) -> str:
    """A markdown table: one row per model with results, mean ± std over seeds per protocol, bold
    where the mean beats random init by more than two standard deviations; random-init rows last."""
    names = list(names) if names is not None else _names(cards_dir)
    docs = {n: load_results(n, cards_dir) for n in names}
    head = "| model | seeds | " + " | ".join(h for _, _, h in COLUMNS) + " |"
    rows = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    baselines: dict[str, list[str]] = {}
    for name, doc in docs.items():
        if doc is None:
            continue
        found = [_find(doc, p, m) for p, m, _ in COLUMNS]
        seeds = next((len(r["seeds"]) for r in found if r and r.get("seeds")), 1)
        rows.append(f"| {name} | {seeds} | " + " | ".join(_cell(r) for r in found) + " |")
        arch = f"random init ({get_model_entry(name).arch})"
        if arch not in baselines:
            baselines[arch] = [_mean_std(r["baseline"]["random-init"], (r.get("baseline_std") or {}).get("random-init"))
                               if r and "baseline" in r else "-" for r in found]
    for arch, cells in baselines.items():
        rows.append(f"| {arch} | - | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def beats_count(cards_dir: str | os.PathLike | None = None) -> dict[str, tuple[int, int]]:
    """Per protocol: (models beating random init by more than two standard deviations, models measured)."""
    counts: dict[str, tuple[int, int]] = {}
    for name in _names(cards_dir):
        doc = load_results(name, cards_dir) or {}
        for protocol, metric, _ in COLUMNS:
            r = _find(doc, protocol, metric)
            if r is not None and r.get("beats_baseline") is not None:
                won, total = counts.get(protocol, (0, 0))
                counts[protocol] = (won + bool(r["beats_baseline"]), total + 1)
    return counts


# ----------------------------------------------------------------------------------------------
# Does the small scale keep the ranking?
# ----------------------------------------------------------------------------------------------

@dataclass
class RankingRow:
    method: str
    model: str
    paper: float          # the paper's ImageNet-1k linear-probe top-1
    paper_note: str       # architecture, protocol and source of that number
    ours: float           # our small-scale number (mean over seeds)
    ours_std: float | None


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Kendall's tau-b between two scorings of the same items, and its two-sided p-value."""
    from scipy.stats import kendalltau

    if len(a) != len(b) or len(a) < 3:
        raise UsageError(f"Kendall's tau needs two scorings of at least 3 items, got {len(a)} and {len(b)}")
    result = kendalltau(a, b)
    return float(result.statistic), float(result.pvalue)


def ranking_rows(protocol: str = "linear-pool", metric: str = "top-1",
                 cards_dir: str | os.PathLike | None = None) -> tuple[list[RankingRow], list[str]]:
    """Each method with a paper ImageNet linear-probe number and a small model measured under
    ``protocol``; and a line for each method left out, saying why."""
    from zoo.registry import IMAGENET_LINEAR_REFERENCE

    rows, left_out = [], []
    for name in _names(cards_dir):
        entry = get_model_entry(name)
        reference = IMAGENET_LINEAR_REFERENCE.get(entry.method)
        r = _find(load_results(name, cards_dir) or {}, protocol, metric)
        if reference is None or reference.result is None:
            left_out.append(f"{entry.method}: {reference.reason if reference else 'no paper number recorded'}")
            continue
        reference = reference.result
        if r is None:
            left_out.append(f"{entry.method}: {name} has no {protocol} {metric} result")
            continue
        note = f"{reference.protocol}; {reference.source}"
        rows.append(RankingRow(entry.method, name, float(reference.value), note, float(r["value"]), r.get("std")))
    return sorted(rows, key=lambda row: -row.paper), left_out


def ranking_table(protocols: Sequence[tuple[str, str, str]] = (("linear-pool", "top-1", "pooled linear"),
                                                              ("knn", "top-1", "kNN")),
                  cards_dir: str | os.PathLike | None = None) -> str:
    """The paper's ImageNet linear-probe number beside ours per protocol, and Kendall's tau."""
    columns = {label: dict((row.method, row) for row in ranking_rows(p, m, cards_dir)[0])
               for p, m, label in protocols}
    first = ranking_rows(protocols[0][0], protocols[0][1], cards_dir)
    methods = [row.method for row in first[0]]
    lines = ["| method | paper: ImageNet linear top-1 | " + " | ".join(f"ours: {label}" for *_, label in protocols) + " |",
             "|" + "---|" * (len(protocols) + 2)]
    for row in first[0]:
        cells = []
        for *_, label in protocols:
            ours = columns[label].get(row.method)
            cells.append(_mean_std(ours.ours, ours.ours_std) if ours else "-")
        lines.append(f"| {row.method} | {row.paper:.1f} ({row.paper_note}) | " + " | ".join(cells) + " |")
    lines.append("")
    for *_, label in protocols:
        common = [m for m in methods if m in columns[label]]
        if len(common) >= 3:
            tau, p = kendall_tau([columns[label][m].paper for m in common], [columns[label][m].ours for m in common])
            lines.append(f"Kendall's tau, paper vs ours ({label}, {len(common)} methods): {tau:+.2f} (p = {p:.2f})")
    if first[1]:
        lines.append("")
        lines.append("Left out: " + "; ".join(first[1]) + ".")
    return "\n".join(lines) + "\n"
