"""SpeechBrain backend: the spec becomes a SpeechBrain-native recipe (hyperpyyaml + a Brain subclass).

render writes run_dir/native/:
  hparams.yaml     the generated hyperpyyaml (modules, Fbank, conv front end + Conformer, CTC head, optimizer,
                   scheduler, SpecAugment, Checkpointer, epoch counter); loaded only by the child processes
  overrides.yaml   `backends.speechbrain` settings, applied untouched as hyperpyyaml overrides (like a recipe's CLI)
  train.csv, valid.csv, <test>.csv   SpeechBrain CSVs (ID,duration,wav,...,wrd) from the run's manifests;
                   train/valid `wrd` hold the cleaned training targets
  tokens.txt       the character vocabulary (char tokenizer)
Steps: train (torchrun: one process per device, SpeechBrain DDP) and decode. Nothing here imports torch.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from spx.adapters.base import BackendAdapter  # CLS-WIRING
from spx.adapters.base import collect_normalized, unsupported
from spx.adapters.common.spec_helpers import check_cpu_precision, check_fine_tuning
from spx.errors import SpxError
from spx.rundir import RunDir, Step
from spx.spec import Spec

MODULE = "spx.adapters.speechbrain"
EXPORT_INFO = "spx_export.json"


def _yaml(value: Any) -> str:
    """A YAML flow value (JSON is valid YAML); None -> null."""
    if isinstance(value, float) and math.isinf(value):
        return ".inf"
    if isinstance(value, float):
        text = repr(value)
        return text.replace("e", ".0e") if "e" in text and "." not in text else text  # YAML 1.1-safe float
    return json.dumps(value)


def resolve_init_from(init_from: str) -> Path:
    """The local SpeechBrain model spx fine-tunes from: a model exported by spx (run_dir/checkpoints/export:
    hparams.yaml, one <module>.ckpt per module, the tokenizer and spx_export.json) or an spx run dir
    (its train_summary.json names the export)."""
    p = Path(init_from).expanduser()
    if not p.exists():
        raise SpxError(f"init_from {init_from!r} does not exist",
                       hint="give a SpeechBrain model exported by spx (run_dir/checkpoints/export) or its run dir")
    p = p.resolve()
    if (p / "train_summary.json").exists():
        exported = json.loads((p / "train_summary.json").read_text()).get("exported_model")
        if not exported:
            raise SpxError(f"init_from {p}: its train_summary.json names no exported_model", hint="train it to the end first")
        p = Path(exported)
    if not (p / EXPORT_INFO).exists():
        raise SpxError(f"init_from {p} is not a SpeechBrain model exported by spx (no {EXPORT_INFO})",
                       hint="point init_from at run_dir/checkpoints/export of a finished speechbrain run, or at the run dir")
    return p


def export_info(path: Path) -> dict[str, Any]:
    return json.loads((path / EXPORT_INFO).read_text())


def frontend_blocks(subsampling: int) -> int:
    return {4: 2, 8: 3}[subsampling]


def frontend_out_dim(n_mels: int, blocks: int, channels: int) -> int:
    """Feature size after the conv front end: each stride-2 'same' conv halves (ceil) the mel axis."""
    f = n_mels
    for _ in range(blocks):
        f = math.ceil(f / 2)
    return f * channels


FRONTEND_CHANNELS = [64, 32, 32]


_CLS = BackendAdapter(name="speechbrain", families={"classification": {"kws_classifier": "kws_classifier"}})  # CLS-WIRING


class SpeechBrainAdapter:
    name = "speechbrain"
    tasks: dict[str, set[str]] = {"asr": {"conformer_ctc"}, "tts": {"tacotron2", "fastspeech2", "hifigan"},  # CLS-WIRING
                                  "classification": {"kws_classifier"}}  # CLS-WIRING

    # ---------------------------------------------------------------- contract
    def supports(self, spec: Spec) -> None:
        if spec.task == "classification":  # CLS-WIRING
            return _CLS.supports(spec)  # CLS-WIRING
        why = unsupported(spec, self.name, self.tasks)
        if why:
            raise SpxError(why, hint="choose another backend or model.family (see `spx spec schema`)")
        if spec.task == "tts":
            from spx.adapters.speechbrain.tts import check_tts

            check_tts(spec)
            return
        check_cpu_precision(spec, "speechbrain", ("fp32", "bf16"))
        if spec.augmentation.noise is not None:
            raise SpxError("augmentation.noise is not rendered by the speechbrain backend in spx yet",
                           hint="remove augmentation.noise for this backend")
        if spec.augmentation.speed_perturb:
            bad = [s for s in spec.augmentation.speed_perturb if not 0.5 <= s <= 2.0]
            if bad:
                raise SpxError(f"augmentation.speed_perturb factors {bad} are out of range",
                               hint="use factors like [0.9, 1.0, 1.1]")
        check_fine_tuning(spec, "a trained SpeechBrain model (an spx speechbrain run dir or checkpoint dir)")
        if spec.init_from:
            resolve_init_from(spec.init_from)
        bad_keys = [k for k in spec.backends.get("speechbrain", {}) if not isinstance(k, str)]
        if bad_keys:
            raise SpxError(f"backends.speechbrain keys must be strings, got {bad_keys}", hint="use hparams key names")

    def render(self, spec: Spec, run_dir: RunDir) -> list[Step]:
        if spec.task == "classification":  # CLS-WIRING
            return _CLS.render(spec, run_dir)  # CLS-WIRING
        if spec.task == "tts":
            from spx.adapters.speechbrain.tts import render_tts

            return render_tts(spec, run_dir)
        from spx.adapters.common.child import char_vocabulary, clean_transcript
        from spx.manifests import read_manifest
        from spx.manifests.exporters import export_speechbrain_csv

        native = run_dir / "native"
        native.mkdir(parents=True, exist_ok=True)
        (run_dir / "checkpoints").mkdir(exist_ok=True)
        lower = spec.tokenizer.lowercase

        def cleaned(path: str) -> list:
            out = []
            for u in read_manifest(path):
                text = clean_transcript(u.text or "", lower)
                d = spec.data
                if d.max_duration is not None and u.duration > d.max_duration:
                    continue
                if d.min_duration is not None and u.duration < d.min_duration:
                    continue
                if not text:
                    continue
                u.text = text
                out.append(u)
            return out

        train = cleaned(spec.data.train)
        valid = cleaned(spec.data.valid)
        if not train:
            raise SpxError(f"no usable training utterances in {spec.data.train} (all empty or filtered by duration)",
                           hint="check data.train and data.min_duration/max_duration")
        if not valid:
            raise SpxError(f"no usable validation utterances in {spec.data.valid}", hint="check data.valid")
        export_speechbrain_csv(train, native / "train.csv")
        export_speechbrain_csv(valid, native / "valid.csv")
        test_csvs = []
        for t in spec.test_sets:
            dst = native / f"{Path(t).stem}.csv"
            export_speechbrain_csv(read_manifest(t), dst)
            test_csvs.append(str(dst))

        init = None
        load_head = False
        tokens: list[str] | None = None
        if spec.init_from:
            init = resolve_init_from(spec.init_from)
            info = export_info(init)
        if spec.tokenizer.type == "char":
            tokens = char_vocabulary([u.text for u in train])
            if init is not None and info.get("tokenizer") == "char":
                # keep the pretrained head when it covers the new text (same vocabulary, same indices)
                old = info["tokens"]
                if set(tokens) <= set(old):
                    tokens, load_head = list(old), True
            (native / "tokens.txt").write_text("".join(json.dumps(t) + "\n" for t in tokens), encoding="utf-8")
            output_neurons = len(tokens) + 1  # + CTC blank at index 0
        else:
            output_neurons = spec.tokenizer.vocab_size  # SentencePiece <unk> (id 0) is the CTC blank, as in SB recipes
            if init is not None and info.get("tokenizer") == "bpe" and info.get("vocab_size") == spec.tokenizer.vocab_size:
                load_head = True

        devices = spec.resources.devices * spec.resources.nodes
        hp = self._hparams_text(spec, run_dir, test_csvs, output_neurons, init, load_head, info if init else None)
        (native / "hparams.yaml").write_text(hp, encoding="utf-8")
        overrides = spec.backends.get("speechbrain", {})
        import yaml

        (native / "overrides.yaml").write_text(
            "# backends.speechbrain from the spec: applied untouched as hyperpyyaml overrides of hparams.yaml\n"
            + (yaml.safe_dump(overrides, sort_keys=False) if overrides else "{}\n"), encoding="utf-8")
        py = sys.executable
        env = {}
        if devices > 1 and spec.resources.threads is None:
            env["OMP_NUM_THREADS"] = "1"
        return [
            Step("train", [py, "-m", f"{MODULE}.train", str(run_dir)], launch="torchrun", log="train.log", env=env),
            Step("decode", [py, "-m", f"{MODULE}.decode", str(run_dir)], timed=True),
        ]

    def collect(self, run_dir: RunDir) -> dict[str, Any]:
        if run_dir.spec.task == "classification":  # CLS-WIRING
            return _CLS.collect(run_dir)  # CLS-WIRING
        if (run_dir / "native" / "tts_info.json").exists():
            from spx.adapters.speechbrain.tts import collect_tts

            return collect_tts(run_dir)
        out = collect_normalized(run_dir)
        out["native_config"] = str(run_dir / "native" / "hparams.yaml")
        return out

    # ---------------------------------------------------------------- the native recipe
    def _hparams_text(self, spec: Spec, rd: RunDir, test_csvs: list[str], output_neurons: int,
                      init: Path | None, load_head: bool, info: dict | None) -> str:
        enc = spec.model.encoder
        feat = spec.features
        tr = spec.training
        opt = tr.optimizer
        sch = tr.scheduler
        aug = spec.augmentation
        blocks = frontend_blocks(enc.subsampling)
        channels = FRONTEND_CHANNELS[:blocks]
        devices = spec.resources.devices * spec.resources.nodes
        accel = spec.resources.accelerator
        backend = "gloo" if accel == "cpu" else "nccl"  # "auto": the child switches to gloo when no CUDA is seen
        early = tr.early_stopping
        L: list[str] = []
        a = L.append
        a("# SpeechBrain recipe generated by spx from ../spec.yaml (hyperpyyaml). Edit the spec, not this file.")
        a("# Run by: python -m spx.adapters.speechbrain.train RUN_DIR  (torchrun for several processes);")
        a("# ../native/overrides.yaml (backends.speechbrain) is applied on top as hyperpyyaml overrides.")
        a("")
        a(f"seed: {tr.seed}")
        a(f"output_folder: {_yaml(str(rd / 'checkpoints'))}")
        a("save_folder: !ref <output_folder>")
        a(f"train_log: {_yaml(str(rd / 'native' / 'train_log.txt'))}")
        a("")
        a("# ---- data (SpeechBrain CSVs exported from the spx manifests)")
        a(f"train_csv: {_yaml(str(rd / 'native' / 'train.csv'))}")
        a(f"valid_csv: {_yaml(str(rd / 'native' / 'valid.csv'))}")
        a(f"test_csvs: {_yaml(test_csvs)}")
        a("sorting: random")
        a(f"sample_rate: {feat.sample_rate}")
        a(f"num_workers: {tr.num_workers}")
        a(f"batch_size: {_yaml(tr.batch_size)}")
        a(f"dynamic_batching: {_yaml(tr.batch_seconds is not None)}")
        a(f"max_batch_length_seconds: {_yaml(tr.batch_seconds)}  # DynamicBatchSampler budget per device")
        a("num_buckets: 20")
        a(f"valid_batch_size: {max(1, spec.decoding.batch_size)}")
        a("")
        a("# ---- tokenizer")
        a(f"tokenizer_type: {spec.tokenizer.type}")
        a(f"tokenizer_dir: {_yaml(str(rd / 'native' / 'tokenizer'))}")
        a(f"tokens_file: {_yaml(str(rd / 'native' / 'tokens.txt'))}")
        a(f"vocab_size: {_yaml(spec.tokenizer.vocab_size)}")
        a(f"output_neurons: {output_neurons}")
        a("blank_index: 0")
        a("")
        a("# ---- training (Brain run options are read from these keys)")
        a(f"number_of_epochs: {_yaml(tr.epochs if tr.epochs is not None else 1000000)}")
        a(f"optimizer_step_limit: {_yaml(tr.max_steps)}")
        a(f"grad_accumulation_factor: {tr.grad_accumulation}")
        a(f"max_grad_norm: {_yaml(tr.grad_clip if tr.grad_clip is not None else float('inf'))}")
        a(f"precision: {tr.precision}")
        a(f"eval_precision: {tr.precision}")
        a("noprogressbar: True")
        a(f"distributed_backend: {backend}")
        a(f"world_size: {devices}")
        a(f"lr: {_yaml(opt.lr)}")
        a(f"weight_decay: {_yaml(opt.weight_decay)}")
        a(f"betas: {_yaml(list(opt.betas))}")
        a(f"scheduler: {sch.name}")
        a(f"warmup_steps: {sch.warmup_steps}")
        a(f"min_lr: {_yaml(sch.min_lr)}")
        a(f"keep_checkpoints: {tr.keep_checkpoints}")
        a(f"early_stopping_monitor: {_yaml(early.monitor if early else None)}")
        a(f"early_stopping_patience: {_yaml(early.patience if early else None)}")
        a("")
        a("# ---- decoding")
        a(f"decoding: {spec.decoding.strategy}")
        a(f"beam_size: {spec.decoding.beam_size}")
        a(f"test_batch_size: {spec.decoding.batch_size}")
        a("")
        a("# ---- pretrained init (speechbrain Pretrainer) and freezing")
        a(f"init_from: {_yaml(str(init) if init else None)}")
        a(f"init_load_head: {_yaml(load_head)}")
        a(f"freeze: {_yaml(list(spec.freeze))}")
        a("")
        a("# ---- features")
        a(f"n_mels: {feat.n_mels}")
        a("compute_features: !new:speechbrain.lobes.features.Fbank")
        a("    sample_rate: !ref <sample_rate>")
        a(f"    n_fft: {feat.n_fft}")
        a("    n_mels: !ref <n_mels>")
        a(f"    win_length: {_yaml(feat.win_length_ms)}")
        a(f"    hop_length: {_yaml(feat.hop_length_ms)}")
        a("normalize: !new:speechbrain.processing.features.InputNormalization")
        a("    norm_type: global")
        a(f"    update_until_epoch: {0 if init else 4}")
        a("")
        a("# ---- augmentation")
        if aug.speed_perturb:
            speeds = [int(round(s * 100)) for s in aug.speed_perturb]
            a("speed_perturb: !new:speechbrain.augment.time_domain.SpeedPerturb")
            a("    orig_freq: !ref <sample_rate>")
            a(f"    speeds: {_yaml(speeds)}")
            a("wav_augment: !new:speechbrain.augment.augmenter.Augmenter")
            a("    min_augmentations: 1")
            a("    max_augmentations: 1")
            a("    augment_prob: 1.0")
            a("    augmentations: [!ref <speed_perturb>]")
        else:
            a("wav_augment: null")
        sa = aug.spec_augment
        if sa and (sa.time_masks or sa.freq_masks):
            augs = []
            if sa.time_masks:
                a("time_drop: !new:speechbrain.augment.freq_domain.SpectrogramDrop")
                a("    drop_length_low: 0")
                a(f"    drop_length_high: {sa.time_width}")
                a(f"    drop_count_low: {sa.time_masks}")
                a(f"    drop_count_high: {sa.time_masks}")
                a("    replace: zeros")
                a("    dim: 1")
                augs.append("!ref <time_drop>")
            if sa.freq_masks:
                a("freq_drop: !new:speechbrain.augment.freq_domain.SpectrogramDrop")
                a("    drop_length_low: 0")
                a(f"    drop_length_high: {sa.freq_width}")
                a(f"    drop_count_low: {sa.freq_masks}")
                a(f"    drop_count_high: {sa.freq_masks}")
                a("    replace: zeros")
                a("    dim: 2")
                augs.append("!ref <freq_drop>")
            a("fea_augment: !new:speechbrain.augment.augmenter.Augmenter")
            a(f"    min_augmentations: {len(augs)}")
            a(f"    max_augmentations: {len(augs)}")
            a("    augment_prob: 1.0")
            a(f"    augmentations: [{', '.join(augs)}]")
        else:
            a("fea_augment: null")
        a("")
        a("# ---- model: conv front end (subsampling x%d) -> Conformer encoder -> linear CTC head" % enc.subsampling)
        a(f"d_model: {enc.d_model}")
        a("CNN: !new:speechbrain.lobes.models.convolution.ConvolutionFrontEnd")
        a("    input_shape: [8, 10, !ref <n_mels>]")
        a(f"    num_blocks: {blocks}")
        a("    num_layers_per_block: 1")
        a(f"    out_channels: {_yaml(channels)}")
        a(f"    kernel_sizes: {_yaml([3] * blocks)}")
        a(f"    strides: {_yaml([2] * blocks)}")
        a(f"    residuals: {_yaml([False] * blocks)}")
        # no dropout inside the conv blocks: NeMo and ESPnet drop out only after the front end (SpeechBrain's
        # custom_src_module does the same), and dropout on these [B, T, F, C] maps cost ~20% of a CPU step
        a("    dropout: 0.0")
        a("Transformer: !new:speechbrain.lobes.models.transformer.TransformerASR.TransformerASR")
        a(f"    input_size: {frontend_out_dim(feat.n_mels, blocks, channels[-1])}")
        a("    tgt_vocab: !ref <output_neurons>")
        a("    d_model: !ref <d_model>")
        a(f"    nhead: {enc.heads}")
        a(f"    num_encoder_layers: {enc.layers}")
        a("    num_decoder_layers: 0")
        a(f"    d_ffn: {enc.ff_expansion * enc.d_model}")
        a(f"    dropout: {_yaml(enc.dropout)}")
        a(f"    kernel_size: {enc.conv_kernel}")
        a("    encoder_module: conformer")
        a("    attention_type: RelPosMHAXL")
        a("    normalize_before: True")
        a("    causal: False")
        a("    conformer_activation: !name:speechbrain.nnet.activations.Swish")
        a("enc: !new:speechbrain.lobes.models.transformer.TransformerASR.EncoderWrapper  # forward() = encode()")
        a("    transformer: !ref <Transformer>")
        a("ctc_lin: !new:speechbrain.nnet.linear.Linear")
        a("    input_size: !ref <d_model>")
        a("    n_neurons: !ref <output_neurons>")
        a("log_softmax: !new:speechbrain.nnet.activations.Softmax")
        a("    apply_log: True")
        a("ctc_cost: !name:speechbrain.nnet.losses.ctc_loss")
        a("    blank_index: !ref <blank_index>")
        a("modules:")
        for m in ("CNN", "enc", "ctc_lin", "normalize"):
            a(f"    {m}: !ref <{m}>")
        a("model: !new:torch.nn.ModuleList")
        a("    - [!ref <CNN>, !ref <Transformer>, !ref <ctc_lin>]")
        a("")
        a("# ---- optimizer and scheduler (stepped once per optimizer update)")
        opt_cls = {"adam": "torch.optim.Adam", "adamw": "torch.optim.AdamW", "sgd": "torch.optim.SGD"}[opt.name]
        a(f"opt_class: !name:{opt_cls}")
        a("    lr: !ref <lr>")
        a("    weight_decay: !ref <weight_decay>")
        if opt.name in ("adam", "adamw"):
            a("    betas: !ref <betas>")
        else:
            a("    momentum: 0.9")
        if sch.name == "noam":
            a("lr_annealing: !name:speechbrain.nnet.schedulers.NoamScheduler")
            a("    lr_initial: !ref <lr>")
            a(f"    n_warmup_steps: {max(1, sch.warmup_steps)}")
        elif sch.name == "linear":
            a("lr_annealing: !name:speechbrain.nnet.schedulers.LinearWarmupScheduler")
            a("    initial_value: !ref <lr>")
            a("    num_warmup_steps: !ref <warmup_steps>")
        else:
            a(f"lr_annealing: !name:{MODULE}.schedulers.WarmupAnnealing")
            a(f"    shape: {sch.name}")
            a("    lr: !ref <lr>")
            a("    warmup_steps: !ref <warmup_steps>")
            a("    min_lr: !ref <min_lr>")
        a("")
        a("# ---- checkpointing (resume with recover_if_possible) and the epoch loop")
        if early:
            a("epoch_counter: !new:speechbrain.utils.epoch_loop.EpochCounterWithStopper")
            a("    limit: !ref <number_of_epochs>")
            a("    limit_to_stop: !ref <early_stopping_patience>")
            a("    limit_warmup: 0")
            a("    direction: min")
        else:
            a("epoch_counter: !new:speechbrain.utils.epoch_loop.EpochCounter")
            a("    limit: !ref <number_of_epochs>")
        a("checkpointer: !new:speechbrain.utils.checkpoints.Checkpointer")
        a("    checkpoints_dir: !ref <save_folder>")
        a("    recoverables:")
        a("        CNN: !ref <CNN>")
        a("        Transformer: !ref <Transformer>")
        a("        ctc_lin: !ref <ctc_lin>")
        a("        normalizer: !ref <normalize>")
        a("        counter: !ref <epoch_counter>")
        a("")
        return "\n".join(L) + "\n"


ADAPTER = SpeechBrainAdapter()
