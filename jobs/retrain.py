"""`ray job submit --working-dir . -- python jobs/retrain.py MODEL --config CONFIG`: the retraining pipeline as a Ray job.

What the autopilot submits when drift or a performance drop triggers a retrain: recent labelled
production rows (from the model's monitor) plus the reference data -> a new dataset version -> the
training pipeline -> a registered version, not aliased (the autopilot runs its canary). Prints the
challenger (NAME@VERSION) on the last line; exits 2 when the config or data is refused, 1 on a failure.
"""

from __future__ import annotations

import sys

from aiinfra.cli import main

if __name__ == "__main__":
    sys.exit(main(["retrain", *sys.argv[1:]]))
