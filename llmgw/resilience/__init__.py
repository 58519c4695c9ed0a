"""Resilience: which failures count against a replica (outlier ejection), which failed
attempts may be sent again, and how many retries a model may spend (the retry budget).
Pure state machines with an injected clock; the pool and the dispatcher drive them."""
