"""ESPnet VITS: the spec -> ESPnet's own gan_tts config (`tts: vits`, `feats_extract: linear_spectrogram`), in the
layout of ESPnet's egs2 `conf/tuning/train_vits.yaml` (generator / discriminator / loss params, optim + optim2,
scheduler + scheduler2). The data dir, token list and collect_stats steps are every ESPnet TTS family's
(helpers.tts_commands / write_tts_run); training runs `espnet2.bin.gan_tts_train` on the raw linear spectrogram (no
normalization, as ESPnet's egs), synthesis `Text2Speech` with no vocoder (VITS outputs the waveform).

Nothing here imports torch or espnet2.
"""
from __future__ import annotations

import math
from typing import Any

from spx.adapters.common.spec_helpers import deep_merge, speaker_table
from spx.adapters.espnet import helpers
from spx.errors import SpxError
from spx.rundir import RunDir, Step
from spx.spec import Spec

TASK = "tts"
NAME = "vits"
PRECISIONS = ("fp32",)  # TTS trains in fp32 in spx, on any device
CPU_PRECISIONS = ("fp32",)
FREEZE = False  # every weight trains; init_from alone fine-tunes
INIT_FROM = helpers.TTS_INIT_FROM
INFERENCE = "spx.adapters.espnet.steps.tts_synth"  # load_synthesizer (spx serve)
EXPORT = "spx.adapters.espnet.steps.vits_export"  # the generator with its noise as inputs -> waveform
ENTRY = "espnet2.bin.gan_tts_train"
VOCODER = "vits (end-to-end)"
# ESPnet's VITS recipes synthesize from the latest generator: adversarial valid losses do not rank GAN checkpoints
SYNTH_MODEL = "checkpoints/latest.pth"
LOSS_KEY = "generator_loss"


def hop_samples(spec: Spec) -> int:
    return int(round(spec.features.hop_length_ms * spec.tts.sample_rate / 1000))


def check(spec: Spec) -> None:
    """Raise SpxError before anything runs when the spec cannot become an ESPnet VITS."""
    helpers.check_tts(spec)
    m = spec.model
    hop = hop_samples(spec)
    product = math.prod(m.decoder_upsample_scales)
    if product != hop:
        raise SpxError(
            f"the decoder upsample rates {m.decoder_upsample_scales} multiply to {product}, but the STFT hop is "
            f"{hop} samples (features.hop_length_ms {spec.features.hop_length_ms} at tts.sample_rate "
            f"{spec.tts.sample_rate}): VITS decodes one latent frame into exactly one hop of waveform",
            where="model.decoder_upsample_scales",
            hint=f"make the rates multiply to {hop} (e.g. [8, 8, 4] for a 256-sample hop), or change "
                 "features.hop_length_ms")
    if spec.tts.vocoder is not None:
        raise SpxError("tts.vocoder is set, but VITS generates the waveform itself", where="tts.vocoder",
                       hint="leave tts.vocoder unset for model.family vits")
    helpers.refuse_duration_teacher(spec)


def _discriminator(channels: int) -> dict[str, Any]:
    """HiFi-GAN multi-scale + multi-period discriminator, ESPnet's recipe shape scaled by one width."""
    act = {"nonlinear_activation": "LeakyReLU", "nonlinear_activation_params": {"negative_slope": 0.1},
           "use_weight_norm": True, "use_spectral_norm": False, "bias": True}
    return {
        "scales": 1,
        "scale_downsample_pooling": "AvgPool1d",
        "scale_downsample_pooling_params": {"kernel_size": 4, "stride": 2, "padding": 2},
        "scale_discriminator_params": {"in_channels": 1, "out_channels": 1, "kernel_sizes": [15, 41, 5, 3],
                                       "channels": channels, "max_downsample_channels": 8 * channels,
                                       "max_groups": 16, "downsample_scales": [2, 2, 4, 4, 1], **act},
        "follow_official_norm": False,
        "periods": [2, 3, 5, 7, 11],
        "period_discriminator_params": {"in_channels": 1, "out_channels": 1, "kernel_sizes": [5, 3],
                                        "channels": max(channels // 4, 1), "downsample_scales": [3, 3, 3, 3, 1],
                                        "max_downsample_channels": 8 * channels, **act},
    }


def vits_config(spec: Spec, n_train: int, speakers: dict[str, int]) -> tuple[dict[str, Any], dict[str, Any]]:
    """ESPnet's gan_tts training config for the spec, and what spx derived (step counts) for the record."""
    m, t = spec.model, spec.training
    batches = math.ceil(n_train / t.batch_size)
    # the generator and the discriminator each step once per batch
    epochs, iters_per_epoch, steps_per_epoch, total_steps = helpers.epoch_plan(spec, batches)
    batches = iters_per_epoch or batches
    mel = helpers.mel_settings(spec)
    generator = {
        "hidden_channels": m.hidden_channels,
        "spks": len(speakers) if speakers else -1,
        # speaker ids condition every module through one global embedding of this width
        "global_channels": m.hidden_channels if speakers else -1,
        "segment_size": m.segment_size,
        "text_encoder_attention_heads": 2,
        "text_encoder_ffn_expand": 4,
        "text_encoder_blocks": m.text_encoder_layers,
        "text_encoder_positionwise_layer_type": "conv1d",
        "text_encoder_positionwise_conv_kernel_size": 1,
        "text_encoder_positional_encoding_layer_type": "rel_pos",
        "text_encoder_self_attention_layer_type": "rel_selfattn",
        "text_encoder_activation_type": "swish",
        "text_encoder_normalize_before": True,
        "text_encoder_dropout_rate": 0.1,
        "text_encoder_positional_dropout_rate": 0.0,
        "text_encoder_attention_dropout_rate": 0.0,
        "text_encoder_conformer_kernel_size": 7,
        "use_macaron_style_in_text_encoder": True,
        "use_conformer_conv_in_text_encoder": True,
        "decoder_kernel_size": 7,
        "decoder_channels": m.decoder_channels,
        "decoder_upsample_scales": list(m.decoder_upsample_scales),
        "decoder_upsample_kernel_sizes": [2 * s for s in m.decoder_upsample_scales],
        "decoder_resblock_kernel_sizes": list(m.decoder_resblock_kernel_sizes),
        "decoder_resblock_dilations": [[1, 3, 5] for _ in m.decoder_resblock_kernel_sizes],
        "use_weight_norm_in_decoder": True,
        "posterior_encoder_kernel_size": 5,
        "posterior_encoder_layers": 16,
        "posterior_encoder_stacks": 1,
        "posterior_encoder_base_dilation": 1,
        "posterior_encoder_dropout_rate": 0.0,
        "use_weight_norm_in_posterior_encoder": True,
        "flow_flows": 4,
        "flow_kernel_size": 5,
        "flow_base_dilation": 1,
        "flow_layers": 4,
        "flow_dropout_rate": 0.0,
        "use_weight_norm_in_flow": True,
        "use_only_mean_in_flow": True,
        "stochastic_duration_predictor_kernel_size": 3,
        "stochastic_duration_predictor_dropout_rate": 0.5,
        "stochastic_duration_predictor_flows": 4,
        "stochastic_duration_predictor_dds_conv_layers": 3,
    }
    adv = {"average_by_discriminators": False, "loss_type": "mse"}
    tts_conf = {
        "generator_type": "vits_generator", "generator_params": generator,
        "discriminator_type": "hifigan_multi_scale_multi_period_discriminator",
        # ESPnet's recipe pairs a 512-wide decoder with a 128-wide scale discriminator: keep that ratio
        "discriminator_params": _discriminator(max(m.decoder_channels // 4, 4)),
        "generator_adv_loss_params": dict(adv), "discriminator_adv_loss_params": dict(adv),
        "feat_match_loss_params": {"average_by_discriminators": False, "average_by_layers": False,
                                   "include_final_outputs": True},
        "mel_loss_params": {"fs": mel["fs"], "n_fft": mel["n_fft"], "hop_length": mel["hop_length"],
                            "win_length": mel["win_length"], "window": "hann", "n_mels": mel["n_mels"],
                            "fmin": mel["fmin"], "fmax": mel["fmax"], "log_base": None},
        "lambda_adv": 1.0, "lambda_mel": 45.0, "lambda_feat_match": 2.0, "lambda_dur": 1.0, "lambda_kl": 1.0,
        "sampling_rate": mel["fs"], "cache_generator_outputs": True,
    }
    optim_conf = helpers.tts_optim_conf(spec)
    sched = helpers.scheduler(spec, total_steps)
    cfg: dict[str, Any] = {
        "tts": "vits", "tts_conf": tts_conf,
        "feats_extract": "linear_spectrogram",
        "feats_extract_conf": {"n_fft": mel["n_fft"], "hop_length": mel["hop_length"], "win_length": mel["win_length"]},
        "token_type": "char", "cleaner": None, "g2p": None,
        # generator (optim, scheduler) and discriminator (optim2, scheduler2) get the same training settings
        "optim": t.optimizer.name, "optim_conf": optim_conf, **sched,
        "optim2": t.optimizer.name, "optim2_conf": dict(optim_conf),
        "scheduler2": sched["scheduler"], "scheduler2_conf": dict(sched["scheduler_conf"]),
        "generator_first": False,
        **helpers.epoch_settings(spec, epochs),
        "best_model_criterion": [["valid", LOSS_KEY, "min"], ["train", LOSS_KEY, "min"]],
        "log_interval": 10,
    }
    if iters_per_epoch is not None:
        cfg["num_iters_per_epoch"] = iters_per_epoch
    cfg = deep_merge(cfg, spec.backends.get("espnet", {}))
    derived = {"steps_per_epoch": steps_per_epoch, "epochs": epochs, "total_steps": total_steps}
    return cfg, derived


def render(spec: Spec, run_dir: RunDir) -> list[Step]:
    speakers = speaker_table(spec, f"ESPnet {spec.model.family}")
    cfg, derived = vits_config(spec, helpers.train_utterance_count(spec), speakers)
    cmds = helpers.tts_commands(spec, speakers, entry=ENTRY, normalize=["--normalize", "none"])
    return helpers.write_tts_run(spec, run_dir, cfg=cfg, derived=derived, cmds=cmds, speakers=speakers, vocoder=None,
                                 synth_model=SYNTH_MODEL, loss_key=LOSS_KEY, vocoder_label=VOCODER, griffin_lim=False)


def collect_extras(run_dir: RunDir) -> dict[str, Any]:
    return {}
