"""How ESPnet's own trainer (`espnet2.bin.*_train` run as a `launch="self"` step) starts its workers on several
nodes: the options spx.launchers.slurm appends ({devices}, {addr}, {port} filled in). A leaf module."""
from __future__ import annotations

SELF_LAUNCH: dict[str, list[str]] = {
    # GPU: ESPnet's own Slurm mode: one task per node, ESPnet spawns --ngpu workers and reads SLURM_* itself
    "gpu": ["--ngpu", "{devices}", "--multiprocessing_distributed", "true", "--dist_launcher", "slurm",
            "--dist_master_addr", "{addr}", "--dist_master_port", "{port}"],
    # CPU: ESPnet's external-launcher mode under a torchrun agent per node (it reads RANK/WORLD_SIZE/MASTER_*), gloo
    "cpu": ["--ngpu", "0", "--multiprocessing_distributed", "false", "--dist_backend", "gloo"],
}
