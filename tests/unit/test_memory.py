"""tenantwatch.memory: which mappings count as the compiler's, and the calls on this machine."""

from __future__ import annotations

import subprocess
import sys

from tenantwatch import memory

MAPS = """\
55d0c0a00000-55d0c0a21000 r--p 00000000 fd:01 1 /usr/bin/python3.11
7f0000000000-7f0004000000 r-xp 00100000 fd:01 2 /usr/lib/x86_64-linux-gnu/libbcc.so.0.29.1
7f0004000000-7f0004100000 r--p 04000000 fd:01 2 /usr/lib/x86_64-linux-gnu/libbcc.so.0.29.1
7f0005000000-7f0005001000 rw-p 00000000 00:00 0
7f0006000000-7f0006800000 r-xp 00000000 fd:01 3 /usr/lib/llvm-14/lib/libLLVM-14.so.1
7f0007000000-7f0007100000 r-xp 00000000 fd:01 4 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0008000000-7f0008100000 r-xp 00000000 fd:01 5 /opt/libbcc_helpers/other.so
"""


def test_only_the_compiler_libraries_are_picked():
    assert memory.compiler_mappings(MAPS) == [
        (0x7F0000000000, 0x4000000), (0x7F0004000000, 0x100000), (0x7F0006000000, 0x800000)]


def test_the_calls_are_safe_in_a_process_without_the_compiler():
    assert memory.fixed_mmap_threshold() in (True, False)
    with open("/proc/self/maps") as f:
        mapped = bool(memory.compiler_mappings(f.read()))  # libbcc, if a test imported bcc
    assert memory.after_compile() is mapped  # this kernel (6.18) has MADV_PAGEOUT
    big = bytearray(8 << 20)  # still allocates and frees normally
    del big


def test_tune_gc_freezes_the_heap_and_still_collects_new_cycles():
    # in a child process: the thresholds and the frozen generation are the whole process's
    code = """
import gc, weakref
from tenantwatch import memory
assert memory.tune_gc() == (memory.GC_YOUNG_THRESHOLD, 10, 10), gc.get_threshold()
assert gc.get_freeze_count() > 1000
class Node: pass
a, b = Node(), Node()
a.other, b.other = b, a
gone = weakref.ref(a)
del a, b
kept = []
for _ in range(memory.GC_YOUNG_THRESHOLD * 3):  # objects that live on set off the collector
    kept.append([])
    if gone() is None:
        break
assert gone() is None, "a cycle made after tune_gc() was never collected"
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0 and out.stdout == "ok\n", out.stderr
