"""The fleet benchmark's tenants matrix (bench/fleet_sim/matrix.py, issue 15).

The workload and the arrival schedules are seeded and pure: checked on values. The bar a
default policy must clear against sglang-router is pure too. One ``--quick`` run replays
the base cell open loop through a real gateway (no ``routing:`` key) and the in-process
oracle in front of real sims; another replays the LoRA cell through llmgw's round robin
and default policy. Their assertions are on counts, never on timings.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.fleet_sim import matrix
from bench.fleet_sim.arrivals import BURST, schedule
from bench.fleet_sim.bound import LOAD_LIMIT
from bench.fleet_sim.report import Row
from bench.fleet_sim.targets import CANDIDATES, llmgw_config
from bench.fleet_sim.tenants import kv_blocks, tenants, working_set_tokens


def test_tenants_is_reproducible_and_shares_one_prompt_per_tenant() -> None:
    first, again, other = tenants(200, 1), tenants(200, 1), tenants(200, 2)
    assert first == again and first != other
    assert first.requests == 200
    systems = {s.opening[0]["content"] for s in first.sessions}
    assert len(systems) == 4  # every tenant has sessions at this count
    assert all(s.sticky and 2 <= len(s.steps) <= 8 for s in first.sessions[:-1])
    # Tenant 0 is the most popular: weights 1, 1/2, 1/3, 1/4.
    counts = [sum(s.opening[0]["content"].startswith(f"You are tenant {t}'s")
                  for s in first.sessions) for t in range(4)]
    assert counts[0] == max(counts)


def test_kv_blocks_size_the_fleet_to_the_working_set() -> None:
    workload = tenants(64, 1)
    tokens = working_set_tokens(workload)
    # The distinct system prompts alone are over 4k tokens.
    assert tokens > 4 * 1000
    for factor in (0.5, 1.0, 4.0):
        blocks = kv_blocks(workload, factor, 4, 16)
        fleet = 4 * blocks * 16
        assert tokens / factor <= fleet < tokens / factor + 4 * 16


def test_arrivals_keep_the_mean_rate_and_shape() -> None:
    steady = schedule("steady", 40, 8.0, 1)
    assert steady == [i / 8.0 for i in range(40)]
    poisson = schedule("poisson", 400, 8.0, 1)
    assert poisson == schedule("poisson", 400, 8.0, 1) and poisson == sorted(poisson)
    assert 400 / 8.0 * 0.8 < poisson[-1] < 400 / 8.0 * 1.2
    bursty = schedule("bursty", 3 * BURST, 8.0, 1)
    assert sorted(set(bursty)) == [0.0, BURST / 8.0, 2 * BURST / 8.0]
    with pytest.raises(ValueError, match="unknown arrival kind"):
        schedule("sometimes", 4, 1.0, 1)


def _row(target: str, cell: str, hit: float, p99: float, load: float) -> Row:
    return Row(target, cell, hit_rate=hit, ttft_p99_ms=p99, load_imbalance=load,
               count_imbalance=load, hit_bound_any=0.95, hit_bound_loaded=0.9)


def test_verdict_names_every_missed_criterion_against_sglang_defaults() -> None:
    ref = _row(matrix.REFERENCE, "c", 0.89, 300, 1.9)
    assert matrix.verdict(_row("llmgw/x", "c", 0.90, 250, 1.1), ref) == "met"
    assert matrix.verdict(_row("llmgw/x", "c", 0.80, 350, 1.3), ref) == (
        "hit 80.0% < 89.0%; p99 350 > 300 ms; load 1.30")
    assert matrix.verdict(_row("llmgw/x", "c", 0.9, 1, 1), None) == "n/a"
    values, verdicts = matrix.matrix_tables([ref, _row("llmgw/x", "c", 0.90, 250, 1.1)])
    # Within the load limit (1.2 by count): the row is measured against the limited bound.
    assert "| llmgw/x | 90.0% / 250 / 1.10 / 100% |" in values.splitlines()
    assert f"| {matrix.REFERENCE} | 89.0% / 300 / 1.90 / 94% |" in values.splitlines()
    assert verdicts.splitlines()[-1] == "| llmgw/x | met |"


def test_default_target_has_no_routing_key_and_candidates_define_their_policy() -> None:
    default = llmgw_config("default", ["http://a"])
    assert "routing" not in default["models"][0]  # type: ignore[index]
    name = next(iter(CANDIDATES))
    config = llmgw_config(name, ["http://a"])
    assert config["policies"] == {name: CANDIDATES[name]}


def test_quick_matrix_replays_the_base_cell_open_loop(tmp_path: Path) -> None:
    out = tmp_path / "matrix.json"
    code = matrix.main(["--quick", "--targets", "llmgw/default,oracle", "--out", str(out)])
    assert code == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["target"], r["workload"]) for r in rows] == [
        ("llmgw/default", matrix.BASE.label), ("oracle", matrix.BASE.label)]
    requests = tenants(8 * matrix.BASE.replicas, 1).requests
    for row in rows:
        assert (row["ok"], row["errors"]) == (requests, 0), row["error_sample"]
        assert sum(row["per_replica"].values()) == requests
        assert row["hit_rate"] > 0  # every tenant's system prompt is reused
        assert row["adapter_loads"] == 0  # the base model's requests name no adapter
        # The bound holds on the replay's own trace, and the limited one within its limit.
        assert row["hit_rate"] <= row["hit_bound_any"]
        if row["count_imbalance"] <= LOAD_LIMIT:
            assert row["hit_rate"] <= row["hit_bound_loaded"] <= row["hit_bound_any"]


def test_cells_are_chosen_by_name_or_position() -> None:
    assert matrix.chosen_cells("base") == (matrix.BASE,)
    assert matrix.chosen_cells("all") == matrix.CELLS
    assert [c.label for c in matrix.chosen_cells("1,2")] == [
        "r8 kv2x poisson", "r16 kv2x poisson"]
    with pytest.raises(SystemExit, match="positions 0-8, not '9'"):
        matrix.chosen_cells("9")
    assert matrix.chosen_cells("lora") == (matrix.LORA,)
    assert matrix.LORA.label == "r4 kv2x poisson lora"


def test_quick_lora_cell_adapter_aware_routing_loads_fewer_adapters(tmp_path: Path) -> None:
    """The LoRA mix through llmgw: round robin is blind to adapters, the default policy of
    a LoRA model weighs residency (lora-affinity), so it loads adapters less often."""
    out = tmp_path / "matrix.json"
    code = matrix.main(["--quick", "--cells", "lora", "--targets",
                        "llmgw/round-robin,llmgw/default", "--out", str(out)])
    assert code == 0
    rows = {r["target"]: r for r in json.loads(out.read_text())["rows"]}
    requests = tenants(8 * matrix.LORA.replicas, 1).requests
    for row in rows.values():
        assert row["workload"] == matrix.LORA.label
        assert (row["ok"], row["errors"]) == (requests, 0), row["error_sample"]
        assert row["hit_rate"] <= row["hit_bound_any"]
    blind, aware = rows["llmgw/round-robin"], rows["llmgw/default"]
    assert 0 < aware["adapter_loads"] < blind["adapter_loads"]
