"""``python -m zoo``: the same command as the installed ``zoo`` script, from any folder.

sslzoo installs ``training`` and ``export`` as top-level packages beside ``zoo`` (its subcommands
come from them). ``python -m`` puts the current folder first on ``sys.path``, which the ``zoo``
script never does, so a user's own ``training/`` or ``export/`` there would replace sslzoo's and
``zoo train`` would fail to import. The command reads no module from the current folder, so that
entry goes, as Python's own ``-P`` (safe path) would drop it; it stays only when ``zoo`` itself was
imported from there (a source checkout run in place, whose ``training/`` is sslzoo's).
"""

import os
import sys


def _drop_current_folder() -> None:
    if getattr(sys.flags, "safe_path", False) or not sys.path:
        return  # python -P: nothing was added
    first = os.path.realpath(sys.path[0] or os.curdir)
    source_root = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    if first == os.path.realpath(os.getcwd()) and first != source_root:
        del sys.path[0]


_drop_current_folder()

from zoo.cli import entry_point  # noqa: E402 (after the sys.path fix, which decides what it imports)

entry_point()
