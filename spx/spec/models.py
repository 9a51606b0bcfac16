"""Pydantic models of the job spec. Unknown keys are rejected; every field says what it means."""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from spx.registry import BACKEND_NAMES, TASK_NAMES


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SpecKeyError(ValueError):
    """A cross-section check's error that names the key to fix, so that the message points at that key's line."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


# ---------------------------------------------------------------- model families
class ConformerEncoder(Strict):
    layers: int = Field(2, ge=1, description="number of Conformer blocks")
    d_model: int = Field(96, ge=8, description="model (attention) dimension")
    heads: int = Field(4, ge=1, description="attention heads; must divide d_model")
    ff_expansion: int = Field(4, ge=1, description="feed-forward size = ff_expansion * d_model")
    conv_kernel: int = Field(15, ge=3, description="depthwise convolution kernel size (odd)")
    subsampling: Literal[4, 8] = Field(4, description="time subsampling factor of the conv front end")
    dropout: float = Field(0.1, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _check(self) -> "ConformerEncoder":
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        if self.conv_kernel % 2 == 0:
            raise ValueError(f"conv_kernel ({self.conv_kernel}) must be odd")
        return self


class ConformerCTC(Strict):
    family: Literal["conformer_ctc"] = "conformer_ctc"
    encoder: ConformerEncoder = Field(default_factory=ConformerEncoder)


class Tacotron2(Strict):
    family: Literal["tacotron2"] = "tacotron2"
    embedding_dim: int = Field(128, ge=8)
    encoder_layers: int = Field(3, ge=1, description="encoder convolution layers")
    encoder_dim: int = Field(128, ge=8)
    attention_dim: int = Field(64, ge=8)
    decoder_rnn_dim: int = Field(256, ge=8)
    prenet_dim: int = Field(64, ge=8)
    postnet_layers: int = Field(3, ge=1)
    postnet_dim: int = Field(128, ge=8)
    reduction_factor: int = Field(1, ge=1)


class FastSpeech2(Strict):
    family: Literal["fastspeech2"] = "fastspeech2"
    d_model: int = Field(128, ge=8, description="embedding and transformer width (feed-forward 4 x d_model), "
                                                "aligner and predictor widths")
    encoder_layers: int = Field(2, ge=1, description="transformer (FFT) blocks over the characters")
    decoder_layers: int = Field(2, ge=1, description="transformer (FFT) blocks over the mel frames")
    heads: int = Field(2, ge=1, description="attention heads; must divide d_model")

    @model_validator(mode="after")
    def _check(self) -> "FastSpeech2":
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) is not divisible by heads ({self.heads}): multi-head "
                             "attention splits d_model across the heads")
        return self


class Vits(Strict):
    family: Literal["vits"] = "vits"
    hidden_channels: int = Field(96, ge=8, description="text encoder / posterior encoder / flow width "
                                                       "(2 attention heads)")
    text_encoder_layers: int = Field(3, ge=1, description="Conformer blocks of the text encoder")
    segment_size: int = Field(32, ge=4, description="latent frames of the random slice the waveform decoder "
                                                    "trains on (segment_size x hop samples)")
    decoder_channels: int = Field(128, ge=8, description="first HiFi-GAN decoder width; halves after each upsample")
    decoder_upsample_scales: list[int] = Field([8, 8, 4], min_length=1, description="HiFi-GAN upsample rates; their "
                                               "product must equal the STFT hop in samples")
    decoder_resblock_kernel_sizes: list[int] = Field([3, 7, 11], min_length=1, description="kernels of the HiFi-GAN "
                                                     "residual blocks after each upsample (dilations 1, 3, 5 each)")

    @model_validator(mode="after")
    def _check(self) -> "Vits":
        if self.hidden_channels % 2:
            raise ValueError(f"hidden_channels ({self.hidden_channels}) must be even (2 attention heads)")
        if any(s < 1 for s in self.decoder_upsample_scales):
            raise ValueError(f"decoder_upsample_scales {self.decoder_upsample_scales}: every rate must be >= 1")
        if any(k < 1 or k % 2 == 0 for k in self.decoder_resblock_kernel_sizes):
            raise ValueError(f"decoder_resblock_kernel_sizes {self.decoder_resblock_kernel_sizes}: kernels must be odd")
        if self.decoder_channels >> len(self.decoder_upsample_scales) < 1:
            raise ValueError(f"decoder_channels ({self.decoder_channels}) halves at each of the "
                             f"{len(self.decoder_upsample_scales)} upsamples: make it at least "
                             f"{2 ** len(self.decoder_upsample_scales)}")
        return self


class HifiGan(Strict):
    """A HiFi-GAN vocoder trained as its own job (mel -> waveform, on the audio alone); a TTS job's tts.vocoder can
    name its run dir. Mel settings come from tts.sample_rate/n_mels and features: (they must match the acoustic model's)."""
    family: Literal["hifigan"] = "hifigan"
    upsample_initial_channel: int = Field(64, ge=8, description="generator width after its input conv; halves after "
                                          "each upsample (HiFi-GAN V1: 512, V3: 256)")
    upsample_rates: list[int] = Field([8, 8, 4], min_length=1, description="transposed-convolution strides (kernels "
                                      "2x each); their product must equal the STFT hop in samples")
    resblock: Literal[1, 2] = Field(2, description="residual block type: 1 (HiFi-GAN V1/V2) or 2 (V3, lighter)")
    segment_seconds: float = Field(0.5, gt=0, description="random audio crop each training example is cut to "
                                   "(rounded down to whole hops)")

    @model_validator(mode="after")
    def _check(self) -> "HifiGan":
        if any(r < 1 for r in self.upsample_rates):
            raise ValueError(f"upsample_rates {self.upsample_rates}: every rate must be >= 1")
        if self.upsample_initial_channel % (2 ** len(self.upsample_rates)):
            raise ValueError(f"upsample_initial_channel ({self.upsample_initial_channel}) must be divisible by "
                             f"2**{len(self.upsample_rates)} (it halves after each of the {len(self.upsample_rates)} "
                             "upsamples)")
        return self


class KwsClassifier(Strict):
    """A small keyword-spotting / utterance classifier: fbank -> `blocks` blocks of width `channels` -> pooled
    utterance embedding -> class layer. Each backend renders its own toolkit's classifier with these sizes
    (docs/backends/*.md): NeMo EncDecClassificationModel with a MatchboxNet encoder, SpeechBrain ECAPA-TDNN +
    Classifier, ESPnet's cls task with a Conformer encoder and mean-pooling linear decoder."""
    family: Literal["kws_classifier"] = "kws_classifier"
    channels: int = Field(64, ge=8, description="width of every block: MatchboxNet filters (nemo), ECAPA-TDNN "
                                                "channels (speechbrain), Conformer output_size (espnet)")
    blocks: int = Field(3, ge=1, description="MatchboxNet residual blocks (nemo), ECAPA SE-Res2 blocks "
                                             "(speechbrain), Conformer blocks (espnet)")
    kernel_size: int = Field(5, ge=3, description="time kernel of the blocks' convolutions (odd): MatchboxNet "
                                                  "separable convs, ECAPA SE-Res2 blocks, Conformer convolution module")
    embedding_dim: int = Field(64, ge=8, description="utterance embedding the class layer reads: MatchboxNet's "
                                                     "epilogue width (nemo), ECAPA lin_neurons (speechbrain); ESPnet's "
                                                     "mean-pooled Conformer output has channels dims (no separate "
                                                     "embedding layer), so espnet ignores it")
    dropout: float = Field(0.1, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _check(self) -> "KwsClassifier":
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size ({self.kernel_size}) must be odd")
        if self.channels % 4:
            raise ValueError(f"channels ({self.channels}) must be divisible by 4 (ESPnet's Conformer uses 4 "
                             "attention heads, SpeechBrain's Res2Net blocks split channels into 4 scales)")
        return self


class PretrainedEncoder(Strict):
    pretrained: str = Field(..., description="the pretrained self-supervised model: a hub name "
                            "(facebook/wav2vec2-base) or a local folder in the Transformers layout (config.json + "
                            "weights); its kind (wav2vec2, hubert, wavlm) is read from config.json model_type")
    layer_weighting: bool = Field(False, description="feed the CTC head a learned softmax-weighted sum of all "
                                  "encoder layers (SUPERB style) instead of the last layer")


class SslCtc(Strict):
    """A pretrained self-supervised encoder (wav2vec2 / HuBERT / WavLM) with a new CTC head on the spec's
    tokenizer (char or bpe), fine-tuned on the job's data."""
    family: Literal["ssl_ctc"] = "ssl_ctc"
    encoder: PretrainedEncoder
    head_dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout before the CTC head")


class SslClassifier(Strict):
    """A pretrained self-supervised encoder (wav2vec2 / HuBERT / WavLM), mean-pooled over time, with a new class
    layer (a projector and a linear classifier: Transformers' AutoModelForAudioClassification), fine-tuned on the
    job's labels (task: classification)."""
    family: Literal["ssl_classifier"] = "ssl_classifier"
    encoder: PretrainedEncoder
    projector_dim: int = Field(256, ge=8, description="width of the projection between the pooled encoder output "
                               "and the class layer (Transformers' classifier_proj_size)")


class Whisper(Strict):
    """A pretrained Whisper encoder-decoder fine-tuned on the job's data with its own tokenizer (the spec's
    tokenizer: section does not apply)."""
    family: Literal["whisper"] = "whisper"
    pretrained: str = Field(..., description="a hub name (openai/whisper-small) or a local folder in the Transformers "
                            "layout (config.json, weights, tokenizer and feature-extractor files)")
    language: str | None = Field("en", description="language token the decoder is prompted with (Whisper's code, "
                                 "e.g. en, de); null: detected (multilingual checkpoints only)")
    task: Literal["transcribe", "translate"] = Field("transcribe", description="Whisper's task token (translate: "
                                                     "into English)")
    timestamps: Literal[False] = Field(False, description="timestamp tokens (not supported: always off)")
    max_new_tokens: int = Field(128, ge=1, le=448, description="longest hypothesis the decoder generates, in tokens")


class FineTune(Strict):
    """How the pretrained part of a model is fine-tuned (every family; a backend refuses what it cannot do)."""
    method: Literal["full", "lora", "adapter"] = Field(
        "full", description="full: every unfrozen weight trains; lora: low-rank adapters on target_modules (the base "
                            "stays bit-identical, the new head trains); adapter: small bottleneck adapters per layer")
    rank: int = Field(8, ge=1, description="LoRA rank r (lora) or adapter bottleneck width (adapter)")
    alpha: float = Field(16.0, gt=0, description="LoRA scaling alpha (the update is scaled by alpha / rank)")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="dropout on the LoRA / adapter input")
    target_modules: list[str] | None = Field(None, min_length=1, description="module names the LoRA adapters wrap "
                                             "(e.g. [q_proj, v_proj]); null: the family's default")
    freeze_pretrained_steps: int = Field(0, ge=0, description="the pretrained part stays fixed for this many "
                                         "optimizer steps while the new head warms up (then it trains too)")
    init_include: list[str] | None = Field(None, min_length=1, description="partial init: load only the tensors "
                                           "of these modules from init_from (module-name prefixes such as encoder "
                                           "or encoder.layers.0); null: every module the source has")
    init_exclude: list[str] = Field(default_factory=list, description="partial init: never load these modules "
                                    "from init_from (module-name prefixes, e.g. decoder); they keep their fresh init")

    @model_validator(mode="after")
    def _check(self) -> "FineTune":
        if self.method != "lora" and self.target_modules is not None:
            raise ValueError(f"finetune.target_modules applies to method lora only (method is {self.method})")
        for key, names in (("init_include", self.init_include or []), ("init_exclude", self.init_exclude)):
            bad = [n for n in names if not re.fullmatch(r"[A-Za-z_][\w]*(\.[\w]+)*", n)]
            if bad:
                raise ValueError(f"finetune.{key} {bad}: give module names such as encoder or encoder.layers.0")
        return self


ModelSpec = Annotated[Union[ConformerCTC, Tacotron2, FastSpeech2, Vits, HifiGan, SslCtc, Whisper, KwsClassifier,
                            SslClassifier], Field(discriminator="family")]
ASR_FAMILIES = {"conformer_ctc", "ssl_ctc", "whisper"}
# families that start from a pretrained model named in the spec (model.encoder.pretrained / model.pretrained)
PRETRAINED_FAMILIES = {"ssl_ctc", "whisper", "ssl_classifier"}
TTS_FAMILIES = {"tacotron2", "fastspeech2", "vits", "hifigan"}  # hifigan: a vocoder job
CLASSIFICATION_FAMILIES = {"kws_classifier", "ssl_classifier"}


# ---------------------------------------------------------------- the rest of the job
class Features(Strict):
    type: Literal["fbank"] = Field("fbank", description="log-mel filterbank")
    n_mels: int = Field(80, ge=8)
    sample_rate: int = Field(16000, ge=8000)
    win_length_ms: float = Field(25.0, gt=0)
    hop_length_ms: float = Field(10.0, gt=0)
    n_fft: int | None = Field(None, ge=64, description="STFT size in samples; unset = the smallest power of two "
                                                      "that covers the window (512 for 25 ms at 16 kHz)")


class Tokenizer(Strict):
    type: Literal["char", "bpe"] = "char"
    vocab_size: int | None = Field(None, ge=4, description="required for bpe (sentencepiece unigram/bpe size)")
    lowercase: bool = Field(True, description="lower-case transcripts before tokenizing")

    @model_validator(mode="after")
    def _check(self) -> "Tokenizer":
        if self.type == "bpe" and self.vocab_size is None:
            raise ValueError("tokenizer.type bpe needs tokenizer.vocab_size (e.g. 128)")
        return self


class Data(Strict):
    train: str = Field(..., description="spx manifest (JSONL) for training; relative to the recipe's folder")
    valid: str = Field(..., description="spx manifest for validation (early stopping, best checkpoint)")
    test: str | list[str] = Field(..., description="spx manifest(s) decoded and scored after training")
    max_duration: float | None = Field(None, gt=0, description="drop training utterances longer than this (s)")
    min_duration: float | None = Field(None, ge=0)


class Optimizer(Strict):
    name: Literal["adam", "adamw", "sgd"] = "adamw"
    lr: float = Field(2e-3, gt=0)
    pretrained_lr: float | None = Field(None, gt=0, description="learning rate of the pretrained part (the weights "
                                        "loaded from model.*.pretrained or init_from); lr then applies to the new "
                                        "head only. Unset: one lr for everything")
    weight_decay: float = Field(1e-3, ge=0)
    betas: tuple[float, float] = (0.9, 0.98)


class Scheduler(Strict):
    name: Literal["cosine", "noam", "constant", "linear"] = "cosine"
    warmup_steps: int = Field(100, ge=0)
    min_lr: float = Field(1e-5, ge=0)


class EarlyStopping(Strict):
    monitor: Literal["valid_loss", "valid_wer"] = "valid_loss"
    patience: int = Field(5, ge=1, description="epochs without improvement before stopping")


class Training(Strict):
    epochs: int | None = Field(30, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps (overrides epochs)")
    batch_size: int | None = Field(16, ge=1, description="utterances per batch per device")
    batch_seconds: float | None = Field(None, gt=0, description="dynamic batches of this many audio seconds per device")
    optimizer: Optimizer = Field(default_factory=Optimizer)
    scheduler: Scheduler = Field(default_factory=Scheduler)
    grad_accumulation: int = Field(1, ge=1)
    grad_clip: float | None = Field(5.0, gt=0)
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    seed: int = 1234
    early_stopping: EarlyStopping | None = None
    num_workers: int = Field(0, ge=0, description="data-loader worker processes")
    keep_checkpoints: int = Field(2, ge=1)

    @model_validator(mode="after")
    def _check(self) -> "Training":
        if self.epochs is None and self.max_steps is None:
            raise ValueError("set training.epochs or training.max_steps")
        if self.batch_size is None and self.batch_seconds is None:
            raise ValueError("set training.batch_size or training.batch_seconds")
        return self


class SpecAugment(Strict):
    freq_masks: int = Field(2, ge=0)
    freq_width: int = Field(15, ge=0, description="max mel bins per frequency mask")
    time_masks: int = Field(2, ge=0)
    time_width: int = Field(25, ge=0, description="max frames per time mask")


class Noise(Strict):
    manifest: str = Field(..., description="spx manifest of noise recordings")
    snr_db: tuple[float, float] = (5.0, 20.0)
    prob: float = Field(0.5, ge=0, le=1)


class Augmentation(Strict):
    speed_perturb: list[float] | None = Field(None, description="e.g. [0.9, 1.0, 1.1]")
    spec_augment: SpecAugment | None = Field(default_factory=SpecAugment)
    noise: Noise | None = None


class Decoding(Strict):
    strategy: Literal["greedy", "beam"] = "greedy"
    beam_size: int = Field(4, ge=1)
    batch_size: int = Field(8, ge=1, description="utterances per decoding batch (also used for RTF)")


class Eval(Strict):
    normalizer: Literal["whisper_english", "basic", "none"] = "whisper_english"
    speed_repeats: int = Field(3, ge=1, description="decode the test set this many times for RTF median/spread")
    warmup_batches: int = Field(2, ge=0)
    bootstrap_samples: int = Field(1000, ge=100)


class Logging(Strict):
    """Each toolkit's own training loggers, writing into the run dir (`tensorboard --logdir runs/` shows every
    backend's curves side by side). curve.jsonl is written whatever is set here."""

    tensorboard: bool = Field(True, description="the toolkit's native TensorBoard logger, event files in the run dir")
    wandb: bool = Field(False, description="the toolkit's Weights & Biases logger (needs `wandb login` or WANDB_MODE)")
    mlflow: bool = Field(False, description="the toolkit's MLflow logger, where it has one (NeMo)")
    project: str | None = Field(None, description="W&B / MLflow project or experiment name (default: the spec name)")


class SlurmResources(Strict):
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str = "02:00:00"
    cpus_per_task: int = Field(2, ge=1)
    mem: str | None = Field(None, description="e.g. 16G")
    constraint: str | None = None
    gpus_per_node: int | None = None
    extra: list[str] = Field(default_factory=list, description="extra '#SBATCH' option lines, e.g. '--exclusive'")
    requeue: bool = True
    signal_seconds: int = Field(120, ge=10, description="send SIGUSR1 this long before the time limit")


class Resources(Strict):
    launcher: Literal["local", "slurm"] = Field(
        "local", description="local: here (steps that need resources.devices processes run under torchrun); "
                             "slurm: an sbatch job running the same steps")
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    devices: int = Field(1, ge=1, description="processes (GPUs, or CPU processes with gloo) per node")
    nodes: int = Field(1, ge=1)
    threads: int | None = Field(None, ge=1, description="torch intra-op threads per process")
    slurm: SlurmResources = Field(default_factory=SlurmResources)

    @field_validator("launcher", mode="before")
    @classmethod
    def _no_torchrun_launcher(cls, value: Any) -> Any:
        if value == "torchrun":
            raise ValueError("'torchrun' is not a launcher: the local launcher already runs every step that needs "
                             "resources.devices processes under torchrun (and slurm does inside its job); "
                             "use launcher: local with devices: N")
        return value


class TTSSettings(Strict):
    vocoder: str | None = Field(None, description="path to a vocoder checkpoint/run dir; Griffin-Lim when unset")
    griffin_lim_iters: int = Field(32, ge=1)
    n_mels: int = Field(80, ge=8)
    sample_rate: int = Field(22050, ge=8000)
    multi_speaker: bool = False
    duration_teacher: str | None = Field(
        None, description="ESPnet FastSpeech2 only (model.family fastspeech2 on espnet): the ESPnet Tacotron2 whose "
                          "teacher-forced attention gives each character its duration in frames, as ESPnet's egs2 "
                          "recipes do. An spx espnet tacotron2 run dir (its best checkpoint and "
                          "checkpoints/config.yaml) or an ESPnet Tacotron2 *.pth with config.yaml beside it; it must "
                          "use this job's character tokens and mel settings. Backends with an internal aligner (nemo, "
                          "speechbrain) refuse it")
    judge: str | None = Field(None, description="intelligibility judge: an spx ASR run dir or a faster-whisper "
                                                "model name/path; unset = the bundled whisper tiny.en")


class ClassificationSettings(Strict):
    """task: classification. Every manifest row carries its class in `label`."""
    classes: list[str] | None = Field(None, min_length=2, description="the class labels, in the order of the model's "
                                      "outputs; unset = the sorted labels of the training manifest. Every class needs "
                                      "a training example; a valid/test label outside the list is an error")
    top_k: int = Field(5, ge=1, description="hyps.jsonl keeps the k most probable classes' scores per utterance")

    @field_validator("classes", mode="before")
    @classmethod
    def _no_yaml_booleans(cls, value: Any) -> Any:
        if isinstance(value, list) and any(isinstance(c, bool) for c in value):
            raise ValueError("YAML reads unquoted yes/no/on/off/true/false as booleans, not labels: quote them, "
                             "e.g. classes: ['yes', 'no', 'on', 'off']")
        return value

    @field_validator("classes")
    @classmethod
    def _unique(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            dup = sorted({c for c in value if value.count(c) > 1})
            if dup:
                raise ValueError(f"classes lists {dup} more than once")
            if any(not c.strip() or c != c.strip() or " " in c for c in value):
                raise ValueError("class labels are single words with no spaces (ESPnet's label files split on spaces)")
        return value


class Spec(Strict):
    """One job: data, task, model, tokenizer, training, augmentation, fine-tuning, decoding, resources."""

    spec_version: Literal[1] = 1
    name: str = Field("job", pattern=r"^[A-Za-z0-9_.-]+$", description="job name, used in run-dir names")
    task: Literal[TASK_NAMES] = "asr"  # type: ignore[valid-type]
    model: ModelSpec = Field(default_factory=ConformerCTC)
    features: Features = Field(default_factory=Features)
    tokenizer: Tokenizer = Field(default_factory=Tokenizer)
    data: Data
    training: Training = Field(default_factory=Training)
    augmentation: Augmentation = Field(default_factory=Augmentation)
    init_from: str | None = Field(None, description="native checkpoint of the backend, or a hub model name")
    freeze: list[str] = Field(default_factory=list, description="'encoder', 'feature_extractor' or 'encoder.layers:N'")
    finetune: FineTune = Field(default_factory=FineTune)
    decoding: Decoding = Field(default_factory=Decoding)
    eval: Eval = Field(default_factory=Eval)
    logging: Logging = Field(default_factory=Logging)
    tts: TTSSettings = Field(default_factory=TTSSettings)
    classification: ClassificationSettings = Field(default_factory=ClassificationSettings)
    resources: Resources = Field(default_factory=Resources)
    backends: dict[Literal[BACKEND_NAMES], dict[str, Any]] = Field(  # type: ignore[valid-type]
        default_factory=dict, description="backend-specific settings, passed through untouched"
    )

    @model_validator(mode="after")
    def _check(self) -> "Spec":
        fam = self.model.family
        if self.task == "asr" and fam not in ASR_FAMILIES:
            raise ValueError(f"model.family {fam!r} is not an ASR family (asr families: {sorted(ASR_FAMILIES)})")
        if self.task == "tts" and fam not in TTS_FAMILIES:
            raise ValueError(f"model.family {fam!r} is not a TTS family (tts families: {sorted(TTS_FAMILIES)})")
        if self.task == "classification" and fam not in CLASSIFICATION_FAMILIES:
            raise ValueError(f"model.family {fam!r} is not a classification family (classification families: "
                             f"{sorted(CLASSIFICATION_FAMILIES)})")
        if fam in CLASSIFICATION_FAMILIES and self.task != "classification":
            raise ValueError(f"model.family {fam!r} is a classification model: set task: classification")
        for item in self.freeze:
            if item not in ("encoder", "feature_extractor") and not item.startswith("encoder.layers:"):
                raise ValueError(f"freeze item {item!r}: use 'encoder', 'feature_extractor' or 'encoder.layers:N'")
        if fam not in PRETRAINED_FAMILIES and not self.init_from:  # nothing pretrained to treat differently
            ft = self.finetune
            for key, is_set in (("finetune.method", ft.method != "full"),
                                ("finetune.freeze_pretrained_steps", ft.freeze_pretrained_steps > 0),
                                ("training.optimizer.pretrained_lr", self.training.optimizer.pretrained_lr is not None),
                                ("finetune.init_include", ft.init_include is not None),
                                ("finetune.init_exclude", bool(ft.init_exclude))):
                if is_set:
                    raise SpecKeyError(key, f"{key} needs a pretrained model, but model.family {fam} trains from "
                                       "scratch here (init_from is not set): set init_from, or drop it")
        rate, rate_key = (self.tts.sample_rate, "tts.sample_rate") if self.task == "tts" else (
            self.features.sample_rate, "features.sample_rate")
        window = int(round(self.features.win_length_ms * rate / 1000))  # the window in samples, as every backend
        if self.features.n_fft is None:
            self.features.n_fft = 1 << (window - 1).bit_length()
        if self.features.n_fft < window:
            raise SpecKeyError("features.n_fft", f"n_fft ({self.features.n_fft}) is shorter than the window ({window} "
                            f"samples: features.win_length_ms {self.features.win_length_ms} at {rate_key} {rate}); "
                            "use an n_fft of at least the window length")
        return self

    @property
    def test_sets(self) -> list[str]:
        return [self.data.test] if isinstance(self.data.test, str) else list(self.data.test)
