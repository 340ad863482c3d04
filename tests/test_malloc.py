"""unlearn.utils.malloc: glibc keeps freed memory, so a step's tensors do not page-fault in again."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest
from conftest import REPO

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# A training step's pattern: allocate and free the same weight-sized tensors (32 of 1 MiB) again and
# again. Reported: where glibc put the first round (mmapped blocks, mallinfo2's hblkhd), what it
# kept of it after the free (free heap bytes, fordblks), and the minor page faults per later round.
CHURN = """
import ctypes, json, resource, sys, torch
from unlearn.utils.malloc import keep_freed_memory
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                               "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
applied = keep_freed_memory() if sys.argv[1] == "kept" else None
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
before = libc.mallinfo2()
x = [torch.ones(2**18) for _ in range(32)]
held = libc.mallinfo2()
del x
freed = libc.mallinfo2()
f0 = faults()
for _ in range(20):
    x = [torch.ones(2**18) for _ in range(32)]
    del x
print(json.dumps({
    "applied": applied,
    "mmapped_mib": (held.hblkhd - before.hblkhd) / 2**20,
    "kept_free_mib": (freed.fordblks - before.fordblks) / 2**20,
    "faults_per_round": (faults() - f0) / 20,
}))
"""


def churn(mode: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    proc = subprocess.run(
        [sys.executable, "-c", CHURN, mode], capture_output=True, text=True, env={**clean, **env}, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt")
def test_freed_tensors_stay_in_the_heap_and_are_not_faulted_in_again():
    pages = 32 * 2**20 // os.sysconf("SC_PAGE_SIZE")  # what one round allocates
    system, kept = churn("system"), churn("kept")
    assert kept["applied"] is True
    # M_MMAP_THRESHOLD: the 1 MiB blocks come from the heap, not from their own mappings
    assert kept["mmapped_mib"] < 1 and system["mmapped_mib"] >= 32, (kept, system)
    # and the heap keeps them once freed (M_TRIM_THRESHOLD), where glibc's defaults give them back
    assert kept["kept_free_mib"] >= 32 and system["kept_free_mib"] < 1, (kept, system)
    # so the next rounds reuse the same pages: almost no page faults (glibc's defaults vary from
    # process to process here, between ~2 % and ~95 % of the pages faulted in again each round)
    assert kept["faults_per_round"] < 0.05 * pages, kept


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt")
def test_a_users_own_malloc_settings_are_left_alone():
    assert churn("kept", MALLOC_ARENA_MAX="2")["applied"] is False
