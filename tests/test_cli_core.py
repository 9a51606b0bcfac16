import json
import subprocess
import sys
import time

from conftest import REPO, RECIPE, run_spx


def test_help_is_fast_and_imports_no_toolkit():
    code = ("import sys, time; t=time.time(); from spx.cli import cli; "
            "bad=[m for m in ('torch','nemo','speechbrain','espnet2','lightning','pydantic') if m in sys.modules]; "
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"
    t = time.time()
    proc = run_spx("--help")
    assert proc.returncode == 0 and "bench" in proc.stdout
    assert time.time() - t < 3  # generous for a loaded CI machine; benchmarks/ measures the real figure


def test_spec_validate_ok():
    proc = run_spx("spec", "validate", RECIPE)
    assert proc.returncode == 0, proc.stderr


def test_spec_unknown_key_did_you_mean(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text(RECIPE.read_text().replace("  batch_size:", "  batch_sise:", 1))
    proc = run_spx("spec", "validate", bad)
    assert proc.returncode == 2
    assert "training.batch_sise" in proc.stderr and "did you mean 'training.batch_size'" in proc.stderr
    assert f"{bad}:" in proc.stderr and "Traceback" not in proc.stderr


def test_spec_override_and_show():
    proc = run_spx("spec", "show", RECIPE, "training.epochs=7", "model.encoder.layers=3", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["training"]["epochs"] == 7 and data["model"]["encoder"]["layers"] == 3
    assert data["data"]["train"].startswith("/")


def test_spec_schema_is_json_schema():
    proc = run_spx("spec", "schema")
    schema = json.loads(proc.stdout)
    assert "properties" in schema and "training" in schema["properties"]


def test_relative_paths_in_a_recipe_resolve_against_its_folder(tmp_path):
    """data paths always; init_from, tts.vocoder, tts.duration_teacher, tts.judge when the path exists there (else
    they stay names: a hub model, a whisper size)."""
    from spx.spec import load_spec

    recipes, runs = tmp_path / "recipes", tmp_path / "runs"
    recipes.mkdir()
    (runs / "hifigan").mkdir(parents=True)
    (runs / "tacotron2").mkdir()
    recipe = recipes / "fastpitch.yaml"
    recipe.write_text((REPO / "recipes" / "fastpitch.yaml").read_text())
    spec = load_spec(recipe, ["tts.vocoder=../runs/hifigan", "tts.duration_teacher=../runs/tacotron2",
                              "tts.judge=tiny.en", "init_from=nvidia/some_hub_model"])
    assert spec.tts.vocoder == str(runs / "hifigan") and spec.tts.duration_teacher == str(runs / "tacotron2")
    assert spec.tts.judge == "tiny.en" and spec.init_from == "nvidia/some_hub_model"
    from spx.demo.resolve import tts_demo_dir  # the recipe's spx-demo://tts/ corpus: a cache folder, not the recipe's

    assert spec.data.train == str(tts_demo_dir() / "train.jsonl")
