"""Keys, the key state file and the tenancy gate (authenticate, admit, create, revoke,
reload), with a temporary state directory and an injected clock."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llmgw.checks import validate
from llmgw.config import ConfigError, GatewayConfig, KeyConfig, Limits, load_config
from llmgw.errors import AdminRequestRejected, ChangeNotSaved, InvalidApiKey, RateLimited
from llmgw.metrics import Metrics, TenantMetrics
from llmgw.tenancy.estimate import estimate_tokens
from llmgw.tenancy.gate import Tenancy
from llmgw.tenancy.keys import ApiKey, KeyRing, bearer_token, hash_key, new_key, new_key_text
from llmgw.tenancy.store import read_keys

SECRET = "llmgw-test-secret"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def config(tmp: Path, **auth: Any) -> GatewayConfig:
    return GatewayConfig.model_validate({
        "server": {"state_dir": str(tmp / "state")},
        "models": [{"name": "m", "engine": "openai", "url": "http://127.0.0.1:1"},
                   {"name": "n", "engine": "openai", "url": "http://127.0.0.1:1"}],
        "auth": {"keys": [{"name": "cfg", "hash": hash_key(SECRET), "models": ["m"],
                           "rpm": 2}], **auth},
    })


def gate(cfg: GatewayConfig, clock: Clock | None = None) -> tuple[Tenancy, Metrics]:
    metrics = Metrics()
    return Tenancy(cfg, TenantMetrics(metrics), clock or Clock()), metrics


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_new_keys_are_random_and_only_their_hash_is_printed_for_the_config() -> None:
    key = new_key()
    assert key.startswith("llmgw-") and len(key) > 40 and key != new_key()
    text = new_key_text("team-a")
    secret = text.split()[1]
    assert f'{{name: team-a, hash: "{hash_key(secret)}"}}' in text
    KeyConfig(name="team-a", hash=hash_key(secret))  # what it prints, the config takes
    with pytest.raises(ValueError, match="--name"):
        new_key_text("no spaces")


@pytest.mark.parametrize(
    ("headers", "token"),
    [({"authorization": "Bearer k1"}, "k1"), ({"authorization": "bearer  k1 "}, "k1"),
     ({"api-key": "k2"}, "k2"), ({"authorization": "Bearer ", "api-key": "k3"}, "k3"),
     ({"authorization": "Basic k1"}, None), ({"authorization": "Bearer"}, None), ({}, None)],
    ids=["bearer", "bearer-spaces", "api-key", "empty-bearer-then-api-key", "basic",
         "no-token", "none"])
def test_the_key_a_client_sent(headers: dict[str, str], token: str | None) -> None:
    assert bearer_token(headers) == token


def test_the_ring_finds_keys_by_secret_and_name_only() -> None:
    ring = KeyRing([ApiKey("a", hash_key("s1")), ApiKey("b", hash_key("s2"))])
    assert [ring.authenticate(s) for s in ("s1", "s2", "s3", hash_key("s1"))] == \
        [ring.get("a"), ring.get("b"), None, None]
    ring.put(ApiKey("a", hash_key("s4")))  # a new secret under the same name
    assert ring.authenticate("s1") is None and ring.authenticate("s4") is ring.get("a")


@pytest.mark.parametrize(
    ("auth", "message"),
    [({"keys": [{"name": "a", "hash": "sha256:abc"}]}, r"auth.keys\[0\].hash"),
     ({"keys": [{"name": "a", "hash": "llmgw-plaintext"}]}, "never goes in the config"),
     ({"keys": [{"name": "a b", "hash": hash_key("x")}]}, r"auth.keys\[0\].name"),
     ({"keys": [{"name": "a", "hash": hash_key("x")}, {"name": "a", "hash": hash_key("y")}]},
      "declared twice"),
     ({"keys": [{"name": "a", "hash": hash_key("x")}, {"name": "b", "hash": hash_key("x")}]},
      "same hash"),
     ({"keys": [{"name": "a", "hash": hash_key("x"), "rpm": 0}]}, r"auth.keys\[0\].rpm"),
     ({"model_limits": {"nope": {"rpm": 1}}}, "auth.model_limits.nope"),
     ({"keys": [{"name": "a", "hash": hash_key("x"), "priority": "urgent"}]}, "priority")],
    ids=["short-hash", "plaintext", "bad-name", "same-name", "same-hash", "zero-rpm",
         "unknown-model", "bad-priority"])
def test_bad_auth_sections_name_the_key(tmp_path: Path, auth: dict[str, Any],
                                        message: str) -> None:
    path = tmp_path / "x.yaml"
    path.write_text(json.dumps({"models": [{"name": "m", "engine": "openai",
                                            "url": "http://127.0.0.1:1"}], "auth": auth}))
    with pytest.raises(ConfigError, match=message):
        load_config([path])


def test_no_auth_section_opens_everything(tmp_path: Path) -> None:
    cfg = config(tmp_path).model_copy(update={"auth": None})
    tenancy, _ = gate(cfg)
    assert tenancy.authenticate({}) is None and tenancy.admit(None, "m", 10) is None
    with pytest.raises(AdminRequestRejected, match="auth"):
        tenancy.create("x", None, Limits(), "interactive")
    assert not (tmp_path / "state").exists()


def test_missing_and_wrong_keys_are_401_and_counted_without_the_key(tmp_path: Path) -> None:
    tenancy, metrics = gate(config(tmp_path))
    for headers, reason in [({}, "missing"), ({"authorization": "Bearer wrong"}, "unknown")]:
        with pytest.raises(InvalidApiKey) as caught:
            tenancy.authenticate(headers)
        assert caught.value.status_code == 401 and "wrong" not in caught.value.message
        assert sample(metrics, "llmgw_auth_failures_total", reason=reason) == 1
    key = tenancy.authenticate({"api-key": SECRET})
    assert key is not None and key.name == "cfg"
    assert (tenancy.visible(key, "m"), tenancy.visible(key, "n"), tenancy.visible(None, "n")) \
        == (True, False, True)
    assert SECRET not in metrics.exposition().decode()


def test_admission_charges_reconciles_and_refuses_with_headers(tmp_path: Path) -> None:
    clock = Clock()
    tenancy, metrics = gate(config(tmp_path, model_limits={"m": {"tpm": 100}}), clock)
    key = tenancy.ring.get("cfg")
    first = tenancy.admit(key, "m", 10)
    assert first is not None and first.headers() == {
        "x-ratelimit-limit-requests": "2", "x-ratelimit-remaining-requests": "1",
        "x-ratelimit-reset-requests": "30s", "x-ratelimit-limit-tokens": "100",
        "x-ratelimit-remaining-tokens": "90", "x-ratelimit-reset-tokens": "6s"}
    assert sample(metrics, "llmgw_key_in_flight_requests", key="cfg") == 1
    first.finish(130)  # the engine's usage: 120 more than estimated -> 30 owed (90 - 120)
    first.finish(130)  # exactly once
    assert sample(metrics, "llmgw_key_in_flight_requests", key="cfg") == 0
    with pytest.raises(RateLimited) as caught:
        tenancy.admit(key, "m", 10)
    assert caught.value.headers() == {
        "retry-after": "24", "x-ratelimit-limit-requests": "2",
        "x-ratelimit-remaining-requests": "1", "x-ratelimit-reset-requests": "30s",
        "x-ratelimit-limit-tokens": "100", "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "1m18s"}
    assert "tokens per minute (tpm) on model 'm'" in caught.value.message
    assert sample(metrics, "llmgw_key_rate_limited_total", key="cfg", model="m",
                  limit="model_tokens") == 1
    clock.now = 24.0  # 40 tokens back: the debt paid and 10 for this one
    second = tenancy.admit(key, "m", 10)
    assert second is not None
    with pytest.raises(RateLimited, match="requests per minute .rpm. on key 'cfg'"):
        tenancy.admit(key, "n", 1)  # the key's rpm spans its models


def test_a_reload_keeps_what_the_quotas_counted(tmp_path: Path) -> None:
    cfg = config(tmp_path, model_limits={"m": {"rpm": 5}})
    tenancy, _ = gate(cfg)
    key = tenancy.ring.get("cfg")
    for _ in range(2):
        tenancy.admit(key, "m", 1)
    tenancy.reconfigure(cfg)  # unchanged: the key's rpm of 2 is spent
    with pytest.raises(RateLimited, match="on key 'cfg'"):
        tenancy.admit(key, "m", 1)
    raised = cfg.model_copy(update={"auth": cfg.auth.model_copy(update={  # type: ignore[union-attr]
        "keys": [KeyConfig(name="cfg", hash=hash_key(SECRET), models=["m"], rpm=3)],
        "model_limits": {"m": Limits(rpm=3)}})})
    tenancy.reconfigure(raised)  # one more request for the key, and the model's 2 used count
    key = tenancy.ring.get("cfg")
    tenancy.admit(key, "m", 1)
    with pytest.raises(RateLimited):
        tenancy.admit(key, "m", 1)


def test_runtime_keys_persist_and_revocations_hold_across_restarts(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    tenancy, metrics = gate(cfg)
    made, secret = tenancy.create("rt", ["n"], Limits(rpm=5), "batch")
    assert tenancy.authenticate({"authorization": f"Bearer {secret}"}) is made
    with pytest.raises(AdminRequestRejected) as taken:
        tenancy.create("cfg", None, Limits(), "interactive")
    assert taken.value.status_code == 409
    tenancy.revoke("cfg")
    with pytest.raises(InvalidApiKey):
        tenancy.authenticate({"authorization": f"Bearer {SECRET}"})
    stored = (tmp_path / "state" / "keys.json").read_text()
    assert secret not in stored and SECRET not in stored
    saved = read_keys(tmp_path / "state" / "keys.json")
    assert (saved.registered, saved.revoked, saved.problems) == (
        {"rt": made}, frozenset({hash_key(SECRET)}), [])

    restarted, _ = gate(cfg)  # a restart, and a reload, keep both changes
    restarted.reconfigure(cfg)
    assert [k.describe() for k in restarted.ring.all()] == [
        {"name": "rt", "models": ["n"], "rpm": 5, "tpm": None, "max_concurrency": None,
         "priority": "batch", "weight": 1.0, "origin": "runtime", "tools": None}]
    rotated = cfg.model_copy(update={"auth": cfg.auth.model_copy(update={"keys": [
        KeyConfig(name="cfg", hash=hash_key("new-secret"))]})})  # type: ignore[union-attr]
    restarted.reconfigure(rotated)  # a new secret under the revoked name is a new key
    assert restarted.authenticate({"api-key": "new-secret"}).name == "cfg"  # type: ignore[union-attr]
    restarted.revoke("rt")
    with pytest.raises(AdminRequestRejected) as gone:
        restarted.revoke("rt")
    assert gone.value.status_code == 404


def test_a_change_the_state_file_cannot_keep_is_not_made(tmp_path: Path) -> None:
    tenancy, _ = gate(config(tmp_path))
    (tmp_path / "state" / "keys.json").mkdir(parents=True)  # cannot be replaced now
    with pytest.raises(ChangeNotSaved):
        tenancy.create("rt", None, Limits(), "interactive")
    with pytest.raises(ChangeNotSaved):
        tenancy.revoke("cfg")
    assert [k.name for k in tenancy.ring.all()] == ["cfg"]


def test_a_bad_state_file_is_refused_by_check_and_ignored_by_a_running_gateway(
        tmp_path: Path) -> None:
    cfg = config(tmp_path)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "keys.json").write_text(json.dumps(
        {"registered": {"ok": {"hash": hash_key("x")}, "bad": {"hash": "nope"}},
         "revoked": [1]}))
    with pytest.raises(ConfigError, match=r"key state file .*registered\['bad'\].*revoked\[0\]"):
        validate(cfg)
    tenancy, _ = gate(cfg)
    assert [k.name for k in tenancy.ring.all()] == ["cfg", "ok"]


@pytest.mark.parametrize(
    ("body", "tokens"),
    [({"messages": [{"role": "user", "content": "x" * 40}]}, 11),  # "<user>" counts too
     ({"prompt": "y" * 400}, 100), ({"prompt": [1, 2, 3]}, 3),
     ({"prompt": [[1, 2], [3]]}, 3), ({"prompt": ["a" * 8, "b" * 8]}, 4), ({}, 1),
     # embeddings' input, as the prompt's forms
     ({"input": "z" * 40}, 10), ({"input": ["a" * 8, "b" * 8]}, 4),
     ({"input": [[1, 2], [3]]}, 3),
     # the Responses API: instructions and input items, rendered as chat messages
     ({"instructions": "i" * 32, "input": [{"role": "user", "content": [
         {"type": "input_text", "text": "t" * 30}]}]}, 19)],  # "<system>", "<user>" too
    ids=["chat", "text", "token-ids", "batch-of-ids", "batch-of-text", "nothing",
         "embedding-text", "embedding-batch", "embedding-ids", "responses-items"])
def test_token_estimates(body: dict[str, Any], tokens: int) -> None:
    assert estimate_tokens(body) == tokens


def test_the_readme_auth_example_is_a_valid_section() -> None:
    import yaml

    from llmgw.config import AuthConfig
    from tests.support import ROOT

    section = (ROOT / "README.md").read_text().split("## Keys and limits", 1)[1]
    block = section.split("```yaml", 1)[1].split("```", 1)[0]
    auth = AuthConfig.model_validate(yaml.safe_load(block)["auth"])
    assert [k.name for k in auth.keys] == ["team-a"] and set(auth.model_limits) == {"large"}


def test_a_key_revoked_with_a_request_open_loses_its_gauge_when_that_request_ends(
        tmp_path: Path) -> None:
    tenancy, metrics = gate(config(tmp_path))
    key = tenancy.ring.get("cfg")
    open_request = tenancy.admit(key, "m", 1)
    assert open_request is not None
    tenancy.revoke("cfg")
    assert sample(metrics, "llmgw_key_in_flight_requests", key="cfg") == 1
    open_request.finish(2)
    assert sample(metrics, "llmgw_key_in_flight_requests", key="cfg") is None
