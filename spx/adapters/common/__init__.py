"""Code shared by the backends' child processes (may import torch; never imported by the core at start-up)."""
