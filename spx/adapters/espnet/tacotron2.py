"""ESPnet Tacotron2 (tts/tacotron2): the spec -> ESPnet's own `conf/train_tts.yaml` (`tts: tacotron2`,
`feats_extract: fbank`), a Kaldi-style data dir and `espnet2.bin.tts_train` commands (collect_stats ->
aggregate_stats_dirs -> tts_train --resume true), then `espnet2.bin.tts_inference.Text2Speech` (Griffin-Lim unless
tts.vocoder names a ParallelWaveGAN-family vocoder).

render writes run_dir/native/ (helpers.write_tts_run, the same for every ESPnet TTS family):
  conf/train_tts.yaml   ESPnet training config (architecture numbers from `model:`, fbank from `features:`/`tts:`)
  conf/griffin_lim.yaml Griffin-Lim settings for Text2Speech (griffin_lim_iters)
  tts_tokens.txt        the character token list (fixed inventory: fine-tuning works across corpora)
  tts_commands.json     the exact espnet2 argv lists (module first, paths relative to the run dir)
  tts_run.sh            the same commands as a shell script (ESPnet alone reproduces the run)
The child steps (steps.tts_train, which first prepares with steps.tts_prepare in the same process, and
steps.tts_synth) run those argv lists through each entry point's `main(cmd=...)`. Nothing here imports torch or
espnet2.
"""
from __future__ import annotations

from typing import Any

from spx.adapters.common.spec_helpers import deep_merge, speaker_table
from spx.adapters.espnet import helpers
from spx.rundir import RunDir, Step
from spx.spec import Spec

TASK = "tts"
NAME = "tacotron2"
PRECISIONS = ("fp32",)  # TTS trains in fp32 in spx, on any device
CPU_PRECISIONS = ("fp32",)
INIT_FROM = helpers.TTS_INIT_FROM
INFERENCE = "spx.adapters.espnet.steps.tts_synth"  # load_synthesizer (spx serve)
EXPORT = "spx.adapters.espnet.steps.tacotron2_export"  # encoder / decoder-step / postnet ONNX graphs
SYNTH_MODEL = f"{helpers.EXP}/valid.loss.best.pth"
LOSS_KEY = "loss"


def check(spec: Spec) -> None:
    """Raise SpxError before anything runs when ESPnet cannot render this Tacotron2 job."""
    helpers.check_tts(spec)
    helpers.refuse_duration_teacher(spec)


def train_config(spec: Spec, n_train: int, speakers: dict[str, int]) -> tuple[dict[str, Any], dict[str, Any]]:
    m = spec.model
    tts_conf: dict[str, Any] = {
        "embed_dim": m.embedding_dim, "elayers": 1, "eunits": m.encoder_dim, "econv_layers": m.encoder_layers,
        "econv_chans": m.encoder_dim, "econv_filts": 5, "atype": "location", "adim": m.attention_dim,
        "aconv_chans": 32, "aconv_filts": 15, "cumulate_att_w": True, "dlayers": 2, "dunits": m.decoder_rnn_dim,
        "prenet_layers": 2, "prenet_units": m.prenet_dim, "postnet_layers": m.postnet_layers,
        "postnet_chans": m.postnet_dim, "postnet_filts": 5, "output_activation": None, "use_batch_norm": True,
        "use_concate": True, "use_residual": False, "reduction_factor": m.reduction_factor, "dropout_rate": 0.5,
        "zoneout_rate": 0.1, "use_masking": True, "bce_pos_weight": 5.0, "loss_type": "L1+L2",
        "use_guided_attn_loss": True, "guided_attn_loss_sigma": 0.4, "guided_attn_loss_lambda": 1.0,
    }
    if speakers:
        tts_conf.update(spks=len(speakers), spk_embed_integration_type="add")
    training, derived = helpers.training_settings(spec, n_train)
    cfg: dict[str, Any] = {
        "tts": "tacotron2", "tts_conf": tts_conf,
        "feats_extract": "fbank", "feats_extract_conf": helpers.fbank_conf(spec),
        "token_type": "char", "cleaner": None, "g2p": None,
        **training,
    }
    return deep_merge(cfg, spec.backends.get("espnet", {})), derived


def render(spec: Spec, run_dir: RunDir) -> list[Step]:
    speakers = speaker_table(spec, f"ESPnet {spec.model.family}")
    vocoder = helpers.resolve_vocoder(spec)
    cfg, derived = train_config(spec, helpers.train_utterance_count(spec), speakers)
    return helpers.write_tts_run(spec, run_dir, cfg=cfg, derived=derived, cmds=helpers.tts_commands(spec, speakers),
                                 speakers=speakers, vocoder=vocoder, synth_model=SYNTH_MODEL, loss_key=LOSS_KEY,
                                 vocoder_label=helpers.vocoder_name(spec, vocoder))


def collect_extras(run_dir: RunDir) -> dict[str, Any]:
    return {}
