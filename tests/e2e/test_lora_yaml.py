"""`llmgw up configs/lora.yaml` exactly as its header says: two embedded engines, eight
demo adapters built offline, the admin key from the environment."""

from __future__ import annotations

import sys

import httpx
import openai
import pytest

from tests.support import Server, free_port

pytestmark = pytest.mark.e2e


def test_configs_lora_yaml_serves_its_adapters() -> None:
    # Read-only use: nothing is registered, so the state file in the home is not written.
    port = free_port()
    gateway = Server([sys.executable, "-m", "llmgw", "up", "configs/lora.yaml", "--port",
                      str(port)], port, "/ready", timeout_s=300,
                     env={"LLMGW_ADMIN_KEY": "from-env"})
    try:
        with openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0) as client:
            models = {m.id for m in client.models.list().data}
            assert models == {"demo", *(f"demo-lora-{i}" for i in range(8))}
            answers = {name: client.chat.completions.create(
                model=name, messages=[{"role": "user", "content": "hi"}],  # type: ignore[arg-type]
                max_tokens=8, temperature=0).choices[0].message.content
                for name in ("demo", "demo-lora-3", "demo:demo-lora-6")}
            assert len(set(answers.values())) == 3
        listing = httpx.get(gateway.url + "/admin/adapters",
                            headers={"authorization": "Bearer from-env"})
        assert listing.status_code == 200 and len(listing.json()["data"]) == 8
    finally:
        gateway.stop()
