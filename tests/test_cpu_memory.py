"""``keep_freed_memory`` stops glibc from faulting in large CPU tensors again after each free."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# Allocates and frees a 64 MiB tensor 6 times and prints the minor page faults of the last 4
# (with freed memory kept, the first two still grow the heap).
PROBE = """
import resource, sys, torch
from mimae.engine.cpu_memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def step():
    torch.ones(16 * 2**20).sum()
step()
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def minor_faults(mode: str) -> int:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's")
def test_freed_tensors_reuse_their_pages():
    pages = 64 * 2**20 // 4096
    assert minor_faults("default") >= 4 * pages // 2  # each new tensor is faulted in again
    assert minor_faults("keep") < pages // 4


def test_opt_out(monkeypatch):
    from mimae.engine.cpu_memory import keep_freed_memory

    monkeypatch.setenv("MIMAE_KEEP_FREED_MEMORY", "0")
    assert keep_freed_memory() is False
