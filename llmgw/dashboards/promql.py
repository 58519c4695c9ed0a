"""PromQL the dashboards repeat: sums of rates, quantiles of histograms, selectors
filtered by the dashboard's ``$model`` variable. Plain strings in, plain strings out."""

from __future__ import annotations

RATE = "$__rate_interval"
MODEL = 'model=~"$model"'


def sel(metric: str, where: str = MODEL) -> str:
    return f"{metric}{{{where}}}" if where else metric


def rate(metric: str, by: str, where: str = MODEL, window: str = RATE) -> str:
    return f"sum by ({by}) (rate({sel(metric, where)}[{window}]))"


def increase(metric: str, by: str, window: str, where: str = MODEL) -> str:
    return f"sum by ({by}) (increase({sel(metric, where)}[{window}]))"


def quantile(q: float, histogram: str, by: str, where: str = MODEL,
             window: str = RATE) -> str:
    return (f"histogram_quantile({q:g}, sum by (le, {by}) "
            f"(rate({sel(histogram + '_bucket', where)}[{window}])))")


def gauge(metric: str, by: str, where: str = MODEL) -> str:
    return f"sum by ({by}) ({sel(metric, where)})"


def and_where(*matchers: str) -> str:
    return ", ".join(m for m in matchers if m)
