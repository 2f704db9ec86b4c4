"""`python -m pipeline.inspection MODEL_DIR`: the same command as `adpredict inspect`."""

import sys

from pipeline.inspection.command import main

sys.exit(main())
