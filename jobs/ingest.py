"""`ray job submit --working-dir . -- python jobs/ingest.py NAME URI [--spec FILE]`: the ingestion gate as a Ray job.

Prints the version id on the last line; exits 2 with the reason when the input is refused.
"""

from __future__ import annotations

import sys

from aiinfra.cli import main

if __name__ == "__main__":
    sys.exit(main(["data", "ingest", *sys.argv[1:]]))
