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
