"""`ray job submit --working-dir . -- python jobs/train.py CONFIG`: the training pipeline as a Ray job.

Finds the platform services on the cluster by name (`aiinfra up` starts them). Prints the registered
model (NAME@VERSION) on the last line; exits 2 when the config or data is refused, 1 on a failure.
"""

from __future__ import annotations

import sys

from aiinfra.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
