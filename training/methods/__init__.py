"""Training methods by name: one module each, holding its ``Method`` subclass and its ``RECIPES``."""

from __future__ import annotations

import importlib
from types import ModuleType

from zoo.errors import UnknownNameError

# name -> module; each module defines METHOD (a training.engine.Method subclass) and RECIPES.
METHODS: dict[str, str] = {
    "rotnet": "training.methods.rotnet",
    "deepcluster": "training.methods.deepcluster",
    "sela": "training.methods.sela",
    "iic": "training.methods.iic",
    "deepercluster": "training.methods.deepercluster",
    "simclr": "training.methods.simclr",
    "npid": "training.methods.npid",
    "byol": "training.methods.byol",
    "multigrain": "training.methods.multigrain",
    "pirl": "training.methods.pirl",
    "proxynca": "training.methods.proxynca",
    "cpc": "training.methods.cpc",
}


def method_module(name: str) -> ModuleType:
    if name not in METHODS:
        raise UnknownNameError("method", name, METHODS, hint=f"trainable methods: {', '.join(sorted(METHODS))}")
    return importlib.import_module(METHODS[name])


def get_recipe(method: str, recipe: str):
    module = method_module(method)
    if recipe not in module.RECIPES:
        raise UnknownNameError("recipe", recipe, module.RECIPES, hint=f"{method} recipes: {', '.join(module.RECIPES)}")
    return module.RECIPES[recipe]
