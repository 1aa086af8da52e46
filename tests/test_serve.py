"""bigmodel serve: the HTTP app in-process (FastAPI's TestClient) on tiny real runs of every
family, every bad request, the API key, a failing forward; startup errors of the command;
and one real server process under concurrent load, drained by SIGTERM."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import read_json

TINY_RUNS = {
    "text": ("finetune", ["model=fasttext", "model.ngram_buckets=20000", "data=news",
                          "trainer=debug", "data.max_length=16"]),
    "image": ("finetune", ["model=cnn", "model.widths=[8,16]", "data=digits", "trainer=debug"]),
    "tabular": ("finetune", ["model=mlp", "data=diabetes", "trainer=debug"]),
    "gpt": ("pretrain", ["model=gpt_tiny", "data=tinyshakespeare", "data.max_length=32",
                         "model.max_len=33", "trainer.max_steps=5", "trainer.batch_size=8",
                         "trainer.eval_every_steps=5", "trainer.max_eval_samples=50"]),
    "bert": ("pretrain", ["model=bert_tiny", "data=news_corpus", "trainer=debug",
                          "trainer.max_steps=5", "trainer.max_train_samples=300"]),
}
NEWS = ["央行宣布下调存款准备金率", "湖人队主场击败勇士", "新款手机发布会定于下周举行",
        "股市今日大幅上涨，沪指突破三千点", "教育部发布高考改革方案"]


class _Runs:
    """Trains each family's tiny run once per session, in-process, when a test needs it."""

    def __init__(self, work: Path, env: dict) -> None:
        self.work, self.env, self.done = work, env, {}

    def __call__(self, family: str) -> Path:
        if family not in self.done:
            self.done[family] = self._train(*TINY_RUNS[family])
        return self.done[family]

    def _train(self, command: str, args: list[str]) -> Path:
        from bigmodel_cli.cli import run_hydra_command

        before = set((self.work / "outputs" / command).glob("*/*"))
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(self.work)
            for key, value in self.env.items():
                mp.setenv(key, value)
            try:
                run_hydra_command(command, args)
            except SystemExit as exit_:
                assert exit_.code in (0, None), f"{command} {args} exited {exit_.code}"
        (run,) = set((self.work / "outputs" / command).glob("*/*")) - before
        return run


@pytest.fixture(scope="session")
def runs(tmp_path_factory, cli_env) -> _Runs:
    keys = ("BIGMODEL_DATA_DIR", "BIGMODEL_CACHE_DIR", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    return _Runs(tmp_path_factory.mktemp("serve_runs"), {k: cli_env[k] for k in keys})


def make_client(run: Path, api_key: str | None = None, **limits):
    from fastapi.testclient import TestClient

    from bigmodel_cli.inference import Predictor
    from bigmodel_cli.serving.app import create_app
    from bigmodel_cli.serving.service import Limits, Service

    service = Service(Predictor.load(run, "best", "cpu", None), Limits(**limits), api_key)
    return TestClient(create_app(service)), service


def direct(service, raws: list, **options) -> list[dict]:
    """What the prediction function itself returns for these inputs, one request's worth."""
    from bigmodel_cli.inference import PredictOptions

    items = [({"index": i}, raw) for i, raw in enumerate(raws)]
    return service.predictor.predict(items, PredictOptions(**options)).records


def assert_records_close(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert {k: v for k, v in g.items() if k != "top_k"} == \
            {k: v for k, v in w.items() if k != "top_k"}
        assert [t["label"] for t in g["top_k"]] == [t["label"] for t in w["top_k"]]
        for gt, wt in zip(g["top_k"], w["top_k"]):
            assert gt["prob"] == pytest.approx(wt["prob"], abs=1e-5)


@pytest.fixture(scope="module")
def text_app(runs):
    client, service = make_client(runs("text"), max_inputs_per_request=8, max_body_bytes=4096,
                                  max_wait_ms=50.0)
    with client:
        yield client, service


# -- routes and the text family -------------------------------------------------------------

def test_health_ready_metadata_docs_metrics(text_app, runs):
    client, service = text_app
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"status": "ready"}
    meta = client.get("/v1/metadata").json()
    run = runs("text")
    assert meta["labels"] == read_json(run / "labels.json")
    assert meta["task"] == "classification" and meta["endpoint"] == "/v1/predict"
    assert meta["metrics"] == read_json(run / "metrics.json")
    assert meta["input_schema"]["kind"] == "text" and meta["input_schema"]["max_length"] == 16
    assert meta["limits"]["max_inputs_per_request"] == 8
    assert meta["versions"]["fastapi"] and meta["versions"]["torch"]
    openapi = client.get("/openapi.json").json()
    body = openapi["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert body["example"] == {"inputs": meta["input_schema"]["example"]}
    assert client.get("/docs").status_code == 200
    client.post("/v1/predict", json={"inputs": NEWS[:1]})
    text = client.get("/metrics").text
    for name in ("bigmodel_requests_total{endpoint=\"/v1/predict\",status=\"200\"}",
                 "bigmodel_request_latency_seconds_bucket", "bigmodel_batch_size_bucket",
                 "bigmodel_queue_depth", "bigmodel_inputs_total"):
        assert name in text


def test_text_predict_equals_the_prediction_function_and_reports_truncation(text_app):
    client, service = text_app
    long_text = "国务院常务会议决定" * 10   # far over data.max_length=16 tokens
    response = client.post("/v1/predict", json={"inputs": [NEWS[0], long_text], "top_k": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["truncated"] == [1]
    assert_records_close(body["records"], direct(service, [NEWS[0], long_text], top_k=2))
    assert [r["index"] for r in body["records"]] == [0, 1]
    assert len(body["records"][0]["top_k"]) == 2


def test_concurrent_requests_are_batched_and_equal_one_at_a_time(text_app):
    client, service = text_app
    before = _batch_counts(client)
    results: dict[int, dict] = {}

    def send(i: int) -> None:
        results[i] = client.post("/v1/predict", json={"inputs": [NEWS[i % 5] * (1 + i % 3)]}).json()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = _batch_counts(client)
    batches, inputs = after[0] - before[0], after[1] - before[1]
    assert inputs == 12 and batches < 12  # at least one forward pass served several requests
    for i, body in results.items():
        assert_records_close(body["records"], direct(service, [NEWS[i % 5] * (1 + i % 3)]))


def _batch_counts(client) -> tuple[float, float]:
    count = total = 0.0
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("bigmodel_batch_size_count"):
            count = float(line.split()[-1])
        elif line.startswith("bigmodel_batch_size_sum"):
            total = float(line.split()[-1])
    return count, total


BAD_REQUESTS = [
    # (description, request keyword arguments, status, code, text the message names)
    ("malformed JSON", {"content": b'{"inputs": ["a"'}, 400, "malformed_json", "body"),
    ("invalid UTF-8", {"content": b'{"inputs": ["\xff\xfe"]}'}, 400, "invalid_utf8", "UTF-8"),
    ("NaN is not JSON", {"content": b'{"inputs": ["a"], "top_k": NaN}'}, 400, "malformed_json",
     "NaN"),
    ("not an object", {"json": ["a", "b"]}, 422, "invalid_request", "body"),
    ("missing inputs", {"json": {"texts": ["a"]}}, 422, "invalid_request", "inputs"),
    ("inputs not a list", {"json": {"inputs": "a"}}, 422, "invalid_request", "inputs"),
    ("empty list", {"json": {"inputs": []}}, 422, "invalid_request", "inputs"),
    ("a number for a text", {"json": {"inputs": ["a", 3]}}, 422, "invalid_input", "inputs[1]"),
    ("an empty text", {"json": {"inputs": [" "]}}, 422, "invalid_input", "inputs[0]"),
    ("top_k not a number", {"json": {"inputs": ["a"], "top_k": "3"}}, 422, "invalid_request",
     "top_k"),
    ("top_k out of range", {"json": {"inputs": ["a"], "top_k": 0}}, 422, "invalid_parameter",
     "top_k"),
    ("unknown field", {"json": {"inputs": ["a"], "temperature": 1}}, 422, "invalid_request",
     "temperature"),
    ("more inputs than the limit", {"json": {"inputs": ["a"] * 9}}, 413, "too_many_inputs",
     "max_inputs_per_request"),
    ("body over the limit", {"json": {"inputs": ["a" * 5000]}}, 413, "body_too_large",
     "max_body_bytes"),
    ("wrong content type", {"content": b"inputs=a", "headers": {"content-type": "text/plain"}},
     415, "unsupported_media_type", "application/json"),
]


@pytest.mark.parametrize("what,kwargs,status,code,names", BAD_REQUESTS,
                         ids=[b[0] for b in BAD_REQUESTS])
def test_bad_request(text_app, what, kwargs, status, code, names):
    client, _ = text_app
    response = client.post("/v1/predict", **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and names in error["message"], error


def test_unknown_route_wrong_method_wrong_endpoint_then_a_good_request(text_app):
    client, _ = text_app
    checks = [(client.get("/v1/nothing"), 404, "not_found"),
              (client.get("/v1/predict"), 405, "method_not_allowed"),
              (client.post("/health"), 405, "method_not_allowed"),
              (client.post("/v1/generate", json={"inputs": ["a"]}), 404, "wrong_endpoint"),
              (client.post("/v1/fill-mask", json={"inputs": ["a"]}), 404, "wrong_endpoint")]
    for response, status, code in checks:
        assert response.status_code == status and response.json()["error"]["code"] == code
    # after the whole bad-input suite the server still answers
    response = client.post("/v1/predict", json={"inputs": NEWS[:2]})
    assert response.status_code == 200 and len(response.json()["records"]) == 2
    metrics = client.get("/metrics").text
    assert 'status="500"' not in metrics


def test_api_key_on_every_route_but_health(runs):
    client, _ = make_client(runs("text"), api_key="s3cret")
    with client:
        assert client.get("/health").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            response = client.post("/v1/predict", json={"inputs": ["a"]}, headers=headers)
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "unauthorized"
        for path in ("/ready", "/metrics", "/v1/metadata", "/docs"):
            assert client.get(path).status_code == 401
        good = {"Authorization": "Bearer s3cret"}
        assert client.post("/v1/predict", json={"inputs": ["a"]}, headers=good).status_code == 200
        assert client.get("/metrics", headers=good).status_code == 200


def test_a_failing_forward_answers_500_for_that_batch_only(runs):
    client, service = make_client(runs("text"))
    failures = []

    def fail_once(module, args):  # the model itself raises, as a broken kernel would
        if not failures:
            failures.append(1)
            raise RuntimeError("simulated failure in the forward pass")

    handle = service.trained.model.register_forward_pre_hook(fail_once)
    with client:
        response = client.post("/v1/predict", json={"inputs": NEWS[:2]})
        assert response.status_code == 500
        assert response.json()["error"]["code"] == "forward_failed"
        assert "simulated failure" in response.json()["error"]["message"]
        handle.remove()
        assert client.post("/v1/predict", json={"inputs": NEWS[:2]}).status_code == 200


# -- images, tables, generation, fill-mask --------------------------------------------------

def _png(value: int, size: int = 8) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (size, size), color=value).save(buffer, format="PNG")
    return buffer.getvalue()


def test_image_run_base64_json_and_multipart(runs):
    client, service = make_client(runs("image"))
    images = [_png(0), _png(200, 12)]
    with client:
        body = {"inputs": [base64.b64encode(x).decode() for x in images]}
        response = client.post("/v1/predict", json=body)
        assert response.status_code == 200, response.text
        want = direct(service, images)
        assert_records_close(response.json()["records"], want)
        files = [("inputs", ("a.png", images[0], "image/png")),
                 ("inputs", ("b.png", images[1], "image/png"))]
        response = client.post("/v1/predict", files=files)
        assert response.status_code == 200, response.text
        assert_records_close(response.json()["records"], want)
        example = client.get("/v1/metadata").json()["input_schema"]["example"]
        assert client.post("/v1/predict", json={"inputs": example}).status_code == 200
        bad = [({"json": {"inputs": ["not base64!"]}}, "inputs[0]: not valid base64"),
               ({"json": {"inputs": [base64.b64encode(b"GIF89a broken").decode()]}},
                "inputs[0]: not an image"),
               ({"files": [("inputs", ("x.png", b"\x89PNG nothing", "image/png"))]},
                "inputs[0]: not an image"),
               ({"json": {"inputs": [[1, 2]]}}, "inputs[0]")]
        for kwargs, message in bad:
            response = client.post("/v1/predict", **kwargs)
            assert response.status_code == 422 and message in response.json()["error"]["message"]
        assert client.post("/v1/predict", json=body).status_code == 200


def test_tabular_run_rows_and_bad_rows(runs):
    client, service = make_client(runs("tabular"))
    with client:
        meta = client.get("/v1/metadata").json()
        row = meta["input_schema"]["example"][0]
        columns = list(meta["input_schema"]["columns"])
        other = {**row, columns[0]: 0.05, columns[1]: None, "target": 151.0}  # extra keys ignored
        response = client.post("/v1/predict", json={"inputs": [row, other]})
        assert response.status_code == 200, response.text
        records = response.json()["records"]
        want = direct(service, [row, other])
        assert [r["index"] for r in records] == [0, 1]
        for got, expected in zip(records, want):
            assert got["prediction"] == pytest.approx(expected["prediction"], rel=1e-5)
        missing = {k: v for k, v in row.items() if k != columns[2]}
        bad = [({"inputs": [row, missing]}, f"inputs[1]: no column {columns[2]!r}"),
               ({"inputs": [{**row, columns[0]: "high"}]}, f"inputs[0].{columns[0]}: must be a number"),
               ({"inputs": [{**row, columns[0]: True}]}, f"inputs[0].{columns[0]}"),
               ({"inputs": [[1, 2, 3]]}, "inputs[0]: expected a table row")]
        for body, message in bad:
            response = client.post("/v1/predict", json=body)
            assert response.status_code == 422, response.text
            assert message in response.json()["error"]["message"]


def test_gpt_generate_streams_ndjson_and_sse_and_checks_limits(runs):
    client, service = make_client(runs("gpt"), max_new_tokens_limit=64)
    prompts = ["ROMEO:", "JULIET: O"]
    params = {"max_new_tokens": 12, "temperature": 0.8, "top_k": 20, "seed": 7}
    with client:
        response = client.post("/v1/generate", json={"inputs": prompts, **params})
        assert response.status_code == 200, response.text
        whole = response.json()
        assert whole["records"] == direct(service, prompts, **params)
        lines = client.post("/v1/generate", json={"inputs": prompts, **params, "stream": True})
        assert lines.headers["content-type"].startswith("application/x-ndjson")
        events = [json.loads(line) for line in lines.text.splitlines()]
        assert events[-1] == whole
        for i, record in enumerate(whole["records"]):
            assert "".join(e["text"] for e in events[:-1] if e["index"] == i) == record["generated"]
        sse = client.post("/v1/generate", json={"inputs": prompts[:1], **params, "stream": True},
                          headers={"Accept": "text/event-stream"})
        assert sse.headers["content-type"].startswith("text/event-stream")
        assert sse.text.rstrip().endswith(json.dumps({"records": whole["records"][:1],
                                                      "truncated": []}, ensure_ascii=False))
        assert "\nevent: result\ndata: " in sse.text and sse.text.startswith("data: {")
        for body, field in [({"max_new_tokens": 65}, "max_new_tokens"),
                            ({"max_new_tokens": 0}, "max_new_tokens"),
                            ({"max_new_tokens": "5"}, "max_new_tokens"),
                            ({"temperature": -1}, "temperature"),
                            ({"temperature": 11}, "temperature"),
                            ({"top_k": -1}, "top_k"), ({"seed": 1.5}, "seed")]:
            response = client.post("/v1/generate", json={"inputs": prompts, **body})
            assert response.status_code == 422 and field in response.json()["error"]["message"]
        assert client.post("/v1/predict", json={"inputs": prompts}).status_code == 404


def test_health_answers_while_the_model_is_busy(runs):
    client, _ = make_client(runs("gpt"), max_new_tokens_limit=2000)
    with client:
        body = {"inputs": ["ROMEO:"] * 4, "max_new_tokens": 2000}
        busy = threading.Thread(target=client.post, args=("/v1/generate",), kwargs={"json": body})
        busy.start()
        time.sleep(0.5)
        answered_while_busy = 0
        while busy.is_alive() and answered_while_busy < 3:
            started = time.perf_counter()
            assert client.get("/health").status_code == 200
            answered_while_busy += busy.is_alive() and time.perf_counter() - started < 1.0
        busy.join()
        assert answered_while_busy == 3


def test_bert_fill_mask(runs):
    client, service = make_client(runs("bert"))
    texts = ["央行宣布下调存款[MASK]备金率", "湖人队[MASK]场击败勇士"]
    with client:
        for path in ("/v1/fill-mask", "/v1/predict"):
            response = client.post(path, json={"inputs": texts, "top_k": 3})
            assert response.status_code == 200, response.text
            assert response.json()["records"] == direct(service, texts, top_k=3)
        response = client.post("/v1/fill-mask", json={"inputs": ["没有掩码的句子"]})
        assert response.status_code == 422 and "[MASK]" in response.json()["error"]["message"]
        assert client.post("/v1/generate", json={"inputs": texts}).status_code == 404
        assert client.post("/v1/fill-mask", json={"inputs": texts[:1]}).status_code == 200


# -- the command: startup errors, and one real server process -------------------------------

def test_startup_errors_exit_2_before_binding(cli, runs, tmp_path):
    import shutil
    import socket

    run = runs("text")
    not_a_run = cli("serve", f"run={tmp_path}", "port=0")
    assert not_a_run.returncode == 2 and "error:" in not_a_run.stderr
    corrupt = tmp_path / "corrupt"
    shutil.copytree(run, corrupt)
    (corrupt / "checkpoints" / "best" / "model.safetensors").write_bytes(b"\x00" * 100)
    result = cli("serve", f"run={corrupt}", "port=0")
    assert result.returncode == 2 and "model.safetensors" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1  # one line, nothing bound
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("serve", f"run={run}", f"port={port}", "host=0.0.0.0")
    assert result.returncode == 2 and "port is in use" in result.stderr, result.stderr
    assert "without an API key" in result.stderr
    result = cli("serve", f"run={run}", "api_key_env=BIGMODEL_TEST_UNSET_KEY")
    assert result.returncode == 2 and "BIGMODEL_TEST_UNSET_KEY" in result.stderr
    hidden = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['fastapi'] = None; "
         "from bigmodel_cli.cli import main; sys.argv = ['bigmodel', 'serve', "
         f"'run={run}']; main()"], cwd=cli.cwd, env=cli.env, capture_output=True, text=True)
    assert hidden.returncode == 2 and "pip install 'bigmodel[serve]'" in hidden.stderr
    for result in (not_a_run, hidden):
        assert "Traceback" not in result.stderr


def _tree(run: Path) -> dict:
    return {str(p.relative_to(run)): p.stat().st_mtime_ns for p in run.rglob("*")}


@pytest.mark.slow
def test_real_server_batches_64_concurrent_requests_and_drains_on_sigterm(cli, runs, tmp_path):
    import asyncio

    import httpx

    run = runs("text")
    tree = _tree(run)
    texts = [f"{NEWS[i % 5]}{'，第' + str(i) + '条' if i % 2 else ''}" for i in range(64)]
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    predicted = cli("predict", f"run={run}", f"input={tmp_path / 'texts.txt'}")
    assert predicted.returncode == 0, predicted.stderr
    expected = [json.loads(line) for line in predicted.stdout.splitlines()]

    server = subprocess.Popen([sys.executable, "-m", "bigmodel_cli", "serve", f"run={run}",
                               "port=0", "max_wait_ms=1000", "device=cpu"], cwd=cli.cwd,
                              env=cli.env, stderr=subprocess.PIPE, text=True)
    try:
        url = _wait_for_url(server)

        async def load() -> tuple[list, list]:
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                first = await asyncio.gather(*[client.post("/v1/predict", json={"inputs": [t]})
                                               for t in texts])
                metrics = (await client.get("/metrics")).text
                # in flight when SIGTERM comes: the batcher holds them for up to max_wait_ms
                pending = [asyncio.ensure_future(client.post("/v1/predict", json={"inputs": [t]}))
                           for t in texts[:16]]
                await _until_queued(client, 16)
                server.send_signal(signal.SIGTERM)
                return list(first), [metrics, *await asyncio.gather(*pending)]

        first, (metrics, *drained) = asyncio.run(load())
        assert server.wait(timeout=60) == 0
        log = server.stderr.read()
    finally:
        if server.poll() is None:
            server.kill()
    assert all(r.status_code == 200 for r in first + drained)
    for response, want in zip(first, expected):
        (got,) = response.json()["records"]
        assert_records_close([{**got, "index": want["index"]}], [want])
    assert [r.json()["records"][0]["label"] for r in drained] == \
        [e["label"] for e in expected[:16]]
    count = next(float(l.split()[-1]) for l in metrics.splitlines()
                 if l.startswith("bigmodel_batch_size_count"))
    singles = next(float(l.split()[-1]) for l in metrics.splitlines()
                   if l.startswith('bigmodel_batch_size_bucket{le="1.0"}'))
    assert count - singles >= 1 and count < 64  # batches larger than one
    assert "SIGTERM: draining" in log and '"POST /v1/predict" 200' in log
    (serve_log,) = (cli.cwd / "outputs" / "serve").glob("*/*/serve.log")
    assert '"POST /v1/predict" 200' in serve_log.read_text(encoding="utf-8")
    assert _tree(run) == tree  # the served run is never written to


async def _until_queued(client, inputs: int, timeout: float = 30) -> None:
    """Until the server's queue holds `inputs` inputs (so they are in flight, not in the
    connection backlog), polling its queue-depth gauge."""
    import asyncio

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = (await client.get("/metrics")).text
        depth = next(float(l.split()[-1]) for l in text.splitlines()
                     if l.startswith("bigmodel_queue_depth "))
        if depth >= inputs:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the server never held {inputs} queued inputs")


def _wait_for_url(server: subprocess.Popen, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = server.stderr.readline()
        if not line:
            raise AssertionError(f"the server ended: {''.join(lines)}")
        lines.append(line)
        if " on http://" in line:
            url = line.split(" on ", 1)[1].split()[0]
            os.set_blocking(server.stderr.fileno(), True)
            return url
    raise AssertionError(f"no 'serving ... on http://' line: {''.join(lines)}")
