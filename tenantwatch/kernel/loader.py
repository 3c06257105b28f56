"""Kernel stage: compile and attach bpf/http.c, keep the target set, drain aggregates.

Takes: identity sources (header names and sides), process names, latency bounds.
Gives: a KernelTick per drain() -- per-identity deltas and lost-event deltas.
Nothing from bcc or ctypes leaves this module.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import errno
import logging
import mmap
import os
import platform
import re
import secrets
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tenantwatch.config import Capture
from tenantwatch.errors import KernelSupportError, PermissionProblem
from tenantwatch.kernel import abi, dfa
from tenantwatch.kernel.paths import find_bpf_dir
from tenantwatch.kernel.records import (
    BreachCount,
    BreachEvent,
    CpuCounts,
    H2Event,
    IdentityCounts,
    IsolationCounts,
    KernelTick,
    Side,
    SlowRequest,
    ValueFlag,
)
from tenantwatch.kernel.ringbuf import RingReader, map_field
from tenantwatch.kernel.ringbuf import usable as ring_reader_usable
from tenantwatch.kernel.tls import TlsProbes

log = logging.getLogger(__name__)

# Run-queue delay bounds: powers of 4 from 1 us to ~1 s (11 buckets of TW_RUNQ_BUCKETS):
# wide enough to tell "scheduled at once" from "waited a whole time slice" and worse.
RUNQ_BOUNDS_SECONDS = tuple(4**i / 1e6 for i in range(11))

# Loop iterations per tw_parse run (TW_ITERS), tried in order until the verifier accepts one
# (docs/kernels.md gives what each kernel takes; docs/limits.md the head bytes it makes).
PARSE_WINDOWS = (64, 28, 16)
# tw_cpu's key (abi.CpuKey: key, tgid, cpu, side, gen) and value (u64 ns), as struct reads them
_CPU_KEY = struct.Struct("<QIHBB")
_U64 = struct.Struct("<Q")
# tw_agg0/1's key (abi.AggKey: key, side, pad) and value (abi.AggVal, field by field)
_AGG_KEY = struct.Struct("<QII")
_AGG_VAL = struct.Struct(f"<{abi.NCLASS}Q3Q{abi.MAX_BUCKETS + 1}Q5QIiII{abi.VALUE_MAX}s")

# After flipping the active aggregate map, wait this long before draining the old
# one: a probe that read the old index finishes within microseconds, and even a full
# chain of 33 tail calls (about 66 KiB of heads) within a millisecond, so 10 ms is a
# wide grace period.
FLIP_GRACE_SECONDS = 0.01
# tw_cpu (cpu.c) holds, per generation, four (process, CPU, side) entries per identity of
# capture.max_identities, and at least MIN_CPU_ENTRIES: 2 x 4 x 22k x ~80 B = 14 MB at 10k tenants.
CPU_ENTRIES_PER_IDENTITY = 4
MIN_CPU_ENTRIES = 16384
# Whole bearer tokens kept in user space (up to TOKEN_MAX bytes each: at most 16 MiB).
MAX_TOKENS = 4096

TRACEFS_DIRS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")


def bpf_dir() -> Path:
    """Where the .c files are: $TENANTWATCH_BPF_DIR, the source tree, or the installed share."""
    found = find_bpf_dir()
    if found is None:
        raise KernelSupportError("bpf/http.c not found (set TENANTWATCH_BPF_DIR)")
    return found


def kernel_version(release: str | None = None) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", release or platform.release())
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def tracefs_path() -> str | None:
    for d in TRACEFS_DIRS:
        if os.path.isdir(os.path.join(d, "events")):
            return d
    return None


@dataclass(frozen=True)
class KernelSource:
    """One identity source as the kernel sees it."""

    header: str  # lowercase header name
    sides: tuple[Side, ...]  # where it applies
    token: bool = False  # a bearer token (jwt source): up to TOKEN_MAX bytes, sent whole
    # the gateway wrote it (a trusted header source): its requests are the ones the response
    # check compares (docs/isolation.md)
    trusted: bool = False


@dataclass(frozen=True)
class KernelResponseCheck:
    """tenancy.response_check as the kernel sees it: the response header naming the tenant a
    response served, the sides whose responses are checked, and the event rate."""

    header: str  # lowercase header name
    sides: tuple[Side, ...]
    events_per_cpu_per_second: int = 20


def cpu_entries(max_identities: int) -> int:
    """Entries of one generation of tw_cpu (identity, process, CPU, side): four per identity,
    at least 16384."""
    return max(MIN_CPU_ENTRIES, CPU_ENTRIES_PER_IDENTITY * max_identities)


class HttpProbes:
    """The HTTP capture: one bcc module, its tracepoints, and its maps."""

    def __init__(
        self,
        sources: Sequence[KernelSource],
        process_names: Sequence[str],
        latency_bounds_seconds: Sequence[float],
        max_connections: int = Capture.max_connections,
        max_identities: int = Capture.max_identities,
        slow_request_seconds: float = 0.0,  # off unless asked (capture.slow_request_seconds)
        slow_requests_per_cpu_per_second: int = Capture.slow_requests_per_second,
        tokens_per_cpu_per_second: int = Capture.tokens_per_second,
        tls: bool = False,  # off unless asked (capture.tls)
        response_check: KernelResponseCheck | None = None,
        sides: Sequence[Side] = (Side.SERVER, Side.CLIENT),
    ) -> None:
        if len(sources) > abi.MAX_SOURCES:
            raise ValueError(f"at most {abi.MAX_SOURCES} sources")
        if len(latency_bounds_seconds) > abi.MAX_BUCKETS:
            raise ValueError(f"at most {abi.MAX_BUCKETS} latency buckets")
        if len(process_names) > abi.MAX_COMMS:
            raise ValueError(f"at most {abi.MAX_COMMS} process names")
        self.sources = tuple(sources)
        self.response_check = response_check
        if not sides:
            raise ValueError("at least one side to trace")
        self.sides = tuple(sides)  # the legs followed (capture.sides)
        self._breaches: list[BreachEvent] = []
        self._iso_seen: list[int] = [0] * (2 * abi.ISO_N)
        self.process_names = tuple(process_names)
        self.bounds = tuple(latency_bounds_seconds)
        self.max_connections = max_connections
        self.max_identities = max_identities
        self.slow_ns = round(slow_request_seconds * 1e9)
        self.slow_rate = slow_requests_per_cpu_per_second
        self._slow: list[SlowRequest] = []
        self.token_rate = tokens_per_cpu_per_second
        # Whole bearer tokens by identity key, most recently sent last (the kernel sends a
        # token again after a minute, so an evicted one comes back).
        self._tokens: OrderedDict[int, bytes] = OrderedDict()
        self.tokens_received = 0  # token events, all time
        self._h2: list[H2Event] = []
        self._ringbuf = kernel_version() >= (5, 8)
        # The event rings read from their memory (ringbuf.py), each with its record handler,
        # in the order they are read; empty where bcc's callbacks deliver the records.
        self._rings: list[tuple[RingReader, Callable[[bytes], None]]] = []
        self._bpf = None
        self._ctl = abi.Ctl()
        self._lost_seen: list[int] = [0] * len(abi.LOST_REASONS)
        self._batch_ok = True
        self._user_lost: dict[str, int] = {}  # losses seen in user space, by reason
        self._warned_targets = False
        self._untraced: set[int] = set()  # processes that did not fit tw_targets
        self._target_words = (_pid_max() + 63) // 64
        self._bits_written: dict[int, int] = {}  # bitmap words as last written
        # (conn_key, side) -> [closes, their summed lifetimes in ns]
        self._swept_closes: dict[tuple[int, int], list[int]] = {}
        self._swept_deletes = 0  # tw_conns entries the sweep deleted (tw_conn_count: the kernel's)
        self.probes: dict[str, bool] = {}
        self.window = PARSE_WINDOWS[0]  # bytes per tw_parse run, as loaded
        self.tls = tls  # uprobes on the targets' libssl (SSL_read/SSL_write ...)
        self._tls: TlsProbes | None = None

    # ------------------------------------------------------------------ build

    def cflags(self) -> list[str]:
        flags = [
            f"-I{bpf_dir() / 'include'}",
            f"-I{bpf_dir()}",
            f"-DTW_MAX_CONNS={int(self.max_connections)}",
            f"-DTW_MAX_IDENTITIES={int(self.max_identities)}",
            f"-DTW_MAX_CPU_ENTRIES={cpu_entries(self.max_identities)}",
            f"-DTW_TARGET_WORDS={self._target_words}",
            f"-DTW_TRACE_SIDES={sum(1 << _side_index(s) for s in set(self.sides))}",
        ]
        if kernel_version() >= (5, 5):
            flags.append("-DTW_HAVE_PROBE_READ_USER=1")
        if self._ringbuf:
            flags.append("-DTW_HAVE_RINGBUF=1")
        if self.tls:
            flags.append("-DTW_HAVE_TLS=1")
        return flags

    def source_path(self) -> Path:
        return bpf_dir() / "http.c"

    def source_text(self) -> str:
        """bpf/http.c with its local `#include "X.c"` lines expanded.

        bcc rewrites map syntax (`map.lookup(&k)`) and tracepoint argument structs only in
        the main file it is given, so the concern files (cpu.c ...) are handed over inline.
        The tail-called programs' files are included twice (tracepoint- and kprobe-type).
        """
        return _expand_c_includes(self.source_path())

    # ------------------------------------------------------------------ introspection
    # For the kernel-tier tests and bench/: what loaded, without reaching into bcc's object.

    def tail_calls(self, array: str = "tw_progs") -> int:
        """Programs in a tail-call array as loaded (tw_progs; tw_progs_k with capture.tls)."""
        assert self._bpf is not None, "load() first"
        return len(list(self._bpf[array.encode()].items()))

    def map_fd(self, name: str) -> int:
        """The file descriptor of a loaded map (for /proc/self/fdinfo: key and value sizes)."""
        assert self._bpf is not None, "load() first"
        return self._bpf[name.encode()].map_fd

    def program_fds(self) -> dict[str, int]:
        """{program name: fd} of every loaded program (run_time_ns, run_cnt in its fdinfo)."""
        assert self._bpf is not None, "load() first"
        return {name.decode(): fn.fd for name, fn in self._bpf.funcs.items()}

    def print_bpf(self) -> str:
        """The C text and flags as compiled (for --print-bpf)."""
        return f"/* cflags: {' '.join(self.cflags())} */\n" + self.source_text()

    def load(self) -> None:
        """Compile, load and attach. Raises KernelSupportError / PermissionProblem."""
        if os.geteuid() != 0:
            raise PermissionProblem("loading BPF programs needs root (or CAP_BPF+CAP_PERFMON); "
                                    "run `tenantwatch doctor`")
        if tracefs_path() is None:
            _mount_tracefs()
        build = Path(f"/lib/modules/{platform.release()}/build")
        if not build.exists():
            raise KernelSupportError(
                f"no kernel headers at {build}: bcc needs them to compile the probes; "
                "run `tenantwatch doctor` for the exact fix")
        try:
            from bcc import BPF
        except ImportError as e:
            raise KernelSupportError("python3-bpfcc is not importable (apt-get install "
                                     "python3-bpfcc; a venv needs --system-site-packages); "
                                     "run `tenantwatch doctor`") from e
        self._configure_ctl()
        b = parse = None
        for window in PARSE_WINDOWS:
            try:
                b = BPF(text=self.source_text().encode(),
                        cflags=self.cflags() + [f"-DTW_ITERS={window}"])
            except Exception as e:  # bcc raises bare Exception for compile and load errors
                raise KernelSupportError(f"compiling or loading bpf/http.c failed: {e}; "
                                         "run `tenantwatch doctor`") from e
            try:
                parse = b.load_func(b"tw_parse", BPF.TRACEPOINT)
                more = [b.load_func(name, BPF.TRACEPOINT) for name in TAIL_PROGRAMS[1:]]
                # TLS: the same programs as kprobe type, for the uprobes' tail calls.
                kprobe = [b.load_func(name + b"_k", BPF.KPROBE) for name in TAIL_PROGRAMS] \
                    if self.tls else []
                self.window = window
                break
            except Exception as e:  # noqa: BLE001 - E2BIG on older verifiers: smaller window
                log.info("tw_parse with a %d-byte window was refused (%s); trying smaller",
                         window, e)
                b.cleanup()
                b = None
        if b is None or parse is None:
            raise KernelSupportError("the kernel's verifier refused tw_parse at every window "
                                     f"size {PARSE_WINDOWS}; run `tenantwatch doctor`")
        self._bpf = b
        if self.tls:
            self._tls = TlsProbes(b)
        try:
            for i, fn in enumerate([parse, *more]):
                b[b"tw_progs"][ct.c_int(i)] = ct.c_int(fn.fd)
            for i, fn in enumerate(kprobe):
                b[b"tw_progs_k"][ct.c_int(i)] = ct.c_int(fn.fd)
            self._write_ctl()
            self._write_names()
            b[b"tw_dfa"][ct.c_int(0)] = dfa.dfa_struct()
            for m in (b"tw_agg0", b"tw_agg1"):
                self._insert_overflow(b[m])
            for gen in (0, 1):
                b[b"tw_cpu"][abi.CpuKey(key=abi.KEY_OVERFLOW, gen=gen)] = ct.c_uint64(0)
            handlers = ((b"tw_breach_events", self._breach_record, 16),
                        (b"tw_slow_events", self._slow_record, 16),
                        (b"tw_token_events", self._token_record, 64),
                        (b"tw_h2_events", self._h2_record, 256))
            for name, handler, pages in handlers:
                if self._ringbuf and ring_reader_usable():
                    self._rings.append((RingReader.open(b[name].map_fd), handler))
                elif self._ringbuf:
                    b[name].open_ring_buffer(_callback(handler))
                else:
                    b[name].open_perf_buffer(_callback(handler), page_cnt=pages)
        except Exception as e:
            self.close()
            raise KernelSupportError(f"setting up the BPF maps failed: {e}") from e
        attached = {tp.decode() if isinstance(tp, bytes) else str(tp)
                    for tp in getattr(b, "tracepoint_fds", {})}
        for tp in _declared_tracepoints(self.source_path().read_text()):
            self.probes[tp] = tp in attached
        missing = [p for p, ok in self.probes.items() if not ok]
        if missing:
            log.warning("tracepoints not attached: %s", ", ".join(missing))

    def _configure_ctl(self) -> None:
        c = self._ctl
        c.seed1 = secrets.randbits(64)
        c.seed2 = secrets.randbits(64)
        for i, b in enumerate(self.bounds):
            c.bounds_ns[i] = round(b * 1e9)
        c.nbuckets = len(self.bounds)
        c.nsources = len(self.sources)
        c.active = 0
        c.ncomms = len(self.process_names)
        self._name_filter()
        c.slow_ns = self.slow_ns
        c.slow_per_cpu_per_sec = self.slow_rate
        c.token_per_cpu_per_sec = self.token_rate
        c.token_sources = sum(1 << i for i, s in enumerate(self.sources) if s.token)
        rc = self.response_check
        if rc is not None:
            c.check_sides = sum(1 << _side_index(side) for side in rc.sides)
            c.check_sources = sum(1 << i for i, s in enumerate(self.sources)
                                  if s.trusted and not s.token)
            c.breach_per_cpu_per_sec = rc.events_per_cpu_per_second
        c.nrunq = len(RUNQ_BOUNDS_SECONDS)
        for i, bound in enumerate(RUNQ_BOUNDS_SECONDS):
            c.runq_bounds_ns[i] = round(bound * 1e9)
        for i, name in enumerate(self.process_names):
            raw = name.encode()[: abi.COMM_LEN - 1]
            for j in range(abi.COMM_LEN):
                c.comms[i][j] = raw[j] if j < len(raw) else 0

    def _write_ctl(self) -> None:
        self._bpf[b"tw_ctl"][ct.c_int(0)] = self._ctl

    def parser_names(self) -> list[tuple[str, int, tuple[int, int], int]]:
        """The header names the parser acts on: (name, TW_NAME_* kind, identity source by side,
        -1 for none, served bits by side): the framing headers, then each identity header
        once; the response check's header is an identity name with served bits."""
        by_name: dict[str, list[int]] = {}
        for i, s in enumerate(self.sources):
            slots = by_name.setdefault(s.header, [-1, -1])
            for side in s.sides:
                slot = _side_index(side)
                if slots[slot] < 0:  # config rejects two sources on one (header, side)
                    slots[slot] = i
        served: dict[str, int] = {}
        if self.response_check is not None:
            by_name.setdefault(self.response_check.header, [-1, -1])
            served[self.response_check.header] = sum(
                1 << _side_index(side) for side in self.response_check.sides)
        return [("content-length", abi.NAME_CONTENT_LENGTH, (-1, -1), 0),
                ("transfer-encoding", abi.NAME_TRANSFER_ENCODING, (-1, -1), 0)] + \
            [(h, abi.NAME_IDENTITY, (slots[0], slots[1]), served.get(h, 0))
             for h, slots in by_name.items()]

    def _name_filter(self) -> None:
        """ctl.name_first: which (length, first byte) pairs are worth a tw_names lookup."""
        for n, *_ in self.parser_names():
            self._ctl.name_first[len(n)] |= 1 << (ord(n[0].lower()) & 31)

    def _write_names(self) -> None:
        """tw_names (by seeded hash, for the byte-wise path) and tw_pfx (as word prefixes)."""
        table = self._bpf[b"tw_names"]
        names = self.parser_names()
        for name, kind, slots, served in names:
            table[ct.c_uint64(abi.hash_name(name, self._ctl.seed1))] = abi.Name(
                kind=kind, len=len(name), source=abi.name_sources(slots, served))
        self._bpf[b"tw_pfx"][ct.c_int(0)] = prefixes(names)


    @staticmethod
    def _insert_overflow(table) -> None:
        for side in (abi.SIDE_SERVER, abi.SIDE_CLIENT):
            v = abi.AggVal()
            v.value_len = 0
            v.source = -1
            v.flags = int(ValueFlag.OVERFLOW)
            table[abi.AggKey(key=abi.KEY_OVERFLOW, side=side)] = v

    # ------------------------------------------------------------------ targets

    def targets(self) -> set[int]:
        return {k.value for k in self._bpf[b"tw_targets"]}

    def set_targets(self, tgids: Iterable[int]) -> tuple[set[int], set[int]]:
        """Make the kernel's target set equal tgids. Returns (added, removed)."""
        table = self._bpf[b"tw_targets"]
        want = set(tgids)
        have = self.targets()
        for t in want - have:
            try:
                table[ct.c_uint32(t)] = ct.c_uint32(1)
            except Exception:  # noqa: BLE001 - bcc raises bare Exception (E2BIG: map full)
                if not self._warned_targets:
                    self._warned_targets = True
                    log.warning("more target processes than the kernel's target map holds "
                                "(TW_MAX_TARGETS); the rest are not traced")
                if t not in self._untraced:  # counted once per process, not per rescan
                    self._untraced.add(t)
                    self._user_lost["target_map_full"] = \
                        self._user_lost.get("target_map_full", 0) + 1
        for t in have - want:
            try:
                del table[ct.c_uint32(t)]
            except KeyError:
                pass
        self._untraced &= want  # forget processes that are gone or no longer wanted
        self._write_target_bits(self.targets())
        # TLS: uprobes per target process (armed in its memory only); a process's maps are
        # read once, when it becomes a target.
        if self._tls is not None:
            # every probed process not wanted now: the kernel forgets an exited target by
            # itself, so "have" no longer names it
            self._tls.detach(self._tls.pids() - want)
            if self._tls.attach(want - self._untraced):
                self.probes["uprobe:libssl"] = True
        return want - have, have - want

    def _write_target_bits(self, tgids: set[int]) -> None:
        """Make the kernel's target bitmap match the target set (changed words only)."""
        words: dict[int, int] = {}
        for t in tgids:
            if t // 64 < self._target_words:
                words[t // 64] = words.get(t // 64, 0) | (1 << (t % 64))
        table = self._bpf[b"tw_target_bits"]
        for w in set(words) | set(self._bits_written):
            value = words.get(w, 0)
            if self._bits_written.get(w) != value or value == 0:
                table[ct.c_int(w)] = ct.c_uint64(value)
        self._bits_written = {w: v for w, v in words.items() if v}

    def forget_connections(self, live_tgids: set[int]) -> int:
        """Delete connection state of processes that are no longer traced.

        A process that exits (or stops being a target) never calls close() on its sockets
        in a way the probes see; its counted connections are closed here, so
        connections_active does not drift up.
        """
        from bcc.libbcc import lib

        table = self._bpf[b"tw_conns"]
        stale = [k.value for k in table if (k.value >> 32) not in live_tgids]
        buf = ct.create_string_buffer(_value_size(table))
        now = time.monotonic_ns()  # the kernel's clock; the process ended at most a sweep ago
        for key in stale:
            k = ct.c_uint64(key)
            if lib.bpf_lookup_elem(table.map_fd, ct.byref(k), buf) == 0:
                head = abi.ConnHead.from_buffer_copy(buf.raw[: ct.sizeof(abi.ConnHead)])
                if head.opened:
                    acc = self._swept_closes.setdefault((int(head.conn_key), int(head.side)),
                                                        [0, 0])
                    acc[0] += 1
                    acc[1] += max(0, now - int(head.open_ns))
            if lib.bpf_delete_elem(table.map_fd, ct.byref(k)) == 0:
                self._swept_deletes += 1
        return len(stale)

    def connections(self) -> int:
        return len(list(self._bpf[b"tw_conns"].keys()))

    # ------------------------------------------------------------------ drain

    def drain(self) -> KernelTick:
        """Flip the double buffer and read out everything counted since the last drain."""
        b = self._bpf
        old = self._ctl.active & 1
        # A tick counter: the kernel writes generation `active & 1`; the whole value dates the
        # fds it marked as carrying no HTTP (tw_nohttp), which count for one tick only.
        self._ctl.active = (self._ctl.active + 1) & 0xFFFFFFFF
        self._write_ctl()
        time.sleep(FLIP_GRACE_SECONDS)
        slow = self._poll_events()  # first: the tokens the drained entries need
        table = b[b"tw_agg1" if old else b"tw_agg0"]
        nrows, identities = self._read_and_clear(table)
        self._insert_overflow(table)
        closes = self._drain_closes(old)
        cpu = self._drain_cpu(old)
        identities += self._take_swept_closes()
        runq, runq_sum = self._runq_totals()
        breach_events = tuple(self._breaches)
        self._breaches.clear()
        return KernelTick(identities=identities, lost=self._lost_deltas(),
                          targets=len(self.targets()), probes=dict(self.probes),
                          monotonic_ns=time.monotonic_ns(), cpu=cpu,
                          runq_bounds_seconds=RUNQ_BOUNDS_SECONDS, runq_buckets=runq,
                          runq_sum_ns=runq_sum, slow=slow, h2=self._take_h2(),
                          isolation=self._isolation_deltas(),
                          breaches=self._drain_breaches(old), breach_events=breach_events,
                          tables=self._tables(nrows, len(cpu), closes))

    def _isolation_deltas(self) -> tuple[IsolationCounts, ...]:
        """The response check's outcomes per side since the last drain (tw_iso)."""
        if self.response_check is None:
            return ()
        table = self._bpf[b"tw_iso"]
        out = []
        for side_index, side in ((abi.SIDE_SERVER, Side.SERVER), (abi.SIDE_CLIENT, Side.CLIENT)):
            if side not in self.response_check.sides:
                continue
            fields = {}
            for name, i in abi.ISO_OUTCOMES.items():
                slot = side_index * abi.ISO_N + i
                total = sum(int(x) for x in table[ct.c_int(slot)])
                fields[name] = total - self._iso_seen[slot]
                self._iso_seen[slot] = total
            out.append(IsolationCounts(side=side, **fields))
        return tuple(out)

    def _drain_breaches(self, gen: int) -> tuple[BreachCount, ...]:
        """Read and delete the breaching pairs of the generation the kernel no longer writes."""
        if self.response_check is None:
            return ()
        out = []
        for k, v in self._take_generation(b"tw_breach", gen):
            n = min(int(v.served_len), abi.VALUE_MAX)
            out.append(BreachCount(
                key=int(k.req_key), side=Side.SERVER if k.side == abi.SIDE_SERVER else Side.CLIENT,
                served=bytes(v.served[:n]), count=int(v.count)))
        return tuple(out)

    def _take_generation(self, name: bytes, gen: int) -> list[tuple[Any, Any]]:
        """Read and delete the entries of a map keyed with the tick generation (`gen` field)
        that belong to generation `gen`, the one the kernel no longer writes."""
        table = self._bpf[name]
        out = [(_copy(k, table.Key), _leaf(v, table.Leaf)) for k, v in self._entries(table)
               if k.gen == gen]
        self._delete(table, [k for k, _ in out])
        return out

    def _entries(self, table) -> list[tuple[Any, Any]]:
        """Every entry of ``table`` now: one BPF_MAP_LOOKUP_BATCH where the kernel has it (5.6+),
        else two syscalls an entry.  The batch's entries are views of one buffer: read them
        (or copy them) before the next call; a value of a simple type (a u64) comes as an int
        from the batch, as its ctypes type from the per-key path."""
        if self._batch_ok:
            try:
                return list(table.items_lookup_batch())
            except Exception as e:  # noqa: BLE001 - bcc raises bare Exception
                log.info("batch map operations unavailable (%s); using per-key drain", e)
                self._batch_ok = False
        return list(table.items())

    def _delete(self, table, keys: list | ct.Array) -> None:
        """Delete ``keys`` from ``table``: one BPF_MAP_DELETE_BATCH where the kernel has it, else
        one syscall a key; a key already gone is no error."""
        if not len(keys):
            return
        if self._batch_ok:
            try:
                table.items_delete_batch(keys if isinstance(keys, ct.Array)
                                         else (table.Key * len(keys))(*keys))
                return
            except Exception as e:  # noqa: BLE001 - bcc raises bare Exception
                # a key already gone (ENOENT) stops the batch there: the rest go per key
                log.debug("batch delete stopped (%s); deleting per key", e)
        for k in keys:
            try:
                del table[k]
            except KeyError:
                pass

    # One handler per event ring, each given one record's bytes: from the ring's memory, or
    # copied out of bcc's callback (_callback) where the records come that way.

    def _breach_record(self, record: bytes) -> None:
        e = abi.BreachEvent.from_buffer_copy(record)
        method = int(e.method).to_bytes(8, "big").lstrip(b"\0").decode("ascii", "replace")
        target = b"".join(int(w).to_bytes(8, "little") for w in e.target)
        n = min(int(e.served_len), abi.VALUE_MAX)
        self._breaches.append(BreachEvent(
            key=int(e.req_key), side=Side.SERVER if e.side == abi.SIDE_SERVER else Side.CLIENT,
            monotonic_ns=int(e.ts_ns), tgid=int(e.tgid), fd=int(e.fd), status=int(e.status),
            method=method, target=target[: min(int(e.target_len), abi.TARGET_BYTES)],
            served=bytes(e.served[:n])))

    def _slow_record(self, record: bytes) -> None:
        e = abi.SlowEvent.from_buffer_copy(record)
        method = int(e.method).to_bytes(8, "big").lstrip(b"\0").decode("ascii", "replace")
        self._slow.append(SlowRequest(
            key=int(e.key), side=Side.SERVER if e.side == abi.SIDE_SERVER else Side.CLIENT,
            start_monotonic_ns=int(e.start_ns), latency_ns=int(e.latency_ns), method=method,
            status=int(e.status), tgid=int(e.tgid)))

    def _token_record(self, record: bytes) -> None:
        e = abi.TokenEvent.from_buffer_copy(record)
        n = min(int(e.len), abi.TOKEN_MAX)
        key = int(e.key)
        self.tokens_received += 1
        start = abi.TokenEvent.b.offset
        self._tokens[key] = record[start:start + n]
        self._tokens.move_to_end(key)
        while len(self._tokens) > MAX_TOKENS:
            self._tokens.popitem(last=False)

    def _h2_record(self, record: bytes) -> None:
        event = _h2_event(record)
        if event is not None:
            self._h2.append(event)

    def poll_h2(self) -> tuple[H2Event, ...]:
        """Between ticks: read the event buffers now (HTTP/2 bytes fill the ring buffer far
        faster than once a tick can empty it) and give the HTTP/2 events read so far; the
        other events wait for drain()."""
        if self._bpf is None:
            return ()
        self._consume()
        return self._take_h2()

    def _consume(self) -> None:
        """Hand every record the rings or perf buffers hold to its handler, without waiting."""
        if self._rings:
            for ring, handler in self._rings:
                for record in ring.read():
                    handler(record)
        elif self._ringbuf:
            self._bpf.ring_buffer_consume()
        else:
            self._bpf.perf_buffer_poll(timeout=0)

    def _take_h2(self) -> tuple[H2Event, ...]:
        out = tuple(self._h2)
        self._h2.clear()
        return out

    def _poll_events(self) -> tuple[SlowRequest, ...]:
        """Consume the slow-request and token events; gives the slow requests."""
        self._consume()
        out = tuple(self._slow)
        self._slow.clear()
        return out

    @property
    def event_path(self) -> str:
        """How the event rings are read: from their memory (kernel/ringbuf.py; x86-64, 5.8+),
        through bcc's ring buffer callbacks (5.8+ elsewhere), or through perf buffers."""
        if self._rings:
            return "ring memory"
        return "ring buffer" if self._ringbuf else "perf buffer"

    def _drain_cpu(self, gen: int) -> tuple[CpuCounts, ...]:
        """Read and delete the CPU entries of the generation the kernel no longer writes.
        The busiest map of a burst (one entry per identity, process, CPU and side): read in one
        batch into a buffer and unpacked with struct, not an entry at a time through ctypes."""
        table = self._bpf[b"tw_cpu"]
        batch = self._raw_batch(table) if self._batch_ok else None
        if batch is None:
            return self._drain_cpu_per_entry(table, gen)
        keys, values = batch
        size = _CPU_KEY.size
        out = []
        gone = []
        overflow = None
        h2_bit = abi.CPU_H2
        server = abi.SIDE_SERVER
        for i, ((key, tgid, cpu, side, kgen), (ns,)) in enumerate(
                zip(_CPU_KEY.iter_unpack(keys), _U64.iter_unpack(values))):
            if kgen != gen or not ns:
                continue
            out.append(CpuCounts(key, tgid, cpu,
                                 Side.SERVER if side & 1 == server else Side.CLIENT, ns,
                                 bool(side & h2_bit)))
            if key == abi.KEY_OVERFLOW and tgid == 0:
                overflow = keys[i * size:(i + 1) * size]  # stays, zeroed, for the next full map
            else:
                gone.append(i)
        if overflow is not None:
            table[table.Key.from_buffer_copy(overflow)] = ct.c_uint64(0)
        if gone:
            raw = b"".join(keys[i * size:(i + 1) * size] for i in gone)
            self._delete(table, (table.Key * len(gone)).from_buffer_copy(raw))
        return tuple(out)

    def _drain_cpu_per_entry(self, table, gen: int) -> tuple[CpuCounts, ...]:
        out = []
        gone = []
        for k, v in table.items():
            ns = v if isinstance(v, int) else v.value
            if k.gen != gen or not ns:
                continue
            side = Side.SERVER if k.side & 1 == abi.SIDE_SERVER else Side.CLIENT
            out.append(CpuCounts(key=int(k.key), tgid=int(k.tgid), cpu=int(k.cpu), side=side,
                                 ns=int(ns), h2_stream=bool(k.side & abi.CPU_H2)))
            if k.key == abi.KEY_OVERFLOW and k.tgid == 0:
                table[_copy(k, table.Key)] = ct.c_uint64(0)
            else:
                gone.append(_copy(k, table.Key))
        self._delete(table, gone)
        return tuple(out)

    def _raw_batch(self, table, delete: bool = False) -> tuple[bytes, bytes] | None:
        """Every entry of ``table`` as two byte strings (keys, values), read with
        BPF_MAP_LOOKUP_BATCH (and deleted, with BPF_MAP_LOOKUP_AND_DELETE_BATCH, when
        ``delete``).  bcc's items_*_batch zero two arrays of the map's full size at each call
        and hand out a ctypes object per entry; here the kernel writes into anonymous memory,
        of which only the pages it wrote become resident, and only what it wrote is copied out.
        None, with the per-key path chosen for good, when the kernel has no batch operations."""
        from bcc.libbcc import lib

        call = lib.bpf_lookup_and_delete_batch if delete else lib.bpf_lookup_batch
        ksize, vsize = ct.sizeof(table.Key), ct.sizeof(table.Leaf)
        size = table.max_entries
        area = mmap.mmap(-1, (ksize + vsize) * size)
        kbuf = (ct.c_char * (ksize * size)).from_buffer(area)
        vbuf = (ct.c_char * (vsize * size)).from_buffer(area, ksize * size)
        try:
            token, count = ct.c_uint32(0), ct.c_uint32(0)
            total = 0
            while total < size:
                count.value = size - total
                res = call(table.map_fd, ct.byref(token) if total else None, ct.byref(token),
                           ct.byref(kbuf, ksize * total), ct.byref(vbuf, vsize * total),
                           ct.byref(count))
                err = ct.get_errno()
                total += count.value
                if res != 0:
                    if err == errno.ENOENT:
                        break  # the end of the map
                    log.info("batch map operations unavailable (%s); using per-key drain",
                             os.strerror(err))
                    self._batch_ok = False
                    return None
                if count.value == 0:
                    break  # no progress (a bucket too big for what is left of the buffer)
            return (ct.string_at(ct.addressof(kbuf), ksize * total),
                    ct.string_at(ct.addressof(vbuf), vsize * total))
        finally:
            del kbuf, vbuf  # the buffer exports end before the mapping goes
            area.close()

    def _runq_totals(self) -> tuple[tuple[int, ...], int]:
        table = self._bpf[b"tw_runq"]
        n = len(RUNQ_BOUNDS_SECONDS)
        buckets = tuple(sum(int(x) for x in table[ct.c_int(i)]) for i in range(n + 1))
        total = sum(int(x) for x in table[ct.c_int(abi.RUNQ_BUCKETS + 1)])
        return buckets, total

    def _tables(self, identities: int, cpu: int, closes: int) -> dict[str, tuple[int, int]]:
        """The kernel tables' fill: tw_conns now, the per-tick ones as the drained generation
        used them."""
        made, deleted = (sum(int(x) for x in self._bpf[b"tw_conn_count"][ct.c_int(i)])
                         for i in (0, 1))
        return {
            "connections": (max(0, made - deleted - self._swept_deletes), self.max_connections),
            "identities": (identities, self.max_identities),
            "cpu": (cpu, cpu_entries(self.max_identities)),
            "closes": (closes, self.max_connections + self.max_identities),
        }

    def _drain_closes(self, gen: int) -> int:
        """Closes the kernel counted in tw_closes (their identity had no room in a full
        aggregate map) in the generation it no longer writes: added to the swept closes, under
        the same key.  Gives the entries read."""
        rows = self._take_generation(b"tw_closes", gen)
        for k, v in rows:
            acc = self._swept_closes.setdefault((int(k.key), int(k.side)), [0, 0])
            acc[0] += int(v.closed)
            acc[1] += int(v.dur_ns)
        return len(rows)

    def _take_swept_closes(self) -> tuple[IdentityCounts, ...]:
        nb = len(self.bounds) + 1
        out = tuple(
            IdentityCounts(
                key=key, side=Side.SERVER if side == abi.SIDE_SERVER else Side.CLIENT,
                raw_value=None, source_index=-1, flags=ValueFlag.NONE,
                requests_by_class=(0,) * abi.NCLASS, request_heads=0, rx_bytes=0, tx_bytes=0,
                latency_buckets=(0,) * nb, latency_sum_ns=0, connections_opened=0,
                connections_closed=n, connections_duration_ns=dur)
            for (key, side), (n, dur) in self._swept_closes.items())
        self._swept_closes.clear()
        return out

    def _read_and_clear(self, table) -> tuple[int, tuple[IdentityCounts, ...]]:
        """Read and empty one aggregate map: (entries read, their counts).  One
        BPF_MAP_LOOKUP_AND_DELETE_BATCH unpacked with struct where the kernel has it (5.6+),
        else entry by entry and a clear."""
        nbounds = len(self.bounds)
        batch = self._raw_batch(table, delete=True) if self._batch_ok else None
        if batch is not None:
            keys, values = batch
            n = len(keys) // _AGG_KEY.size
            return n, tuple(_unpacked_counts(keys, values, nbounds, self._tokens))
        rows = [(ct.string_at(ct.byref(k), _AGG_KEY.size),
                 ct.string_at(ct.byref(v), _AGG_VAL.size)) for k, v in table.items()]
        table.clear()
        keys, values = b"".join(k for k, _ in rows), b"".join(v for _, v in rows)
        return len(rows), tuple(_unpacked_counts(keys, values, nbounds, self._tokens))

    @property
    def drain_path(self) -> str:
        return "batch" if self._batch_ok else "per-key"

    def _lost_deltas(self) -> dict[str, int]:
        table = self._bpf[b"tw_lost"]
        out = {}
        for i, reason in enumerate(abi.LOST_REASONS):
            total = sum(int(x) for x in table[ct.c_int(i)])
            delta = total - self._lost_seen[i]
            self._lost_seen[i] = total
            if delta:
                out[reason] = delta
        for reason, n in self._user_lost.items():
            out[reason] = out.get(reason, 0) + n
        self._user_lost.clear()
        return out

    @property
    def loaded(self) -> bool:
        """The programs are loaded and the maps can be read (between load() and close())."""
        return self._bpf is not None

    def close(self) -> None:
        """Detach everything (idempotent)."""
        for ring, _ in self._rings:
            ring.close()
        self._rings = []
        if self._bpf is not None:
            try:
                # tw_progs holds tw_parse, which holds tw_progs: empty it to break the cycle.
                with contextlib.suppress(Exception):
                    del self._bpf[b"tw_progs"][ct.c_int(0)]
                self._bpf.cleanup()
            finally:
                self._bpf = None


_C_INCLUDE = re.compile(r'^#include "(\w+\.c)"\s*$', re.MULTILINE)
# The programs in tw_progs, by index (bpf/include/tw_state.h TW_PROG_*).
TAIL_PROGRAMS = (b"tw_parse", b"tw_token", b"tw_token_emit", b"tw_h2")


def prefixes(names: Sequence[tuple]) -> abi.Pfx:
    """struct tw_pfx for HttpProbes.parser_names(): each name's words, and where it applies
    (framing headers everywhere, an identity header on requests of the sides that read it, a
    served-tenant header on responses of the sides checked).  A name's served bits (its 4th
    element) default to none."""
    x = abi.Pfx()
    for i in range(len(names), abi.NPFX):
        x.mask[i][0] = 0xFF  # a line starting with NUL: never (all zero would match any line)
    for i, (name, kind, slots, *rest) in enumerate(names[: abi.NPFX]):
        served = rest[0] if rest else 0
        want, mask, fold, exact = abi.pfx_words(name)
        for w in range(abi.PFX_WORDS):
            x.want[i][w], x.mask[i][w], x.fold[i][w] = want[w], mask[w], fold[w]
        for u, src in enumerate(abi.name_sources(slots, served)):
            x.source[i][u] = src
        x.kind[i], x.len[i], x.exact[i] = kind, len(name), int(exact)
        for side in (abi.SIDE_SERVER, abi.SIDE_CLIENT):
            for is_req in (0, 1):
                if kind != abi.NAME_IDENTITY or (is_req and slots[side] >= 0) or \
                        (not is_req and (served >> side) & 1):
                    x.use[side * 2 + is_req] |= 1 << i
                    x.filter[side * 2 + is_req] |= abi.name_filter(name)
    return x


def _side_index(side: Side) -> int:
    return abi.SIDE_SERVER if side is Side.SERVER else abi.SIDE_CLIENT


def _expand_c_includes(path: Path) -> str:
    """Expand `#include "name.c"` (files beside path, one level) in place."""
    return _C_INCLUDE.sub(lambda m: (path.parent / m.group(1)).read_text(), path.read_text())


def _pid_max() -> int:
    try:
        with open("/proc/sys/kernel/pid_max") as f:
            return max(64, int(f.read()))
    except (OSError, ValueError):
        return 1 << 22  # the largest pid_max the kernel allows


def _value_size(table) -> int:
    """A map's value size as the kernel has it (bcc's ctypes mangle 2-D arrays)."""
    try:
        return map_field(table.map_fd, "value_size")
    except OSError as e:
        raise KernelSupportError(f"cannot read the value size of a BPF map: {e}") from e


def _leaf(v, cls):
    """A map value as its own ctypes object, whether it came as one or as an int."""
    return cls(v) if isinstance(v, int) else _copy(v, cls)


def _copy(obj, cls):
    out = cls()
    ct.memmove(ct.byref(out), ct.byref(obj), ct.sizeof(cls))
    return out


_FLAGS: dict[int, ValueFlag] = {}  # the ValueFlag of each bit pattern met


def _unpacked_counts(keys: bytes, values: bytes, nbounds: int,
                     tokens: Mapping[int, bytes] | None) -> Iterator[IdentityCounts]:
    """The counts of an aggregate map's raw rows (keys and values end to end, as a batch call
    writes them; struct-unpacked, no ctypes object per row).  Rows that count nothing (an
    entry created and not yet written) are left out."""
    nc = abi.NCLASS
    lat0 = nc + 3  # after req_by_class, heads, rx_bytes, tx_bytes
    lat_end = lat0 + nbounds + 1
    rest = lat0 + abi.MAX_BUCKETS + 1  # lat_sum_ns, conn_opened, conn_closed, conn_dur_ns, hash2
    unknown, value_max = abi.VALUE_UNKNOWN, abi.VALUE_MAX
    server = abi.SIDE_SERVER
    for (key, side, _pad), v in zip(_AGG_KEY.iter_unpack(keys), _AGG_VAL.iter_unpack(values)):
        by_class = v[:nc]
        heads, rx, tx = v[nc], v[nc + 1], v[nc + 2]
        lat_sum, opened, closed, dur, _hash2, value_len, source, bits, lost = v[rest:rest + 9]
        if not (heads or any(by_class) or rx or tx or opened or closed or lost):
            continue
        raw: bytes | None = None
        if value_len == unknown:
            pass
        elif value_len <= value_max:
            raw = v[rest + 9][:value_len]
        else:  # a bearer token longer than the entry holds: whole from a token event, if any
            raw = (tokens or {}).get(key)
            if raw is not None and len(raw) != value_len:
                raw = None
        if raw is not None:
            raw = raw.lstrip(b" \t")  # a token's value starts after the name's ':' (OWS kept)
        bits &= 0x1FF
        flags = _FLAGS.get(bits)
        if flags is None:  # an enum member is built once per distinct bit pattern
            flags = _FLAGS[bits] = ValueFlag(bits)
        yield IdentityCounts(
            key=key, side=Side.SERVER if side == server else Side.CLIENT, raw_value=raw,
            source_index=source, flags=flags, requests_by_class=by_class, request_heads=heads,
            rx_bytes=rx, tx_bytes=tx, latency_buckets=v[lat0:lat_end], latency_sum_ns=lat_sum,
            connections_opened=opened, connections_closed=closed, connections_duration_ns=dur,
            losses=lost)


_H2_HEAD = struct.Struct("<QQIIBBB5x")  # abi.H2EventHead: conn, ts_ns, seq, len, side, is_req, flags
assert _H2_HEAD.size == ct.sizeof(abi.H2EventHead)


def _callback(handler: Callable[[bytes], None]) -> Callable[[Any, int, int], int]:
    """A bcc ring or perf buffer callback that hands ``handler`` the record's bytes."""
    def cb(_ctx, data, size) -> int:
        handler(ct.string_at(data, size))
        return 0
    return cb


# _h2_event builds an H2Event with tuple.__new__ (half the time of a NamedTuple's generated
# __new__ with keywords: thousands of records a second), so it relies on the field order.
assert H2Event._fields == ("conn", "side", "is_request", "seq", "ts_ns", "data", "closed",
                           "lost", "midstream")
_new_tuple = tuple.__new__


def _h2_event(record: bytes, _head=_H2_HEAD.size, _unpack=_H2_HEAD.unpack_from,
              _server=abi.SIDE_SERVER, _max=2 * abi.H2_CHUNK, _sides=(Side.CLIENT, Side.SERVER),
              _closed=abi.H2_F_CLOSED, _midstream=abi.H2_F_MIDSTREAM) -> H2Event | None:
    """One tw_h2_events record (from the ring's memory or a perf buffer's callback) as an
    H2Event; its bytes are bounded by the head's length, the record and two chunks.  (The
    keyword defaults bind constants as locals: a global or an enum member lookup per record
    cost more than the rest.)"""
    if len(record) < _head:
        return None  # shorter than the kernel ever writes
    conn, ts_ns, seq, length, side, is_req, flags = _unpack(record)
    n = min(length, len(record) - _head, _max)
    return _new_tuple(H2Event, (
        conn, _sides[side == _server], is_req != 0, seq, ts_ns,
        record[_head:_head + n] if n else b"", (flags & _closed) != 0, False,
        (flags & _midstream) != 0))


def _declared_tracepoints(text: str) -> list[str]:
    return [f"{c}:{e}" for c, e in re.findall(r"TRACEPOINT_PROBE\((\w+),\s*(\w+)\)", text)]


def _mount_tracefs() -> None:
    import subprocess

    for d in TRACEFS_DIRS[:1]:
        r = subprocess.run(["mount", "-t", "tracefs", "nodev", d], check=False,
                           capture_output=True, text=True)
        if r.returncode == 0 and tracefs_path():
            log.info("mounted tracefs at %s", d)
            return
    raise KernelSupportError("tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing); "
                             "run `tenantwatch doctor`")
