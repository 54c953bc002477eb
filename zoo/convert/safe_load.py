"""Read an original checkpoint without running any code the file names.

One reader for every ``torch.save`` format, and it never calls ``torch.load``: torch decides
"zip or not" from the first four bytes and hands any zip holding ``constants.pkl`` to
``torch.jit.load``, which runs the archive's code -- so a padded TorchScript file that
``zipfile.is_zipfile`` does not recognise would still reach it. Here the content decides:

* a zip (``PK\x03\x04`` first, as torch sees it) is opened with Python's ``zipfile``; an archive
  zipfile cannot read, a compressed or oversized record, or any TorchScript / ``torch.package``
  record (code, constants, bytecode) is refused in one line;
* a legacy (pre-1.6) file is read as torch wrote it: magic number, protocol, system info, the
  pickle, the storage keys, then each storage's raw bytes;
* the pre-0.4 tar format is refused (nothing the zoo converts uses it).

Pickles go through a restricted unpickler: it rebuilds tensors, storages, numbers, strings and
plain containers, and turns every other global the pickle names into an inert ``PickledObject``
subclass. It never imports a module the file names, so a ``__reduce__`` that would call
``os.system`` or ``open`` produces an inert object that records its arguments. Memory is bounded
by the file: storages, arrays and byte strings together may not claim more bytes than the file
has, so a small hostile file cannot make the reader allocate gigabytes.
"""

from __future__ import annotations

import _compat_pickle
import collections
import codecs
import io
import pickle
import struct
import sys
import tarfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from zoo.errors import WeightsError


class PickledObject:
    """An object of a class the file pickled, rebuilt without importing or running that class.

    ``pickled_class`` is the dotted name the file gave; ``args`` the constructor or call arguments,
    ``state`` what ``__setstate__`` received (an ``nn.Module``'s ``__dict__``, with its
    ``_parameters``, ``_buffers`` and ``_modules``), ``items``/``list_items`` what dict- or
    list-like objects received.
    """

    pickled_class = "?"
    dump_patches = False  # torch's old .tar loader asks this of pickled nn.Module classes

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args, obj.kwargs, obj.state, obj.items, obj.list_items = args, kwargs, None, {}, []
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, key, value):
        self.items[key] = value

    def append(self, value):
        self.list_items.append(value)

    def extend(self, values):
        self.list_items.extend(values)

    def __repr__(self):
        return f"<pickled {self.pickled_class}, not executed>"


def _placeholder_class(module: str, name: str) -> type:
    # The class lives in no importable module, so nothing (inspect, torch) can map it to source.
    return type(str(name)[:100] or "Unnamed", (PickledObject,),
                {"pickled_class": f"{module}.{name}", "__module__": "<pickled>"})


# -- the few callables a checkpoint may name: tensor and container rebuilders ---------------------

def _check_storage(storage: Any) -> None:
    if not isinstance(storage, (torch.storage.TypedStorage, torch.UntypedStorage)):
        raise pickle.UnpicklingError(f"a tensor in the file is built from {type(storage).__name__}, not a storage")


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    """torch's tensor rebuilders without their requires-grad, hooks and metadata extras."""
    _check_storage(storage)
    return torch._utils._rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *_ignored):
    return data


def _rebuild_from_type(func, new_type, args, state):
    return func(*args)  # func came through find_class: a rebuilder above or an inert placeholder


def _reconstructor(cls, base, state):
    """copyreg's protocol-0/1 object rebuilder, limited to placeholders and plain containers."""
    if isinstance(cls, type) and issubclass(cls, PickledObject):
        return cls.__new__(cls)
    if cls in (dict, list, set, collections.OrderedDict) and base is cls:
        return cls() if state is None else cls(state)
    raise pickle.UnpicklingError(f"refusing to rebuild {getattr(cls, '__name__', cls)!r}")


def _codecs_encode(text, encoding="utf-8"):
    """Python 2 byte strings arrive as ``_codecs.encode(text, "latin1")``; no other codec is looked up."""
    if str(encoding).lower().replace("_", "-") not in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        raise pickle.UnpicklingError(f"refusing codec {encoding!r}")
    return codecs.encode(text, encoding)


class _Budget:
    """Bytes the file may still make the reader allocate: at most its own size."""

    def __init__(self, file_size: int):
        self.left = file_size

    def take(self, nbytes: int, what: str) -> None:
        if not isinstance(nbytes, int) or nbytes < 0 or nbytes > self.left:
            raise pickle.UnpicklingError(f"{what} claims {nbytes} bytes, more than the file holds")
        self.left -= nbytes


class _StorageKind:
    """What the pickle's ``torch.FloatStorage`` (etc.) stands for: a dtype, never a callable."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


def _legacy_storage_dtypes() -> dict[str, torch.dtype]:
    """``FloatStorage`` -> float32 and so on, for every typed storage class torch still names."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # reading a legacy class's dtype warns that TypedStorage is deprecated
        return {name: cls.dtype for name, cls in vars(torch).items()
                if isinstance(cls, type) and issubclass(cls, torch.storage._LegacyStorage) and cls.dtype is not None}


_STORAGE_DTYPES = {"UntypedStorage": torch.uint8, **_legacy_storage_dtypes()}


def _storage_kind(module: str, name: str) -> _StorageKind | None:
    if module in ("torch", "torch.storage") and name in _STORAGE_DTYPES:
        return _StorageKind(_STORAGE_DTYPES[name])
    return None


def _bounded_globals(budget: _Budget) -> dict[tuple[str, str], Any]:
    """The allowed callables that could allocate, each charged to the file's budget."""
    import numpy as np

    def reconstruct(subtype, shape, dtype):
        if subtype is not np.ndarray:
            raise pickle.UnpicklingError("refusing a numpy array subclass")
        dtype = np.dtype(dtype)
        count = 1
        for n in tuple(shape):
            count *= int(n)
        budget.take(count * dtype.itemsize, "a numpy array")
        return np.ndarray.__new__(np.ndarray, shape, dtype)

    def scalar(dtype, data=None):
        if not isinstance(dtype, np.dtype):
            raise pickle.UnpicklingError("refusing a numpy scalar of a non-numpy type")
        return np.frombuffer(data, dtype=dtype, count=1)[0] if isinstance(data, bytes) else data

    def byte_array(source=b"", *encoding):
        if not isinstance(source, (bytes, str, bytearray)):  # bytearray(10**10) would allocate 10 GB
            raise pickle.UnpicklingError("refusing a bytearray built from a size")
        return bytearray(source, *encoding)

    found = {("builtins", "bytearray"): byte_array, ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        found[(module, "_reconstruct")] = reconstruct
        found[(module, "scalar")] = scalar
    return found


_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("builtins", "object"): object,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("_codecs", "encode"): _codecs_encode,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves globals to the safe table, dtypes, storage kinds or inert placeholders; nothing else."""

    def __init__(self, file, budget: _Budget, placeholders: dict[str, type], persistent_load):
        super().__init__(file, encoding="latin1")
        self.safe = {**_SAFE_GLOBALS, **_bounded_globals(budget)}
        self.placeholders = placeholders
        self.persistent_load = persistent_load

    def find_class(self, module, name):
        if (module, name) in _compat_pickle.NAME_MAPPING:  # Python 2 names
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in self.safe:
            return self.safe[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        kind = _storage_kind(module, name)
        if kind is not None:
            return kind
        key = f"{module}.{name}"
        if key not in self.placeholders:
            self.placeholders[key] = _placeholder_class(module, name)
        return self.placeholders[key]


def _plain_load(file, budget: _Budget) -> Any:
    """A small header pickle (magic number, protocol, system info, storage keys): no storages."""
    def no_storage(_saved_id):
        raise pickle.UnpicklingError("a storage where the header expects plain values")
    return _RestrictedUnpickler(file, budget, {}, no_storage).load()


def _typed(storage: torch.UntypedStorage, dtype: torch.dtype) -> torch.storage.TypedStorage:
    return torch.storage.TypedStorage(wrap_storage=storage, dtype=dtype, _internal=True)


def _element_size(kind: Any) -> tuple[torch.dtype, int]:
    if not isinstance(kind, _StorageKind):
        raise pickle.UnpicklingError(f"a storage of unknown type {kind!r}")
    return kind.dtype, torch._utils._element_size(kind.dtype)


# TorchScript (constants, code, bytecode) and torch.package (extern modules, Python sources)
# archives carry code that torch.jit.load or the package importer would run: never read past
# their names. (torch.save itself writes only data.pkl, data/N, version, byteorder, .data/*.)
_EXECUTABLE_RECORDS = ("constants.pkl", "bytecode.pkl", "model.json", "extern_modules", "__torch_package__")


def _executable_record(name: str) -> bool:
    parts = name.split("/")
    return parts[-1] in _EXECUTABLE_RECORDS or "code" in parts[1:-1] or parts[-1].endswith((".py", ".pyc"))


def _read_zip(path: Path, budget: _Budget, placeholders: dict[str, type]) -> Any:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise WeightsError(f"{path} starts like a zip archive but its directory is damaged or padded "
                           f"({err}); refusing to read it") from None
    with archive:
        infos = {info.filename: info for info in archive.infolist()}
        if any(_executable_record(name) for name in infos):
            raise WeightsError(f"{path} is a TorchScript archive (or a torch.package), which carries code, "
                               f"not a checkpoint of weights; refusing to load it")
        odd = [i.filename for i in infos.values() if i.compress_type != zipfile.ZIP_STORED or i.file_size > budget.left]
        if odd:  # torch.save never compresses: a compressed record can only be a decompression bomb
            raise WeightsError(f"{path}: record {odd[0]!r} is compressed or larger than the file; refusing to read it")
        pickles = [name for name in infos if name.count("/") == 1 and name.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise WeightsError(f"{path} is a zip archive but not a torch.save checkpoint (no single data.pkl)")
        prefix = pickles[0][: -len("data.pkl")]
        swap = infos.get(prefix + "byteorder") and archive.read(prefix + "byteorder").decode() != sys.byteorder
        storages: dict[str, torch.UntypedStorage] = {}

        def persistent_load(saved_id):
            if not isinstance(saved_id, tuple) or len(saved_id) != 5 or saved_id[0] not in ("storage", b"storage"):
                raise pickle.UnpicklingError(f"unexpected persistent id {str(saved_id)[:80]}")
            _, kind, key, _location, numel = saved_id
            dtype, size = _element_size(kind)
            key = key.decode() if isinstance(key, bytes) else str(key)
            if key not in storages:
                name = f"{prefix}data/{key}"
                if name not in infos or infos[name].file_size != numel * size:
                    raise pickle.UnpicklingError(f"storage {key} is missing or not {numel} x {size} bytes")
                budget.take(infos[name].file_size, f"storage {key}")
                storage = torch.UntypedStorage.from_buffer(archive.read(name), dtype=torch.uint8) \
                    if numel else torch.UntypedStorage(0)
                if swap:
                    storage.byteswap(dtype)
                storages[key] = storage
            return _typed(storages[key], dtype)

        data = io.BytesIO(archive.read(pickles[0]))
        return _RestrictedUnpickler(data, budget, placeholders, persistent_load).load()


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


def _read_legacy(path: Path, budget: _Budget, placeholders: dict[str, type]) -> Any:
    """torch.save's format before PyTorch 1.6: four pickles, then each storage's bytes in key order."""
    storages: dict[str, tuple[torch.UntypedStorage, int]] = {}
    views: dict[str, torch.storage.TypedStorage] = {}

    def persistent_load(saved_id):
        if not isinstance(saved_id, tuple) or not saved_id:
            raise pickle.UnpicklingError(f"unexpected persistent id {str(saved_id)[:80]}")
        kind = saved_id[0].decode() if isinstance(saved_id[0], bytes) else saved_id[0]
        if kind == "module" and len(saved_id) >= 2:  # a whole pickled module's class: an inert placeholder
            return saved_id[1]
        if kind != "storage" or len(saved_id) != 6:
            raise pickle.UnpicklingError(f"unexpected persistent id {str(saved_id)[:80]}")
        _, storage_kind, root_key, _location, numel, view = saved_id
        dtype, size = _element_size(storage_kind)
        if root_key not in storages:
            budget.take(numel * size if isinstance(numel, int) else -1, f"storage {root_key}")
            storages[root_key] = (torch.UntypedStorage(numel * size), size)
        root = storages[root_key][0]
        if view is None:
            return _typed(root, dtype)
        view_key, offset, view_size = view
        if view_key not in views:
            views[view_key] = _typed(root[offset * size: (offset + view_size) * size], dtype)
        return views[view_key]

    with open(path, "rb") as f:
        try:
            magic = _plain_load(f, budget)
        except Exception:
            magic = None
        if magic != _LEGACY_MAGIC:
            raise WeightsError(f"{path} is not a PyTorch checkpoint (neither a zip archive nor torch's legacy format)")
        if _plain_load(f, budget) != _LEGACY_PROTOCOL:
            raise WeightsError(f"{path}: unknown legacy checkpoint protocol")
        _plain_load(f, budget)  # system info: endianness and type sizes
        obj = _RestrictedUnpickler(f, budget, placeholders, persistent_load).load()
        keys = _plain_load(f, budget)
        for key in keys:
            if key not in storages:
                raise pickle.UnpicklingError(f"storage {key} is listed but never used")
            storage, size = storages[key]
            header = f.read(8)
            if len(header) != 8 or struct.unpack("<q", header)[0] * size != storage.nbytes():
                raise pickle.UnpicklingError(f"storage {key} is truncated or has the wrong size")
            raw = f.read(storage.nbytes())
            if len(raw) != storage.nbytes():
                raise pickle.UnpicklingError(f"storage {key} is truncated")
            if raw:
                storage.copy_(torch.UntypedStorage.from_buffer(raw, dtype=torch.uint8))
    return obj


@dataclass
class LoadedFile:
    obj: Any
    method: str  # how it was read, recorded in the converted checkpoint's config
    placeholders: list[str] = field(default_factory=list)  # classes the file named, never imported


def load_original(path: str | Path) -> LoadedFile:
    """The object a ``torch.save`` file holds, on the CPU, with no code from the file run."""
    path = Path(path)
    if not path.is_file():  # a folder, a FIFO or a device: nothing to read, and nothing that could block
        raise WeightsError(f"{path} is not a regular file" if path.exists() else f"{path} not found")
    with open(path, "rb") as f:
        head = f.read(tarfile.BLOCKSIZE)
    budget = _Budget(path.stat().st_size)
    placeholders: dict[str, type] = {}
    try:
        if head[:4] == b"PK\x03\x04":  # the test torch.load itself makes
            obj = _read_zip(path, budget, placeholders)
        elif len(head) == tarfile.BLOCKSIZE and head[257:262] == b"ustar":
            raise WeightsError(f"{path} is in PyTorch's pre-0.4 tar format, which sslzoo does not read; "
                               f"re-save it with a current PyTorch in a sandbox")
        else:
            obj = _read_legacy(path, budget, placeholders)
    except WeightsError:
        raise
    except Exception as err:  # a damaged or hostile pickle: one line, never a traceback
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise WeightsError(f"{path} is not a readable PyTorch checkpoint ({reason})") from None
    return LoadedFile(obj, "restricted unpickler", sorted(placeholders))
