"""The TTS export's engine (spx.deploy.engine.TtsEngine) on a tiny hand-made graph: text.json -> ids, the graph's
inputs by role (ids, lengths, speaker, constant extra inputs), the mel layout and valid frames, Griffin-Lim from the
exported filterbank, speakers; and check_tts_parity's rules. The backends' real exports are tested in their files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from spx.deploy.engine import TextTable, TtsEngine, load_engine
from spx.deploy.parity import INT8_MAX_MEL_MAE, MEL_TOLERANCE, check_tts_parity

N_MELS, HOP, N_FFT, RATE = 20, 64, 256, 8000
SYMBOLS = ["<pad>", "<space>", "a", "b", "c", "'", "<eos>"]


def tiny_graph(path: Path) -> None:
    """ids [1, N], lengths [1], sid [1], pace [1, N] -> mel [1, n_mels, 3N] (BDT, one padded frame) + frames [1]."""
    import torch

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.emb = torch.nn.Embedding(len(SYMBOLS), N_MELS)
            self.spk = torch.nn.Embedding(2, N_MELS)

        def forward(self, ids, lengths, sid, pace):
            h = self.emb(ids) * pace.unsqueeze(-1) + self.spk(sid).unsqueeze(1)   # [1, N, D]
            mel = torch.repeat_interleave(h, 3, dim=1) - 4.0                     # 3 frames per token
            mel = torch.cat([mel, torch.zeros_like(mel[:, :1])], dim=1)          # one padded frame
            return mel.transpose(1, 2), lengths * 3

    ids = torch.tensor([[2, 3, 4]])
    torch.onnx.export(Toy().eval(), (ids, torch.tensor([3]), torch.tensor([0]), torch.ones(1, 3)), str(path),
                      dynamo=False, opset_version=17, input_names=["ids", "lengths", "sid", "pace"],
                      output_names=["mel", "frames"],
                      dynamic_axes={"ids": {1: "tokens"}, "pace": {1: "tokens"}, "mel": {2: "frames"}})


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    import librosa

    out = tmp_path_factory.mktemp("tts_export")
    tiny_graph(out / "model.onnx")
    info = {"spx_export": 1, "backend": "toy", "task": "tts", "family": "fastspeech2", "format": "onnx",
            "model_file": "model.onnx", "inputs": {"ids": "ids", "lengths": "lengths", "speaker": "sid"},
            "extra_inputs": {"pace": {"dtype": "float32", "fill": 1.0, "shape": "like_ids"}},
            "outputs": {"mel": "mel", "frames": "frames"}, "mel_layout": "BDT", "output_order": ["mel", "frames"],
            "speakers": {"anna": 0, "bert": 1}}
    (out / "export.json").write_text(json.dumps(info))
    (out / "text.json").write_text(json.dumps({"symbols": SYMBOLS, "space": "<space>", "lowercase": True,
                                               "suffix": [6], "unknown": None}))
    (out / "vocoder.json").write_text(json.dumps({"kind": "griffin_lim", "sample_rate": RATE, "n_fft": N_FFT,
                                                  "win_length": N_FFT, "hop_length": HOP, "power": 1.0,
                                                  "log": {"base": "e", "guard": 1e-5}, "n_iter": 4}))
    np.savez(out / "vocoder.npz", mel_basis=librosa.filters.mel(sr=RATE, n_fft=N_FFT, n_mels=N_MELS))
    return out


def test_text_table_cleans_then_maps_characters():
    table = TextTable({"symbols": SYMBOLS, "space": "<space>", "lowercase": True, "prefix": [0], "suffix": [6],
                       "unknown": None})
    assert table.ids("AB, c!") == [0, 2, 3, 1, 4, 6]   # cleaned to "ab c"; unknown characters dropped
    with_unknown = TextTable({"symbols": SYMBOLS + ["<unk>"], "space": "<space>", "lowercase": True,
                              "unknown": "<unk>"})
    assert with_unknown.ids("a1") == [2, 7]
    plain = {"symbols": SYMBOLS, "space": "<space>", "lowercase": True, "unknown": None}
    assert TextTable(plain).ids("a 9 b 7") == [2, 1, 1, 3, 1]                    # "a  b " (digits dropped)
    assert TextTable({**plain, "collapse_spaces": True}).ids("a 9 b 7") == [2, 1, 3]  # NeMo's: "a b"


def test_engine_feeds_the_graph_by_role_and_vocodes(export_dir):
    engine = load_engine(export_dir)
    assert isinstance(engine, TtsEngine) and engine.speakers == ["anna", "bert"]
    ids = engine.text.ids("ab c")
    mel = engine.mel("ab c", "bert")
    assert mel.shape == (3 * len(ids), N_MELS)          # BDT -> [frames, n_mels], the padded frame cut off
    assert not np.allclose(mel, engine.mel("ab c", "anna"))  # the speaker input reaches the graph
    (wav, rate), = engine.synthesize([("ab c", None)])
    assert rate == RATE and len(wav) == (len(mel) - 1) * HOP and np.isfinite(wav).all() and np.abs(wav).max() > 0
    with pytest.raises(ValueError, match="unknown speaker 'carl'"):
        engine.synthesize([("ab", "carl")])
    with pytest.raises(ValueError, match="no symbol"):
        engine.synthesize([("123", None)])
    assert engine.check_text("a") == [2, 6]  # one symbol is enough unless export.json says otherwise


def test_a_text_shorter_than_the_graph_takes_is_a_clear_error(export_dir, tmp_path):
    """SpeechBrain's FastSpeech2 pads by reflection and cannot take one symbol: its export says min_symbols 2."""
    import shutil

    short = shutil.copytree(export_dir, tmp_path / "short")
    info = json.loads((short / "export.json").read_text())
    (short / "export.json").write_text(json.dumps({**info, "min_symbols": 2}))
    engine = load_engine(short)
    with pytest.raises(ValueError, match="'A!' gives 1 symbol.*takes at least 2"):
        engine.synthesize([("A!", None)])
    assert engine.check_text("ab") == [2, 3, 6]  # the suffix is not a symbol of the text


def test_tts_parity_rules():
    mel = np.zeros((30, N_MELS), dtype=np.float32)
    ok = check_tts_parity(["u"], [[1, 2]], [[1, 2]], [mel], [mel + MEL_TOLERANCE / 2], quantized=False)
    assert ok["passed"], ok["summary"]
    assert not check_tts_parity(["u"], [[1, 2]], [[1, 3]], [mel], [mel], quantized=False)["passed"]   # ids
    assert not check_tts_parity(["u"], [[1]], [[1]], [mel], [mel[:29]], quantized=False)["passed"]    # frames
    assert not check_tts_parity(["u"], [[1]], [[1]], [mel], [mel + 0.1], quantized=False)["passed"]   # values
    assert check_tts_parity(["u"], [[1]], [[1]], [mel], [mel[:28] + 0.1], quantized=True)["passed"]
    assert not check_tts_parity(["u"], [[1]], [[1]], [mel], [mel[:20]], quantized=True)["passed"]     # -33% frames
    assert not check_tts_parity(["u"], [[1]], [[1]], [mel], [mel + 2 * INT8_MAX_MEL_MAE], quantized=True)["passed"]
