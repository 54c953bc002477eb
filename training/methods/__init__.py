"""The trainable methods, found rather than listed: a method is one module, named for the method.

A module of this package that defines ``METHOD`` (its ``training.engine.Method`` subclass) and
``RECIPES`` (``training.recipes.method_recipes``) is the method of the module's name:
``training/methods/rotnet.py`` is ``zoo train rotnet``. Other modules here (``common``,
``heads``, ``memory_bank``, ``views``) hold pieces the methods share. Adding a method is adding its file; its card
facts (paper, pretext, whether it uses labels) are ``zoo.methods``' entry of the same name.

``ZOO_METHOD_PATH`` names more folders (separated like PATH) whose ``*.py`` files are methods by
the same rule, for trying a method out without touching the package.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import pkgutil
import sys
from pathlib import Path
from types import ModuleType

from zoo.errors import UnknownNameError, UsageError

METHOD_PATH_ENV = "ZOO_METHOD_PATH"
# Modules loaded from ZOO_METHOD_PATH live under this name in sys.modules.
_PLUGIN_PACKAGE = "zoo_method_plugins"


def _is_method(module: ModuleType) -> bool:
    return hasattr(module, "METHOD") and hasattr(module, "RECIPES")


def _plugin_module(path: Path) -> ModuleType:
    name = f"{_PLUGIN_PACKAGE}.{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


@functools.cache
def _methods() -> dict[str, ModuleType]:
    found: dict[str, ModuleType] = {}
    for entry in pkgutil.iter_modules(__path__, f"{__name__}."):
        module = importlib.import_module(entry.name)
        if _is_method(module):
            found[entry.name.rpartition(".")[2]] = module
    for folder in filter(None, os.environ.get(METHOD_PATH_ENV, "").split(os.pathsep)):
        for path in sorted(Path(folder).glob("[!_]*.py")):
            if path.stem in found:
                raise UsageError(f"{METHOD_PATH_ENV}: {path} would replace the method {path.stem!r}; rename the file")
            module = _plugin_module(path)
            if _is_method(module):
                found[path.stem] = module
    return found


def method_names() -> list[str]:
    """Every trainable method, sorted."""
    return sorted(_methods())


def method_module(name: str) -> ModuleType:
    methods = _methods()
    if name not in methods:
        raise UnknownNameError("method", name, methods, hint=f"trainable methods: {', '.join(sorted(methods))}")
    return methods[name]


def get_recipe(method: str, recipe: str):
    module = method_module(method)
    if recipe not in module.RECIPES:
        raise UnknownNameError("recipe", recipe, module.RECIPES, hint=f"{method} recipes: {', '.join(module.RECIPES)}")
    return module.RECIPES[recipe]
