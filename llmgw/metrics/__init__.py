"""Every Prometheus metric of the gateway, defined once, in a registry the object owns.

Names are ``llmgw_<noun>_<unit>``; labels are bounded (model, replica, policy, status, code)
and never carry request ids. ``registry`` holds the registry and the request-path
families, ``fleet`` and ``tenants`` their own families and reporters, ``bound`` the
per-model and per-replica views the request path uses.
"""

from llmgw.metrics.bound import (
    KVEventMetrics,
    LoraMetrics,
    ModelMetrics,
    PDMetrics,
    ReplicaMetrics,
    ShadowMetrics,
)
from llmgw.metrics.fleet import FleetFamilies, FleetMetrics
from llmgw.metrics.recent import RecentRates
from llmgw.metrics.registry import Metrics
from llmgw.metrics.tenants import AdmissionMetrics, TenantFamilies, TenantMetrics
from llmgw.metrics.tools import ToolFamilies

__all__ = [
    "AdmissionMetrics",
    "FleetFamilies",
    "FleetMetrics",
    "KVEventMetrics",
    "LoraMetrics",
    "Metrics",
    "ModelMetrics",
    "PDMetrics",
    "RecentRates",
    "ReplicaMetrics",
    "ShadowMetrics",
    "TenantFamilies",
    "TenantMetrics",
    "ToolFamilies",
]
