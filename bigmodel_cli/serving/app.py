"""The HTTP app: routes, limits, errors, API key, access log. Prediction itself is
`Predictor.predict` behind the micro-batcher (bigmodel_cli.serving.batcher).

Every error answers {"error": {"code", "message"}}: 4xx for what the client sent wrong
(naming the field), 5xx only for our own failures.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from bigmodel_cli.errors import UsageError
from bigmodel_cli.serving.batcher import ForwardFailed, Job
from bigmodel_cli.serving.schemas import (
    ErrorBody,
    GenerateRequest,
    PredictRequest,
    PredictResponse,
    first_error,
)
from bigmodel_cli.serving.service import Service

log = logging.getLogger("bigmodel.serve")
access_log = logging.getLogger("bigmodel.serve.access")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_response(status: int, code: str, message: str, headers: dict | None = None):
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status,
                        headers=headers)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large",
               415: "unsupported_media_type"}
_ERRORS = {status: {"model": ErrorBody} for status in (400, 401, 404, 413, 415, 422, 500, 504)}


def create_app(service: Service) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        yield
        service.stop()

    app = FastAPI(title=f"bigmodel serve: {service.title}", version=service.version,
                  description=service.description, lifespan=lifespan)
    _add_handlers(app, service)
    _add_routes(app, service)
    app.add_middleware(Observe, service=service)
    return app


def _add_handlers(app: FastAPI, service: Service) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.code, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        message = {404: f"no route {request.method} {request.url.path} (see /docs)",
                   405: f"{request.method} is not allowed on {request.url.path}"}
        return error_response(exc.status_code, code, message.get(exc.status_code, str(exc.detail)),
                              getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal", f"{type(exc).__name__} (the server log has the "
                              "traceback)")

class Observe:
    """API key check, metrics and the access log of every request, as plain ASGI middleware
    (Starlette's @app.middleware("http") runs each request through an extra task and
    memory streams: a measurable part of a small request's time)."""

    def __init__(self, app, service: Service) -> None:
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def send_and_note(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if self.service.api_key is not None and scope["path"] != "/health" and \
                    not _authorized(Request(scope), self.service.api_key):
                response = error_response(401, "unauthorized", "missing or wrong API key: send "
                                          "'Authorization: Bearer <key>'",
                                          {"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send_and_note)
            else:
                await self.app(scope, receive, send_and_note)
        finally:
            self._note(scope, status, time.perf_counter() - started)

    def _note(self, scope, status: int, elapsed: float) -> None:
        route = scope.get("route")
        endpoint = route.path if route is not None else "unmatched"
        metrics = self.service.metrics
        metrics.requests.labels(endpoint, str(status)).inc()
        metrics.latency.labels(endpoint).observe(elapsed)
        client = scope["client"][0] if scope.get("client") else "-"
        access_log.info('%s "%s %s" %d %.1fms', client, scope["method"], scope["path"], status,
                        elapsed * 1000)


def _authorized(request: Request, key: str) -> bool:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(),
                                                              key.encode())


def _add_routes(app: FastAPI, service: Service) -> None:
    @app.get("/health", summary="The process is alive")
    async def health():
        return {"status": "ok"}

    @app.get("/ready", summary="The model is loaded and the server takes requests",
             responses={503: {"model": ErrorBody}})
    async def ready():
        if not service.ready:
            return error_response(503, "not_ready", "the server is starting or shutting down")
        return {"status": "ready"}

    @app.get("/v1/metadata", summary="Model, data, labels, input schema, metrics, versions")
    async def metadata():
        return service.metadata

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics():
        return Response(generate_latest(service.metrics.registry),
                        media_type=CONTENT_TYPE_LATEST)

    example = {"inputs": service.input_schema["example"]}
    body_doc = _body_doc(PredictRequest, example, service.kind_name == "image")

    @app.post("/v1/predict", summary="Records for inputs (classification, regression, "
              "fill-mask)", response_model=PredictResponse, responses=_ERRORS,
              openapi_extra=body_doc)
    async def predict(request: Request):
        if service.generates:
            raise ApiError(404, "wrong_endpoint", "this run generates text: POST /v1/generate")
        return await _predict(service, request)

    @app.post("/v1/fill-mask", summary="Fill each [MASK] (BERT masked-LM runs)",
              response_model=PredictResponse, responses=_ERRORS, openapi_extra=body_doc)
    async def fill_mask(request: Request):
        if service.task_name != "mlm":
            raise ApiError(404, "wrong_endpoint", "this run is not a masked language model: "
                           + ("POST /v1/generate" if service.generates else "POST /v1/predict"))
        return await _predict(service, request)

    @app.post("/v1/generate", summary="Continue prompts (GPT runs); stream=true streams",
              response_model=PredictResponse, responses=_ERRORS,
              openapi_extra=_body_doc(GenerateRequest, {**example, "max_new_tokens": 20}, False))
    async def generate(request: Request):
        if not service.generates:
            raise ApiError(404, "wrong_endpoint", "this run does not generate text: "
                           "POST /v1/predict")
        return await _generate(service, request)


def _body_doc(model, example: dict, multipart: bool) -> dict:
    content = {"application/json": {"schema": model.model_json_schema(), "example": example}}
    if multipart:
        content["multipart/form-data"] = {"schema": {
            "type": "object", "properties": {"inputs": {"type": "array", "items": {
                "type": "string", "format": "binary"}}, "top_k": {"type": "integer"}}}}
    return {"requestBody": {"required": True, "content": content}}


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise ApiError(413, "body_too_large", f"body: {length} bytes, over the limit of "
                       f"{limit} (max_body_bytes)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "body_too_large", f"body: over the limit of {limit} bytes "
                           "(max_body_bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


async def _parse(service: Service, request: Request, schema) -> Any:
    """The body as `schema` (JSON, or multipart files for image runs); ApiError otherwise."""
    body = await _read_body(request, service.max_body_bytes)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data" and service.kind_name == "image" \
            and schema is PredictRequest:
        data = await _multipart(request, body)
    elif content_type in ("application/json", ""):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ApiError(400, "invalid_utf8", f"body: not valid UTF-8 (byte {exc.start})") from None
        try:
            data = json.loads(text, parse_constant=_reject_constant)
        except ValueError as exc:
            raise ApiError(400, "malformed_json", f"body: malformed JSON ({exc})") from None
    else:
        accepted = "application/json" + (" or multipart/form-data" if service.kind_name == "image"
                                          else "")
        raise ApiError(415, "unsupported_media_type", f"content-type {content_type!r}: send "
                       f"{accepted}")
    try:
        req = schema.model_validate(data)
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", first_error(exc)) from None
    if len(req.inputs) > service.max_inputs:
        raise ApiError(413, "too_many_inputs", f"inputs: {len(req.inputs)} items, over the limit "
                       f"of {service.max_inputs} (max_inputs_per_request)")
    return req


async def _multipart(request: Request, body: bytes) -> dict:
    """Files in the field `inputs` (each an image) and an optional `top_k`."""
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def stream():
        yield body

    try:
        form = await MultiPartParser(request.headers, stream(), max_part_size=len(body) + 1).parse()
    except MultiPartException as exc:
        raise ApiError(400, "malformed_multipart", f"body: {exc.message}") from None
    unknown = [k for k in form.keys() if k not in ("inputs", "top_k")]
    if unknown:
        raise ApiError(422, "invalid_request", f"{unknown[0]}: unknown field")
    files = [await f.read() if hasattr(f, "read") else f for f in form.getlist("inputs")]
    data: dict = {"inputs": files}
    if "top_k" in form:
        value = form["top_k"]
        if not (isinstance(value, str) and value.isdigit()):
            raise ApiError(422, "invalid_request", "top_k: must be a whole number")
        data["top_k"] = int(value)
    return data


async def _inputs(service: Service, inputs: list) -> list:
    """The run's data kind checks each input: off the event loop where that decodes (images),
    inline where it is a type check (a thread hop per request costs more than the check)."""
    check = service.kind.request_inputs
    try:
        if getattr(service.kind, "DECODES_REQUESTS", False):
            return await run_in_threadpool(check, service.trained, inputs)
        return check(service.trained, inputs)
    except UsageError as exc:
        raise ApiError(422, "invalid_input", str(exc)) from None


def _options(service: Service, **values):
    from bigmodel_cli.inference import PredictOptions

    try:
        return service.predictor.check(PredictOptions(**values))
    except UsageError as exc:
        raise ApiError(422, "invalid_parameter", str(exc)) from None


async def _predict(service: Service, request: Request):
    req = await _parse(service, request, PredictRequest)
    raws = await _inputs(service, req.inputs)
    options = _options(service, top_k=service.default_top_k if req.top_k is None else req.top_k)
    records, truncated = await _await_job(service, raws, options)
    return {"records": records, "truncated": truncated}


async def _await_job(service: Service, raws: list, options, on_text=None):
    loop = asyncio.get_running_loop()
    job = Job(raws, options, loop, loop.create_future(), on_text)
    service.batcher.submit(job)
    try:
        records, flags = await asyncio.wait_for(job.future, service.request_timeout_s)
    except asyncio.TimeoutError:
        job.cancelled = True
        raise ApiError(504, "timeout", f"not answered within {service.request_timeout_s} s "
                       "(request_timeout_s)") from None
    except UsageError as exc:
        raise ApiError(422, "invalid_input", str(exc)) from None
    except ForwardFailed as exc:
        raise ApiError(500, "forward_failed", f"the model failed on this batch ({exc}); the "
                       "server log has the traceback") from None
    finally:
        job.cancelled = True  # a request that went away is not computed
    return records, [i for i, flag in enumerate(flags) if flag]


async def _generate(service: Service, request: Request):
    req = await _parse(service, request, GenerateRequest)
    raws = await _inputs(service, req.inputs)
    limit = service.max_new_tokens_limit
    max_new = service.default_max_new_tokens if req.max_new_tokens is None else req.max_new_tokens
    if not 1 <= max_new <= limit:
        raise ApiError(422, "invalid_parameter", f"max_new_tokens: {max_new}, must be 1 to "
                       f"{limit} (max_new_tokens_limit)")
    temperature = 1.0 if req.temperature is None else req.temperature
    if not 0 <= temperature <= service.max_temperature:
        raise ApiError(422, "invalid_parameter", f"temperature: {temperature}, must be 0 to "
                       f"{service.max_temperature}")
    options = _options(service, top_k=req.top_k, max_new_tokens=max_new,
                       temperature=temperature, seed=req.seed)
    if not req.stream:
        records, truncated = await _await_job(service, raws, options)
        return {"records": records, "truncated": truncated}
    sse = "text/event-stream" in request.headers.get("accept", "")
    return StreamingResponse(_stream(service, raws, options, sse),
                             media_type="text/event-stream" if sse else "application/x-ndjson")


async def _stream(service: Service, raws: list, options, sse: bool):
    """{"index", "text"} per piece as it is generated, then the response as a last line
    ({"records", "truncated"}, or {"error"} when the forward failed)."""
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue = asyncio.Queue()

    def on_text(index: int, piece: str) -> None:
        if piece:
            loop.call_soon_threadsafe(pieces.put_nowait, {"index": index, "text": piece})

    done = asyncio.ensure_future(_await_job(service, raws, options, on_text))
    while True:
        getter = asyncio.ensure_future(pieces.get())
        await asyncio.wait({getter, done}, return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            yield _event(getter.result(), sse)
            continue
        getter.cancel()
        while not pieces.empty():
            yield _event(pieces.get_nowait(), sse)
        break
    try:
        records, truncated = done.result()
        yield _event({"records": records, "truncated": truncated}, sse, "result")
    except ApiError as exc:
        yield _event({"error": {"code": exc.code, "message": exc.message}}, sse, "error")


def _event(data: dict, sse: bool, name: str | None = None) -> str:
    line = json.dumps(data, ensure_ascii=False)
    if sse:
        return (f"event: {name}\n" if name else "") + f"data: {line}\n\n"
    return line + "\n"
