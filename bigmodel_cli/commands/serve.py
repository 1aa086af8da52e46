"""bigmodel serve: a trained run behind an HTTP API (bigmodel_cli.serving).

Startup errors (the serve extra missing, not a run directory, a checkpoint that does not
load, an API key variable that is unset, the port in use) are usage errors, reported
before anything binds. SIGTERM/SIGINT stop accepting connections, answer the requests in
flight (up to shutdown_grace_s), and the command returns: exit 0. The run being served is
only read; this command's own run directory (outputs/serve/...) keeps the log.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
from pathlib import Path

from omegaconf import DictConfig

from bigmodel_cli.errors import UsageError

log = logging.getLogger("bigmodel.serve")

EXTRA = ("fastapi", "uvicorn", "prometheus_client", "multipart")


def check_extra() -> None:
    import importlib

    missing = []
    for name in EXTRA:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UsageError(f"serving needs {', '.join(missing)}, which are not installed: "
                         "pip install 'bigmodel[serve]'")


def run(cfg: DictConfig, run_dir: Path) -> dict:
    check_extra()
    api_key = _api_key(cfg.api_key_env)
    _check_limits(cfg)
    service = _load(cfg, api_key)
    # What is loaded now lives as long as the server: frozen, the garbage collector's full
    # passes stop re-scanning it (they paused every request for ~0.2 s every few seconds).
    gc.collect()
    gc.freeze()
    if cfg.host in ("0.0.0.0", "::", "") and api_key is None:
        log.warning("warning: listening on every interface (host=%s) without an API key; "
                    "anyone who reaches this machine can use the model (set api_key_env=NAME)",
                    cfg.host)
    sock = _bind(cfg.host, cfg.port)
    host, port = sock.getsockname()[:2]
    from bigmodel_cli.serving.app import create_app

    app = create_app(service)
    log.info("serving %s (%s) on http://%s:%d  (docs: /docs, metrics: /metrics)",
             service.trained.run_dir, service.task_name, host, port)
    stopped_by = _serve(app, sock, service, float(cfg.shutdown_grace_s))
    log.info("stopped (%s); answered the requests in flight", stopped_by)
    return {"stopped_by": stopped_by}


def _api_key(name: str | None) -> str | None:
    if name is None:
        return None
    value = os.environ.get(str(name), "")
    if not value:
        raise UsageError(f"api_key_env={name}: the environment variable {name} is unset or "
                         "empty; export it with the key clients must send")
    return value


def _check_limits(cfg: DictConfig) -> None:
    for key in ("max_batch_size", "max_inputs_per_request", "max_body_bytes", "workers",
                "max_new_tokens", "max_new_tokens_limit"):
        if int(cfg[key]) < 1:
            raise UsageError(f"{key}={cfg[key]}: must be at least 1")
    for key in ("max_wait_ms", "request_timeout_s", "shutdown_grace_s", "max_temperature"):
        if float(cfg[key]) < 0:
            raise UsageError(f"{key}={cfg[key]}: must be 0 or more")
    if not 0 <= int(cfg.port) <= 65535:
        raise UsageError(f"port={cfg.port}: must be 0 (any free port) to 65535")


def _load(cfg: DictConfig, api_key: str | None):
    from bigmodel_cli.inference import Predictor
    from bigmodel_cli.serving.service import Limits, Service

    try:
        predictor = Predictor.load(cfg.run, cfg.ckpt, cfg.device.name, cfg.device.threads,
                                   cfg.device.precision, cfg.backend)
    except UsageError:
        raise
    except Exception as exc:  # a corrupt checkpoint: the user's file, not our failure
        log.debug("traceback", exc_info=True)
        raise UsageError(f"run={cfg.run}: the checkpoint does not load "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    limits = Limits(max_batch_size=int(cfg.max_batch_size), max_wait_ms=float(cfg.max_wait_ms),
                    max_inputs_per_request=int(cfg.max_inputs_per_request),
                    max_body_bytes=int(cfg.max_body_bytes),
                    request_timeout_s=float(cfg.request_timeout_s), workers=int(cfg.workers),
                    top_k=cfg.top_k, max_new_tokens=int(cfg.max_new_tokens),
                    max_new_tokens_limit=int(cfg.max_new_tokens_limit),
                    max_temperature=float(cfg.max_temperature))
    service = Service(predictor, limits, api_key)
    if cfg.top_k is not None:
        from bigmodel_cli.inference import PredictOptions

        predictor.check(PredictOptions(top_k=cfg.top_k))
    return service


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in str(host) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((str(host), int(port)))
    except OSError as exc:
        sock.close()
        reason = "the port is in use" if exc.errno in (98, 48) else exc.strerror
        raise UsageError(f"host={host} port={port}: cannot listen there ({reason}); choose "
                         "another with port=N (port=0: any free port)") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _serve(app, sock: socket.socket, service, grace_s: float) -> str:
    """Run uvicorn on the bound socket until SIGTERM/SIGINT; then drain and return."""
    import uvicorn

    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on",
                            timeout_graceful_shutdown=grace_s, server_header=False)
    server = _draining_server(config, service)
    try:
        server.run(sockets=[sock])
    finally:
        service.shutdown(grace_s)
        sock.close()
    return server.stopped_by


def _draining_server(config, service):
    """uvicorn's Server, with its signal handling kept: the first SIGTERM/SIGINT starts a
    graceful shutdown (a second SIGINT forces it). Unlike uvicorn, the signal is not raised
    again once the server has stopped, so the command ends normally (exit 0)."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        stopped_by = "shutdown"

        def handle_exit(self, sig, frame) -> None:
            if not self.should_exit:
                self.stopped_by = signal.Signals(sig).name
                log.info("%s: draining (no new connections; answering the requests in "
                         "flight)", self.stopped_by)
            service.ready = False
            super().handle_exit(sig, frame)
            self._captured_signals.clear()  # uvicorn re-raises these after shutdown

    return DrainingServer(config)
