"""Where the TLS uprobes go: the ELF reader and the prologue rules of kernel/ssl_points.py.

The rules run against FakeImage (named bytes at addresses, no file) for each layout, and
against this machine's libssl when it has one (Debian 12: OpenSSL 3.0).
"""

from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest

from tenantwatch.kernel.elf import ElfError, ElfImage
from tenantwatch.kernel.ssl_points import (
    EM_X86_64,
    ProbePoint,
    calls,
    emulated_entry,
    probe_points,
    wrapper_target,
)

ENDBR = b"\xf3\x0f\x1e\xfa"


class FakeImage:
    """A stand-in for ElfImage: symbols and code bytes at addresses, nothing else."""

    def __init__(self, code: dict[int, bytes], symbols: dict[str, int],
                 machine: int = EM_X86_64) -> None:
        self.code, self.symbols, self.machine = code, symbols, machine

    def symbol(self, name: str) -> int | None:
        return self.symbols.get(name)

    def read(self, vaddr: int, n: int) -> bytes:
        for base, b in self.code.items():
            if base <= vaddr < base + len(b):
                out = b[vaddr - base:vaddr - base + n]
                return out + b"\xcc" * (n - len(out))
        raise ElfError(f"{vaddr:#x} unmapped")


def call(at: int, target: int, op: int = 0xE8) -> bytes:
    return bytes([op]) + struct.pack("<i", target - (at + 5))


def openssl30(read_internal_prologue: bytes = b"\x41\x55\x41\x54",
              ex_prologue: bytes = b"\x48\x83\xec\x08") -> FakeImage:
    """SSL_read / SSL_read_ex / ssl_read_internal laid out as Debian's OpenSSL 3.0 build."""
    internal, read, read_ex = 0x1000, 0x2000, 0x3000
    plain = b"\x48\x83\xec\x18" + b"\x90" * 26  # sub $0x18,%rsp; nops up to the call
    plain += call(read + len(plain), internal) + b"\xc3"
    ex = ex_prologue + call(read_ex + len(ex_prologue), internal) + b"\xc3"
    return FakeImage({internal: read_internal_prologue + b"\xc3" * 8, read: plain, read_ex: ex},
                     {"SSL_read": read, "SSL_read_ex": read_ex})


def test_the_ex_wrapper_leads_to_the_internal_function():
    img = openssl30()
    assert wrapper_target(img, "SSL_read_ex") == 0x1000
    assert calls(img, "SSL_read", 0x1000)
    assert not calls(img, "SSL_read", 0x1004)
    assert emulated_entry(img, 0x1000) == 0x1000


def test_the_read_direction_is_probed_once_inside():
    (p,) = probe_points(openssl30())
    assert p == ProbePoint(0x1000, "tw_ssl_read_ex_enter", "SSL_read+SSL_read_ex", True)


def test_endbr64_is_stepped_over_in_both_functions():
    img = openssl30(read_internal_prologue=ENDBR + b"\x53",  # endbr64; push %rbx
                    ex_prologue=ENDBR + b"\x48\x83\xec\x08")
    (p,) = probe_points(img)
    assert p.internal and p.vaddr == 0x1004  # after endbr64: [rsp] is still the return address


@pytest.mark.parametrize("prologue", [
    b"\x48\x89\xc8",        # mov %rcx,%rax: not the accepted prologue
    b"\x31\xc9",            # xor %ecx,%ecx: an argument register changes
    b"\x48\x81\xec\x00\x01\x00\x00",  # sub $imm32,%rsp: not accepted (kept simple)
])
def test_a_wrapper_that_touches_anything_keeps_the_public_probes(prologue):
    points = probe_points(openssl30(ex_prologue=prologue))
    assert [(p.stands_for, p.internal) for p in points] == [("SSL_read", False),
                                                           ("SSL_read_ex", False)]
    assert [p.program for p in points] == ["tw_ssl_read_enter", "tw_ssl_read_ex_enter"]


def test_an_internal_function_that_starts_otherwise_keeps_the_public_probes():
    # sub $0x38,%rsp would be single-stepped: no gain, and not the layout the rules know.
    points = probe_points(openssl30(read_internal_prologue=b"\x48\x83\xec\x38"))
    assert not any(p.internal for p in points)


def test_a_plain_wrapper_that_does_not_call_it_keeps_the_public_probes():
    img = openssl30()
    img.code[0x2000] = b"\x48\x83\xec\x18" + b"\x90" * 40 + b"\xc3"  # SSL_read: no call
    assert not any(p.internal for p in probe_points(img))


def test_other_architectures_keep_the_public_probes():
    img = openssl30()
    img.machine = 183  # EM_AARCH64
    assert not any(p.internal for p in probe_points(img))


def test_a_library_without_the_functions_gives_no_points():
    assert probe_points(FakeImage({}, {})) == ()


# ---------------------------------------------------------------- the ELF reader

def test_not_elf_is_refused():
    with pytest.raises(ElfError):
        ElfImage(b"\x7fELX" + b"\0" * 60)
    with pytest.raises(ElfError):
        ElfImage(b"\x7fELF\x01\x01" + b"\0" * 58)  # 32-bit


def test_a_truncated_header_is_refused():
    head = bytearray(64)
    head[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<QQ", head, 32, 1 << 20, 0)  # program headers past the end
    struct.pack_into("<HHHH", head, 54, 56, 1, 64, 0)
    with pytest.raises(ElfError, match="truncated"):
        ElfImage(bytes(head))


LIBSSL = [p for p in (Path("/lib/x86_64-linux-gnu/libssl.so.3"),
                      Path("/usr/lib/x86_64-linux-gnu/libssl.so.3")) if p.exists()]


@pytest.mark.skipif(not LIBSSL, reason="no x86_64 libssl.so.3 on this machine")
def test_this_machines_libssl():
    img = ElfImage.open(str(LIBSSL[0]))
    for sym in ("SSL_read", "SSL_read_ex", "SSL_write", "SSL_write_ex", "SSL_set_fd"):
        assert img.symbol(sym), sym
    assert img.read(img.symbol("SSL_read"), 4) != b""
    points = probe_points(img)
    assert len(points) in (2, 4)  # internal per direction, or the public pair of each


def crafted_elf(nsyms: int, dynstr: bytes, name_off: int = 0) -> bytes:
    """A 64-bit ELF with one .dynsym of nsyms functions, all named at name_off in dynstr."""
    head = bytearray(64)
    head[:6] = b"\x7fELF\x02\x01"
    shoff = 64
    symoff = shoff + 3 * 64
    stroff = symoff + nsyms * 24
    struct.pack_into("<QQ", head, 32, 0, shoff)
    struct.pack_into("<HHHH", head, 54, 56, 0, 64, 3)
    sh = bytearray(3 * 64)
    # [1] .dynsym (type 11) linked to [2]; [2] .dynstr
    struct.pack_into("<IIQQQQIIQQ", sh, 64, 0, 11, 0, 0, symoff, nsyms * 24, 2, 0, 8, 24)
    struct.pack_into("<IIQQQQIIQQ", sh, 128, 0, 3, 0, 0, stroff, len(dynstr), 0, 0, 1, 0)
    sym = struct.pack("<IBBHQQ", name_off, 0x12, 0, 1, 0x1000, 0) * nsyms
    return bytes(head) + bytes(sh) + sym + dynstr


def test_a_crafted_string_table_is_refused_quickly():
    # every symbol names a string without an end: once a full scan of the file per symbol
    started = time.monotonic()
    with pytest.raises(ElfError, match="no name"):
        ElfImage(crafted_elf(50_000, b"A" * (8 << 20) + b"\0"))
    assert time.monotonic() - started < 5  # ~0.1 s here; unbounded it took minutes


def test_a_name_must_end_inside_its_table_and_be_short():
    assert ElfImage(crafted_elf(1, b"SSL_read\0")).symbol("SSL_read") == 0x1000
    with pytest.raises(ElfError):
        ElfImage(crafted_elf(1, b"SSL_read") + b"\0")  # the NUL is past .dynstr
    with pytest.raises(ElfError):
        ElfImage(crafted_elf(1, b"x" * 2000 + b"\0"))


def test_too_many_symbols_are_refused_before_any_is_read():
    data = bytearray(crafted_elf(1, b"a\0"))
    struct.pack_into("<Q", data, 64 + 64 + 32, 24 * (1 << 20))  # .dynsym claims 1M symbols
    with pytest.raises(ElfError, match="more than"):
        ElfImage(bytes(data))
