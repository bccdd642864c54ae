"""The hub's Prometheus metrics (served at ``/metrics`` in the text format).

Each hub has its own registry, so that several hubs (in tests) do not mix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from chrysalis_memory.hub.registry import Registry


class _LagCollector(Collector):
    """Per-agent lag, read from the registry at scrape time (no stale label sets)."""

    def __init__(self, registry: Registry, head: Callable[[], int]) -> None:
        self._registry = registry
        self._head = head

    def collect(self) -> Iterator[GaugeMetricFamily]:
        lag = self._registry.lag(self._head())
        family = GaugeMetricFamily(
            "chrysalis_hub_agent_lag_ops",
            "Ops of the hub's log a connected agent does not hold yet.",
            labels=["agent"],
        )
        for agent, behind in lag.items():
            family.add_metric([agent], behind)
        yield family
        yield GaugeMetricFamily(
            "chrysalis_hub_max_lag_ops",
            "The largest lag of any connected agent.",
            value=max(lag.values(), default=0),
        )


def _reading(usage: Callable[[], Mapping[str, int]], key: str) -> Callable[[], float]:
    return lambda: usage().get(key, 0)


class HubMetrics:
    def __init__(
        self,
        registry: Registry,
        head: Callable[[], int],
        usage: Callable[[], Mapping[str, int]] = dict,
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.connections = Gauge("chrysalis_hub_connections", "Open agent connections.", registry=r)
        self.refused = Counter(
            "chrysalis_hub_connections_refused",
            "Connections refused in the handshake, by reason.",
            ["reason"],
            registry=r,
        )
        self.dropped = Counter(
            "chrysalis_hub_slow_consumers_dropped",
            "Connections closed because the agent read too slowly.",
            registry=r,
        )
        self.ops_in = Counter("chrysalis_hub_ops_received", "Ops received in pushes.", registry=r)
        self.ops_stored = Counter(
            "chrysalis_hub_ops_stored", "Ops stored (first arrivals).", registry=r
        )
        self.ops_rejected = Counter(
            "chrysalis_hub_ops_rejected", "Ops refused, by reason.", ["reason"], registry=r
        )
        self.ops_out = Counter(
            "chrysalis_hub_ops_sent", "Ops sent, in pages or updates.", ["kind"], registry=r
        )
        self.messages_rejected = Counter(
            "chrysalis_hub_messages_rejected",
            "Messages refused with a protocol error, by code.",
            ["code"],
            registry=r,
        )
        self.bytes_in = Counter(
            "chrysalis_hub_bytes_received", "Payload bytes received.", registry=r
        )
        self.bytes_out = Counter("chrysalis_hub_bytes_sent", "Payload bytes sent.", registry=r)
        self.searches = Counter("chrysalis_hub_searches", "Remote searches answered.", registry=r)
        self.searches_refused = Counter(
            "chrysalis_hub_searches_refused",
            "Remote searches refused at a limit, by reason (agent_limit, busy).",
            ["reason"],
            registry=r,
        )
        for name, key, text in (
            ("chrysalis_hub_searches_running", "searches_running", "Remote searches running."),
            (
                "chrysalis_hub_searches_waiting",
                "searches_waiting",
                "Remote searches waiting for a search worker.",
            ),
            (
                "chrysalis_hub_send_queued_bytes",
                "send_queued_bytes",
                "Bytes queued to send to agents, in all (see docs/hub.md, Memory).",
            ),
            (
                "chrysalis_hub_receive_buffered_bytes",
                "receive_buffered_bytes",
                "Bytes received from agents that the hub holds, in all.",
            ),
            (
                "chrysalis_hub_receive_paused_connections",
                "receive_paused_connections",
                "Connections whose reading is paused by the receive budget.",
            ),
        ):
            Gauge(name, text, registry=r).set_function(_reading(usage, key))
        self.log_ops = Gauge("chrysalis_hub_log_ops", "Ops in the hub's log.", registry=r)
        self.log_ops.set_function(head)
        self.ingest_seconds = Histogram(
            "chrysalis_hub_ingest_seconds",
            "Time to verify and store one push.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=r,
        )
        r.register(_LagCollector(registry, head))

    def render(self) -> bytes:
        return generate_latest(self.registry)
