"""Data: both THUCNews layouts load, and the upstream download is checked against the
published sha256 values (served from a loopback HTTP server holding the exact files)."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY_FASTTEXT, read_json, run_dir_of

SPLIT_FILES = {"train": "train.txt", "validation": "dev.txt", "test": "test.txt"}


def write_upstream_layout(shared_data: Path, folder: Path, rows: int | None = None) -> None:
    """The original release's files (`title<TAB>label`, class.txt), rebuilt from our copies.
    With rows=None they are byte-identical to the published files."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, name in SPLIT_FILES.items():
        df = pd.read_csv(shared_data / "thucnews" / f"{split}.csv.gz", keep_default_na=False,
                         dtype={"text": str})
        if rows:
            df = df.sample(n=rows, random_state=0)
        text = "".join(f"{t}\t{label}\n" for t, label in zip(df.text, df.label))
        (folder / name).write_bytes(text.encode("utf-8"))
    names = (shared_data / "thucnews" / "labels.txt").read_text(encoding="utf-8").split()
    (folder / "class.txt").write_bytes("\n".join(names).encode("utf-8"))


def test_upstream_layout_is_found_locally(cli, shared_data, tmp_path):
    write_upstream_layout(shared_data, tmp_path / "mydata" / "thucnews", rows=600)
    result = cli("finetune", *TINY_FASTTEXT, "trainer=debug", "trainer.epochs=1",
                 env={"BIGMODEL_DATA_DIR": str(tmp_path / "mydata")})
    run = run_dir_of(result, cli.cwd)
    metrics = read_json(run / "metrics.json")
    assert "upstream layout" in metrics["data_source"]
    assert metrics["splits"] == {"train": 400, "validation": 200, "test": 200}
    assert read_json(run / "labels.json")[0] == "finance"


@pytest.fixture(scope="module")
def upstream_server(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("upstream")
    write_upstream_layout(shared_data, root / "good")
    bad = root / "bad"
    write_upstream_layout(shared_data, bad)
    dev = (bad / "dev.txt").read_bytes()
    (bad / "dev.txt").write_bytes(dev.replace(b"\t3\n", b"\t4\n", 1))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


# `datasets` reads HF_DATASETS_OFFLINE when it is imported: going online needs a new process.
ONLINE = {"HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0", "no_proxy": "127.0.0.1",
          "NO_PROXY": "127.0.0.1"}


def test_download_checks_sha256_and_caches(cli_process, upstream_server, tmp_path):
    cli = cli_process
    env = {**ONLINE, "BIGMODEL_DATA_DIR": str(tmp_path / "empty"),
           "BIGMODEL_CACHE_DIR": str(tmp_path / "cache")}
    result = cli("finetune", *TINY_FASTTEXT, "trainer=debug", "trainer.epochs=1",
                 f"data.upstream.url={upstream_server}/good", env=env)
    run = run_dir_of(result, cli.cwd)
    metrics = read_json(run / "metrics.json")
    assert "downloaded, checksums verified" in metrics["data_source"]
    assert metrics["splits"] == {"train": 400, "validation": 200, "test": 200}
    cached = tmp_path / "cache" / "datasets" / "thucnews"
    assert {p.name for p in cached.iterdir()} == {"train.txt", "dev.txt", "test.txt", "class.txt"}


def test_download_with_wrong_checksum_fails_clearly(cli_process, upstream_server, tmp_path):
    cli = cli_process
    env = {**ONLINE, "BIGMODEL_DATA_DIR": str(tmp_path / "empty"),
           "BIGMODEL_CACHE_DIR": str(tmp_path / "cache")}
    result = cli("finetune", *TINY_FASTTEXT, "trainer=debug",
                 f"data.upstream.url={upstream_server}/bad", env=env)
    assert result.returncode == 2
    assert "does not match the published" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "cache" / "datasets" / "thucnews" / "dev.txt").exists()
