"""What the SpeechBrain backend's families share: the leaf of the backend (it imports no other speechbrain module of
spx, and no torch or speechbrain): YAML values, the child steps' module paths, the TTS character inventory and mel
settings, the checks every TTS family applies, and how a vocoder or a checkpoint that `tts.vocoder` / `init_from`
names is found."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from spx.adapters.common.spec_helpers import TTS_CHARACTERS, tts_mel_settings
from spx.errors import SpxError
from spx.rundir import Step
from spx.spec import Spec

BACKEND = "speechbrain"
STEPS = "spx.adapters.speechbrain.steps"  # the child-process entry points
# warmup + cosine/constant (SpeechBrain has none); the hparams of every family name it
WARMUP_ANNEALING = f"{STEPS}.schedulers.WarmupAnnealing"
OPTIMIZERS = {"adam": "torch.optim.Adam", "adamw": "torch.optim.AdamW", "sgd": "torch.optim.SGD"}
SYMBOLS = list(TTS_CHARACTERS)
# what an spx HiFi-GAN run exports: SpeechBrain's generator class, and the file (in the exported folder) that records
# the mel settings an acoustic model must match
VOCODER_CLASS = "HifiganGenerator"
VOCODER_EXPORT_INFO = "spx_vocoder.json"


def yaml_value(value: Any) -> str:
    """A YAML flow value (JSON is valid YAML); None -> null."""
    if isinstance(value, float) and math.isinf(value):
        return ".inf"
    if isinstance(value, float):
        text = repr(value)
        return text.replace("e", ".0e") if "e" in text and "." not in text else text  # YAML 1.1-safe float
    return json.dumps(value)


def step(name: str, module: str, run_dir: Any, **options: Any) -> Step:
    """The Step that runs `python -m spx.adapters.speechbrain.steps.<module> RUN_DIR`."""
    return Step(name, [sys.executable, "-m", f"{STEPS}.{module}", str(run_dir)], **options)


def warmup_annealing(key: str, spec: Spec, total_steps: int) -> str:
    """An hparams entry `key`: linear warmup, then the spec's cosine or constant schedule, stepped per update."""
    s = spec.training.scheduler
    return f"""{key}: !new:{WARMUP_ANNEALING}
  shape: {s.name}
  lr: !ref <lr>
  warmup_steps: {s.warmup_steps}
  total_steps: {total_steps}
  min_lr: {yaml_value(s.min_lr)}
"""


def epochs_and_checkpointer(run_dir: Any, recoverables: list[str]) -> str:
    """The hparams' epoch loop and Checkpointer (resume): `recoverables` and the epoch counter are saved."""
    saved = "".join(f"    {name}: !ref <{name}>\n" for name in recoverables) + "    counter: !ref <epoch_counter>\n"
    return f"""epoch_counter: !new:speechbrain.utils.epoch_loop.EpochCounter
  limit: !ref <epochs>

checkpointer: !new:speechbrain.utils.checkpoints.Checkpointer
  checkpoints_dir: {json.dumps(str(run_dir / 'checkpoints'))}
  recoverables:
{saved}"""


# ---------------------------------------------------------------- TTS
mel_settings = tts_mel_settings  # the mel every SpeechBrain TTS family makes (and the vocoder hears)


def acoustic_run_keys(spec: Spec) -> str:
    """The hparams keys the acoustic models' training loop (steps/tts_train.py) reads its run options from."""
    t = spec.training
    return f"""seed: {t.seed}
epochs: {t.epochs or 1000000}
max_steps: {json.dumps(t.max_steps)}
batch_size: {t.batch_size}
grad_clip: {json.dumps(t.grad_clip)}
keep_checkpoints: {t.keep_checkpoints}
"""


def train_and_synth(run_dir: Any, modules: str) -> list[Step]:
    """A TTS job's tts_train and tts_synth steps, run by steps/<modules>_train.py and steps/<modules>_synth.py."""
    return [step("tts_train", f"{modules}_train", run_dir, log="train.log"),
            step("tts_synth", f"{modules}_synth", run_dir, timed=True)]


def check_tts_training(spec: Spec) -> None:
    """What the acoustic models' training loop maps (batches of utterances, cosine/constant schedule; fp32 is the
    families' PRECISIONS)."""
    t = spec.training
    if t.batch_size is None:
        raise SpxError("TTS jobs batch by utterances", where="training.batch_size", hint="set training.batch_size")
    if t.scheduler.name not in ("constant", "cosine"):
        raise SpxError(f"training.scheduler {t.scheduler.name!r} is not mapped for TTS on {BACKEND}",
                       where="training.scheduler.name", hint="use cosine (with warmup_steps) or constant")


def refuse_duration_teacher(spec: Spec) -> None:
    """Only ESPnet's FastSpeech2 takes a duration teacher; SpeechBrain's FastSpeech2 says why in its own check."""
    if spec.tts.duration_teacher is not None:
        raise SpxError(f"tts.duration_teacher is set, but a SpeechBrain {spec.model.family} job takes no duration "
                       "teacher", where="tts.duration_teacher",
                       hint="remove tts.duration_teacher (it gives ESPnet FastSpeech2 its durations)")


def resolve_checkpoint(init_from: str) -> str:
    """A SpeechBrain acoustic model checkpoint: an spx run dir (its best checkpoint), a Checkpointer CKPT+ folder, or
    its model.ckpt."""
    p = Path(init_from).expanduser()
    if p.is_dir() and (p / "train_summary.json").exists():
        best = json.loads((p / "train_summary.json").read_text()).get("best_checkpoint")
        if not best:
            raise SpxError(f"init_from {p}: its train_summary.json names no best_checkpoint", where="init_from",
                           hint="train that run to the end first")
        p = Path(best)
    if p.is_dir():
        p = p / "model.ckpt"
    if not p.is_file():
        raise SpxError(f"init_from {init_from!r}: no SpeechBrain Tacotron2 checkpoint found at {p}", where="init_from",
                       hint="give an spx speechbrain TTS run dir, a CKPT+... folder, or its model.ckpt")
    return str(p.resolve())


def exported_vocoder(run_dir: Path, named_by: str, where: str) -> Path:
    """The exported folder of a finished spx speechbrain hifigan run dir, or one SpxError saying what it is instead."""
    summary_path = run_dir / "train_summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    backend = (run_dir / "backend").read_text().strip() if (run_dir / "backend").is_file() else None
    exported = summary.get("exported_model")
    if backend != BACKEND or summary.get("model_class") != VOCODER_CLASS or not exported \
            or not (Path(exported) / "generator.ckpt").is_file():
        raise SpxError(f"{where} {named_by!r} is not a finished spx speechbrain hifigan run (no exported "
                       f"{VOCODER_CLASS} folder in its train_summary.json)", where=where,
                       hint="finish that vocoder run first (spx run --backend speechbrain recipes/hifigan.yaml), or "
                            "give a SpeechBrain HiFi-GAN folder (hyperparams.yaml + generator.ckpt)")
    return Path(exported)


def check_vocoder_mels(spec: Spec, folder: Path) -> None:
    """An spx-exported vocoder records the mel it was trained on: the acoustic model must make the same one."""
    info_path = folder / VOCODER_EXPORT_INFO
    if not info_path.is_file():  # a third-party folder: tts_synth checks its n_mels and hop when it loads
        return
    theirs, ours = json.loads(info_path.read_text())["mel"], mel_settings(spec)
    diff = [f"{k} {theirs.get(k)} vs {ours[k]}" for k in ours if theirs.get(k) != ours[k]]
    if diff:
        raise SpxError(f"tts.vocoder {folder} was trained on other mel settings than this job makes (vocoder vs this "
                       f"job: {', '.join(diff)})", where="tts.vocoder",
                       hint="train the vocoder with this job's tts.sample_rate, tts.n_mels and features: (n_fft, "
                            "win_length_ms, hop_length_ms)")


def resolve_vocoder(spec: Spec) -> str | None:
    """The SpeechBrain HiFi-GAN folder tts.vocoder names: a folder with hyperparams.yaml + generator.ckpt, or an spx
    speechbrain hifigan run dir (its exported folder; its mel settings are checked against this job's here)."""
    voc = spec.tts.vocoder
    if voc is None:
        return None
    p = Path(voc).expanduser()
    if (p / "spec.yaml").is_file() or (p / "train_summary.json").is_file():  # an spx run dir
        p = exported_vocoder(p, voc, "tts.vocoder")
    if not (p / "hyperparams.yaml").exists():
        raise SpxError(f"tts.vocoder {voc!r} is not a SpeechBrain HiFi-GAN folder (no hyperparams.yaml)",
                       where="tts.vocoder", hint="give a local SpeechBrain vocoder folder "
                       "(hyperparams.yaml + generator.ckpt), an spx speechbrain hifigan run dir, or leave tts.vocoder "
                       "unset for Griffin-Lim")
    check_vocoder_mels(spec, p)
    return str(p.resolve())


def vocoder_info(spec: Spec, vocoder: str | None) -> dict[str, Any]:
    """The tts_info.json keys that say how an acoustic model's mels become audio."""
    return {"vocoder": vocoder, "vocoder_name": vocoder or f"griffin-lim ({spec.tts.griffin_lim_iters} iters)",
            "griffin_lim_iters": spec.tts.griffin_lim_iters}


# ---------------------------------------------------------------- ASR data
def write_asr_csvs(spec: Spec, native: Path) -> tuple[list[Any], list[str]]:
    """native/train.csv and valid.csv (cleaned targets, the spec's duration filters, empty texts dropped) and one CSV
    per test set; returns the training utterances and the test CSV paths."""
    from spx.adapters.common.child import clean_transcript
    from spx.manifests import read_manifest
    from spx.manifests.exporters import export_speechbrain_csv

    d = spec.data

    def cleaned(path: str) -> list[Any]:
        out = []
        for u in read_manifest(path):
            text = clean_transcript(u.text or "", spec.tokenizer.lowercase)
            if not text or (d.max_duration is not None and u.duration > d.max_duration) or (
                    d.min_duration is not None and u.duration < d.min_duration):
                continue
            u.text = text
            out.append(u)
        return out

    train, valid = cleaned(d.train), cleaned(d.valid)
    if not train:
        raise SpxError(f"no usable training utterances in {d.train} (all empty or filtered by duration)",
                       where="data.train", hint="check data.train and data.min_duration/max_duration")
    if not valid:
        raise SpxError(f"no usable validation utterances in {d.valid}", where="data.valid", hint="check data.valid")
    export_speechbrain_csv(train, native / "train.csv")
    export_speechbrain_csv(valid, native / "valid.csv")
    tests = []
    for t in spec.test_sets:
        dst = native / f"{Path(t).stem}.csv"
        export_speechbrain_csv(read_manifest(t), dst)
        tests.append(str(dst))
    return train, tests


LORA_TARGETS = ["q_proj", "v_proj"]  # the attention projections of every encoder layer (as the hf family)
DROPOUT_LORA = f"{STEPS}.ssl_model.DropoutLoRA"  # SpeechBrain's LoRA with dropout on the adapter input


def optimizer_momentum(spec: Spec) -> str:
    """The optimizer keyword after lr in a pretrained family's hparams: Adam's betas or SGD's momentum."""
    return "    betas: !ref <betas>" if spec.training.optimizer.name in ("adam", "adamw") else "    momentum: 0.9"


def lr_annealing(spec: Spec, key: str, lr_key: str) -> str:
    """The hparams entry `key`: the spec's scheduler as a SpeechBrain annealing of the learning rate `lr_key`."""
    sch = spec.training.scheduler
    if sch.name == "noam":
        return f"""{key}: !name:speechbrain.nnet.schedulers.NoamScheduler
    lr_initial: !ref <{lr_key}>
    n_warmup_steps: {max(1, sch.warmup_steps)}"""
    if sch.name == "linear":
        return f"""{key}: !name:speechbrain.nnet.schedulers.LinearWarmupScheduler
    initial_value: !ref <{lr_key}>
    num_warmup_steps: !ref <warmup_steps>"""
    return f"""{key}: !name:{WARMUP_ANNEALING}
    shape: {sch.name}
    lr: !ref <{lr_key}>
    warmup_steps: !ref <warmup_steps>
    min_lr: !ref <min_lr>"""


def epoch_counter(spec: Spec) -> str:
    """The hparams epoch_counter: with early stopping, SpeechBrain's EpochCounterWithStopper."""
    if spec.training.early_stopping:
        return """epoch_counter: !new:speechbrain.utils.epoch_loop.EpochCounterWithStopper
    limit: !ref <number_of_epochs>
    limit_to_stop: !ref <early_stopping_patience>
    limit_warmup: 0
    direction: min"""
    return """epoch_counter: !new:speechbrain.utils.epoch_loop.EpochCounter
    limit: !ref <number_of_epochs>"""
