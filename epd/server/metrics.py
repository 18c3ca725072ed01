"""``GET /metrics``: the server's Prometheus metrics (``prometheus_client``, a registry of its own).

Counted and timed as each request ends (in the server's thread): requests by ``outcome`` (``stop``,
``length``, an error kind of ``epd.server.errors.OUTCOMES``, ``disconnected``), prompt and output
tokens, TTFT / TPOT / E2E and the time spent in each stage of ``epd.metrics.breakdown`` (histograms,
seconds), encoder cache lookups and hits. Read live at each scrape: requests pending in the server
and in flight in the frontend, whether every rank is up, and each rank's load from its last
heartbeat — the language engine's waiting and running sequences and KV-cache blocks (free, total,
use), the encoder's queued items, its tower calls and busy time (counters: the busy time's rate is
the utilisation) and the utilisation since the previous scrape.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from epd.metrics import RequestRecord
from epd.metrics.breakdown import request_breakdown

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300, 600)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)
CACHE_HITS = ("device", "host", "inflight")
MIN_WINDOW_S = 0.5
"""Shortest window the encoder utilisation gauge is measured over (scrapes closer than this repeat it)."""


class ServerMetrics:
    """The registry ``/metrics`` renders; ``live()`` returns what is read at each scrape."""

    def __init__(self, live: Callable[[], dict]) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        self.requests = Counter("epd_requests", "Requests ended, by outcome", ["outcome"], registry=reg)
        self.prompt_tokens = Counter("epd_prompt_tokens", "Prompt tokens of finished requests", registry=reg)
        self.output_tokens = Counter("epd_generation_tokens", "Output tokens of finished requests", registry=reg)
        self.ttft = Histogram("epd_time_to_first_token_seconds", "TTFT", buckets=LATENCY_BUCKETS, registry=reg)
        self.tpot = Histogram("epd_time_per_output_token_seconds", "TPOT", buckets=TOKEN_BUCKETS, registry=reg)
        self.e2e = Histogram("epd_e2e_request_latency_seconds", "Arrival to last token", buckets=LATENCY_BUCKETS, registry=reg)  # fmt: skip
        self.stage = Histogram(
            "epd_stage_seconds", "Time in each stage (epd.metrics.breakdown)", ["stage"], buckets=LATENCY_BUCKETS, registry=reg
        )  # fmt: skip
        self.cache_lookups = Counter("epd_encoder_cache_lookups", "Media items looked up in an encoder cache", registry=reg)  # fmt: skip
        self.cache_hits = Counter("epd_encoder_cache_hits", "Media items an encoder cache served", registry=reg)
        reg.register(_LiveCollector(live))

    def count(self, outcome: str) -> None:
        self.requests.labels(outcome=outcome).inc()

    def observe(self, record: RequestRecord) -> None:
        """A request that ended, successful or not (only successful ones are timed)."""
        if record.error is not None:
            return
        self.prompt_tokens.inc(record.num_prompt_tokens)
        self.output_tokens.inc(record.num_output_tokens)
        for hist, value_ms in ((self.ttft, record.ttft_ms), (self.tpot, record.tpot_ms), (self.e2e, record.e2e_ms)):
            if value_ms is not None:
                hist.observe(value_ms / 1e3)
        for stage, value_ms in request_breakdown(record).items():
            self.stage.labels(stage=stage).observe(value_ms / 1e3)
        for item in record.items:
            if item.get("cache", "off") != "off":
                self.cache_lookups.inc()
                self.cache_hits.inc(item.get("cache") in CACHE_HITS)

    def render(self) -> bytes:
        return generate_latest(self.registry)


RANK_GAUGES = {
    "num_waiting": ("epd_rank_waiting_requests", "Sequences waiting in the language engine"),
    "num_running": ("epd_rank_running_requests", "Sequences running in the language engine"),
    "kv_free_blocks": ("epd_kv_cache_free_blocks", "Free KV-cache blocks (cached prefixes included)"),
    "kv_total_blocks": ("epd_kv_cache_total_blocks", "KV-cache blocks"),
    "encoder_queue": ("epd_encoder_queue_items", "Media items an encoder is decoding or holding for the tower"),
    "encoder_utilization": (
        "epd_encoder_utilization",
        "Share of wall time the tower was busy, since the last scrape",
    ),  # fmt: skip
}


class _LiveCollector:
    """Gauges read at scrape time from ``live()``: ``pending``, ``in_flight``, ``ready``, ``ranks``
    (rank → its heartbeat's stats) and ``lost`` (ranks)."""

    def __init__(self, live: Callable[[], dict]) -> None:
        self.live = live
        self._busy: dict[int, tuple[float, float, float]] = {}  # rank → (time, tower busy s, utilisation) sampled

    def collect(self):
        state = self.live()
        yield GaugeMetricFamily("epd_requests_pending", "Requests in the server (queued or generating)", state["pending"])  # fmt: skip
        yield GaugeMetricFamily("epd_requests_in_flight", "Requests the frontend has sent to the engines", state["in_flight"])  # fmt: skip
        yield GaugeMetricFamily("epd_ready", "1 once every rank is up and the server takes requests", float(state["ready"]))  # fmt: skip
        gauges = {key: GaugeMetricFamily(name, text, labels=["rank"]) for key, (name, text) in RANK_GAUGES.items()}
        usage = GaugeMetricFamily("epd_kv_cache_usage_ratio", "Share of KV-cache blocks in use", labels=["rank"])
        busy = CounterMetricFamily("epd_encoder_busy_seconds", "Tower busy time of an encoder", labels=["rank"])
        batches = CounterMetricFamily("epd_encoder_batches", "Tower calls of an encoder", labels=["rank"])
        lost = GaugeMetricFamily("epd_rank_lost", "1 for a rank declared lost", labels=["rank"])
        now = time.monotonic()
        for rank, stats in sorted(state["ranks"].items()):
            label = [str(rank)]
            stats = dict(stats)
            if "encoder_busy_s" in stats:
                stats["encoder_queue"] = stats.get("encoder_decoding", 0.0) + stats.get("encoder_ready", 0.0)
                busy.add_metric(label, stats["encoder_busy_s"])
                batches.add_metric(label, stats.get("encoder_batches", 0.0))
                stats["encoder_utilization"] = self._utilization(rank, now, stats["encoder_busy_s"])
            for key, gauge in gauges.items():
                if key in stats:
                    gauge.add_metric(label, stats[key])
            if stats.get("kv_total_blocks"):
                usage.add_metric(label, 1.0 - stats["kv_free_blocks"] / stats["kv_total_blocks"])
            lost.add_metric(label, float(rank in state["lost"]))
        yield from (*gauges.values(), usage, busy, batches, lost)

    def _utilization(self, rank: int, now: float, busy_s: float) -> float:
        """Tower busy share since the sample before (kept at least ``MIN_WINDOW_S`` old)."""
        then, was, last = self._busy.get(rank, (now, busy_s, 0.0))
        if now - then < MIN_WINDOW_S:
            self._busy.setdefault(rank, (then, was, last))
            return last
        util = min(1.0, max(0.0, (busy_s - was) / (now - then)))
        self._busy[rank] = (now, busy_s, util)
        return util
