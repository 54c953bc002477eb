"""``python -m training ...`` is the ``zoo`` CLI; it exists so that torchrun can start it:
``torchrun --nproc-per-node 8 -m training train rotnet --recipe paper --data /data/imagenet``."""

import sys

from zoo.cli import main

sys.exit(main())
