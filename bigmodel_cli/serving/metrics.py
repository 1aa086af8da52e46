"""Prometheus metrics of one server (its own registry, so several apps can live in one
process, as in the tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("bigmodel_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("bigmodel_request_latency_seconds",
                                 "Time from a request's arrival to its response",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("bigmodel_batch_size", "Inputs per forward pass",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.forward_seconds = Histogram("bigmodel_forward_seconds",
                                         "Time of one batched predict call (encode, forward, "
                                         "records)", buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("bigmodel_queue_depth", "Inputs waiting for a forward pass",
                                 registry=r)
        self.inputs = Counter("bigmodel_inputs", "Inputs predicted", registry=r)
