"""``python -m zoo``: the same command as the installed ``zoo`` script, from any folder.

``python -m`` puts the current folder first on ``sys.path``, which the ``zoo`` script never does;
``drop_current_folder`` takes it off again, so a user's own ``training/`` or ``export/`` there does
not replace sslzoo's subcommands.
"""

from zoo.plugins import drop_current_folder

drop_current_folder()

from zoo.cli import entry_point  # noqa: E402 (after the sys.path fix, which decides what it imports)

entry_point()
