"""`spx export` and `spx serve`: deploy what was trained (imports stay lazy; toolkits run in child processes)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from spx.cli.common import CONTEXT, echo_json
from spx.errors import SpxError


@click.command("export", context_settings=CONTEXT)
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["onnx", "torchscript"]), default="onnx", show_default=True,
              help="Graph format.")
@click.option("--quantize", type=click.Choice(["int8", "int8-static"]),
              help="int8: onnxruntime dynamic quantization of MatMul/Gemm (ONNX) or PyTorch dynamic quantization "
              "(TorchScript); int8-static (ONNX): static quantization of Conv and MatMul calibrated on 24 valid-set "
              "utterances (faster on convolutional models).")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Artefact folder (default RUN_DIR/export/FORMAT[-int8]).")
@click.option("--parity-utterances", type=int, default=0, show_default=True,
              help="Test utterances the parity check uses (0: the whole test set).")
@click.option("--force", is_flag=True, help="Replace an existing artefact folder.")
@click.option("--json", "as_json", is_flag=True, help="Print export.json.")
def export(run_dir, fmt, quantize, opset, out, parity_utterances, force, as_json):
    """Export a finished run as a self-contained artefact (graph, vocabulary, frontend settings, export.json) and
    check it against the toolkit's own model on the test set: a failing check writes nothing and exits non-zero.

    \b
    Examples:
      spx export runs/conformer_ctc_tiny-nemo-20261122-101500
      spx export RUN_DIR --quantize int8 --out model-int8/
      spx export RUN_DIR --quantize int8-static          # -> RUN_DIR/export/onnx-int8-static
      spx export RUN_DIR --format torchscript
    """
    from spx.deploy.export import export as run_export

    if quantize == "int8-static" and fmt != "onnx":
        raise SpxError("--quantize int8-static is for ONNX exports", where="--quantize",
                       hint="use --format onnx, or --quantize int8 with TorchScript")
    if opset < 13:
        raise SpxError(f"--opset {opset} is too old for these graphs", where="--opset", hint="use 13 or newer (17)")
    info = run_export(run_dir, fmt, quantize, opset, out, force, parity_utterances)
    if as_json:
        echo_json(info)
    else:
        click.echo(f"exported {info['path']}")


@click.command("serve", context_settings=CONTEXT)
@click.argument("target", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True,
              help="Server processes (each loads the model).")
@click.option("--max-batch", type=click.IntRange(1), default=8, show_default=True,
              help="Most requests batched into one model call.")
@click.option("--max-wait-ms", type=click.FloatRange(0), default=10.0, show_default=True,
              help="How long the batcher waits for more requests.")
@click.option("--max-seconds", type=click.FloatRange(0, min_open=True), default=60.0, show_default=True,
              help="Longest audio accepted (413 beyond).")
@click.option("--max-bytes", type=click.IntRange(1), default=20_000_000, show_default=True,
              help="Largest request accepted (413 beyond).")
@click.option("--max-chars", type=click.IntRange(1), default=500, show_default=True,
              help="Longest text /v1/synthesize accepts (413 beyond).")
@click.option("--device", default="cpu", show_default=True, help="Device for a run dir's toolkit model.")
@click.option("--threads", type=click.IntRange(0), default=0, help="Intra-op threads (0: the library's default).")
def serve(target, host, port, workers, max_batch, max_wait_ms, max_seconds, max_bytes, max_chars, device,
          threads):
    """Serve a run dir (its toolkit model) or an export dir (onnxruntime) over HTTP: POST /v1/transcribe (ASR),
    /v1/classify (classification) or /v1/synthesize (TTS run dirs), GET /healthz, /readyz, /metrics (Prometheus),
    /docs (OpenAPI).

    \b
    Examples:
      spx serve runs/conformer_ctc_tiny-nemo-20261122-101500/export/onnx-int8
      curl -F file=@audio.flac http://127.0.0.1:8000/v1/transcribe
      curl -F file=@clip.wav http://127.0.0.1:8000/v1/classify                     # a kws_classifier run/export
      curl -d '{"text": "Hello."}' -o out.wav http://127.0.0.1:8000/v1/synthesize  # a TTS run dir
    """
    if (target / "export.json").is_file():
        pass
    else:
        from spx.deploy.export import finished_run
        from spx.adapters import get_adapter

        rd = finished_run(target)
        get_adapter(rd.backend).inference_module(rd.spec)  # refuses a family without a loader before starting a server
    args = [str(target), "--host", host, "--port", str(port), "--workers", str(workers), "--max-batch",
            str(max_batch), "--max-wait-ms", str(max_wait_ms), "--max-seconds", str(max_seconds), "--max-bytes",
            str(max_bytes), "--max-chars", str(max_chars), "--device", device, "--threads", str(threads)]
    sys.stdout.flush()
    # the server is a child-side process (it may import the toolkit): replace this one with it
    os.execv(sys.executable, [sys.executable, "-m", "spx.deploy.server", *args])
