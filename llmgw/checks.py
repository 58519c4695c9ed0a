"""Everything a config must pass before `llmgw up` launches anything; `llmgw check` runs
exactly this, so whatever `check` accepts, `up` starts.

Pydantic (llmgw.config) checks the shape of the data. This adds what needs the registries
(policy and plugin names), the launch tables (engine flags, the engine's Python), this
machine's files (model, tokenizer and adapter directories), the LoRA side (demo
adapters, the adapter state file and its directory), the key state file (``auth:``),
the access log's file and the tracing extra (``telemetry:``) and the tool classes
(``tools:``, imported).
Nothing here starts a process, opens a socket or downloads; each check is cheap enough to
run on every test's config too.
"""

from __future__ import annotations

import importlib.util
import os
import re
import ssl
import sys

from llmgw.build import check_config, reads_kv_events
from llmgw.config import DEMO_SOURCE, ConfigError, GatewayConfig
from llmgw.lora.setup import check_lora
from llmgw.placement.commands import DEMO_MODEL, check_launchable
from llmgw.telemetry.tracing import tracing_installed
from llmgw.tenancy.store import check_store
from llmgw.tools.registry import check_tools

# A Hugging Face repo id: `name` or `org/name`, as huggingface_hub validates them.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_HUB_ID_MAX = 96


def validate(cfg: GatewayConfig) -> None:
    """Raise ConfigError, naming the YAML path, for a config `up` could not start."""
    check_config(cfg)
    check_placement(cfg)
    check_launchable(cfg)
    check_local_sources(cfg)
    check_lora(cfg)
    check_store(cfg)
    check_tls(cfg)
    check_telemetry(cfg)
    check_tools(cfg)
    check_workers(cfg)


def check_workers(cfg: GatewayConfig) -> None:
    """``server.workers`` above 1: what the supervisor and its followers can share
    (docs/workers.md says why each refusal is there)."""
    count = cfg.server.worker_count
    if count == 1:
        return
    where = f"server.workers: {cfg.server.workers}"
    if not sys.platform.startswith("linux"):
        raise ConfigError(f"{where}: several workers need Linux (SO_REUSEPORT); use 1")
    if cfg.placement.backend != "local":
        raise ConfigError(f"{where}: needs placement.backend local; on Ray run one gateway "
                          "per node instead (they share the fleet already, docs/ray.md)")
    for index, tool in enumerate(cfg.tools):
        if tool.replicas > 0:
            raise ConfigError(f"tools[{index}].replicas: {tool.replicas} worker process(es) "
                              f"would start once per gateway worker ({where}); set "
                              "replicas: 0 (an instance in each worker) or workers: 1")
    for index, model in enumerate(cfg.models):
        pd = model.disaggregation
        scaling = pd.decode.autoscaling if pd is not None else model.autoscaling
        if scaling is not None and scaling.min_replicas == 0:
            raise ConfigError(f"models[{index}] ({model.name}): scaling to zero "
                              f"(min_replicas: 0) needs workers: 1 ({where}): the "
                              "supervisor that starts replicas cannot see requests "
                              "waiting in the workers")


def check_telemetry(cfg: GatewayConfig) -> None:
    """Tracing needs its extra installed; the access log's file must be writable."""
    if cfg.telemetry.tracing is not None and not tracing_installed():
        raise ConfigError("telemetry.tracing: the OpenTelemetry SDK is not installed here "
                          "(pip install 'llmgw[tracing]')")
    access = cfg.server.access_log
    if not access.enabled or access.path is None:
        return
    path = os.path.expanduser(access.path)
    if os.path.exists(path):
        writable = os.path.isfile(path) and os.access(path, os.W_OK)
    else:
        writable = os.access(os.path.dirname(os.path.abspath(path)), os.W_OK)
    if not writable:
        raise ConfigError(f"server.access_log.path: {path!r} cannot be written")


def check_tls(cfg: GatewayConfig) -> None:
    """``server.tls``: the certificate and key load together (a wrong pair, a missing or
    unreadable file, a key with a passphrase fail here rather than at bind time)."""
    tls = cfg.server.tls
    if tls is None:
        return
    for field in ("cert", "key"):
        path = os.path.expanduser(getattr(tls, field))
        if not os.path.isfile(path) or not os.access(path, os.R_OK):
            raise ConfigError(f"server.tls.{field}: {path!r} is not a readable file")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            os.path.expanduser(tls.cert), os.path.expanduser(tls.key), password=lambda: "")
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"server.tls: the certificate and key cannot be used together: "
                          f"{exc}") from None


def check_placement(cfg: GatewayConfig) -> None:
    """The Ray backend needs Ray installed here (the optional extra); found, not imported:
    `check` stays fast and Ray's import stays out of local gateways."""
    if cfg.placement.backend == "ray" and importlib.util.find_spec("ray") is None:
        raise ConfigError("placement.backend: 'ray' needs Ray: pip install 'llmgw[ray]'")


def check_local_sources(cfg: GatewayConfig) -> None:
    """Models, tokenizers and adapters given as paths exist on this machine. A source that
    is not here may still be a hub id, which only the engine (or the tokenizer loader) can
    fetch; a source written as a path (``/``, ``~``, ``.``) must exist."""
    # On Ray, a launched model's path is read on the node its engine runs on.
    engines_here = cfg.placement.backend == "local"
    for index, model in enumerate(cfg.models):
        where = f"models[{index}]"
        if engines_here and model.launched and model.model not in (None, DEMO_MODEL) \
                and model.engine != "fake":
            _local_or_hub(f"{where}.model", model.model)
        tokenizer = model.tokenizer or model.model
        if tokenizer is not None and tokenizer != DEMO_MODEL and reads_kv_events(cfg, model):
            _local_or_hub(f"{where}.tokenizer", tokenizer)
        for position, adapter in enumerate(model.lora.adapters if model.lora else []):
            if adapter.source != DEMO_SOURCE:
                _local_or_hub(f"{where}.lora.adapters[{position}].source", adapter.source)


def _local_or_hub(key: str, source: str | None) -> None:
    assert source is not None
    if os.path.exists(os.path.expanduser(source)):
        return
    if source.startswith(("/", "~", ".")) or not _is_hub_id(source):
        raise ConfigError(f"{key}: {source!r}: no such file or directory (and not a hub id)")


def _is_hub_id(source: str) -> bool:
    return (len(source) <= _HUB_ID_MAX and _HUB_ID.match(source) is not None
            and ".." not in source and "--" not in source)
