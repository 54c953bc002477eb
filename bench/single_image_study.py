"""The tables of the single-image study (README, "The single-image study (arXiv 1904.13132) at small
scale"): per-layer linear-probe top-1 on Fashion-MNIST test, mean ± sample std over the training
seeds, of each `zoo eval ... --json-out` file in MODEL_CARDS/results/single_image_study/ (named
METHOD-DATA.json), with the random-init networks of each architecture below. The cards of the
studied models show the same rows (`zoo card NAME`, zoo/single_image_study.py).

    python bench/single_image_study.py [FOLDER]
"""

from __future__ import annotations

import sys
from pathlib import Path

from zoo.single_image_study import study_dir, table

if __name__ == "__main__":
    print(table(Path(sys.argv[1]) if len(sys.argv) > 1 else study_dir()))
