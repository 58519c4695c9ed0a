"""Histogram buckets shared by the metric families."""

from __future__ import annotations

# Latency buckets from 5 ms to 5 min: gateway overhead is ms, long generations are minutes.
LATENCY_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
ITL_S = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)
TOKENS = (16, 64, 256, 1024, 4096, 16384, 65536)
