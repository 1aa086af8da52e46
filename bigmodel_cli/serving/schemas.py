"""Request bodies and the error body. `inputs` items are checked by the run's data kind
(`request_inputs`: a text, a base64 image, a table row), so their JSON type is free here."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt


class PredictRequest(BaseModel):
    """POST /v1/predict (and /v1/fill-mask)."""

    model_config = ConfigDict(extra="forbid")
    inputs: list[Any] = Field(min_length=1, description="texts, base64 images or table rows")
    top_k: StrictInt | None = Field(None, description="labels listed (classification) or fills "
                                    "per [MASK]; null: the server's default")


class GenerateRequest(BaseModel):
    """POST /v1/generate (GPT runs)."""

    model_config = ConfigDict(extra="forbid")
    inputs: list[Any] = Field(min_length=1, description="prompts")
    max_new_tokens: StrictInt | None = Field(None, description="tokens added to each prompt")
    temperature: float | None = Field(None, description="0: greedy; higher: more random")
    top_k: StrictInt | None = Field(None, description="sample among the k most likely (0: all)")
    seed: StrictInt = Field(0, description="each prompt's sampling is seeded by (seed, its index)")
    stream: StrictBool = Field(False, description="stream NDJSON lines (SSE with Accept: "
                               "text/event-stream) as tokens are produced")


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class PredictResponse(BaseModel):
    records: list[dict] = Field(description="one per input: the JSON line `bigmodel predict` "
                                "writes for it")
    truncated: list[int] = Field(description="positions of inputs longer than the run's "
                                 "max length, cut as in training")


def first_error(exc) -> str:
    """A pydantic ValidationError as one line naming the field."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "body"
    if err["type"] == "extra_forbidden":
        return f"{where}: unknown field"
    if err["type"] == "missing":
        return f"{where}: required"
    return f"{where}: {err['msg']}"
