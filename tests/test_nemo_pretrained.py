"""NeMo fine-tuning from a pretrained model (issue 14, NeMo's side): `init_from` a .nemo with a new vocabulary
(change_vocabulary), partial init (finetune.init_include / init_exclude), encoder adapters (finetune.method adapter),
and what is refused. The 'pretrained' source is the conformer_ctc model the suite trains once (conftest's
trained_run("nemo")); the fine-tunes run a few steps: they check the wiring, not accuracy."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from conftest import DEMO, RECIPE, run_spx

from spx.adapters.nemo import ADAPTER
from spx.errors import SpxError
from spx.spec import load_spec

FEW_STEPS = ["training.epochs=1", "training.batch_size=32", "training.scheduler.warmup_steps=0",
             "eval.speed_repeats=1", "eval.warmup_batches=1"]
D_MODEL, LAYERS, RANK = 96, 2, 8  # recipes/conformer_ctc.yaml's encoder, the adapters' bottleneck


def _weights(path: str | Path) -> dict:
    """The state dict inside a .nemo archive (a tar holding model_weights.ckpt)."""
    import torch

    with tarfile.open(path) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("model_weights.ckpt"))
        return torch.load(io.BytesIO(tar.extractfile(member).read()), map_location="cpu", weights_only=True)


def _refusal(*overrides: str, backend=ADAPTER) -> SpxError:
    with pytest.raises(SpxError) as err:
        backend.supports(load_spec(RECIPE, list(overrides)))
    return err.value


def _source(trained_run) -> str:
    return json.loads((trained_run("nemo") / "train_summary.json").read_text())["exported_model"]


# ---------------------------------------------------------------- fast
def test_what_nemo_cannot_do_is_refused_by_key():
    err = _refusal("init_from=x.nemo", "finetune.method=lora")
    assert err.where == "finetune.method" and "full, adapter" in err.message
    # the adapters sit in the encoder: a separate lr or a hold for the (frozen) pretrained encoder has no meaning
    err = _refusal("init_from=x.nemo", "finetune.method=adapter", "training.optimizer.pretrained_lr=0.0001")
    assert err.where == "training.optimizer.pretrained_lr" and "adapter" in err.message
    err = _refusal("init_from=x.nemo", "finetune.method=adapter", "finetune.freeze_pretrained_steps=10")
    assert err.where == "finetune.freeze_pretrained_steps"
    err = _refusal("init_from=x.nemo", "finetune.method=adapter", "freeze=[encoder]")
    assert err.where == "freeze" and "adapter" in err.message
    err = _refusal(f"init_from={DEMO}", "finetune.init_include=[encoder]")  # a folder that is no run
    assert err.where == "init_from"
    # a backend that does not render the partial-init keys refuses them by key, before its own init_from checks
    from spx.adapters.speechbrain import ADAPTER as SPEECHBRAIN

    err = _refusal("init_from=x.ckpt", "finetune.init_exclude=[decoder]", backend=SPEECHBRAIN)
    assert err.where == "finetune.init_exclude"
    # the spec: partial init needs a source, and module names
    with pytest.raises(SpxError, match="needs a pretrained model"):
        load_spec(RECIPE, ["finetune.init_include=[encoder]"])
    with pytest.raises(SpxError, match="module names"):
        load_spec(RECIPE, ["init_from=x.nemo", "finetune.init_exclude=[decoder.]"])


def test_pretrained_name_renders_nemo_partial_init(tmp_path):
    """A NeMo pretrained name (no hub here: rendered only) goes to init_from_pretrained_model, in NeMo's
    {name: {name, include, exclude}} form with a partial init; adapters switch the encoder to its adapter class."""
    rd = tmp_path / "run"
    run_spx("run", "--backend", "nemo", RECIPE, "--run-dir", rd, "--dry-run",
            "init_from=nvidia/stt_en_conformer_ctc_small", "finetune.init_include=[encoder]",
            "finetune.init_exclude=[encoder.layers.0]", "finetune.method=adapter", "finetune.rank=16", check=True)
    cfg = yaml.safe_load((rd / "native" / "config.yaml").read_text())
    assert cfg["init_from_pretrained_model"] == {"spx": {"name": "nvidia/stt_en_conformer_ctc_small",
                                                         "include": ["encoder"], "exclude": ["encoder.layers.0"]}}
    assert "init_from_nemo_model" not in cfg
    assert cfg["model"]["encoder"]["_target_"] == "nemo.collections.asr.modules.ConformerEncoderAdapter"
    assert cfg["spx"]["finetune"] == {"method": "adapter", "adapter_dim": 16, "adapter_dropout": 0.05,
                                      "freeze_pretrained_steps": 0}


# ---------------------------------------------------------------- slow: the suite's trained NeMo model as source
@pytest.mark.slow
def test_source_of_another_kind_or_shape_refused_before_rendering(trained_run):
    """The .nemo's own config is read at render time: a char model cannot become a bpe one (change_vocabulary keeps
    the tokenizer kind), and a job with other encoder sizes cannot take its weights."""
    source = _source(trained_run)
    err = _refusal(f"init_from={source}", "tokenizer.type=bpe", "tokenizer.vocab_size=40")
    assert err.where == "tokenizer.type" and "char model" in err.message
    err = _refusal(f"init_from={source}", "model.encoder.d_model=64")
    assert err.where == "model.encoder" and "encoder.d_model: 64 here, 96 in the source" in err.message
    ADAPTER.supports(load_spec(RECIPE, [f"init_from={source}"]))  # the same job as the source's: accepted


@pytest.mark.slow
def test_adapters_on_a_new_vocabulary(trained_run, tmp_path):
    """finetune.method adapter with a training set whose characters differ from the source's: NeMo's
    change_vocabulary makes a new CTC head; the adapters and that head are all that trains (exact counts); every
    tensor of the source's preprocessor and encoder is bit-identical after training; the adapters are saved apart
    (save_adapters) beside the whole .nemo, which the decode step restores."""
    import torch

    source = _source(trained_run)
    train = tmp_path / "train_no_z.jsonl"  # no utterance with a 'z' ("zero"): one character fewer
    lines = (DEMO / "train.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines[1:]]
    kept = [{**r, "audio": str(DEMO / r["audio"])} for r in rows if "z" not in r["text"]]
    assert 0 < len(kept) < len(rows)
    train.write_text("\n".join([lines[0], *map(json.dumps, kept)]) + "\n")
    rd = tmp_path / "adapter"
    run_spx("run", "--backend", "nemo", RECIPE, "--run-dir", rd, f"init_from={source}", f"data.train={train}",
            "finetune.method=adapter", f"finetune.rank={RANK}", *FEW_STEPS, check=True)

    summary = json.loads((rd / "train_summary.json").read_text())
    info = summary["init_details"]
    vocab = info["vocabulary_size"]
    assert info["vocabulary_changed"] and info["change_vocabulary"] == "labels" and info["new_ctc_head"]
    assert vocab == info["source_vocabulary_size"] - 1
    assert info["modules"] == {"preprocessor": "loaded", "encoder": "loaded", "decoder": "new (change_vocabulary)"}
    adapters = LAYERS * (2 * D_MODEL + 2 * D_MODEL * RANK)  # per block: LayerNorm, d->rank, rank->d (no biases)
    head = (D_MODEL + 1) * (vocab + 1)                       # the 1x1 conv CTC head over the tokens and the blank
    assert summary["adapter_params"] == adapters
    assert summary["trainable_params"] == adapters + head
    assert summary["frozen_params"] == summary["params"] - adapters - head

    before, after = _weights(source), _weights(summary["exported_model"])
    base = [k for k in before if not k.startswith("decoder.")]
    assert base and all(before[k].equal(after[k]) for k in base)
    assert after["decoder.decoder_layers.0.weight"].shape[0] == vocab + 1 != before["decoder.decoder_layers.0.weight"].shape[0]
    trained = [k for k in after if ".adapter_layer." in k and k.endswith("module.3.weight")]  # zero-initialised
    assert len(trained) == LAYERS and all(after[k].abs().sum() > 0 for k in trained)

    saved = torch.load(summary["adapters_file"], map_location="cpu", weights_only=False)
    assert Path(summary["adapters_file"]).parent == Path(summary["exported_model"]).parent
    assert sum(t.numel() for part in saved["spx"] for t in part.values() if t.is_floating_point()) == adapters
    assert len((rd / "hyps.jsonl").read_text().splitlines()) == 40  # the adapted model.nemo restores and decodes


@pytest.mark.slow
def test_partial_init_and_pretrained_lr(trained_run, tmp_path):
    """init_include [encoder] and init_exclude [encoder.layers.1]: exactly the source's encoder tensors outside block
    1 are loaded, the rest (block 1, the CTC head) keep their fresh init. pretrained_lr puts the encoder in its own
    NeMo param group (optim_param_groups), and freeze_pretrained_steps holds it at lr 0 for longer than this run:
    the loaded weights are still the source's after training, while the head trains at training.optimizer.lr."""
    source = _source(trained_run)
    rd = tmp_path / "partial"
    run_spx("run", "--backend", "nemo", RECIPE, "--run-dir", rd, "--dry-run", f"init_from={source}",
            "finetune.init_include=[encoder]", "finetune.init_exclude=[encoder.layers.1]",
            "training.optimizer.pretrained_lr=0.0001", "finetune.freeze_pretrained_steps=1000", *FEW_STEPS,
            check=True)
    cfg = yaml.safe_load((rd / "native" / "config.yaml").read_text())
    assert cfg["init_from_nemo_model"] == {"spx": {"path": source, "include": ["encoder"],
                                                   "exclude": ["encoder.layers.1"]}}
    assert cfg["model"]["optim_param_groups"] == {"encoder": {"lr": 0.0001}}
    proc = subprocess.run([sys.executable, "-m", "spx.adapters.nemo.steps.train", str(rd)], capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    summary = json.loads((rd / "train_summary.json").read_text())
    info = summary["init_details"]
    before, after = _weights(source), _weights(summary["exported_model"])
    encoder = [k for k in before if k.startswith("encoder.")]
    expected = [k for k in encoder if not k.startswith("encoder.layers.1.")]
    assert info["tensors_loaded"] == len(expected) and info["new_ctc_head"] and not info["vocabulary_changed"]
    assert info["modules"] == {"preprocessor": "fresh", "encoder": f"{len(expected)} of {len(encoder)} tensors loaded",
                               "decoder": "fresh"}
    assert info["include"] == ["encoder"] and info["exclude"] == ["encoder.layers.1"]
    groups = {g["module"]: g for g in summary["param_groups"]}
    assert groups["encoder"]["lr"] == pytest.approx(1e-4) and groups["rest"]["lr"] == pytest.approx(4e-3)
    head = [k for k in after if k.startswith("decoder.")]
    assert groups["rest"]["params"] == sum(after[k].numel() for k in head)
    assert summary["steps"] > 0 and summary["trainable_params"] == summary["params"]
    statistics = ("running_mean", "running_var", "num_batches_tracked")  # batch norm follows the data at lr 0 too
    held = [k for k in expected if not k.endswith(statistics)]
    assert held and all(before[k].equal(after[k]) for k in held)
