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

from importlib.metadata import EntryPoint, entry_points

COMMANDS_GROUP = "sslzoo.commands"
QUICKSTART_GROUP = "sslzoo.quickstart"


def plugin_entry_points(group: str) -> dict[str, EntryPoint]:
    """The entry points of ``group`` by name, in name order (one distribution per name: the first on sys.path)."""
    return {ep.name: ep for ep in sorted(entry_points(group=group), key=lambda ep: ep.name)}
