"""Run an export dir: numpy frontend -> the exported graph (onnxruntime, or TorchScript through torch) -> greedy CTC
-> text. Used by `spx serve` on an export, by the export's own parity check and by benchmarks/deploy_bench.py.
Imports onnxruntime/torch only when an engine is made."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from spx.deploy.features import load_frontend
from spx.deploy.graph import Graph

EXPORT_JSON = "export.json"
TOKENS_JSON = "tokens.json"


def read_export_info(export_dir: Path) -> dict[str, Any]:
    return json.loads((Path(export_dir) / EXPORT_JSON).read_text())


class CtcText:
    """Greedy CTC ids -> text with the exported vocabulary (tokens.json: tokens, blank, space token, bpe, strip)."""

    def __init__(self, info: dict[str, Any]):
        self.tokens: list[str] = info["tokens"]
        self.blank = int(info["blank"])
        self.space = info.get("space")
        self.bpe = bool(info.get("bpe"))
        self.strip = bool(info.get("strip"))

    @classmethod
    def load(cls, export_dir: Path) -> "CtcText":
        return cls(json.loads((Path(export_dir) / TOKENS_JSON).read_text()))

    def best_path(self, log_probs: np.ndarray) -> list[int]:
        ids = log_probs.argmax(axis=-1)
        keep = np.ones(len(ids), dtype=bool)
        keep[1:] = ids[1:] != ids[:-1]
        return [int(i) for i in ids[keep] if i != self.blank]

    def text(self, ids: list[int]) -> str:
        pieces = [" " if self.space is not None and self.tokens[i] == self.space else self.tokens[i] for i in ids]
        text = "".join(pieces)
        if self.bpe:
            text = text.replace("\u2581", " ")
        return text.strip() if self.strip else text


def output_lengths(lengths: np.ndarray, rule: list[list[float]]) -> np.ndarray:
    """Frame counts after the encoder's subsampling, for a graph without a lengths output: each step
    (add_pad, stride, ceil) maps L -> floor_or_ceil((L + add_pad) / stride + 1) (NeMo's calc_length)."""
    out = lengths.astype(np.float64)
    for add_pad, stride, ceil in rule:
        out = (out + add_pad) / stride + 1.0
        out = np.ceil(out) if ceil else np.floor(out)
    return out.astype(np.int64)


class ExportEngine:
    """An ASR export dir as log_probs(wavs) / transcribe(wavs)."""

    def __init__(self, export_dir: str | Path, threads: int | None = None):
        self.dir = Path(export_dir)
        self.info = read_export_info(self.dir)
        self.frontend = load_frontend(self.dir)
        self.ctc = CtcText.load(self.dir)
        self.sample_rate = self.frontend.sample_rate
        self.format = self.info["format"]
        self.graph = Graph(self.dir, self.info, threads)

    def _run(self, feats: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        io = self.info
        named = self.graph.run(feats, lengths)
        log_probs = named[io["outputs"]["log_probs"]]
        if io["outputs"].get("lengths"):
            out_len = named[io["outputs"]["lengths"]].astype(np.int64)
        else:
            out_len = np.minimum(output_lengths(lengths, io["length_rule"]), log_probs.shape[1])
        return log_probs, out_len

    def log_probs(self, wavs: list[np.ndarray]) -> list[np.ndarray]:
        """Log-probs per utterance: one padded batch, or, when padding moves the outputs (export.json
        `padding_changes_outputs`, measured by the export: e.g. wav2vec2's group-norm feature encoder normalises over
        the padded length), one call per group of equal-length utterances (no padding)."""
        if not self.info.get("padding_changes_outputs"):
            return self.run_padded(wavs)
        groups = [[i for i, w in enumerate(wavs) if len(w) == size] for size in dict.fromkeys(len(w) for w in wavs)]
        out: list[np.ndarray | None] = [None] * len(wavs)
        for group in groups:
            for i, lp in zip(group, self.run_padded([wavs[i] for i in group])):
                out[i] = lp
        return out  # type: ignore[return-value]

    def run_padded(self, wavs: list[np.ndarray]) -> list[np.ndarray]:
        """One graph call on the padded batch."""
        feats, lengths = self.frontend.batch(wavs)
        lp, out_len = self._run(feats, lengths)
        return [lp[i, : int(n)] for i, n in enumerate(out_len)]

    def transcribe(self, wavs: list[np.ndarray]) -> list[str]:
        return [self.ctc.text(self.ctc.best_path(lp)) for lp in self.log_probs(wavs)]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class ClassifierEngine:
    """A classification export dir as logits(wavs) / classify(wavs) -> [(label, {class: probability})].

    export.json `classes` (the graph's output order), `logit_scale` (what multiplies the graph's output before the
    softmax: the margin loss's scale on SpeechBrain's cosines, 1 elsewhere) and `padding_changes_outputs` (a model
    in which padded frames move the outputs, measured by the export: convolutions see the padding on all three
    toolkits' classifiers, so only clips of the same length share a graph call)."""

    def __init__(self, export_dir: str | Path, threads: int | None = None):
        self.dir = Path(export_dir)
        self.info = read_export_info(self.dir)
        self.frontend = load_frontend(self.dir)
        self.sample_rate = self.frontend.sample_rate
        self.format = self.info["format"]
        self.classes: list[str] = list(self.info["classes"])
        self.scale = float(self.info.get("logit_scale", 1.0))
        self.graph = Graph(self.dir, self.info, threads)

    def logits(self, wavs: list[np.ndarray]) -> list[np.ndarray]:
        """Graph outputs per clip; clips of one padded batch when padding does not change the outputs, else only
        clips with the same frame count share a call (no padding, so the answer does not depend on the batch)."""
        if self.info.get("padding_changes_outputs"):
            frames = [self.frontend(w)[0].shape[0] for w in wavs]
            groups = [[i for i, n in enumerate(frames) if n == size] for size in dict.fromkeys(frames)]
        else:
            groups = [list(range(len(wavs)))]
        out: list[np.ndarray | None] = [None] * len(wavs)
        for group in groups:
            out_rows = self.run_padded([wavs[i] for i in group])
            for i, row in zip(group, out_rows):
                out[i] = row
        return out  # type: ignore[return-value]

    def run_padded(self, wavs: list[np.ndarray]) -> list[np.ndarray]:
        """One graph call on the zero-padded batch."""
        feats, lengths = self.frontend.batch(wavs)
        logits = self.graph.run(feats, lengths)[self.info["outputs"]["logits"]]
        return [np.asarray(row, dtype=np.float32) for row in logits.reshape(len(wavs), -1)]

    def classify(self, wavs: list[np.ndarray]) -> list[tuple[str, dict[str, float]]]:
        out = []
        for logits in self.logits(wavs):
            if len(logits) != len(self.classes):
                raise RuntimeError(f"the graph gave {len(logits)} scores for {len(self.classes)} classes")
            probs = softmax(self.scale * logits.astype(np.float64))
            best = int(probs.argmax())
            out.append((self.classes[best], {c: float(p) for c, p in zip(self.classes, probs)}))
        return out


TEXT_JSON = "text.json"
VOCODER_JSON = "vocoder.json"
VOCODER_NPZ = "vocoder.npz"


class TextTable:
    """text.json, a TTS export's text frontend: spx's transcript cleaning (as in training), then one symbol per
    character (`space`: the symbol a space becomes), `prefix`/`suffix` ids around them; characters without a symbol
    become `unknown`, or are dropped when it is null (then `collapse_spaces`: the spaces around them merge and the
    ends are stripped). The export checks it gives the toolkit's own ids."""

    def __init__(self, info: dict[str, Any]):
        self.symbols: list[str] = list(info["symbols"])
        self.index = {sym: i for i, sym in enumerate(self.symbols)}
        self.space = info.get("space", " ")
        self.lowercase = bool(info.get("lowercase", True))
        self.prefix = [int(i) for i in info.get("prefix", [])]
        self.suffix = [int(i) for i in info.get("suffix", [])]
        self.unknown = self.index[info["unknown"]] if info.get("unknown") is not None else None
        self.collapse_spaces = bool(info.get("collapse_spaces"))

    def ids(self, text: str) -> list[int]:
        from spx.textclean import clean_transcript

        cleaned = clean_transcript(text, self.lowercase)
        if self.collapse_spaces and self.unknown is None:  # as NeMo's tokenizer: dropped characters' spaces merge
            cleaned = " ".join("".join(ch for ch in cleaned if ch == " " or ch in self.index).split())
        out = list(self.prefix)
        for ch in cleaned:
            i = self.index.get(self.space if ch == " " else ch, self.unknown)
            if i is not None:
                out.append(i)
        return out + self.suffix


def check_symbols(text: str, n_symbols: int, min_symbols: int) -> None:
    """A ValueError (the server's 422) when the text gives the model fewer symbols of its alphabet than it takes."""
    if n_symbols == 0:
        raise ValueError(f"no symbol of the model's alphabet in {text!r}")
    if n_symbols < min_symbols:
        raise ValueError(f"{text!r} gives {n_symbols} symbol(s) of the model's alphabet; this model takes at least "
                         f"{min_symbols} (its convolutions pad by reflection): send a longer text")


def mel_to_ln(mel: np.ndarray, log: dict[str, Any]) -> np.ndarray:
    """A log-mel in the toolkit's base (vocoder.json `log.base`: "e" or "10") in natural-log units."""
    return mel * np.log(10.0) if str(log.get("base", "e")) == "10" else mel


def hann_window(win_length: int, n_fft: int) -> np.ndarray:
    """A periodic Hann window of win_length, zero-padded on both sides to n_fft (librosa's and torch's STFT)."""
    w = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win_length) / win_length)
    left = (n_fft - win_length) // 2
    return np.pad(w, (left, n_fft - win_length - left)).astype(np.float64)


def stft(x: np.ndarray, n_fft: int, hop: int, window: np.ndarray) -> np.ndarray:
    """Centred (zero-padded) STFT -> [n_freq, frames]."""
    x = np.pad(x, (n_fft // 2, n_fft // 2))
    n_frames = 1 + (len(x) - n_fft) // hop
    frames = np.lib.stride_tricks.as_strided(x, (n_frames, n_fft), (x.strides[0] * hop, x.strides[0]))
    return np.fft.rfft(frames * window, axis=1).T


def istft(spec: np.ndarray, n_fft: int, hop: int, window: np.ndarray, length: int) -> np.ndarray:
    """Inverse of stft by weighted overlap-add, trimmed to `length` samples."""
    frames = np.fft.irfft(spec.T, n=n_fft, axis=1) * window
    n_frames = len(frames)
    if n_fft % hop == 0:  # overlap-add by hop-sized blocks: n_fft / hop slice additions instead of one per frame
        k = n_fft // hop
        blocks, win_blocks = frames.reshape(n_frames, k, hop), (window ** 2).reshape(k, hop)
        y, norm = np.zeros((n_frames + k - 1, hop)), np.zeros((n_frames + k - 1, hop))
        for j in range(k):
            y[j: j + n_frames] += blocks[:, j]
            norm[j: j + n_frames] += win_blocks[j]
        y, norm = y.reshape(-1), norm.reshape(-1)
    else:
        n = n_fft + hop * (n_frames - 1)
        y, norm = np.zeros(n), np.zeros(n)
        for t, frame in enumerate(frames):
            y[t * hop: t * hop + n_fft] += frame
            norm[t * hop: t * hop + n_fft] += window ** 2
    y /= np.where(norm > 1e-10, norm, 1.0)
    return y[n_fft // 2: n_fft // 2 + length]


class GriffinLimVocoder:
    """vocoder.json kind griffin_lim: the log-mel back to |STFT| through the least-squares inverse of the toolkit's
    own filterbank (vocoder.npz mel_basis), then fast Griffin-Lim (momentum 0.99, random phase from seed 0, as
    librosa.griffinlim) with the toolkit's STFT settings. numpy only: librosa's first call compiles numba kernels
    for ~14 s, which a server's first request or an export's check would pay."""

    MOMENTUM = 0.99

    def __init__(self, info: dict[str, Any], mel_basis: np.ndarray):
        self.info = info
        self.pinv = np.linalg.pinv(mel_basis.astype(np.float64)).astype(np.float32)
        self.n_fft = int(info["n_fft"])
        self.hop = int(info["hop_length"])
        self.window = hann_window(int(info.get("win_length") or self.n_fft), self.n_fft)

    def __call__(self, mel: np.ndarray) -> np.ndarray:
        log = self.info["log"]
        energy = np.exp(mel_to_ln(mel.astype(np.float32), log))
        if log.get("guard"):
            energy = energy - np.float32(log["guard"])
        magnitude = np.maximum(self.pinv @ np.maximum(energy, 0).T, 1e-8).astype(np.float64)  # [n_freq, frames]
        if float(self.info.get("power", 1.0)) == 2.0:
            magnitude = np.sqrt(magnitude)
        length = (magnitude.shape[1] - 1) * self.hop  # centred frames: T frames are (T - 1) hops of audio
        n_fft, hop, window = self.n_fft, self.hop, self.window
        angles = np.exp(2j * np.pi * np.random.RandomState(0).random_sample(magnitude.shape))
        rebuilt = np.zeros_like(angles)
        for _ in range(int(self.info.get("n_iter", 32))):
            previous = rebuilt
            rebuilt = stft(istft(magnitude * angles, n_fft, hop, window, length), n_fft, hop, window)
            angles = rebuilt - (self.MOMENTUM / (1 + self.MOMENTUM)) * previous
            angles /= np.abs(angles) + 1e-16
        return istft(magnitude * angles, n_fft, hop, window, length).astype(np.float32)


class GraphVocoder:
    """vocoder.json kind graph: a neural vocoder's generator exported beside the acoustic model (mel -> waveform)."""

    def __init__(self, export_dir: Path, info: dict[str, Any], threads: int | None):
        self.info = info
        self.graph = Graph(export_dir, {"model_file": info["model_file"], "format": info.get("format", "onnx"),
                                        "input_order": [info["input"]], "output_order": [info["output"]]}, threads)

    def __call__(self, mel: np.ndarray) -> np.ndarray:
        x = mel.T if self.info.get("mel_layout", "BDT") == "BDT" else mel
        out = self.graph.run_named({self.info["input"]: np.ascontiguousarray(x[None], dtype=np.float32)})
        return np.asarray(out[self.info["output"]], dtype=np.float32).reshape(-1)


class SampledNoise:
    """export.json `noise`: the Gaussian noise a TTS graph takes where its model samples at inference (ESPnet VITS:
    its stochastic duration predictor's draw and its prior's), drawn standard normal from a numpy Generator seeded
    per sentence (`seed` unless the call names one: the same text and seed give the same waveform), input after
    input in `inputs` order. Axis "tokens" is the sentence's id count, axis "frames" (axis 1 of the last input) a
    budget of `frames_per_token` a token: the graph takes the first rows, as many as the frames it predicts, and
    outputs that count; a short budget is drawn again at that count, and as a Generator fills row after row the rows
    the graph takes are the same whatever the budget."""

    def __init__(self, info: dict[str, Any]):
        self.seed = int(info.get("seed", 0))
        self.frames_per_token = int(info["frames_per_token"])
        self.inputs = [(i["name"], list(i["shape"])) for i in info["inputs"]]
        if any("frames" in shape for _, shape in self.inputs[:-1]) or "frames" in self.inputs[-1][1][2:]:
            raise ValueError(f"export.json noise {info['inputs']}: only axis 1 of the last input may be 'frames'")

    def feeds(self, n_tokens: int, frames: int = 0, seed: int | None = None) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(self.seed if seed is None else seed)
        sizes = {"tokens": n_tokens, "frames": max(frames, self.frames_per_token * n_tokens)}
        return {name: rng.standard_normal([sizes.get(a, a) for a in shape], dtype=np.float32)
                for name, shape in self.inputs}

    def frames(self, feeds: dict[str, np.ndarray]) -> int:
        name, _ = self.inputs[-1]
        return int(feeds[name].shape[1])


class TtsEngine:
    """A TTS export dir: text -> ids (text.json) -> the acoustic graph -> log-mel -> the vocoder (vocoder.json:
    Griffin-Lim in numpy, or a vocoder graph) -> waveform; or (vocoder.json kind none, export.json outputs.waveform)
    a graph that outputs the waveform itself, fed the noise its model samples (SampledNoise). One sentence per graph
    call (the graphs take batch 1)."""

    def __init__(self, export_dir: str | Path, threads: int | None = None):
        self.dir = Path(export_dir)
        self.info = read_export_info(self.dir)
        self.format = self.info["format"]
        self.text = TextTable(json.loads((self.dir / TEXT_JSON).read_text()))
        self.speaker_ids: dict[str, int] = dict(self.info.get("speakers") or {})
        self.speakers = sorted(self.speaker_ids)
        self.autoregressive = None
        if self.info.get("acoustic") == "autoregressive":  # Tacotron2: encoder, decoder step and postnet graphs
            from spx.deploy.autoregressive import AutoregressiveAcoustic

            self.autoregressive = AutoregressiveAcoustic(
                {role: Graph(self.dir, {"format": self.format, **g}, threads) for role, g in self.info["graphs"].items()},
                self.info["autoregressive"])
        else:
            self.graph = Graph(self.dir, self.info, threads)
        self.vocoder_info = json.loads((self.dir / VOCODER_JSON).read_text())
        self.noise = SampledNoise(self.info["noise"]) if self.info.get("noise") else None
        if self.noise and not self.info["outputs"].get("frames"):  # else a short noise budget would go unnoticed
            raise ValueError(f"{self.dir / EXPORT_JSON}: a graph fed sampled noise must output its frame count")
        if self.vocoder_info["kind"] == "griffin_lim":
            self.vocoder = GriffinLimVocoder(self.vocoder_info, np.load(self.dir / VOCODER_NPZ)["mel_basis"])
        elif self.vocoder_info["kind"] == "none":  # the graph outputs the waveform
            self.vocoder = None
        else:
            self.vocoder = GraphVocoder(self.dir, self.vocoder_info, threads)
        self.sample_rate = int(self.vocoder_info["sample_rate"])

    def speaker_id(self, speaker: str | None) -> int:
        if not self.speaker_ids:
            return 0
        if speaker is None:
            return self.speaker_ids[self.speakers[0]]
        if speaker not in self.speaker_ids:
            raise ValueError(f"unknown speaker {speaker!r}; the model has {self.speakers}")
        return self.speaker_ids[speaker]

    def feeds(self, ids: list[int], speaker: str | None = None) -> dict[str, np.ndarray]:
        """The graph's inputs for one sentence but the noise: ids, lengths, speaker id, export.json's constants."""
        io = self.info
        x = np.asarray([ids], dtype=np.int64)
        feeds = {io["inputs"]["ids"]: x}
        if io["inputs"].get("lengths"):
            feeds[io["inputs"]["lengths"]] = np.asarray([len(ids)], dtype=np.int64)
        if io["inputs"].get("speaker"):
            feeds[io["inputs"]["speaker"]] = np.asarray([self.speaker_id(speaker)], dtype=np.int64)
        for name, const in (io.get("extra_inputs") or {}).items():
            shape = x.shape if const["shape"] == "like_ids" else tuple(const["shape"])
            feeds[name] = np.full(shape, const["fill"], dtype=const["dtype"])
        return feeds

    def mel_of_ids(self, ids: list[int], speaker: str | None = None) -> np.ndarray:
        """The acoustic graph on one sentence's ids -> log-mel [frames, n_mels] (the valid frames only)."""
        if self.autoregressive is not None:
            return self.autoregressive.mel_of_ids(ids, self.speaker_id(speaker) if self.speaker_ids else None)
        io = self.info
        out = self.graph.run_named(self.feeds(ids, speaker))
        mel = np.asarray(out[io["outputs"]["mel"]])[0]
        if io.get("mel_layout", "BTD") == "BDT":
            mel = mel.T
        if io["outputs"].get("frames"):
            mel = mel[: int(np.asarray(out[io["outputs"]["frames"]]).reshape(-1)[0])]
        return np.ascontiguousarray(mel, dtype=np.float32)

    def waveform_graph(self, ids: list[int], speaker: str | None = None,
                       seed: int | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """A waveform graph on one sentence -> (waveform float32, the noise it was fed)."""
        io, feeds = self.info, self.feeds(ids, speaker)
        noise = self.noise.feeds(len(ids), seed=seed) if self.noise else {}
        out = self.graph.run_named({**feeds, **noise})
        frames = int(np.asarray(out[io["outputs"]["frames"]]).reshape(-1)[0]) if io["outputs"].get("frames") else 0
        if self.noise and frames > self.noise.frames(noise):  # the budget was short: the same rows, then more
            noise = self.noise.feeds(len(ids), frames=frames, seed=seed)
            out = self.graph.run_named({**feeds, **noise})
        return np.asarray(out[io["outputs"]["waveform"]], dtype=np.float32).reshape(-1), noise

    def waveform_of_ids(self, ids: list[int], speaker: str | None = None) -> np.ndarray:
        if self.vocoder is None:
            return self.waveform_graph(ids, speaker)[0]
        return self.vocoder(self.mel_of_ids(ids, speaker))

    def mel(self, text: str, speaker: str | None = None) -> np.ndarray:
        return self.mel_of_ids(self.text.ids(text), speaker)

    def check_text(self, text: str) -> list[int]:
        """The sentence's ids; a ValueError when it has fewer symbols than the graph takes (export.json
        min_symbols)."""
        ids = self.text.ids(text)
        check_symbols(text, len(ids) - len(self.text.prefix) - len(self.text.suffix),
                      int(self.info.get("min_symbols") or 1))
        return ids

    def synthesize(self, batch: list[tuple[str, str | None]]) -> list[tuple[np.ndarray, int]]:
        """(text, speaker or None) per sentence -> (waveform float32, sample rate)."""
        out = []
        for text, speaker in batch:
            self.speaker_id(speaker)  # an unknown speaker fails before any compute
            ids = self.check_text(text)
            out.append((self.waveform_of_ids(ids, speaker), self.sample_rate))
        return out


def load_engine(export_dir: str | Path, threads: int | None = None) -> "ExportEngine | ClassifierEngine | TtsEngine":
    """The engine of an export dir's task."""
    info = read_export_info(Path(export_dir))
    task = info.get("task", "asr")
    if info.get("kind") == "seq2seq":  # encoder-decoder ASR (whisper): the search runs in numpy
        from spx.deploy.seq2seq import Seq2SeqEngine

        return Seq2SeqEngine(export_dir, threads)  # type: ignore[return-value]
    if task == "tts":
        return TtsEngine(export_dir, threads)
    return ClassifierEngine(export_dir, threads) if task == "classification" else ExportEngine(export_dir, threads)
