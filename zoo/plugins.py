"""What the packages built on ``zoo`` add to it: ``zoo`` subcommands and quickstart stages.

``zoo`` names nothing of those packages, not even by string. Each declares its additions as entry
points in pyproject.toml, which ``importlib.metadata`` reads from the installed distribution:

``sslzoo.commands``
    ``NAME = "package.module:click_command"``: the subcommand ``zoo NAME``.
``sslzoo.quickstart``
    ``"NN-package" = "package.module:STAGES"``: a list of stages ``stage(ctx) -> list[SummaryRow]``
    that ``zoo quickstart`` runs after its own, groups in the order of their names (``NN``).

An entry point is loaded (its package imported) only when its command or the quickstart runs, so
``zoo list`` stays fast. Entry points live in the installed metadata: after changing them, reinstall
(``pip install -e .``; ``make test`` does it whenever pyproject.toml changes).
"""

from __future__ import annotations

import os
import sys
from importlib.metadata import EntryPoint, entry_points

COMMANDS_GROUP = "sslzoo.commands"
QUICKSTART_GROUP = "sslzoo.quickstart"


def drop_current_folder() -> None:
    """Take the current folder off ``sys.path`` where ``python -m`` put it, before any subcommand loads.

    sslzoo installs ``training`` and ``export`` as top-level packages beside ``zoo``; a user's own
    packages of those names in the folder they work in would otherwise replace them. The CLI reads no
    module from the current folder, so the entry goes, as Python's ``-P`` (safe path) would drop it; it
    stays only when sslzoo itself was imported from there (a source checkout run in place).
    """
    if getattr(sys.flags, "safe_path", False) or not sys.path:
        return  # python -P: nothing was added
    first = os.path.realpath(sys.path[0] or os.curdir)
    source_root = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    if first == os.path.realpath(os.getcwd()) and first != source_root:
        del sys.path[0]


def plugin_entry_points(group: str) -> dict[str, EntryPoint]:
    """The entry points of ``group`` by name, in name order (one distribution per name: the first on sys.path)."""
    return {ep.name: ep for ep in sorted(entry_points(group=group), key=lambda ep: ep.name)}
