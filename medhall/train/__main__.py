"""``python -m medhall.train DATASET --base ...``: the ``medhall train`` command, for launchers
(``accelerate launch -m medhall.train ...``, ``torchrun -m medhall.train ...``)."""

import sys

from medhall.cli import app

if __name__ == "__main__":
    app(["train", *sys.argv[1:]], prog_name="python -m medhall.train")
