"""Training keeps freed buffers in the heap: the same work, a fraction of the page faults."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# 20 rounds of a 32 MiB buffer written page by page, as a training step's activations are.
CODE = """
import resource, sys
from factory.ml.threads import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
junk = bytearray(32 << 20); del junk  # the first buffer faults in either case
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    buf = bytearray(32 << 20)
    buf[::4096] = b"x" * len(range(0, 32 << 20, 4096))
    del buf
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", CODE, mode], capture_output=True, text=True, check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_freed_buffers_are_reused_instead_of_faulted_in_again():
    applied, kept = faults("keep")
    _, default = faults("default")
    assert applied == "True"
    pages = 20 * (32 << 20) // 4096
    assert default >= pages * 0.9  # glibc maps every large buffer afresh and returns it on free
    assert kept <= pages * 0.1


def test_keeping_freed_memory_is_idempotent():
    from factory.ml.threads import keep_freed_memory

    first = keep_freed_memory()
    assert keep_freed_memory() == first
