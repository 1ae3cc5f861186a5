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
        # `versions` names the model versions that answered ("generator=v2 intent/en=v1 kb=v1"),
        # so a canary's turns, latency and feedback can be told from the live version's.
        self.turns = Counter(
            "kefu_turns", "Answered turns by route and versions.", ["route", "versions"], registry=r
        )
        self.turn_seconds = Histogram(
            "kefu_turn_seconds",
            "Time from the message to the whole answer, by route and versions.",
            ["route", "versions"],
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
            "kefu_model_info",
            "The serving model versions (value: the share of new conversations they get).",
            ["kind", "version", "role"],
            registry=r,
        )
        self.registry_revision = Gauge(
            "kefu_registry_revision", "The model registry revision this process serves.", registry=r
        )
        self.feedback = Counter(
            "kefu_feedback",
            "Thumbs up (1) and down (-1), by the versions that answered.",
            ["rating", "versions"],
            registry=r,
        )

    @staticmethod
    def versions_label(versions: dict[str, str]) -> str:
        return " ".join(f"{kind}={version}" for kind, version in sorted(versions.items()))

    def set_models(
        self, revision: int, live: dict[str, str], canaries: dict[str, tuple[float, str]]
    ) -> None:
        """The versions now serving: live ones, and canary candidates with their shares."""
        self.model_info.clear()
        for kind, version in live.items():
            share = 1 - canaries[kind][0] if kind in canaries else 1
            self.model_info.labels(kind, version, "live").set(share)
        for kind, (share, version) in canaries.items():
            self.model_info.labels(kind, version, "candidate").set(share)
        self.registry_revision.set(revision)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
