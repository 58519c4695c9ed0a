"""Two processes over one ``server.state_dir`` (two workers of one gateway): a key or an
adapter made or removed in one holds in the other once it re-reads the state file
(``Tenancy.reload_state``, ``AdapterCatalog.reload_state``), and what did not change
keeps its object (an adapter's residency, a key's quotas)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmgw.config import GatewayConfig, Limits
from llmgw.errors import InvalidApiKey
from llmgw.lora.catalog import Adapter, AdapterCatalog
from llmgw.metrics import Metrics, TenantMetrics
from llmgw.tenancy.gate import Tenancy


def test_a_key_made_or_revoked_in_one_worker_holds_in_the_other(tmp_path: Path) -> None:
    cfg = GatewayConfig.model_validate(
        {
            "server": {"state_dir": str(tmp_path)},
            "auth": {"keys": []},
            "models": [{"name": "m", "engine": "openai", "url": "http://127.0.0.1:1"}],
        }
    )
    one, other = (Tenancy(cfg, TenantMetrics(Metrics())) for _ in range(2))
    made, secret = one.create("alice", None, Limits(rpm=5), "interactive")
    header = {"authorization": f"Bearer {secret}"}
    with pytest.raises(InvalidApiKey):
        other.authenticate(header)
    other.reload_state(cfg)
    assert other.authenticate(header) == made
    one.revoke("alice")
    other.reload_state(cfg)
    with pytest.raises(InvalidApiKey):
        other.authenticate(header)


def test_an_adapter_registered_or_removed_in_one_worker_holds_in_the_other(tmp_path: Path) -> None:
    (tmp_path / "root" / "sql").mkdir(parents=True)
    configured = Adapter("cfg", "m", "/adapters/cfg")

    def catalog() -> AdapterCatalog:
        return AdapterCatalog(
            [configured], {"m": [str(tmp_path / "root")]}, tmp_path / "adapters.json"
        )

    one, other = catalog(), catalog()
    one.register("m", "sql", "sql")
    kept = other.get("cfg")
    assert other.reload_state() == []
    assert sorted(a.name for a in other.all()) == ["cfg", "sql"]
    assert other.get("cfg") is kept  # unchanged: the same adapter, its residency holds
    sql = other.get("sql")
    one.remove("sql")
    one.remove("cfg")
    assert other.reload_state() == [kept, sql]  # to be unloaded from the replicas
    assert other.all() == []
