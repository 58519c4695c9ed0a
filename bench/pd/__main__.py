"""``python -m bench.pd``: the same as ``bench/pd/run.py``."""

import sys

from bench.pd.run import main

sys.exit(main())
