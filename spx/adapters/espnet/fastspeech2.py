"""ESPnet FastSpeech2 from teacher durations, as ESPnet's egs2 tts1 recipes train it: an ESPnet Tacotron2 (the
teacher, `tts.duration_teacher`) is run with teacher forcing on the training and validation audio
(`espnet2.bin.tts_inference --use_teacher_forcing true`); the argmax of its attention gives each character (and the
final <sos/eos>) a duration in frames (`durations` files in the Kaldi data dirs); `collect_stats` then extracts
token-averaged pitch (`dio`) and energy (`energy`) with those durations and their global_mvn statistics, and
`espnet2.bin.tts_train` trains `tts: fastspeech2` in the layout of egs2 `conf/tuning/train_fastspeech2.yaml`.

Everything that can be checked without running the teacher is checked at render time: the teacher is an ESPnet
Tacotron2 with reduction factor 1 and this job's character tokens and mel settings (otherwise its durations would
not count this job's tokens or frames). `spx export` runs steps/tts_export.py (ONNX/TorchScript of the acoustic model,
Griffin-Lim in the engine). Nothing here imports torch or espnet2.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from spx.adapters.common.spec_helpers import deep_merge, speaker_table
from spx.adapters.espnet import helpers
from spx.errors import SpxError
from spx.rundir import RunDir, Step
from spx.spec import Spec
from spx.yamlio import atomic_write_text, dump_yaml, read_json

TASK = "tts"
NAME = "fastspeech2"
PRECISIONS = ("fp32",)  # TTS trains in fp32 in spx, on any device
CPU_PRECISIONS = ("fp32",)
FREEZE = False  # every weight trains; init_from alone fine-tunes
INIT_FROM = helpers.TTS_INIT_FROM
INFERENCE = "spx.adapters.espnet.steps.tts_synth"  # load_synthesizer (spx serve)
EXPORT = "spx.adapters.espnet.steps.tts_export"
TEACHER_ENTRY = "espnet2.bin.tts_inference"
TEACHER_DIR = "native/teacher"  # tts_inference --output_dir per split: durations/durations, norm/, att_ws/, ...
# the teacher's config.yaml with its feature-statistics path made absolute (ESPnet writes it relative to where
# the teacher was trained, and its normalizer reads that file when the model is built)
TEACHER_CONFIG = f"{TEACHER_DIR}/teacher_config.yaml"
TEACHER_FAMILY = "tacotron2"
# ESPnet's tts.sh defaults for dio (f0min/f0max), used by its FastSpeech2 recipes
F0_MIN, F0_MAX = 80, 400
# the trained FastSpeech2 is the best by valid loss, as for Tacotron2
SYNTH_MODEL = "checkpoints/valid.loss.best.pth"
LOSS_KEY = "loss"
HINT_NO_TEACHER = ("train `recipes/tacotron2.yaml` on espnet first (spx run --backend espnet recipes/tacotron2.yaml "
                   "--run-dir runs/tacotron2-espnet) and set tts.duration_teacher to its run dir")


def resolve_duration_teacher(teacher: str) -> dict[str, str]:
    """tts.duration_teacher -> {'model': *.pth, 'config': config.yaml}: an spx espnet tacotron2 run dir (the best
    checkpoint its train_summary.json records, its checkpoints/config.yaml), an ESPnet output dir, or a *.pth
    with config.yaml beside it."""
    p = Path(teacher).expanduser()
    config: Path | None = None
    if p.is_dir():
        summary = read_json(p / "train_summary.json") or {}
        recorded = summary.get("best_checkpoint") or summary.get("exported_model")
        if recorded:
            p, config = Path(recorded), Path(summary.get("native_config") or Path(recorded).parent / "config.yaml")
        else:
            p = next((c for c in (p / "checkpoints/valid.loss.best.pth", p / "valid.loss.best.pth") if c.exists()),
                     p / "checkpoints/valid.loss.best.pth")
    if p.suffix != ".pth" or not p.is_file():
        raise SpxError(f"tts.duration_teacher {teacher!r}: no ESPnet Tacotron2 model (*.pth) found there",
                       where="tts.duration_teacher",
                       hint="give a finished spx espnet tacotron2 run dir (its checkpoints/valid.loss.best.pth) or "
                            f"an ESPnet *.pth with config.yaml beside it; or {HINT_NO_TEACHER}")
    config = config if config is not None else p.parent / "config.yaml"
    if not config.is_file():
        raise SpxError(f"tts.duration_teacher {teacher!r}: no config.yaml beside {p}", where="tts.duration_teacher",
                       hint="ESPnet writes config.yaml into the training output dir; keep it beside the model")
    return {"model": str(p.resolve()), "config": str(config.resolve())}


def load_teacher_config(teacher: dict[str, str]) -> dict[str, Any]:
    try:
        cfg = yaml.safe_load(Path(teacher["config"]).read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SpxError(f"the duration teacher's config is not valid YAML: {exc}", where=teacher["config"]) from None
    if not isinstance(cfg, dict):
        raise SpxError("the duration teacher's config is not an ESPnet training config", where=teacher["config"])
    return cfg


def teacher_stats_file(teacher: dict[str, str], cfg: dict[str, Any]) -> str | None:
    """The teacher's feature statistics (normalize_conf.stats_file), as an absolute path. ESPnet records it relative
    to the folder the teacher was trained from: an spx run dir (= the config's grandparent) or an egs dir."""
    if cfg.get("normalize") is None:
        return None
    stats = (cfg.get("normalize_conf") or {}).get("stats_file")
    if not stats:
        return None
    config = Path(teacher["config"])
    for base in (Path("/"), config.parent.parent, config.parent, config.parent.parent.parent):
        if (base / stats).is_file():
            return str((base / stats).resolve())
    raise SpxError(f"the duration teacher normalizes its features with {stats!r}, which is not found beside its "
                   f"training folder", where=teacher["config"],
                   hint="keep the teacher's run dir whole (native/tts_stats with checkpoints/), or fix "
                        "normalize_conf.stats_file in its config.yaml")


def check_teacher_matches(spec: Spec, teacher: dict[str, str], cfg: dict[str, Any]) -> None:
    """The teacher's durations count this job's tokens and frames only if it reads the same characters and the same
    mel frames: the same token list, char tokens without cleaner/g2p, fbank with the same settings, reduction 1."""
    where, teacher_name = "tts.duration_teacher", teacher["config"]
    if cfg.get("tts") != TEACHER_FAMILY:
        raise SpxError(f"the duration teacher {teacher_name} is an ESPnet {cfg.get('tts')!r} model; spx takes "
                       "durations from an ESPnet Tacotron2's attention", where=where, hint=HINT_NO_TEACHER)
    r = (cfg.get("tts_conf") or {}).get("reduction_factor", 1)
    if r != 1:
        raise SpxError(f"the duration teacher has reduction_factor {r}: its attention spans groups of {r} frames, "
                       "FastSpeech2 here needs durations in single frames", where=where,
                       hint="train the teacher with model.reduction_factor: 1")
    text = {k: cfg.get(k) for k in ("token_type", "cleaner", "g2p")}
    if text != {"token_type": "char", "cleaner": None, "g2p": None} or cfg.get("token_list") != helpers.token_list():
        raise SpxError(f"the duration teacher reads other tokens than this job ({text}, "
                       f"{len(cfg.get('token_list') or [])} tokens; this job: spx's {len(helpers.token_list())} characters, "
                       "no cleaner, no g2p): its durations would not count this job's tokens", where=where,
                       hint="use a teacher trained by spx on espnet (recipes/tacotron2.yaml)")
    ours, theirs = helpers.fbank_conf(spec), cfg.get("feats_extract_conf") or {}
    diff = [f"{k}: this job {v!r}, teacher {theirs.get(k)!r}" for k, v in ours.items() if theirs.get(k) != v]
    if cfg.get("feats_extract") != "fbank" or diff:
        raise SpxError(f"the duration teacher's mel frames differ from this job's ({cfg.get('feats_extract')!r}; "
                       f"{'; '.join(diff) or 'not fbank'}): its durations would not sum to this job's frame counts",
                       where=where, hint="give both jobs the same tts.sample_rate, tts.n_mels and features: settings")
    teacher_spks = (cfg.get("tts_conf") or {}).get("spks")
    if bool(teacher_spks) != spec.tts.multi_speaker:
        raise SpxError(f"tts.multi_speaker is {spec.tts.multi_speaker}, but the duration teacher "
                       f"{'has ' + str(teacher_spks) + ' speaker ids' if teacher_spks else 'has no speaker ids'}",
                       where=where, hint="use a teacher trained with the same tts.multi_speaker setting")


def check(spec: Spec) -> None:
    """Raise SpxError before anything runs when the spec cannot become an ESPnet FastSpeech2 (the Spec itself
    checks what holds on every backend: heads dividing d_model, n_fft covering the window)."""
    helpers.check_tts(spec)
    if spec.tts.duration_teacher is None:
        raise SpxError("ESPnet FastSpeech2 trains on durations from a teacher model (ESPnet has no internal aligner "
                       "for it), and tts.duration_teacher is not set", where="tts.duration_teacher",
                       hint=HINT_NO_TEACHER)
    teacher = resolve_duration_teacher(spec.tts.duration_teacher)
    cfg = load_teacher_config(teacher)
    check_teacher_matches(spec, teacher, cfg)
    teacher_stats_file(teacher, cfg)


def check_teacher_speakers(spec: Spec, speakers: dict[str, int]) -> None:
    """A multi-speaker teacher must know as many speaker ids as this job's training manifest has."""
    teacher = resolve_duration_teacher(spec.tts.duration_teacher)
    spks = (load_teacher_config(teacher).get("tts_conf") or {}).get("spks")
    if speakers and spks != len(speakers):
        raise SpxError(f"the duration teacher has {spks} speaker ids, this job's training manifest {len(speakers)}",
                       where="tts.duration_teacher", hint="train the teacher on the same speakers")


def teacher_config(spec: Spec) -> tuple[dict[str, str], dict[str, Any]]:
    """The resolved teacher and its config as this run loads it (the statistics path made absolute)."""
    teacher = resolve_duration_teacher(spec.tts.duration_teacher)
    cfg = load_teacher_config(teacher)
    stats = teacher_stats_file(teacher, cfg)
    if stats:
        cfg["normalize_conf"] = {**cfg["normalize_conf"], "stats_file": stats}
    return teacher, cfg


def fastspeech2_tts_conf(spec: Spec, speakers: dict[str, int]) -> dict[str, Any]:
    """ESPnet `tts_conf` for `tts: fastspeech2`. The spec's sizes map as on NeMo FastPitch and SpeechBrain
    FastSpeech2: FFN 4 x d_model (1-D conv, kernel 3), duration/pitch/energy predictors 2 convs of d_model, kernel 3,
    dropout 0.1; a 5-layer postnet of d_model (kernel 5, dropout 0.2) as SpeechBrain's."""
    m = spec.model
    conf: dict[str, Any] = {
        "adim": m.d_model, "aheads": m.heads,
        "elayers": m.encoder_layers, "eunits": 4 * m.d_model,
        "dlayers": m.decoder_layers, "dunits": 4 * m.d_model,
        "positionwise_layer_type": "conv1d", "positionwise_conv_kernel_size": 3,
        "duration_predictor_layers": 2, "duration_predictor_chans": m.d_model, "duration_predictor_kernel_size": 3,
        "duration_predictor_dropout_rate": 0.1,
        "postnet_layers": 5, "postnet_chans": m.d_model, "postnet_filts": 5, "postnet_dropout_rate": 0.2,
        "use_masking": True, "use_scaled_pos_enc": True,
        "encoder_normalize_before": True, "decoder_normalize_before": True,
        "reduction_factor": 1, "init_type": "xavier_uniform", "init_enc_alpha": 1.0, "init_dec_alpha": 1.0,
        "transformer_enc_dropout_rate": 0.1, "transformer_enc_positional_dropout_rate": 0.1,
        "transformer_enc_attn_dropout_rate": 0.1, "transformer_dec_dropout_rate": 0.1,
        "transformer_dec_positional_dropout_rate": 0.1, "transformer_dec_attn_dropout_rate": 0.1,
        "pitch_predictor_layers": 2, "pitch_predictor_chans": m.d_model, "pitch_predictor_kernel_size": 3,
        "pitch_predictor_dropout": 0.1, "pitch_embed_kernel_size": 3, "pitch_embed_dropout": 0.0,
        # ESPnet's recipe: the pitch predictor does not push its gradient into the encoder, the energy one does
        "stop_gradient_from_pitch_predictor": True,
        "energy_predictor_layers": 2, "energy_predictor_chans": m.d_model, "energy_predictor_kernel_size": 3,
        "energy_predictor_dropout": 0.1, "energy_embed_kernel_size": 3, "energy_embed_dropout": 0.0,
        "stop_gradient_from_energy_predictor": False,
    }
    if speakers:
        conf.update(spks=len(speakers), spk_embed_integration_type="add")
    return conf


def fastspeech2_config(spec: Spec, n_train: int, speakers: dict[str, int]) -> tuple[dict[str, Any], dict[str, Any]]:
    """ESPnet's tts training config for FastSpeech2 (pitch and energy extracted and averaged per token with the
    teacher's durations, both global_mvn-normalized), and what spx derived for the record."""
    mel = helpers.mel_settings(spec)
    training, derived = helpers.training_settings(spec, n_train)
    cfg: dict[str, Any] = {
        "tts": "fastspeech2", "tts_conf": fastspeech2_tts_conf(spec, speakers),
        "feats_extract": "fbank", "feats_extract_conf": helpers.fbank_conf(spec),
        "pitch_extract": "dio",
        "pitch_extract_conf": {"fs": mel["fs"], "n_fft": mel["n_fft"], "hop_length": mel["hop_length"],
                               "f0min": F0_MIN, "f0max": F0_MAX, "reduction_factor": 1,
                               "use_token_averaged_f0": True},
        "pitch_normalize": "global_mvn",
        "energy_extract": "energy",
        "energy_extract_conf": {"fs": mel["fs"], "n_fft": mel["n_fft"], "hop_length": mel["hop_length"],
                                "win_length": mel["win_length"], "reduction_factor": 1,
                                "use_token_averaged_energy": True},
        "energy_normalize": "global_mvn",
        "token_type": "char", "cleaner": None, "g2p": None,
        **training,
    }
    return deep_merge(cfg, spec.backends.get("espnet", {})), derived


def teacher_commands(spec: Spec, teacher_model: str, speakers: dict[str, int]) -> dict[str, list[str]]:
    """tts_inference with teacher forcing on the train and valid data dirs (ESPnet's egs2 teacher step); spx adds
    --ngpu at run time. Each writes <output_dir>/durations/durations."""
    cmds = {}
    for split in ("train", "valid"):
        argv = [TEACHER_ENTRY, "--data_path_and_name_and_type", f"{helpers.TTS_DATA}/{split}/text,text,text",
                "--data_path_and_name_and_type", f"{helpers.TTS_DATA}/{split}/wav.scp,speech,sound"]
        if speakers:
            argv += ["--data_path_and_name_and_type", f"{helpers.TTS_DATA}/{split}/utt2sid,sids,text_int"]
        argv += ["--train_config", TEACHER_CONFIG, "--model_file", teacher_model, "--use_teacher_forcing", "true",
                 "--seed", str(spec.training.seed), "--output_dir", f"{TEACHER_DIR}/{split}"]
        cmds[f"teacher_durations_{split}"] = argv
    return cmds


def data_options(split: str) -> list[str]:
    """The teacher's durations, read by collect_stats and training (ESPnet's `durations,durations,text_int`)."""
    return [f"--{split}_data_path_and_name_and_type", f"{helpers.TTS_DATA}/{split}/durations,durations,text_int"]


def stats_options() -> list[str]:
    """collect_stats: raw pitch/energy (statistics are computed from them) and written per utterance, so training
    reads them instead of re-running dio every epoch (ESPnet's FastSpeech2 recipes: --write_collected_feats true)."""
    return ["--pitch_normalize", "none", "--energy_normalize", "none", "--write_collected_feats", "true"]


def train_options() -> list[str]:
    opts = []
    for split in ("train", "valid"):
        for feat in ("pitch", "energy"):
            opts += [f"--{split}_data_path_and_name_and_type",
                     f"{helpers.TTS_STATS}/{split}/collect_feats/{feat}.scp,{feat},npy"]
    return opts + ["--pitch_normalize_conf", f"stats_file={helpers.TTS_STATS}/train/pitch_stats.npz",
                   "--energy_normalize_conf", f"stats_file={helpers.TTS_STATS}/train/energy_stats.npz"]


def render(spec: Spec, run_dir: RunDir) -> list[Step]:
    speakers = speaker_table(spec, f"ESPnet {spec.model.family}")
    vocoder = helpers.resolve_vocoder(spec)
    n_train = helpers.train_utterance_count(spec)
    check_teacher_speakers(spec, speakers)
    cfg, derived = fastspeech2_config(spec, n_train, speakers)
    teacher, teacher_cfg = teacher_config(spec)
    cmds = helpers.tts_commands(spec, speakers, data_options=data_options, stats_options=stats_options(),
                                train_options=train_options(),
                                first=teacher_commands(spec, teacher["model"], speakers))
    (run_dir / TEACHER_DIR).mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / TEACHER_CONFIG, f"# The duration teacher's {teacher['config']}, written by spx "
                      "with its statistics path made absolute\n" + dump_yaml(teacher_cfg))
    return helpers.write_tts_run(spec, run_dir, cfg=cfg, derived=derived, cmds=cmds, speakers=speakers,
                                 vocoder=vocoder, synth_model=SYNTH_MODEL, loss_key=LOSS_KEY,
                                 vocoder_label=helpers.vocoder_name(spec, vocoder), duration_teacher=teacher)


def collect_extras(run_dir: RunDir) -> dict[str, Any]:
    return {}
