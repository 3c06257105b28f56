"""The daemon's own memory: what it gives back to the system, measured by bench/scale.py.

- ``fixed_mmap_threshold()``: glibc maps every allocation of 256 KiB or more on its own and
  unmaps it when freed.  By default glibc raises that threshold after the first big free (up to
  32 MiB), so the 50 MB /metrics body of 10k tenants stayed in the heap after each scrape.
- ``after_compile()``: once the BPF programs are loaded, the compiler is not needed until the
  next load.  Its freed heap goes back (malloc_trim, ~20 MB), and the pages of its code (libbcc
  links clang and LLVM, ~70 MB of them were resident) are paged out of this process
  (madvise MADV_PAGEOUT, Linux 5.4+): clean file pages, read again from disk if a later load
  needs them.  Nothing else is touched.

- ``tune_gc()``: once started, the daemon's long-lived objects (bcc's tables, the registry,
  the config) are moved out of the cycle collector's reach (``gc.freeze``), and the young
  generation collects every 10,000 allocations instead of 700.  A tick that meets 10,000 new
  tenants on both sides allocates a few hundred thousand objects that live on (rows, cache
  entries); with the defaults, the collections they set off, full ones included, were a third
  of that tick (bench/tick_cost.py: 278 -> 203 ms).  The collector still runs: the daemon makes
  few cycles, and these thresholds bound how many wait.

Each of the first two is best effort: False where the C library or the kernel does not offer it.
"""

from __future__ import annotations

import ctypes
import gc
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # mallopt(3)
MMAP_THRESHOLD_BYTES = 256 * 1024
MADV_PAGEOUT = 21  # madvise(2), Linux 5.4
# Mappings of the compiler's code: libbcc (clang and LLVM linked in) and, where bcc is built
# against shared ones, libclang and libLLVM.
COMPILER_LIBRARIES = ("libbcc", "libclang", "libLLVM")
GC_YOUNG_THRESHOLD = 10_000  # allocations between two collections of the young generation


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def fixed_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    libc = _libc()
    try:
        return bool(libc and libc.mallopt(M_MMAP_THRESHOLD, threshold))
    except AttributeError:  # not glibc
        return False


def compiler_mappings(maps: str) -> list[tuple[int, int]]:
    """(start, length) of the file mappings of COMPILER_LIBRARIES in a /proc/PID/maps text."""
    out = []
    for line in maps.splitlines():
        fields = line.split()
        if len(fields) < 6 or not any(lib in fields[5].rsplit("/", 1)[-1]
                                      for lib in COMPILER_LIBRARIES):
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        out.append((start, end - start))
    return out


def after_compile() -> bool:
    libc = _libc()
    if libc is None:
        return False
    try:
        libc.malloc_trim(0)
    except AttributeError:
        pass
    try:
        with open("/proc/self/maps") as f:
            regions = compiler_mappings(f.read())
    except OSError:
        return False
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    ok = bool(regions)
    for start, length in regions:
        if libc.madvise(start, length, MADV_PAGEOUT) != 0:
            ok = False  # EINVAL before 5.4: nothing paged out, nothing harmed
    if not ok:
        log.debug("could not page out the compiler's code (needs Linux 5.4+)")
    return ok


def tune_gc(young: int = GC_YOUNG_THRESHOLD) -> tuple[int, int, int]:
    """Freeze what exists now and collect the young generation every ``young`` allocations;
    the older generations keep their thresholds.  Gives the thresholds set."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young, middle, old)
    return gc.get_threshold()
