"""Read an original checkpoint without running any code the file names.

``torch.load(weights_only=True)`` is tried first. Files it refuses (NPID's pickled memory bank,
MultiGrain's pickled optimiser method, whole pickled models, old ``.tar`` files) are read again
through torch's own loader with a restricted unpickler: it rebuilds tensors, storages, numbers,
strings and plain containers, and turns every other global the pickle names into an inert
``PickledObject`` subclass. It never imports a module the file names, so a ``__reduce__`` that
would call ``os.system`` or ``open`` produces an inert object that records its arguments.
"""

from __future__ import annotations

import _compat_pickle
import collections
import codecs
import pickle
import types
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


def _numpy_globals() -> dict[tuple[str, str], Any]:
    import numpy as np

    def reconstruct(subtype, shape, dtype):
        if subtype is not np.ndarray:
            raise pickle.UnpicklingError("refusing a numpy array subclass")
        return np.ndarray.__new__(np.ndarray, shape, dtype)

    def scalar(dtype, data=None):
        if not isinstance(dtype, np.dtype):
            raise pickle.UnpicklingError("refusing a numpy scalar of a non-numpy type")
        return np.frombuffer(data, dtype=dtype, count=1)[0] if isinstance(data, bytes) else data

    found = {}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        found[(module, "_reconstruct")] = reconstruct
        found[(module, "scalar")] = scalar
    found[("numpy", "ndarray")] = np.ndarray
    found[("numpy", "dtype")] = np.dtype
    return found


_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("builtins", "bytearray"): bytearray,
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


def _restricted_pickle_module(placeholders: dict[str, type]) -> types.ModuleType:
    """A stand-in for the ``pickle`` module, for ``torch.load(pickle_module=...)``."""
    safe = {**_SAFE_GLOBALS, **_numpy_globals()}

    class RestrictedUnpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) in _compat_pickle.NAME_MAPPING:  # Python 2 names
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
            if (module, name) in safe:
                return safe[(module, name)]
            if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
                return getattr(torch, name)
            key = f"{module}.{name}"
            if key not in placeholders:
                placeholders[key] = _placeholder_class(module, name)
            return placeholders[key]

    module = types.ModuleType("sslzoo_restricted_pickle")
    module.Unpickler = RestrictedUnpickler
    module.UnpicklingError = pickle.UnpicklingError
    module.load = lambda file, **kwargs: RestrictedUnpickler(file, **kwargs).load()
    return module


def _is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.rsplit("/", 1)[-1] == "constants.pkl" for name in archive.namelist())


@dataclass
class LoadedFile:
    obj: Any
    method: str  # "torch.load(weights_only=True)" or "restricted unpickler"
    placeholders: list[str] = field(default_factory=list)  # classes the file named, never imported


def load_original(path: str | Path) -> LoadedFile:
    """The object a ``torch.save`` file holds, on the CPU, with no pickled code run."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path} not found")
    if _is_torchscript_archive(path):  # torch.load would hand it to torch.jit.load, which runs its code
        raise WeightsError(f"{path} is a TorchScript archive, not a checkpoint of weights; refusing to load it")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return LoadedFile(torch.load(path, map_location="cpu", weights_only=True), "torch.load(weights_only=True)")
    except Exception:  # refused globals, old .tar format, ...: read it again, restricted
        pass
    placeholders: dict[str, type] = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "source code of class ... has changed"
            obj = torch.load(path, map_location="cpu", weights_only=False, encoding="latin1",
                             pickle_module=_restricted_pickle_module(placeholders))
    except Exception as err:
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise WeightsError(f"{path} is not a readable PyTorch checkpoint ({reason})") from None
    return LoadedFile(obj, "restricted unpickler", sorted(placeholders))
