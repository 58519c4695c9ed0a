"""``python -m bench.lora``: the same as ``bench/lora/run.py``."""

import sys

from bench.lora.run import main

sys.exit(main())
