"""Quickstart stages of the deployment path: export, extract, index, search.

They take the quickstart's shipped model by its registry name (``zoo.quickstart.QUICKSTART_MODEL``:
the weights inside sslzoo, no network) and run the same functions the ``zoo export``,
``zoo extract``, ``zoo index build`` and ``zoo search`` commands run, on JPEG files written from the
copy-detection set built out of the shipped photos.
"""

from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np

from zoo.quickstart import Context, SummaryRow


def export_stage(ctx: Context) -> list[SummaryRow]:
    """Export the quickstart's shipped model by its registry name (its published weights) to ONNX,
    fp32 and int8, parity-checked on real photos."""
    from export.embedding import build_embedding_model, load_backbone
    from export.onnx_export import export_onnx, quantize_int8, read_metadata, verify_onnx
    from zoo.quickstart import QUICKSTART_MODEL

    start = time.perf_counter()
    backbone, weights = load_backbone(QUICKSTART_MODEL)
    model, spec = build_embedding_model(backbone, QUICKSTART_MODEL, weights)
    out = ctx.out / "export"
    fp32 = export_onnx(model, spec, out / "model.onnx")
    diff32 = verify_onnx(model, spec, fp32)
    what = f"{spec.model} ({spec.weights_origin.split(' (')[0]}, sha256 {spec.weights_file_sha256[:12]})"
    result = f"{spec.model} -> ONNX fp32 (max diff {diff32:.0e})"
    line = f"[export] {what}: {spec.layer} {spec.pool} {spec.dim}-d -> {fp32}; max |ORT - PyTorch| on real photos: fp32 {diff32:.1e}"
    int8 = None
    if not ctx.fast:  # calibration and the int8 parity check cost tens of seconds
        int8 = quantize_int8(fp32, out / "model-int8.onnx", spec)
        diff8 = verify_onnx(model, read_metadata(int8), int8)
        result += f" + int8 (max diff {diff8:.0e})"
        line += f", int8 {diff8:.1e} ({int8.name})"
    click.echo(line)
    ctx.data.update(onnx=fp32, onnx_int8=int8, embedding_spec=spec)
    return [SummaryRow("export", result, time.perf_counter() - start)]


def extract_stage(ctx: Context) -> list[SummaryRow]:
    """Write the copy-detection set as JPEG files and embed them with ONNX Runtime."""
    from PIL import Image

    from zoo.retrieval import copy_detection_set

    from export.engines import OnnxRuntimeEngine
    from export.extract import extract, load_embeddings

    start = time.perf_counter()
    # the same set with --fast (about a second more): the search stage's answer is then the same
    cds = copy_detection_set(copies=7, max_side=256)
    folder = ctx.out / "images"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (image, name) in enumerate(zip(cds.images, cds.names)):
        path = folder / f"{i:04d}-{name.split('/')[0]}.jpg"
        if not path.exists():
            Image.fromarray(image).save(path, quality=90)
        paths.append(path)
    engine = OnnxRuntimeEngine(ctx.data["onnx"])
    out = ctx.out / "embeddings"
    summary = extract(engine, [folder], out, batch_size=16, workers=2, source=str(Path(ctx.data["onnx"]).resolve()),
                      progress=False, overwrite=True)
    emb, ids, _ = load_embeddings(out)
    click.echo(f"[extract] {summary['count']} JPEG files -> {out} ({emb.shape[1]}-d, {engine.name}, "
               f"{summary.get('images_per_second') or 0:.0f} images/s)")
    ctx.data.update(embeddings=out, copy_groups=dict(zip(map(str, paths), cds.groups.tolist())))
    return [SummaryRow("extract", f"{summary['count']} images embedded with {engine.name}", time.perf_counter() - start)]


def index_stage(ctx: Context) -> list[SummaryRow]:
    """Build an exact index and report copy-detection mAP of the embeddings it holds."""
    from zoo.retrieval import retrieval_metrics

    from export.extract import load_embeddings
    from export.index import BuildParams, build_and_tune, save_index

    start = time.perf_counter()
    emb, ids, meta = load_embeddings(ctx.data["embeddings"])
    index, index_meta = build_and_tune(np.asarray(emb), BuildParams(type="flat"))
    index_meta.update(count=len(ids), dim=int(emb.shape[1]), model=meta["model"], source=meta["source"],
                      embeddings=str(ctx.data["embeddings"]))
    out = save_index(ctx.out / "index", index, ids, index_meta)
    groups = np.array([ctx.data["copy_groups"][i] for i in ids])
    metrics = retrieval_metrics(np.asarray(emb), groups)
    click.echo(f"[index] flat index of {len(ids)} vectors -> {out}; copy detection mAP {100 * metrics['mAP']:.1f}, "
               f"recall@1 {100 * metrics['recall@1']:.1f}")
    ctx.data.update(index=out)
    return [SummaryRow("index", f"{len(ids)} vectors; copy-detection mAP {100 * metrics['mAP']:.1f}",
                       time.perf_counter() - start)]


def search_stage(ctx: Context) -> list[SummaryRow]:
    """Query the index with a new distorted copy of a held-out photo (``zoo.photos.HELDOUT_PHOTOS``:
    one no colour-photo model trains on), as `zoo search` does."""
    from PIL import Image

    from zoo.photos import HELDOUT_PHOTOS, load_photo
    from zoo.retrieval import distort

    from export.engines import OnnxRuntimeEngine
    from export.extract import decode
    from export.index import load_index, search

    start = time.perf_counter()
    name = HELDOUT_PHOTOS[0]
    photo = load_photo(name)
    query = distort(photo, np.random.default_rng(123), ["crop", "colour", "jpeg"])
    path = ctx.out / f"query-{name}.jpg"
    Image.fromarray(query).save(path, quality=90)
    index, ids, meta = load_index(ctx.data["index"])
    engine = OnnxRuntimeEngine(meta["source"])
    image, reason = decode(str(path), engine.spec.input, engine.spec.input_kind)
    scores, found = search(index, engine.embed(image[None]), 3)
    top = [(ids[j], float(s)) for s, j in zip(scores[0], found[0])]
    click.echo(f"[search] {path.name}: " + ", ".join(f"{Path(i).name} ({s:.3f})" for i, s in top))
    hit = name in Path(top[0][0]).name
    # A miss is a property of the model, not of the pipeline: the index row above gives its
    # copy-detection mAP, and the model's card its numbers on held-out photos.
    verdict = "the same photo" if hit else "a different photo: the model missed this copy"
    return [SummaryRow("search", f"query {name}: top hit {Path(top[0][0]).name} ({verdict})",
                       time.perf_counter() - start)]


# The stages `zoo quickstart` runs, in order (declared in pyproject.toml's sslzoo.quickstart entry points).
STAGES = [export_stage, extract_stage, index_stage, search_stage]
