"""Mean training-step time: the spx-rendered SpeechBrain run vs a hand-written native SpeechBrain run of the
same model, in one process, on the same batches (target ratio <= 1.02).

    uv run python benchmarks/step_time_speechbrain.py [--steps 20] [--warmup 3] [--rounds 3] [overrides...]

spx side: the run dir spx renders from recipes/conformer_ctc.yaml (hparams.yaml loaded with hyperpyyaml) and
the Brain of spx.adapters.speechbrain.steps.train. Native side: the same modules built by hand in Python with a
minimal sb.Brain, as a SpeechBrain user would write it. Steps alternate one by one so machine noise hits both.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=15, help="timed steps per side per round")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("overrides", nargs="*", help="spec overrides, e.g. model.encoder.layers=4")
    args = ap.parse_args()

    import torch

    import speechbrain as sb
    from speechbrain.augment.augmenter import Augmenter
    from speechbrain.augment.freq_domain import SpectrogramDrop
    from speechbrain.dataio.dataloader import make_dataloader
    from speechbrain.lobes.features import Fbank
    from speechbrain.lobes.models.convolution import ConvolutionFrontEnd
    from speechbrain.lobes.models.transformer.TransformerASR import EncoderWrapper, TransformerASR
    from speechbrain.nnet.activations import Softmax, Swish
    from speechbrain.nnet.linear import Linear
    from speechbrain.nnet.losses import ctc_loss
    from speechbrain.processing.features import InputNormalization

    from spx.adapters.speechbrain.steps import train as T
    from spx.adapters.speechbrain.steps.model import load_hparams, make_tokenizer
    from spx.runner import render_run
    from spx.spec import load_spec

    torch.set_num_threads(args.threads)
    spec = load_spec(REPO / "recipes" / "conformer_ctc.yaml", list(args.overrides))
    rd = render_run(spec, "speechbrain", Path(tempfile.mkdtemp(prefix="sb-steptime-")) / "run")
    spec_r = load_spec(rd / "spec.yaml", [])

    # ---- the spx-rendered Brain, exactly as the train step builds it
    torch.manual_seed(spec.training.seed)
    hp = load_hparams(rd)
    tok = make_tokenizer(hp, spec_r, None, False)
    train_ds, _ = T.datasets(hp, tok)
    batches = list(make_dataloader(train_ds, batch_size=spec.training.batch_size or 16, shuffle=False))
    need = args.warmup + args.steps
    batches = (batches * (need // len(batches) + 1))[:need]
    hp["train_logger"] = None
    spx_brain = T.CTCBrain(modules=hp["modules"], opt_class=hp["opt_class"], hparams=hp,
                           run_opts={"device": "cpu"}, checkpointer=None)
    spx_brain.scheduler = T.make_scheduler(hp, 1000)
    spx_brain.rank_batches = spx_brain.rank_updates = 0
    spx_brain.init_optimizers()
    spx_brain.modules.train()

    # ---- the hand-written native SpeechBrain run of the same model
    enc = spec.model.encoder
    feat = spec.features
    sa = spec.augmentation.spec_augment
    torch.manual_seed(spec.training.seed)
    blocks = {4: 2, 8: 3}[enc.subsampling]
    cnn = ConvolutionFrontEnd(input_shape=[8, 10, feat.n_mels], num_blocks=blocks, num_layers_per_block=1,
                              out_channels=[64, 32, 32][:blocks], kernel_sizes=[3] * blocks, strides=[2] * blocks,
                              residuals=[False] * blocks, dropout=enc.dropout)
    f = feat.n_mels
    for _ in range(blocks):
        f = -(-f // 2)
    transformer = TransformerASR(tgt_vocab=hp["output_neurons"], input_size=f * 32, d_model=enc.d_model, nhead=enc.heads,
                                 num_encoder_layers=enc.layers, num_decoder_layers=0, d_ffn=enc.ff_expansion * enc.d_model,
                                 dropout=enc.dropout, kernel_size=enc.conv_kernel, encoder_module="conformer",
                                 attention_type="RelPosMHAXL", normalize_before=True, causal=False,
                                 conformer_activation=Swish)
    native_hp = {
        "fbank": Fbank(sample_rate=feat.sample_rate, n_fft=feat.n_fft, n_mels=feat.n_mels,
                       win_length=feat.win_length_ms, hop_length=feat.hop_length_ms),
        "augment": Augmenter(min_augmentations=2, max_augmentations=2, augment_prob=1.0, augmentations=[
            SpectrogramDrop(drop_length_low=0, drop_length_high=sa.time_width, drop_count_low=sa.time_masks,
                            drop_count_high=sa.time_masks, dim=1),
            SpectrogramDrop(drop_length_low=0, drop_length_high=sa.freq_width, drop_count_low=sa.freq_masks,
                            drop_count_high=sa.freq_masks, dim=2)]),
        "log_softmax": Softmax(apply_log=True),
        "max_grad_norm": spec.training.grad_clip, "noprogressbar": True,
    }
    native_modules = {"CNN": cnn, "enc": EncoderWrapper(transformer), "ctc_lin": Linear(input_size=enc.d_model,
                      n_neurons=hp["output_neurons"]), "normalize": InputNormalization(norm_type="global", update_until_epoch=4)}

    class NativeBrain(sb.Brain):
        def compute_forward(self, batch, stage):
            wavs, lens = batch.sig
            x = self.modules.normalize(self.hparams.fbank(wavs), lens, epoch=1)
            x, _ = self.hparams.augment(x, lens)
            return self.hparams.log_softmax(self.modules.ctc_lin(self.modules.enc(self.modules.CNN(x), lens))), lens

        def compute_objectives(self, predictions, batch, stage):
            p, lens = predictions
            tokens, tlens = batch.tokens
            return ctc_loss(p, tokens, lens, tlens, blank_index=0)

    o = spec.training.optimizer
    native = NativeBrain(modules=native_modules, hparams=native_hp, run_opts={"device": "cpu"},
                         opt_class=lambda params: torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay, betas=o.betas))
    native.init_optimizers()
    native.modules.train()
    from spx.adapters.speechbrain.steps.schedulers import WarmupAnnealing

    native_sched = WarmupAnnealing(spec.training.scheduler.name if spec.training.scheduler.name in ("cosine", "constant")
                                   else "cosine", o.lr, spec.training.scheduler.warmup_steps, 1000)

    def spx_step(b):
        spx_brain.fit_batch(b)

    def native_step(b):
        native.fit_batch(b)
        native_sched(native.optimizer)

    for b in batches[: args.warmup]:
        spx_step(b)
        native_step(b)
    # alternate step by step (and flip who goes first every step) so load drift on a shared machine hits both
    spx_t: list[float] = []
    nat_t: list[float] = []
    k = 0
    for _ in range(args.rounds):
        for b in batches[args.warmup:]:
            order = ((spx_step, spx_t), (native_step, nat_t)) if k % 2 == 0 else ((native_step, nat_t), (spx_step, spx_t))
            for step, out in order:
                t0 = time.perf_counter()
                step(b)
                out.append(time.perf_counter() - t0)
            k += 1
    ps = sum(p.numel() for p in spx_brain.modules.parameters())
    pn = sum(p.numel() for p in native.modules.parameters())
    ms, mn = statistics.mean(spx_t), statistics.mean(nat_t)
    print(f"model: {ps} params (spx) / {pn} params (native); batch {spec.training.batch_size}; "
          f"{len(spx_t)} timed steps per side; {torch.get_num_threads()} threads")
    print(f"spx-rendered  mean step {ms * 1000:8.1f} ms  (median {statistics.median(spx_t) * 1000:.1f} ms)")
    print(f"hand-written  mean step {mn * 1000:8.1f} ms  (median {statistics.median(nat_t) * 1000:.1f} ms)")
    print(f"ratio spx/native: {ms / mn:.3f}  (target <= 1.02)")


if __name__ == "__main__":
    main()
