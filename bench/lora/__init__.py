"""LoRA multiplexing benchmark: adapter-aware routing vs random on real embedded engines.
Run with ``python -m bench.lora``; see ``bench/lora/run.py``."""
