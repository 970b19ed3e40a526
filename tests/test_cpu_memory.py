"""``keep_freed_memory`` stops glibc from faulting in large CPU activations again every step."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# Trains a 4-view MIMAE step whose largest activations exceed glibc's largest mmap
# threshold (32 MiB), 16 times. They are the decoder block's MLP hidden and its gradient,
# which in the training loss covers the 147 masked patches of 48 views: 48 x 147 x 1536
# floats, 43 MB. Prints the minor page faults of steps 6 to 16 and the resident memory
# after steps 6 and 16.
PROBE = """
import json, resource, sys, torch
from mimae.engine.cpu_memory import keep_freed_memory
from mimae.models import MIMAE
if sys.argv[1] == "keep":
    assert keep_freed_memory()
torch.manual_seed(0)
model = MIMAE(encoder=dict(img_size=224, patch_size=16, embed_dim=384, depth=2, num_heads=6),
              decoder=dict(embed_dim=384, depth=1, num_heads=6), num_views=4, mask_ratio=0.75,
              mi_max=None, mi_min=None)
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
images = torch.randn(12, 3, 224, 224)
def step():
    model.loss(images)["loss_rec"].backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
for _ in range(6):
    step()
faults, rss_early = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, rss()
for _ in range(10):
    step()
print(json.dumps(dict(faults=resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults,
                      rss_early=rss_early, rss_late=rss())))
"""


def probe(mode: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="2")
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(600)
@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="the setting is glibc's")
def test_steps_reuse_pages_flat_memory():
    default, with_setting = probe("default"), probe("keep")
    # Without the setting the steps fault large activations in again. Runs of this test saw
    # 19 000 to 250 000 faults over the 10 steps without it and at most 3 with it, so the
    # bound requires only 1 MiB of faults per step.
    # NOTE: how many activations glibc maps afresh without the setting varies between runs.
    assert default["faults"] > 10 * 2**20 / 4096
    assert with_setting["faults"] < default["faults"] / 10
    # The heap stays near its size after 6 steps (growth of 8 KiB to 65 MiB, about 5 %, was seen).
    assert with_setting["rss_late"] - with_setting["rss_early"] < 0.1 * with_setting["rss_early"]


# Allocates 2.5 GiB from a fresh heap, more than the largest positive trim threshold
# (2**31 - 1 bytes), writes every page, frees it and prints the anonymous resident memory
# in MiB before and after the free. With "finite", the trim threshold is 2**31 - 1 bytes,
# the value keep_freed_memory once set, so the probe shows that it can detect a trim.
TOP_OF_HEAP_PROBE = """
import ctypes, json, sys
from mimae.engine.cpu_memory import M_TRIM_THRESHOLD, keep_freed_memory
assert keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
if sys.argv[1] == "finite":
    assert libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.memset.restype = ctypes.c_void_p
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
libc.free.restype = None
libc.free.argtypes = [ctypes.c_void_p]
def rss_anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) // 1024
size = 5 << 29
block = libc.malloc(size)
assert block
libc.memset(block, 1, size)
before = rss_anon()
libc.free(block)
print(json.dumps(dict(before=before, after=rss_anon())))
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="the setting is glibc's")
def test_large_free_block_stays_resident():
    def top_of_heap(threshold: str) -> dict:
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        out = subprocess.run([sys.executable, "-c", TOP_OF_HEAP_PROBE, threshold], env=env, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    finite, off = top_of_heap("finite"), top_of_heap("off")
    # With a finite threshold the freed block goes back to the system.
    assert finite["before"] > 2500
    assert finite["after"] < finite["before"] - 2000
    # With trimming off it stays resident, for the next step to reuse without faults.
    assert off["before"] > 2500
    assert off["after"] > off["before"] - 100


def test_opt_out(monkeypatch):
    from mimae.engine.cpu_memory import keep_freed_memory

    monkeypatch.setenv("MIMAE_KEEP_FREED_MEMORY", "0")
    assert keep_freed_memory() is False
