"""Routing policies: pure, synchronous functions of a request and replica snapshots."""
