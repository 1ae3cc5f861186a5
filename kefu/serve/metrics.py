"""Prometheus metrics of one app: requests, latency, turns by route, hand-offs, tokens, models.

Each app has its own registry (tests start several apps in one process). With several uvicorn
workers each worker counts its own requests; scrape them behind the load balancer or run one
worker per replica (Prometheus adds replicas up).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "kefu_http_requests",
            "HTTP requests by route and status.",
            ["method", "path", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "kefu_http_request_seconds",
            "Time to the response's first byte.",
            ["path"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.turns = Counter("kefu_turns", "Answered turns by route.", ["route"], registry=r)
        self.turn_seconds = Histogram(
            "kefu_turn_seconds",
            "Time from the message to the whole answer, by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.handoffs = Counter(
            "kefu_handoffs",
            "Conversations handed to a person, by trigger.",
            ["trigger"],
            registry=r,
        )
        self.generated_tokens = Counter("kefu_generated_tokens", "Tokens generated.", registry=r)
        self.tokens_per_second = Histogram(
            "kefu_generation_tokens_per_second",
            "Generation speed of each reply.",
            buckets=(5, 10, 20, 50, 100, 200, 500, 1000),
            registry=r,
        )
        self.model_info = Gauge(
            "kefu_model_info", "The live model versions (value 1).", ["kind", "version"], registry=r
        )
        self.feedback = Counter(
            "kefu_feedback", "Thumbs up (1) and down (-1).", ["rating"], registry=r
        )

    def set_models(self, versions: dict[str, str]) -> None:
        self.model_info.clear()
        for kind, version in versions.items():
            self.model_info.labels(kind, version).set(1)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
