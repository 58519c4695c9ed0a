"""Example tools, served by configs/tools.yaml: a deployment with a plain tool, a batched
tool and a tool that calls nothing but its own state. Offline and deterministic.

    tools:
      - name: weather
        import_path: llmgw.tools.examples:Weather
        init_args: {unit: celsius}
        replicas: 2
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal

from pydantic import BaseModel, Field

import llmgw


class Forecast(BaseModel):
    city: str
    days: int
    temperatures: list[int]
    unit: str


class Weather:
    """A made-up weather service: the same city always gets the same weather."""

    def __init__(self, unit: Literal["celsius", "fahrenheit"] = "celsius") -> None:
        self.unit = unit

    @llmgw.tool
    def __call__(self, city: Annotated[str, Field(description="City name, e.g. Oslo")]) -> str:
        """The weather today in a city, in one sentence."""
        return f"{self._temperature(city, 0)} degrees {self.unit} and clear in {city}"

    @llmgw.tool
    async def forecast(self, city: str,
                       days: Annotated[int, Field(ge=1, le=14, description="Days ahead")] = 3,
                       ) -> Forecast:
        """Daily temperatures in a city for the coming days."""
        return Forecast(city=city, days=days, unit=self.unit,
                        temperatures=[self._temperature(city, d) for d in range(days)])

    def _temperature(self, city: str, day: int) -> int:
        digest = hashlib.sha256(f"{city.lower()}/{day}".encode()).digest()
        celsius = digest[0] % 35 - 5
        return celsius if self.unit == "celsius" else celsius * 9 // 5 + 32


class Embedder:
    """A vectorized tool: one call of the method embeds a whole batch of texts (a real
    embedding model gains from batching exactly this way)."""

    def __init__(self, dimensions: int = 8) -> None:
        self.dimensions = dimensions

    @llmgw.tool(name="embed")
    @llmgw.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    def embed(self, text: list[str]) -> list[list[float]]:
        """A deterministic unit-scale vector for a text (a stand-in embedding)."""
        # One call per batch: `text` holds every batched call's text, in order.
        return [[b / 255 for b in hashlib.sha256(t.encode()).digest()[: self.dimensions]]
                for t in text]
