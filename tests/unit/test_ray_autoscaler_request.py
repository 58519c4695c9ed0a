"""The cluster autoscaler keeps only the last resource request it got: engines and tool
workers, placed by two launchers, must both stay in every request either one sends."""

from __future__ import annotations

from typing import Any

import pytest
import ray.autoscaler.sdk

from llmgw.config import PlacementConfig
from llmgw.placement.ray_launcher import ENGINE_PREFIX, TOOL_PREFIX, RayLauncher


def test_each_request_carries_both_launchers_unplaced_bundles(
        monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[list[dict[str, float]]] = []

    def request_resources(*, bundles: list[dict[str, Any]]) -> None:
        sent.append(bundles)

    monkeypatch.setattr(ray.autoscaler.sdk, "request_resources", request_resources)
    settings = PlacementConfig(backend="ray")
    engines = RayLauncher(settings, ENGINE_PREFIX)
    tools = RayLauncher(settings, TOOL_PREFIX, detached=False)
    try:
        engines._unplaced[(ENGINE_PREFIX, "m", "mixed")] = [{"GPU": 1.0}]
        # A tool named like a model is another pool, not the same one.
        tools._unplaced[(TOOL_PREFIX, "m", "mixed")] = [{"CPU": 2.0}]
        tools._request_unplaced()
        assert sorted(sent[-1], key=str) == [{"CPU": 2.0}, {"GPU": 1.0}]
        engines._unplaced.pop((ENGINE_PREFIX, "m", "mixed"))
        engines._request_unplaced()
        assert sent[-1] == [{"CPU": 2.0}]
    finally:
        tools._unplaced.clear()
