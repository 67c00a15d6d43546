"""`ray job submit --working-dir . -- python jobs/batch_predict.py NAME@VERSION DATASET[@VERSION] [--output NAME]`.

Scores a dataset version with a registered model on Ray Data (an actor pool running the serving
path's checks, transforms and model) and writes the predictions as a new dataset version with
lineage to the model version. Prints the new version (NAME@VERSION) on the last line.
"""

from __future__ import annotations

import sys

from aiinfra.cli import main

if __name__ == "__main__":
    sys.exit(main(["predict", *sys.argv[1:]]))
