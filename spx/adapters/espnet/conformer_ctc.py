"""ESPnet Conformer-CTC (asr/conformer_ctc): the spec -> ESPnet's own `conf/train_asr.yaml`, Kaldi-style data dirs
and `espnet2.bin.*` commands (tokenize_text -> asr_train --collect_stats -> aggregate_stats_dirs -> asr_train
--resume true).

No torch, no espnet2 here. The child steps (steps.train, which prepares first when it runs alone; steps.prepare,
before a multi-process train; steps.decode; steps.fetch for a hub init_from) import the toolkit. Every native command
is written to run_dir/native/commands.json and native/run.sh, so the run can be reproduced with ESPnet alone; the spx
steps run those same argv lists through each entry point's `main(cmd=...)`, several in one process (an espnet2 CLI
start costs ~20 s of imports on 2 idle cores, 40 s and more on a busy one).
"""
from __future__ import annotations

from typing import Any

from spx.adapters.common.spec_helpers import deep_merge, frozen_layer_count
from spx.adapters.espnet import helpers
from spx.adapters.espnet.helpers import ASR_COMMANDS, ASR_CONF, STATS
from spx.errors import SpxError
from spx.rundir import RunDir, Step
from spx.spec import Spec
from spx.yamlio import read_json

TASK = "asr"
NAME = "conformer_ctc"
CPU_PRECISIONS = ("fp32",)  # ESPnet's mixed precision is torch.cuda.amp
INIT_FROM = "a trained ESPnet model (a run's exported_model)"
INFERENCE = f"{helpers.STEPS}.decode"
EXPORT = "spx.adapters.espnet.steps.export"


def freeze_params(spec: Spec) -> list[str]:
    """spec freeze items -> ESPnet --freeze_param names (ESPnet freezes `name == p or name.startswith(p + ".")`).
    'feature_extractor' = the fbank frontend + global MVN + the conv subsampling (encoder.embed), as on NeMo."""
    out: list[str] = []
    for item in spec.freeze:
        if item == "encoder":
            out.append("encoder")
        elif item == "feature_extractor":
            out += ["frontend", "normalize", "encoder.embed"]
        else:
            out += [f"encoder.encoders.{i}" for i in range(frozen_layer_count(item, spec.model.encoder.layers))]
    return list(dict.fromkeys(out))


def train_config(spec: Spec, durations: list[float]) -> tuple[dict[str, Any], dict[str, Any]]:
    """ESPnet's conf/train_asr.yaml for the spec, and what spx derived (step counts) for the record."""
    enc, feat = spec.model.encoder, spec.features
    cfg, derived = helpers.asr_training_config(spec, durations)
    cfg.update({
        "frontend": "default",
        "frontend_conf": {"fs": feat.sample_rate, "n_fft": feat.n_fft,
                          "win_length": int(round(feat.win_length_ms * feat.sample_rate / 1000)),
                          "hop_length": int(round(feat.hop_length_ms * feat.sample_rate / 1000)), "n_mels": feat.n_mels},
        "encoder": "conformer",
        "encoder_conf": {"output_size": enc.d_model, "attention_heads": enc.heads,
                         "linear_units": enc.d_model * enc.ff_expansion, "num_blocks": enc.layers,
                         "dropout_rate": enc.dropout, "positional_dropout_rate": enc.dropout,
                         "attention_dropout_rate": enc.dropout,
                         "input_layer": "conv2d" if enc.subsampling == 4 else "conv2d8",
                         "normalize_before": True, "macaron_style": True, "rel_pos_type": "latest",
                         "pos_enc_layer_type": "rel_pos", "selfattention_layer_type": "rel_selfattn",
                         "activation_type": "swish", "use_cnn_module": True, "cnn_module_kernel": enc.conv_kernel},
        "decoder": "none",
        "model_conf": {"ctc_weight": 1.0},
    })
    cfg = {k: v for k, v in cfg.items() if v is not None}
    return deep_merge(cfg, spec.backends.get("espnet", {})), derived


def native_commands(spec: Spec) -> dict[str, list[str]]:
    """The exact espnet2 entry-point argv lists (module first), relative to the run dir."""
    normalize = ["--normalize", "global_mvn", "--normalize_conf", f"stats_file={STATS}/train/feats_stats.npz"]
    return helpers.asr_native_commands(spec, normalize, ["--freeze_param", *freeze_params(spec)] if spec.freeze else [])


def check(spec: Spec) -> None:
    """Raise SpxError before anything is written when ESPnet cannot render this Conformer-CTC job."""
    if spec.augmentation.noise is not None:
        raise SpxError("augmentation.noise is not rendered for ESPnet by spx yet", where="augmentation.noise",
                       hint="remove augmentation.noise, or pass ESPnet's preprocessor options under backends.espnet "
                            "(e.g. preprocessor_conf: {noise_scp: ..., noise_apply_prob: ...})")
    if spec.init_from:
        helpers.resolve_init(spec.init_from)
    bad = {"batch_size", "batch_bins", "batch_type"} & set(spec.backends.get("espnet", {})) if spec.training.batch_seconds else set()
    if bad:
        raise SpxError(f"backends.espnet sets {sorted(bad)} and training.batch_seconds is set too", where="backends.espnet",
                       hint="set the batch in one place")


def render(spec: Spec, rd: RunDir) -> list[Step]:
    train = helpers.cleaned(helpers.train_utterances(spec), spec.tokenizer.lowercase)
    cfg, derived = train_config(spec, [u.duration for u in train])
    init = helpers.resolve_init(spec.init_from) if spec.init_from else None
    if init is not None:
        helpers.check_init_architecture(spec, init, cfg)
    header = ("# ESPnet ASR training config rendered by spx from spec.yaml (backends.espnet merged last).\n"
              "# Train with: see native/run.sh (data paths, token list, global_mvn stats and output dir are CLI args).\n")
    return helpers.write_asr_run(spec, rd, cfg, derived, native_commands(spec), freeze_params(spec), train,
                                 header=header, fetch=bool(spec.init_from and init is None))


def collect_extras(rd: RunDir) -> dict[str, Any]:
    cmds = read_json(rd / ASR_COMMANDS) or {}
    return {"native": {"config": str(rd / ASR_CONF), "derived": cmds.get("derived")}}
