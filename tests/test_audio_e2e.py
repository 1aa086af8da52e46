"""Layer 3 for audio: tiny real runs on slices of spoken_words (keyword spotting) and
spoken_numbers (CTC), then evaluate reproduces the test metrics (per synthesizer group
too) and predict reads a file, a folder and a list; transfer words -> numbers; your own
class folders; serve and export refuse or answer as the family allows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import evaluate_matches as _evaluate_matches
from conftest import read_json, run_dir_of

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "yes",
         "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
SLICE = ("trainer=debug", "trainer.epochs=1", "trainer.max_train_samples=160",
         "trainer.max_eval_samples=80")
TINY_CNN = ("model=cnn", "model.widths=[8,16]", *SLICE)
TINY_CTC = ("model=speech_ctc", "model.hidden_size=32", "model.num_layers=1",
            "model.channels=8", *SLICE)


@pytest.fixture(scope="session")
def words_cnn_run(session_cli) -> Path:
    return run_dir_of(session_cli("finetune", *TINY_CNN, "data=spoken_words"), session_cli.cwd)


@pytest.fixture(scope="session")
def words_ctc_run(session_cli) -> Path:
    return run_dir_of(session_cli("finetune", *TINY_CTC, "data=spoken_words", "task=ctc"),
                      session_cli.cwd)


def test_keyword_spotting_run_evaluate_predict(session_cli, words_cnn_run, shared_data, tmp_path):
    cli, run = session_cli, words_cnn_run
    assert {"labels.json", "preprocessing.json", "metrics.json", "checkpoints"} <= {
        p.name for p in run.iterdir()}
    assert read_json(run / "labels.json") == WORDS
    pre = read_json(run / "preprocessing.json")
    assert pre["sample_rate"] == 16000 and pre["clip_samples"] == 19200
    assert pre["groups"] == ["espeak", "flite"] and len(pre["features"]["mean"]) == 40
    assert pre["augment"]["time_masks"] == 2
    metrics = read_json(run / "metrics.json")
    assert metrics["splits"] == {"train": 160, "validation": 80, "test": 80}
    test = metrics["test"]
    assert test["samples_espeak"] + test["samples_flite"] == 80   # per synthesizer, from the run
    eval_dir = _evaluate_matches(cli, run, ("accuracy", "accuracy_espeak", "accuracy_flite", "loss"))
    assert (eval_dir / "confusion_matrix.csv").is_file() and (eval_dir / "per_class.csv").is_file()

    words = shared_data / "spoken_words"
    clip = words / "audio" / "test" / "go" / "flite-slt_2.flac"
    record = json.loads(cli("predict", f"run={run}", f"input={clip}").stdout)
    assert set(record) == {"index", "path", "label", "label_id", "top_k"}
    assert record["label"] in WORDS and len(record["top_k"]) == 3
    folder = cli("predict", f"run={run}", f"input={words / 'audio' / 'test' / 'go'}")
    assert len(folder.stdout.splitlines()) == 50          # every clip of the folder
    (tmp_path / "list.txt").write_text(f"{clip}\n{clip}\n")
    listed = [json.loads(x) for x in cli("predict", f"run={run}",
                                         f"input={tmp_path / 'list.txt'}").stdout.splitlines()]
    assert [r["index"] for r in listed] == [0, 1] and listed[0]["top_k"] == record["top_k"]


def test_ctc_on_spoken_numbers_evaluate_predict(cli, shared_data):
    run = run_dir_of(cli("finetune", *TINY_CTC, "data=spoken_numbers"), cli.cwd)
    labels = read_json(run / "labels.json")
    assert labels[0] == "<blank>" and set(labels[1:]) == set(" efghinorstuvwxz")
    metrics = read_json(run / "metrics.json")
    assert metrics["task"] == "ctc" and metrics["monitor"] == "wer"
    assert {"wer", "cer", "wer_espeak", "wer_flite", "cer_flite"} <= set(metrics["test"])
    eval_dir = _evaluate_matches(cli, run, ("wer", "cer", "wer_espeak", "wer_flite", "loss"))
    rows = (eval_dir / "transcripts.csv").read_text().splitlines()
    assert rows[0] == "index,group,reference,hypothesis,wer,cer" and len(rows) == 81
    assert (eval_dir / "per_group.csv").read_text().splitlines()[0] == "group,samples,wer,cer"
    clip = shared_data / "spoken_numbers" / "audio" / "test" / "flite-awb_00.flac"
    record = json.loads(cli("predict", f"run={run}", f"input={clip}").stdout)
    assert set(record) == {"index", "path", "text"} and record["path"] == str(clip)
    assert set(record["text"]) <= set(labels[1:])


@pytest.mark.slow
def test_transfer_words_to_numbers_loads_the_encoder(cli, words_ctc_run):
    """A CTC run on spoken_words (one-word transcripts) starts a spoken_numbers run: the
    front end and encoder load, the head (another alphabet) is new."""
    run = run_dir_of(cli("finetune", *TINY_CTC, "data=spoken_numbers",
                         f"model.init_from={words_ctc_run}"), cli.cwd)
    from safetensors import safe_open

    report = read_json(run / "init_from.json")
    with safe_open(str(run / "checkpoints" / "best" / "model.safetensors"), "pt") as f:
        tensors = len(list(f.keys()))
    assert report["new"] == ["head.bias", "head.weight"]
    assert report["loaded"] == tensors - 2                      # front end, encoder: all of it
    assert {"head.bias", "head.weight"} <= set(report["dropped"])   # trained on other symbols


def test_audio_transformer_and_your_own_folders(cli, tmp_path, shared_data):
    import shutil

    for split in ("train", "test"):
        for word in ("yes", "no"):
            src = shared_data / "spoken_words" / "audio" / split / word
            dst = tmp_path / "clips" / split / word
            dst.mkdir(parents=True)
            for f in sorted(src.iterdir())[:12]:
                shutil.copy(f, dst / f.name)
    run = run_dir_of(cli("finetune", "model=audio_transformer", "model.d_model=32",
                         "model.n_layers=1", "data=audio_folder",
                         f"data.path={tmp_path / 'clips'}", "trainer=debug"), cli.cwd)
    assert read_json(run / "labels.json") == ["no", "yes"]
    metrics = read_json(run / "metrics.json")
    assert metrics["splits"] == {"train": 22, "validation": 2, "test": 24}   # held out of train
    assert "accuracy_all" not in metrics["test"]                # one group: no per-group rows


def test_export_refuses_audio_runs(cli, words_cnn_run):
    result = cli("export", f"run={words_cnn_run}")
    assert result.returncode == 2 and "audio runs cannot be exported" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_audio_run_base64_json(words_cnn_run, shared_data):
    import base64

    from test_serve import assert_records_close, direct, make_client

    client, service = make_client(words_cnn_run)
    clip = (shared_data / "spoken_words" / "audio" / "test" / "yes" / "flite-awb_0.flac").read_bytes()
    with client:
        response = client.post("/v1/predict", json={"inputs": [base64.b64encode(clip).decode()]})
        assert response.status_code == 200, response.text
        assert_records_close(response.json()["records"], direct(service, [clip]))
        schema = client.get("/v1/metadata").json()["input_schema"]
        assert schema["kind"] == "audio" and schema["sample_rate"] == 16000
        assert client.post("/v1/predict", json={"inputs": schema["example"]}).status_code == 200
        bad = client.post("/v1/predict", json={"inputs": [base64.b64encode(b"RIFF junk").decode()]})
        assert bad.status_code == 422
        assert "inputs[0]: not an audio file" in bad.json()["error"]["message"]


def test_audio_pause_and_resume_equals_a_straight_run(cli, tmp_path):
    from safetensors.torch import load_file

    args = ("finetune", *TINY_CTC, "data=spoken_numbers", "trainer.max_steps=6")
    straight = run_dir_of(cli(*args, f"hydra.run.dir={tmp_path / 'straight'}"), cli.cwd)
    paused = tmp_path / "paused"
    run_dir_of(cli(*args, "trainer.pause_after_steps=3", f"hydra.run.dir={paused}"), cli.cwd)
    resumed = cli(*args, f"trainer.resume={paused}", f"hydra.run.dir={paused}")
    assert resumed.returncode == 0 and "resumed at step 3" in resumed.stderr
    a = load_file(straight / "checkpoints" / "last" / "model.safetensors")
    b = load_file(paused / "checkpoints" / "last" / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
