"""What an sslzoo ONNX file says about itself: its input and output names and its metadata.

The key ``sslzoo.embedding`` of ``metadata_props`` holds the JSON of ``EmbeddingSpec`` plus the
sslzoo version and opset; a few flat keys repeat the essentials for tools that show metadata as a
table. Writing the file is ``export.onnx_export``; running it is ``export.runtime`` and
``export.tensorrt``, which read these names from here, below all of them.
"""

from __future__ import annotations

import json
from pathlib import Path

from zoo.checkpoint import sha256_file
from zoo.errors import UsageError
from zoo.registry import InputSpec

from export.embedding import EmbeddingSpec, spec_to_metadata

METADATA_KEY = "sslzoo.embedding"
INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"


def write_metadata(proto, spec: EmbeddingSpec) -> None:
    """Put ``spec`` into an ``onnx.ModelProto``'s metadata (replacing earlier sslzoo keys)."""
    from zoo import __version__

    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    payload = {**spec_to_metadata(spec), "sslzoo_version": __version__, "opset": opset}
    flat = {
        METADATA_KEY: json.dumps(payload, sort_keys=True),
        "registry_name": spec.model,
        "embedding_dim": str(spec.dim),
        "layer": spec.layer,
        "pooling": spec.pool,
        "input": f"{spec.input_kind} {'x'.join(map(str, spec.input_shape()))}",
        "precision": spec.precision,
        "weights": spec.weights,
        "state_dict_sha256": spec.state_dict_sha256,
        "weights_origin": spec.weights_origin,
        "weights_file_sha256": spec.weights_file_sha256,
        "sslzoo_version": __version__,
    }
    keep = [p for p in proto.metadata_props if p.key not in flat and p.key != "weights_sha256"]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for key, value in flat.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "sslzoo"
    proto.producer_version = __version__
    proto.doc_string = (f"sslzoo {spec.model} ({spec.weights}): {spec.input_kind} images "
                        f"{'x'.join(map(str, spec.input_shape()))} -> L2-normalised {spec.dim}-d "
                        f"{spec.pool}-pooled {spec.layer} embeddings")


def spec_from_metadata(props: dict[str, str], where: str) -> EmbeddingSpec:
    """Rebuild the ``EmbeddingSpec`` from metadata key/values (ONNX proto or ORT's map)."""
    if METADATA_KEY not in props:
        raise UsageError(f"{where} has no sslzoo metadata; export it with `zoo export NAME --onnx`")
    try:
        data = json.loads(props[METADATA_KEY])
        data.pop("sslzoo_version", None)
        data.pop("opset", None)
        if "weights_sha256" in data:  # written before the state dict's hash had its own name
            data["state_dict_sha256"] = data.pop("weights_sha256")
        data["input"] = InputSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in data["input"].items()})
        return EmbeddingSpec(**data)
    except (json.JSONDecodeError, TypeError, KeyError, ValueError) as err:
        raise UsageError(f"{where} has unreadable sslzoo metadata ({err}); re-export it") from None


def read_metadata(path: str | Path) -> EmbeddingSpec:
    import onnx

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"ONNX file {path} not found")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf's DecodeError and friends
        raise UsageError(f"{path} is not a readable ONNX file ({type(err).__name__}); re-export it") from None
    return spec_from_metadata({p.key: p.value for p in proto.metadata_props}, str(path))


def metadata_dict(path: str | Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def onnx_sha256(path: str | Path) -> str:
    return sha256_file(path)
