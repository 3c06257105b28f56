"""Where the TLS uprobes go in one libssl file, so that a probe hit costs a trap and no single-step.

Takes: a libssl file (tenantwatch.kernel.elf).  Gives: `probe_points(image)`, the address and
entry program of each probe, as `ProbePoint`s.

Why: the kernel runs most probed instructions out of line with a single-step (a second trap).
In this VM class that single-step costs ~16 us (`bench/uprobe_cost.py`), so a probe on
`SSL_read`'s first instruction (`sub $0x18,%rsp` in Debian's OpenSSL 3.0) costs ~16 us per call,
where a probe on an instruction the kernel emulates (a `push`, a `call`) costs ~0.4 us.  OpenSSL's
public functions are thin wrappers: `SSL_read`, `SSL_read_ex` call `ssl_read_internal(s, buf,
num, &readbytes)`, and `SSL_write`, `SSL_write_ex` call `ssl_write_internal(s, buf, num,
&written)`; those internal functions start with `push` (saving callee-saved registers).  So when
the `_ex` wrapper is exactly `[endbr64] [sub $imm8,%rsp] call|jmp INTERNAL` -- its four argument
registers reach INTERNAL unchanged, so INTERNAL takes the `_ex` arguments -- and the plain
wrapper calls the same INTERNAL, and INTERNAL starts with a push, both wrappers are probed at
INTERNAL with the `_ex` entry program.  Anything else (another OpenSSL version's layout, a
different compiler, another architecture) keeps the probes on the four public functions, which is
always right, only slower where single-steps are slow.
"""

from __future__ import annotations

from dataclasses import dataclass

from tenantwatch.kernel.elf import ElfError, ElfImage

EM_X86_64 = 62
ENDBR64 = b"\xf3\x0f\x1e\xfa"
SUB_RSP_IMM8 = b"\x48\x83\xec"  # sub $imm8,%rsp
CALL_REL32, JMP_REL32 = 0xE8, 0xE9
# How far into the plain wrapper (SSL_read, SSL_write) its call of INTERNAL is looked for: the
# Debian 3.0 build calls it at +0x1e after a length check and the stack protector set-up.
WRAPPER_SCAN_BYTES = 96

# (plain wrapper, _ex wrapper, entry program for the _ex arguments, entry program for the plain).
FUNCTIONS = (
    ("SSL_read", "SSL_read_ex", "tw_ssl_read_ex_enter", "tw_ssl_read_enter"),
    ("SSL_write", "SSL_write_ex", "tw_ssl_write_ex_enter", "tw_ssl_write_enter"),
)


@dataclass(frozen=True)
class ProbePoint:
    """One entry probe (and a return probe, tw_ssl_return, at the same address)."""

    vaddr: int        # virtual address in the library file
    program: str      # entry program of bpf/tls.c
    stands_for: str   # the public function(s) it sees, for logs and doctor
    internal: bool    # True: inside the library, not an exported symbol


def _rel32_target(code: bytes, at: int, base: int) -> int:
    rel = int.from_bytes(code[at + 1:at + 5], "little", signed=True)
    return base + at + 5 + rel


def wrapper_target(image: ElfImage, wrapper: str) -> int | None:
    """The function `wrapper` hands its unchanged argument registers to, or None.

    Accepts only `[endbr64] [sub $imm8,%rsp] call|jmp rel32`: nothing before the call touches
    rdi, rsi, rdx or rcx.
    """
    addr = image.symbol(wrapper)
    if addr is None:
        return None
    code = image.read(addr, 16)
    i = len(ENDBR64) if code.startswith(ENDBR64) else 0
    if code[i:i + 3] == SUB_RSP_IMM8:
        i += 4
    if code[i] not in (CALL_REL32, JMP_REL32):
        return None
    return _rel32_target(code, i, addr)


def calls(image: ElfImage, caller: str, target: int) -> bool:
    """Whether `caller` calls (or jumps to) target within its first WRAPPER_SCAN_BYTES bytes.

    A byte scan, not a decode: an E8/E9 byte inside another instruction would have to encode
    exactly `target` to be taken for a call of it.
    """
    addr = image.symbol(caller)
    if addr is None:
        return False
    code = image.read(addr, WRAPPER_SCAN_BYTES + 5)
    return any(code[i] in (CALL_REL32, JMP_REL32) and _rel32_target(code, i, addr) == target
               for i in range(WRAPPER_SCAN_BYTES))


def emulated_entry(image: ElfImage, addr: int) -> int | None:
    """addr (after an endbr64) when the function starts with a push; else None.

    After endbr64 nothing has touched the stack, so a return probe there still finds the return
    address on top of it.
    """
    code = image.read(addr, 8)
    i = len(ENDBR64) if code.startswith(ENDBR64) else 0
    op = code[i]
    if 0x50 <= op <= 0x57 or (op == 0x41 and 0x50 <= code[i + 1] <= 0x57):
        return addr + i
    return None


def probe_points(image: ElfImage) -> tuple[ProbePoint, ...]:
    """The entry probes for SSL_read*/SSL_write* in this library (SSL_set_fd is separate).

    Per direction: one probe on the internal function when the layout above is found, else the
    two public functions as they are.
    """
    points: list[ProbePoint] = []
    for plain, ex, ex_program, plain_program in FUNCTIONS:
        internal = None
        if image.machine == EM_X86_64:
            try:
                target = wrapper_target(image, ex)
                if target is not None and calls(image, plain, target):
                    internal = emulated_entry(image, target)
            except (ElfError, IndexError):
                internal = None
        if internal is not None:
            points.append(ProbePoint(internal, ex_program, f"{plain}+{ex}", True))
            continue
        for sym, program in ((plain, plain_program), (ex, ex_program)):
            addr = image.symbol(sym)
            if addr is not None:
                points.append(ProbePoint(addr, program, sym, False))
    return tuple(points)
