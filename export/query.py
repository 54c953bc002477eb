"""What `zoo search` and `zoo serve` share: an index opened together with the model that made its
embeddings (refused when that model is gone or was replaced), and queries decoded, embedded and
searched one way, so that the command and the service give the same answer by construction."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zoo.errors import UsageError

from export.embedding import model_state_dict_sha256
from export.options import POOLINGS


def model_file_sha256(source: str | None) -> str | None:
    """sha256 of the ONNX file that made the embeddings (None for a registry name or folder)."""
    from export.engines import is_onnx_file
    from zoo.fileset import sha256_file

    return sha256_file(source) if source and is_onnx_file(source) and Path(source).is_file() else None


@dataclass
class IndexedModel:
    """An index, its ids and metadata, and an engine running the model that made its embeddings."""

    index_dir: Path
    index: Any
    ids: list[str]
    meta: dict
    engine: Any

    @property
    def spec(self):
        return self.engine.spec

    def decode(self, image, name: str | None = None) -> tuple[np.ndarray | None, str]:
        """A query image (a path, or a binary file object called ``name``) as one input row of the
        model, or (None, reason)."""
        from export.extract import decode

        return decode(image, self.spec.input, self.spec.input_kind, name)

    def embed(self, rows: np.ndarray) -> np.ndarray:
        return self.engine.embed(rows)

    def neighbours(self, embeddings: np.ndarray, k: int, names: list[str] | None = None) -> list[list[dict]]:
        """The k nearest indexed images of each embedding: [[{"id", "score", "row"}, ...], ...];
        ``names`` (the query images) name a non-finite embedding in the error."""
        from export.index import search

        scores, found = search(self.index, embeddings, k, names=names)
        return [[{"id": self.ids[j], "score": float(s), "row": int(j)} for s, j in zip(sc, fo) if j >= 0]
                for sc, fo in zip(scores, found)]

    def search(self, rows: np.ndarray, k: int, names: list[str] | None = None) -> list[list[dict]]:
        return self.neighbours(self.embed(rows), k, names)


def open_indexed_model(index_dir: str | Path, threads: int | None = None) -> IndexedModel:
    """Load INDEX_DIR and open the model named in its metadata (with ``export.engines.open_engine``),
    after checking that the model is the one that built the index."""
    from export.engines import is_onnx_file, open_engine
    from export.index import load_index

    index_dir = Path(index_dir)
    index, ids, meta = load_index(index_dir)
    source, model = meta.get("source"), meta.get("model") or {}
    if not source:
        raise UsageError(f"{index_dir} does not say which model made its embeddings; rebuild it from a `zoo extract` folder")
    if is_onnx_file(source) and not Path(source).is_file():
        raise UsageError(f"the index's model {source} is gone; re-export it or rebuild the index")
    if meta.get("source_sha256") and model_file_sha256(source) != meta["source_sha256"]:
        raise UsageError(f"the index's model {source} was replaced since {index_dir} was built (another export or "
                         "extraction); rebuild the index from embeddings of that model")
    engine = open_engine(source, engine="onnx" if is_onnx_file(source) else "torch", layer=None if is_onnx_file(source)
                         else model.get("layer"), pool=model.get("pool") if model.get("pool") in POOLINGS else "avg",
                         input_kind=model.get("input_kind", "uint8"), threads=threads)
    recorded = model_state_dict_sha256(model)
    if recorded and engine.spec.state_dict_sha256 != recorded:
        raise UsageError(f"the model at {source} has other weights than the one that built {index_dir}; rebuild the index")
    return IndexedModel(index_dir, index, ids, meta, engine)
