"""``python -m medhall.train DATASET --base ...``: the ``medhall train`` command, for launchers
(``accelerate launch -m medhall.train ...``, ``torchrun -m medhall.train ...``)."""

import sys

from medhall.cli import run

if __name__ == "__main__":
    sys.argv = ["medhall train", "train", *sys.argv[1:]]
    run()
