"""``python -m training ...`` is the ``zoo`` CLI, kept for scripts that start it this way.

The documented multi-process form starts the installed script instead:
``torchrun --nproc-per-node 8 --no-python zoo train rotnet --recipe paper --data /data/imagenet``.
``-m training`` looks in the current folder first, so a ``training/`` package of the user's there
would run instead of this one; once here, the current folder leaves ``sys.path`` as for ``python -m zoo``.
"""

import sys

from zoo.plugins import drop_current_folder

drop_current_folder()

from zoo.cli import main  # noqa: E402 (after the sys.path fix, which decides what it imports)

sys.exit(main())
