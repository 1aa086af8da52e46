"""Units of the audio kind: decoding and resampling, features and their augmentation, the
CTC decoder, WER/CER, and bad input (one clear message, exit 2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from bigmodel_cli.data.audio import decode_audio, fit_clip
from bigmodel_cli.data.audio_features import AudioFeatures, log_mel_stats
from bigmodel_cli.errors import UsageError
from bigmodel_cli.tasks.ctc import error_rates, greedy_decode


def _tone(rate: int, seconds: float, hz: float = 440.0) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def _peak_hz(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave))
    return float(np.fft.rfftfreq(len(wave), 1 / rate)[spectrum.argmax()])


def test_8k_mono_and_44k_stereo_come_out_16k_mono_of_the_right_length(tmp_path):
    low = tmp_path / "low.wav"
    sf.write(low, _tone(8000, 0.75), 8000, subtype="PCM_16")
    stereo = tmp_path / "stereo.flac"
    left = _tone(44100, 1.5)
    sf.write(stereo, np.stack([left, np.zeros_like(left)], axis=1), 44100)   # right: silent

    a = decode_audio(low, 16000, "low")
    assert a.dtype == np.float32 and a.ndim == 1 and len(a) == 12000
    assert _peak_hz(a, 16000) == pytest.approx(440, abs=2)
    b = decode_audio(stereo, 16000, "stereo")
    assert b.ndim == 1 and len(b) == 24000
    assert _peak_hz(b, 16000) == pytest.approx(440, abs=2)
    # mixed down: the mean of the channels, so half the left channel's amplitude
    assert np.abs(b[2000:-2000]).max() == pytest.approx(0.25, abs=0.01)
    same = decode_audio(stereo.read_bytes(), 16000, "bytes")     # bytes decode the same way
    np.testing.assert_array_equal(same, b)


def test_fit_clip_centre_crops_and_pads():
    wave = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(fit_clip(wave, 4), [3, 4, 5, 6])
    padded = fit_clip(wave, 14)
    assert len(padded) == 14 and padded[:2].sum() == 0 and padded[-2:].sum() == 0
    np.testing.assert_array_equal(padded[2:12], wave)


def test_bad_audio_files_are_named(tmp_path):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really a wave file")
    with pytest.raises(UsageError, match="broken.wav: not an audio file that can be read"):
        decode_audio(broken, 16000, str(broken))
    with pytest.raises(UsageError, match="missing.flac: no such audio file"):
        decode_audio(tmp_path / "missing.flac", 16000, str(tmp_path / "missing.flac"))


def _features(**augment) -> AudioFeatures:
    return AudioFeatures(16000, n_mels=32, **augment)


def test_features_shape_and_train_statistics():
    f = _features()
    waves = [_tone(16000, 0.5), _tone(16000, 0.3, 1000.0)]
    x, lengths = f(torch.from_numpy(fit_clip(waves[1], 8000))[None].repeat(2, 1),
                   torch.tensor([8000, 4800]))
    assert x.shape == (2, 32, 51) and lengths.tolist() == [51, 31]
    assert (x[1, :, 31:] == 0).all()                        # frames past the end: zeroed
    mean, std = log_mel_stats(f, waves)
    assert len(mean) == len(std) == 32 and min(std) > 0
    normalised = AudioFeatures(16000, n_mels=32, mean=mean, std=std)
    z = normalised(torch.from_numpy(waves[0])[None])[0]
    assert abs(float(z.mean())) < 1.0


def test_masks_and_shift_only_in_training():
    torch.manual_seed(0)
    plain = _features().eval()
    augmented = _features(time_shift_ms=50, time_masks=2, time_mask_frames=8, freq_masks=2,
                          freq_mask_bins=6)
    audio = torch.randn(4, 16000) * 0.1
    augmented.eval()
    expected = plain(audio)[0]
    torch.testing.assert_close(augmented(audio)[0], expected)   # eval: no augmentation
    augmented.train()
    first, second = augmented(audio)[0], augmented(audio)[0]
    assert not torch.equal(first, expected) and not torch.equal(first, second)
    # masked spans are set to 0: whole mel bands (across all frames) and whole frames
    assert ((first == 0).all(dim=2).any(dim=1)).all() or ((first == 0).all(dim=1).any(dim=1)).all()


def test_ctc_greedy_decoder_on_hand_made_frames():
    symbols = ["<blank>", " ", "a", "b"]
    frames = [[2, 2, 0, 2, 3, 3, 1, 3], [3, 0, 0, 3, 1, 1, 2, 0]]
    logits = torch.nn.functional.one_hot(torch.tensor(frames), 4).float()
    assert greedy_decode(logits, torch.tensor([8, 8]), symbols) == ["aab b", "bb a"]
    # only the first `length` frames of each utterance count
    assert greedy_decode(logits, torch.tensor([3, 1]), symbols) == ["a", "b"]


def test_wer_and_cer_on_known_pairs():
    rates = error_rates(["one two three", "four five"], ["one too three", "four five"])
    assert rates["wer"] == pytest.approx(1 / 5)                # one substituted word of five
    assert rates["cer"] == pytest.approx(1 / 22)               # "w" -> "o" in 13 + 9 characters
    rates = error_rates(["seven eight"], [""])                 # nothing recognised
    assert rates == {"wer": 1.0, "cer": 1.0}
    rates = error_rates(["nine"], ["nine nine"])               # an inserted word
    assert rates["wer"] == pytest.approx(1.0)


def _clips(folder: Path, classes=("yes", "no"), n: int = 3) -> None:
    for c, hz in zip(classes, (300.0, 900.0)):
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            sf.write(folder / c / f"{i}.wav", _tone(16000, 0.4 + 0.1 * i, hz), 16000)


def test_bad_audio_input_exit_2(cli, tmp_path):
    empty = tmp_path / "empty"
    (empty / "yes").mkdir(parents=True)
    (empty / "yes" / "notes.txt").write_text("no audio here")
    result = cli("finetune", "model=cnn", "data=audio_folder", f"data.path={empty}")
    assert result.returncode == 2 and "no audio files in its class folders" in result.stderr

    clips = tmp_path / "clips"
    _clips(clips)
    (clips / "no" / "3.wav").write_bytes(b"not audio at all")
    result = cli("finetune", "model=cnn", "data=audio_folder", f"data.path={clips}")
    assert result.returncode == 2 and "3.wav: not an audio file that can be read" in result.stderr

    (tmp_path / "m.csv").write_text("file,label\nclips/yes/0.wav,yes\n")
    result = cli("finetune", "model=cnn", "data=audio_csv", f"data.path={tmp_path / 'm.csv'}")
    assert result.returncode == 2 and "no column 'path'" in result.stderr
    assert "its columns are file, label" in result.stderr
    result = cli("finetune", "model=speech_ctc", "data=audio_csv", "task=ctc",
                 f"data.path={tmp_path / 'm.csv'}", "data.path_column=file",
                 "data.transcript_column=text")
    assert result.returncode == 2 and "no column 'text'" in result.stderr

    result = cli("finetune", "model=cnn", "data=audio_folder", f"data.path={tmp_path / 'nowhere'}")
    assert result.returncode == 2 and "nowhere: no such directory" in result.stderr
    result = cli("finetune", "model=cnn", "data=audio_csv", f"data.path={tmp_path / 'no.csv'}")
    assert result.returncode == 2 and "no.csv: no such file or directory" in result.stderr
    result = cli("finetune", "model=cnn", "data=spoken_numbers", "task=ctc",
                 "trainer.max_train_samples=20", "trainer.max_eval_samples=10")
    assert result.returncode == 2 and "task=ctc needs an encoder with per-frame outputs" in result.stderr
    for r in (result,):
        assert "Traceback" not in r.stderr


def test_bilstm_is_exact_per_utterance_and_matches_a_packed_lstm():
    from bigmodel_cli.models.speech_ctc import BiLSTM

    torch.manual_seed(0)
    model = BiLSTM(8, 6, 2, 0.0).eval()
    x, lengths = torch.randn(3, 10, 8), torch.tensor([10, 7, 4])
    with torch.no_grad():
        batched = model(x, lengths)
        for b, n in enumerate(lengths.tolist()):          # padding never reaches a real frame
            alone = model(x[b:b + 1, :n], torch.tensor([n]))[0]
            torch.testing.assert_close(batched[b, :n], alone, atol=1e-6, rtol=1e-5)
        one = BiLSTM(8, 6, 1, 0.0).eval()
        packed = torch.nn.LSTM(8, 6, 1, batch_first=True, bidirectional=True)
        for name, param in packed.named_parameters():
            own = one.backward_layers[0] if name.endswith("_reverse") else one.forward_layers[0]
            param.copy_(getattr(own, name.removesuffix("_reverse")))
        seq = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True,
                                                      enforce_sorted=False)
        want, _ = torch.nn.utils.rnn.pad_packed_sequence(packed(seq)[0], batch_first=True)
        got = one(x, lengths)
        for b, n in enumerate(lengths.tolist()):
            torch.testing.assert_close(got[b, :n], want[b, :n], atol=1e-6, rtol=1e-5)
