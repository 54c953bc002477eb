"""``zoo export``, ``zoo extract``, ``zoo index build`` and ``zoo search`` (entry points in
pyproject.toml's ``sslzoo.commands``, loaded on use)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import click
import numpy as np

from zoo.errors import UsageError
from zoo.fileset import owner_tag, remove_abandoned

from zoo.cli import (NON_EMPTY, OutputPath, complete_model_or_path, no_progress_option, progress_wanted,
                     renamed)

from export.options import ENGINES, HNSW_M, INPUT_KINDS, MAX_BATCH, MAX_K, MAX_THREADS, OPSETS, POOLINGS, PROVIDERS


def _parse_profile(text: str) -> tuple[int, int, int]:
    try:
        lo, opt, hi = (int(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--batch-profile takes MIN,OPT,MAX (e.g. 1,32,128), got {text!r}") from None
    if not 1 <= lo <= opt <= hi <= MAX_BATCH:  # checked here too, not only when --tensorrt uses it
        raise UsageError(f"--batch-profile needs 1 <= MIN <= OPT <= MAX <= {MAX_BATCH}, got {text!r}")
    return lo, opt, hi


def _mb(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.1f} MB"


@click.command("export")
@click.argument("name_or_dir", shell_complete=complete_model_or_path)
@click.option("--onnx", "to_onnx", is_flag=True, help="Write an ONNX file (checked against PyTorch).")
@click.option("--tensorrt", "to_tensorrt", is_flag=True, help="Also build a TensorRT engine (needs an NVIDIA GPU).")
@click.option("-o", "--out", "output", type=OutputPath(dir_okay=False, path_type=Path), default=None,
              help="ONNX file to write [default: NAME-LAYER-POOL[-fp16|-int8].onnx].")
@click.option("--layer", type=NON_EMPTY, default=None, help="Feature layer to embed [default: the model's embedding layer].")
@click.option("--pool", type=click.Choice(POOLINGS), default="avg", show_default=True,
              help="Pooling of a convolutional layer (GeM uses p=3).")
@click.option("--input", "input_kind", type=click.Choice(INPUT_KINDS), default="uint8", show_default=True,
              help="uint8: (N, H, W, 3) RGB bytes; float: (N, 3, H, W) RGB in [0, 1].")
@click.option("--fp16", is_flag=True, help="Run the network in float16 (for GPUs; TensorRT takes it from the ONNX).")
@click.option("--int8", is_flag=True, help="Static int8 QDQ quantisation calibrated on real photos.")
@click.option("--opset", type=click.IntRange(*OPSETS), default=None, help="ONNX opset [default: the exporter's].")
@click.option("--batch-profile", default="1,32,128", show_default=True,
              help="TensorRT optimisation profile: MIN,OPT,MAX batch.")
@click.option("--engine-out", "engine_output", type=OutputPath(dir_okay=False, path_type=Path), default=None,
              help="Where to copy the TensorRT engine [default: next to the ONNX file, .engine].")
@renamed("--output", "-o/--out")
@renamed("--engine-output", "--engine-out")
def export_cmd(name_or_dir, to_onnx, to_tensorrt, output, layer, pool, input_kind, fp16, int8, opset,
               batch_profile, engine_output):
    """Export NAME_OR_DIR (a registry name: its published weights; random:NAME; or a checkpoint folder).

    The ONNX file takes a batch of resized, centre-cropped images and returns L2-normalised
    embeddings: the model's preprocessing, the pooling and the normalisation are inside it.
    """
    from export.embedding import build_embedding_model, load_backbone
    from export.onnx_export import export_onnx, quantize_int8, verify_onnx

    if not (to_onnx or to_tensorrt):
        raise UsageError("say what to export: --onnx (ONNX file) and/or --tensorrt (TensorRT engine)")
    if fp16 and int8:
        raise UsageError("--fp16 and --int8 are alternatives; pick one")
    profile = _parse_profile(batch_profile)
    if to_tensorrt:  # fail before minutes of exporting, not after
        from export.tensorrt import profile_shapes, require_tensorrt

        require_tensorrt()
    backbone, weights = load_backbone(name_or_dir)
    model, spec = build_embedding_model(backbone, name_or_dir, weights, layer=layer, pool=pool,
                                        input_kind=input_kind)
    if to_tensorrt:
        profile_shapes(spec, profile)  # validate before exporting
    precision = "fp16" if fp16 else "int8" if int8 else "fp32"
    suffix = "" if precision == "fp32" else f"-{precision}"
    output = output or Path(f"{spec.model}-{spec.layer}-{spec.pool}{suffix}.onnx")
    if output.suffix != ".onnx":
        raise UsageError(f"-o {output}: the ONNX file name must end in .onnx")
    sha = f", weights sha256 {spec.weights_file_sha256[:12]}..." if spec.weights_file_sha256 else ""
    click.echo(f"exporting {spec.model} ({spec.weights_origin}{sha}): {spec.layer} {spec.pool}-pooled, {spec.dim}-d, "
               f"{precision}")

    # The work folder sits beside the output (the final rename stays on one file system) and names
    # its owner, so that the next export removes what a killed one left.
    work_prefix = f".{output.name}.work."
    if output.parent.exists():
        remove_abandoned(output.parent, work_prefix)
    with tempfile.TemporaryDirectory(dir=output.parent if output.parent.exists() else None,
                                     prefix=f"{work_prefix}{owner_tag()}.") as work:
        fp32_path = output if precision == "fp32" else Path(work) / "fp32.onnx"
        export_onnx(model, spec, fp32_path, opset=opset)
        worst32 = verify_onnx(model, spec, fp32_path)
        worst = worst32
        if precision == "fp16":
            backbone16, _ = load_backbone(name_or_dir)
            model16, spec16 = build_embedding_model(backbone16, name_or_dir, weights, layer=spec.layer, pool=pool,
                                                    input_kind=input_kind, half=True)
            export_onnx(model16, spec16, output, opset=opset)
            worst = verify_onnx(model, spec16, output)
        elif precision == "int8":
            quantize_int8(fp32_path, output, spec)
            from export.onnx_export import read_metadata

            worst = verify_onnx(model, read_metadata(output), output)
    shape = "x".join(map(str, spec.input_shape()))
    click.echo(f"wrote {output} ({_mb(output)}): {spec.input_kind} {shape} -> {spec.dim}-d embeddings")
    click.echo(f"max |ONNX Runtime - PyTorch fp32| on real photos at batch 1/3/8: {worst:.2e}"
               + (f" (fp32 export: {worst32:.2e})" if precision != "fp32" else ""))
    if to_tensorrt:
        from export.onnx_export import read_metadata
        from export.tensorrt import build_engine

        engine_output = engine_output or output.with_suffix(".engine")
        build_engine(output, read_metadata(output), profile, output=engine_output)
        click.echo(f"wrote TensorRT engine {engine_output} (batch profile {batch_profile})")


def _refuse_empty(**arguments) -> None:
    """An empty MODEL or IMAGE argument is a slip of the shell (an unset variable): as a path it
    would silently mean the current folder and embed whatever images are there."""
    for name, values in arguments.items():
        for value in [values] if isinstance(values, str) else values:
            if not str(value).strip():
                raise UsageError(f"an empty {name.upper()} argument; name a file or folder")


def _threads_option(f):
    return click.option("--threads", type=click.IntRange(1, MAX_THREADS), default=None,
                        help="Engine threads [default: ZOO_THREADS or all CPUs].")(f)


@click.command("extract")
@click.argument("model_or_onnx", shell_complete=complete_model_or_path)
@click.argument("images", nargs=-1, required=True)
@click.option("-o", "--out", type=OutputPath(file_okay=False, path_type=Path), required=True,
              help="Output folder (embeddings.npy, ids.txt, failed.tsv, meta.json).")
@click.option("--engine", type=click.Choice(ENGINES), default="auto", envvar="ZOO_ENGINE",
              help="auto: the fastest engine and precision on this machine that keeps fp32's accuracy, measured on "
                   "first use and cached per model and machine; torch (eager), onnx (ONNX Runtime) or tensorrt "
                   "(needs an NVIDIA GPU). [default: $ZOO_ENGINE, else auto]")
@click.option("--remeasure", is_flag=True, help="With --engine auto: measure the engines again instead of using "
              "the cached choice.")
@click.option("--measure-rounds", type=click.IntRange(1, 100), default=5, show_default=True,
              help="With --engine auto: timed batches per candidate (the median counts).")
@click.option("--provider", type=click.Choice(sorted(PROVIDERS)), default="cpu", show_default=True,
              help="ONNX Runtime execution provider for --engine onnx (cuda or tensorrt with --engine auto: "
                   "--engine onnx with that provider).")
@click.option("--batch-size", type=click.IntRange(1, MAX_BATCH), default=32, show_default=True)
@click.option("--workers", type=click.IntRange(0, MAX_THREADS), default=2, show_default=True,
              help="Decoding threads (0: decode inline).")
@click.option("--shard-size", type=click.IntRange(1, 1 << 24), default=1024, show_default=True,
              help="Images per shard: the unit of resuming and of torchrun sharding.")
@click.option("--layer", type=NON_EMPTY, default=None, help="Feature layer (registry names and checkpoint folders only).")
@click.option("--pool", type=click.Choice(POOLINGS), default="avg", show_default=True)
@click.option("--rank", type=click.IntRange(min=0), default=None, help="This process's shard set [default: $RANK from torchrun, else 0].")
@click.option("--world-size", type=click.IntRange(min=1), default=None, help="Number of processes [default: $WORLD_SIZE, else 1].")
@click.option("--overwrite", is_flag=True, help="Discard what OUT holds instead of resuming.")
@_threads_option
@no_progress_option
def extract_cmd(model_or_onnx, images, out, engine, remeasure, measure_rounds, provider, batch_size, workers, shard_size, layer, pool,
                rank, world_size, overwrite, threads, no_progress):
    """Embed IMAGES (files and folders) with MODEL_OR_ONNX (registry name, checkpoint folder or .onnx).

    Resumable: a rerun with the same arguments skips finished shards. Under torchrun each rank takes
    every WORLD_SIZE-th shard and the last rank to finish merges them. Unreadable files are listed
    in OUT/failed.tsv and do not stop the run.
    """
    from export.engines import default_threads, is_onnx_file, open_engine
    from export.extract import MODEL, distributed_rank, extract

    # What extract() refuses is refused before minutes of exporting the model, too.
    _refuse_empty(model_or_onnx=model_or_onnx, images=images)
    env_rank, env_world = distributed_rank()
    my_rank = env_rank if rank is None else rank
    ranks = env_world if world_size is None else world_size
    if not 0 <= my_rank < ranks:
        raise UsageError(f"rank {my_rank} is outside 0..{ranks - 1}")
    threads = threads or default_threads()  # a bad ZOO_THREADS is reported before any model is opened
    if engine == "auto" and provider != "cpu":  # a GPU provider asked for by name is not a candidate to measure
        engine = "onnx"
    source = str(Path(model_or_onnx).resolve()) if is_onnx_file(model_or_onnx) or Path(model_or_onnx).is_dir() \
        else model_or_onnx
    with tempfile.TemporaryDirectory() as work:
        eng = open_engine(model_or_onnx, engine=engine, provider=provider, layer=layer, pool=pool, workdir=work,
                          threads=threads, batch_size=batch_size, remeasure=remeasure, rounds=measure_rounds,
                          log=lambda line: click.echo(line, err=True))
        model_file = _model_file_to_keep(model_or_onnx, eng, Path(work) / MODEL)
        if model_file is not None:  # keep the model the engine ran: `zoo search` embeds queries with it
            source = str((out / MODEL).resolve())
        summary = extract(eng, images, out, batch_size=batch_size, workers=workers, shard_size=shard_size,
                          rank=rank, world_size=world_size, source=source, overwrite=overwrite,
                          model_file=model_file, progress=progress_wanted(no_progress))
    if summary.get("already"):
        click.echo(f"{out} is complete already: {summary['count']} embeddings ({summary['failed']} unreadable)")
    elif summary["done"]:
        rate = summary.get("images_per_second")
        click.echo(f"wrote {summary['count']} embeddings to {out} with {eng.name}"
                   + (f" ({rate:.1f} images/s)" if rate else "")
                   + (f"; {summary['failed']} unreadable files listed in {out / 'failed.tsv'}" if summary["failed"] else ""))
    else:
        click.echo(f"rank {summary['rank']}/{summary['world_size']}: {summary['processed']} images done; "
                   + summary.get("merging", "the last rank to finish merges the shards"))


def _model_file_to_keep(model_or_onnx: str, engine, exported: Path) -> Path | None:
    """The ONNX file to keep as OUT/model.onnx: the one the engine runs when it is not MODEL_OR_ONNX
    itself (an export on the fly, or the int8 file `--engine auto` chose), else the export on the
    fly (PyTorch ran it); None when the engine ran MODEL_OR_ONNX or nothing was exported."""
    ran = getattr(engine, "path", None)
    from export.engines import is_onnx_file

    if ran is not None and not (is_onnx_file(model_or_onnx) and Path(ran).resolve() == Path(model_or_onnx).resolve()):
        return Path(ran)
    return exported if exported.is_file() else None


@click.group("index")
def index_group():
    """Build FAISS indexes over extracted embeddings."""


@index_group.command("build")
@click.argument("embeddings", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=OutputPath(file_okay=False, path_type=Path), required=True, help="Index folder.")
@click.option("--type", "index_type", type=click.Choice(["flat", "ivfpq", "hnsw", "auto"]), default="flat",
              show_default=True, help="flat: exact; ivfpq: IVF-PQ + exact re-ranking; hnsw; auto: fastest for --recall.")
@click.option("--whiten", type=click.IntRange(min=1), default=None, help="Learn PCA whitening to N dims on the database.")
@click.option("--recall", "recall_target", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Tune search parameters (and with --type auto, the type) for this recall@k against exact search.")
@click.option("-k", "--k", type=click.IntRange(1, MAX_K), default=10, show_default=True, help="k of the recall target.")
@click.option("--nlist", type=click.IntRange(min=1), default=None, help="IVF lists [default: ~4 sqrt(N)].")
@click.option("--pq-m", type=click.IntRange(1, 256), default=None, help="PQ bytes per vector [default: ~D/8, at most 64].")
@click.option("--hnsw-m", type=click.IntRange(*HNSW_M), default=32, show_default=True, help="HNSW graph degree.")
@_threads_option
def index_build_cmd(embeddings, out, index_type, whiten, recall_target, k, nlist, pq_m, hnsw_m, threads):
    """Build an index of the extraction folder EMBEDDINGS (from `zoo extract`)."""
    from export.extract import load_embeddings
    from export.index import BuildParams, build_and_tune, check_index_output, save_index
    from export.query import model_file_sha256

    check_index_output(out)  # before minutes of building
    _set_faiss_threads(threads)
    emb, ids, emb_meta = load_embeddings(embeddings)
    params = BuildParams(type=index_type, whiten=whiten, nlist=nlist, pq_m=pq_m, hnsw_m=hnsw_m)
    click.echo(f"building a {index_type} index of {len(ids)} x {emb.shape[1]} embeddings"
               + (f", whitened to {whiten} dims" if whiten else ""))
    index, meta = build_and_tune(np.asarray(emb), params, recall_target=recall_target, k=k,
                                 log=lambda m: click.echo(m))
    source = emb_meta.get("source")
    meta.update(count=len(ids), dim=int(emb.shape[1]), embeddings=str(Path(embeddings).resolve()),
                model=emb_meta.get("model"), source=source, source_sha256=model_file_sha256(source))
    save_index(out, index, ids, meta)
    tuning = meta.get("tuning")
    click.echo(f"wrote {meta['type']} index {out} ({len(ids)} vectors; search parameters "
               f"{meta['search_params'] or 'none (exact)'})"
               + (f"; recall@{tuning['k']} {tuning['recall']:.3f} at {tuning['speedup']:.1f}x exact QPS"
                  if tuning else ""))


def _set_faiss_threads(threads):
    if threads:
        import faiss

        faiss.omp_set_num_threads(threads)


@click.command("search")
@click.argument("index_dir", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True)
@click.option("-k", "--k", type=click.IntRange(1, MAX_K), default=5, show_default=True, help="Results per query.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: [{query, results: [{id, score}]}].")
@_threads_option
def search_cmd(index_dir, images, k, as_json, threads):
    """Find the K nearest images in INDEX_DIR for each query IMAGE (embedded by the index's model)."""
    from export.extract import escape_id
    from export.query import open_indexed_model

    _refuse_empty(images=images)
    _set_faiss_threads(threads)
    searcher = open_indexed_model(index_dir, threads=threads)
    rows, names = [], []
    for path in images:
        image, reason = searcher.decode(str(path))
        if image is None:
            click.echo(f"warning: skipped query {escape_id(str(path))}: {escape_id(' '.join(reason.split()))}", err=True)
            continue
        rows.append(image)
        names.append(escape_id(str(path)))
    if not rows:
        raise UsageError("none of the query images could be read")

    results = [{"query": name, "results": [{"id": hit["id"], "score": hit["score"]} for hit in hits]}
               for name, hits in zip(names, searcher.search(np.stack(rows), k, names))]
    if as_json:
        click.echo(json.dumps(results, indent=2))
        return
    from zoo.cli import print_table

    for r in results:
        click.echo(f"{r['query']}:")
        print_table(("rank", "score", "id"), [(i + 1, f"{x['score']:.4f}", x["id"]) for i, x in enumerate(r["results"])])
