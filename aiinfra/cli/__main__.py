"""``python -m aiinfra.cli``: how the autopilot submits a retrain (aiinfra/autopilot/executor.py)."""

import sys

from aiinfra.cli import main

sys.exit(main())
