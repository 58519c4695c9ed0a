"""The tenancy gate the API layer asks before dispatch: who is calling (``authenticate``),
which served names they may see (``visible``), whether their request may start now
(``admit``), and the admin API's key changes (``create``, ``revoke``).

With no ``auth:`` section the gate is open: no key is asked for, nothing is limited.
Limits and counts live in this process: each gateway instance enforces its own.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from llmgw.config import GatewayConfig, Limits, Priority
from llmgw.errors import AdminRequestRejected, ChangeNotSaved, InvalidApiKey, RateLimited
from llmgw.metrics import TenantMetrics
from llmgw.state_file import StateError
from llmgw.tenancy.keys import ApiKey, KeyRing, bearer_token, hash_key, new_key
from llmgw.tenancy.limits import Quota, rate_headers
from llmgw.tenancy.store import read_keys, state_path, write_keys

log = logging.getLogger("llmgw.tenancy")

_PER_MINUTE = {"requests": "requests per minute (rpm)", "tokens": "tokens per minute (tpm)",
               "concurrency": "requests at once (max_concurrency)"}


class Admission:
    """One admitted request's hold on its key's and model's quotas, released exactly once
    by ``finish``."""

    __slots__ = ("key", "model", "estimate", "_quotas", "_gate", "_done")

    def __init__(self, key: ApiKey, model: str, estimate: int, quotas: list[Quota],
                 gate: Tenancy) -> None:
        self.key, self.model, self.estimate = key, model, estimate
        self._quotas, self._gate, self._done = quotas, gate, False

    @property
    def priority(self) -> Priority:
        return self.key.priority

    def headers(self) -> dict[str, str]:
        return rate_headers(self._quotas)

    def finish(self, used_tokens: int | None) -> None:
        """``used_tokens``: prompt plus completion as the engine reported them; 0 when no
        engine ran the request; None when unknown (the estimate stands)."""
        if self._done:
            return
        self._done = True
        extra = 0 if used_tokens is None else used_tokens - self.estimate
        for quota in self._quotas:
            quota.settle(extra)
        self._gate.released(self.key.name)


class Tenancy:
    """Keys (configured, plus those made at runtime and kept in the state file) and the
    quotas of keys and models. ``clock``: seconds, monotonic. One event loop."""

    def __init__(self, config: GatewayConfig, metrics: TenantMetrics,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._metrics, self._clock = metrics, clock
        self._state_file: Path = state_path(config)
        self._runtime: dict[str, ApiKey] = {}
        self._revoked: frozenset[str] = frozenset()
        self._loaded = False
        self._key_quotas: dict[str, Quota] = {}
        self._model_quotas: dict[str, Quota] = {}
        self._model_limits: dict[str, Limits] = {}
        self._in_flight: dict[str, int] = {}
        self.ring = KeyRing()
        self.enabled = False
        self.reconfigure(config)

    # --- configuration ----------------------------------------------------------------

    def reconfigure(self, config: GatewayConfig) -> None:
        """The config's keys and model limits (at start and on reload); runtime keys and
        revocations stay. Quotas keep what they counted: a changed limit applies to the
        usage so far, so a reload never resets anyone's minute."""
        auth = config.auth
        self.enabled = auth is not None
        if auth is None:
            self.ring, self._model_limits = KeyRing(), {}
            return
        if not self._loaded:
            self._load_state()
        ring = KeyRing(ApiKey.from_config(k) for k in auth.keys if k.hash not in self._revoked)
        for key in self._runtime.values():
            if ring.get(key.name) is not None:
                log.error("key %r made at runtime shadows the configured key of that name",
                          key.name)
            ring.put(key)
        self.ring, self._model_limits = ring, dict(auth.model_limits)
        now = self._clock()
        self._key_quotas = _retuned(self._key_quotas, lambda name: (
            k.limits if (k := ring.get(name)) is not None else None), now)
        self._model_quotas = _retuned(self._model_quotas, self._model_limits.get, now)

    def reload_state(self, config: GatewayConfig) -> None:
        """Another process serving the same keys (a sibling worker) changed the state
        file: take its keys and revocations as if this one had made them."""
        self._load_state()
        self.reconfigure(config)

    def _load_state(self) -> None:
        self._loaded = True
        try:
            saved = read_keys(self._state_file)
        except StateError as exc:
            log.error("key state ignored, starting from the config: %s", exc)
            return
        for problem in saved.problems:
            log.error("key state %s: %s; ignored", self._state_file, problem)
        self._runtime, self._revoked = dict(saved.registered), saved.revoked

    # --- the request path -------------------------------------------------------------

    def authenticate(self, headers: Mapping[str, str]) -> ApiKey | None:
        """The caller's key; None when auth is off. Raises InvalidApiKey (never echoing
        what was sent)."""
        if not self.enabled:
            return None
        token = bearer_token(headers)
        if token is None:
            self._metrics.auth_failed("missing")
            raise InvalidApiKey("You didn't provide an API key: send it as "
                                "`Authorization: Bearer KEY` (or an `api-key` header).")
        key = self.ring.authenticate(token)
        if key is None:
            self._metrics.auth_failed("unknown")
            raise InvalidApiKey("Incorrect API key provided.")
        return key

    def check_current(self, key: ApiKey) -> None:
        """Raises InvalidApiKey when ``key`` was revoked (or given a new secret) since it
        authenticated a request that then waited: a request queued for a saturated model
        is not sent on a key revoked meanwhile."""
        current = self.ring.get(key.name)
        if self.enabled and (current is None or current.hash != key.hash):
            self._metrics.auth_failed("revoked")
            raise InvalidApiKey("Incorrect API key provided.")

    @staticmethod
    def visible(key: ApiKey | None, name: str) -> bool:
        return key is None or key.allows(name)

    def admit(self, key: ApiKey | None, model: str, tokens: int) -> Admission | None:
        """Charge the key's and the model's quotas for a request estimated at ``tokens``,
        or raise RateLimited naming the limit (nothing charged). None when auth is off."""
        if key is None:
            return None
        now = self._clock()
        scoped = [(scope, quota) for scope, quota in (
            ("key", self._quota(self._key_quotas, key.name, key.limits, now)),
            ("model", self._quota(self._model_quotas, model,
                                  self._model_limits.get(model), now))) if quota is not None]
        quotas = [quota for _, quota in scoped]
        for scope, quota in scoped:
            refusal = quota.refusal(tokens)
            if refusal is not None:
                self._metrics.refused(key.name, model, f"{scope}_{refusal.limit}")
                whose = f"key '{key.name}'" if scope == "key" else f"model '{model}'"
                wait = max(1, math.ceil(refusal.retry_after_s))
                raise RateLimited(f"Rate limit reached for {_PER_MINUTE[refusal.limit]} on "
                                  f"{whose}. Retry after {wait}s.", retry_after_s=wait,
                                  rate_headers=rate_headers(quotas))
        for quota in quotas:
            quota.charge(tokens)
        count = self._in_flight[key.name] = self._in_flight.get(key.name, 0) + 1
        self._metrics.in_flight(key.name, count)
        return Admission(key, model, tokens, quotas, self)

    def record(self, key: ApiKey, model: str, status: int, prompt: int | None,
               completion: int | None) -> None:
        """A keyed request ended with ``status``; tokens as its engine reported them."""
        self._metrics.finished(key.name, model, status, prompt, completion)

    def released(self, name: str) -> None:
        count = self._in_flight[name] = self._in_flight.get(name, 1) - 1
        if count == 0 and self.ring.get(name) is None:  # revoked while this was open
            del self._in_flight[name]
            self._metrics.forget(name)
        else:
            self._metrics.in_flight(name, count)

    def _quota(self, quotas: dict[str, Quota], name: str, limits: Limits | None,
               now: float) -> Quota | None:
        if limits is None or limits.unlimited:
            return None
        quota = quotas.get(name)
        if quota is None:
            quota = quotas[name] = Quota(limits, now)
        quota.refill(now)
        return quota

    # --- the admin API ----------------------------------------------------------------

    def create(self, name: str, models: list[str] | None, limits: Limits,
               priority: Priority, weight: float = 1.0,
               tools: list[str] | None = None) -> tuple[ApiKey, str]:
        """A new key and its secret (shown once). Saved before it takes effect; raises
        AdminRequestRejected (409: the name is taken, auth is off), ChangeNotSaved (the
        file cannot keep it)."""
        self._require_enabled()
        if self.ring.get(name) is not None:
            raise AdminRequestRejected(f"a key named {name!r} exists", status=409,
                                       param="name")
        secret = new_key()
        key = ApiKey(name, hash_key(secret), frozenset(models) if models is not None
                     else None, limits, priority, origin="runtime", weight=weight,
                     tools=frozenset(tools) if tools is not None else None)
        runtime = {**self._runtime, name: key}
        self._save(runtime, self._revoked)
        self._runtime = runtime
        self.ring.put(key)
        return key, secret

    def revoke(self, name: str) -> ApiKey:
        """Revoked at once: the next request with it gets 401, and so does one still waiting
        in a saturated model's queue (requests sent to an engine finish).
        A configured key stays revoked across restarts and reloads until its hash changes.
        Raises AdminRequestRejected (404: no such key, 409: auth is off), ChangeNotSaved."""
        self._require_enabled()
        key = self.ring.get(name)
        if key is None:
            raise AdminRequestRejected(f"no key named {name!r}", status=404)
        runtime = {n: k for n, k in self._runtime.items() if n != name}
        revoked = self._revoked | {key.hash} if key.origin == "config" else self._revoked
        self._save(runtime, revoked)
        self._runtime, self._revoked = runtime, revoked
        self.ring.pop(name)
        self._key_quotas.pop(name, None)
        if not self._in_flight.get(name):
            self._metrics.forget(name)
        return key

    def _require_enabled(self) -> None:
        if not self.enabled:
            raise AdminRequestRejected("API keys are off: add an `auth:` section to the "
                                       "config first", status=409)

    def _save(self, runtime: Mapping[str, ApiKey], revoked: frozenset[str]) -> None:
        try:
            write_keys(self._state_file, runtime.values(), revoked)
        except OSError as exc:
            raise ChangeNotSaved(f"the change was NOT made: cannot write the key state "
                                 f"file {self._state_file}: {exc.strerror or exc}") from None


def _retuned(quotas: dict[str, Quota], limits_of: Callable[[str], Limits | None],
             now: float) -> dict[str, Quota]:
    """The quotas whose subject still has limits, each under its current ones."""
    kept: dict[str, Quota] = {}
    for name, quota in quotas.items():
        limits = limits_of(name)
        if limits is None or limits.unlimited:
            continue
        if limits != quota.limits:
            quota.retune(limits, now)
        kept[name] = quota
    return kept
