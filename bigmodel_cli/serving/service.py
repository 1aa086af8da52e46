"""What the HTTP app serves: one loaded run (a Predictor), its limits, its metadata, the
micro-batcher and the metrics. Built before anything binds, so a bad run fails first."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from bigmodel_cli.serving.batcher import Batcher
from bigmodel_cli.serving.metrics import Metrics


@dataclass
class Limits:
    max_batch_size: int = 64
    max_wait_ms: float = 5.0
    max_inputs_per_request: int = 256
    max_body_bytes: int = 4 * 1024 * 1024
    request_timeout_s: float = 60.0
    workers: int = 1
    top_k: int | None = None
    max_new_tokens: int = 50
    max_new_tokens_limit: int = 512
    max_temperature: float = 10.0


class Service:
    def __init__(self, predictor, limits: Limits, api_key: str | None = None) -> None:
        from bigmodel_cli.data import kinds

        self.predictor = predictor
        self.trained = predictor.trained
        self.kind_name = self.trained.meta.get("data_kind", "text")
        self.kind = kinds.module_named(self.kind_name)
        self.task_name = predictor.task.name
        self.generates = bool(predictor.task.generates_text)
        self.limits = limits
        self.api_key = api_key
        self.max_inputs = limits.max_inputs_per_request
        self.max_body_bytes = limits.max_body_bytes
        self.request_timeout_s = limits.request_timeout_s
        self.default_top_k = limits.top_k
        self.default_max_new_tokens = limits.max_new_tokens
        self.max_new_tokens_limit = limits.max_new_tokens_limit
        self.max_temperature = limits.max_temperature
        self.metrics = Metrics()
        self.batcher = Batcher(predictor, limits.max_batch_size, limits.max_wait_ms,
                               limits.workers, self.metrics)
        self.input_schema = self.kind.input_schema(self.trained)
        self.metadata = self._metadata()
        self.ready = False
        self.started = False

    @property
    def title(self) -> str:
        model, data = self.metadata["model"], self.metadata["data"]
        return f"{str(model['_target_']).rsplit('.', 1)[-1]} on {data['name']}"

    @property
    def version(self) -> str:
        return self.metadata["versions"]["bigmodel"]

    @property
    def description(self) -> str:
        return (f"Run {self.trained.run_dir} ({self.task_name}, {self.kind_name} inputs). "
                f"Errors: {{\"error\": {{\"code\", \"message\"}}}}.")

    def start(self) -> None:
        if not self.started:  # one app may go through several lifespans (tests)
            self.batcher.start()
            self.started = True
        self.ready = True

    def stop(self) -> None:
        self.ready = False

    def shutdown(self, grace_s: float) -> None:
        """Finish queued work (the process is ending)."""
        self.ready = False
        if self.started:
            self.batcher.stop(grace_s)

    def _metadata(self) -> dict:
        from omegaconf import OmegaConf

        from bigmodel_cli.engine.runtime import versions

        trained = self.trained
        config = OmegaConf.to_container(trained.config, resolve=False)
        summary_file = Path(trained.run_dir) / "metrics.json"
        try:
            summary = json.loads(summary_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            summary = None
        endpoint = "/v1/generate" if self.generates else (
            "/v1/fill-mask" if self.task_name == "mlm" else "/v1/predict")
        return {"run": str(trained.run_dir), "checkpoint": str(trained.ckpt_dir),
                "step": trained.meta.get("step"), "task": self.task_name,
                "data_kind": self.kind_name, "endpoint": endpoint,
                "backend": self.predictor.backend,
                "model": config["model"], "data": config["data"],
                "labels": trained.label_names, "input_schema": self.input_schema,
                "metrics": summary, "limits": vars(self.limits),
                "versions": {**versions(), **_serving_versions()}}


def _serving_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("fastapi", "uvicorn", "prometheus-client"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out
