"""The few facts tenantwatch reads from an ELF shared library: dynamic symbols and their bytes.

Takes: a path to a 64-bit little-endian ELF file (a libssl).  Gives: `ElfImage.symbol(name)`, the
virtual address of an exported function, and `ElfImage.read(vaddr, n)`, the bytes the process
would see there (through the PT_LOAD segment that maps them).  No dependency: the formats are the
System V gABI's, read with struct.  Anything else (32-bit, big-endian, truncated, not ELF) raises
`ElfError`, and callers fall back to what they did without it.

The file comes from a target's root (``/proc/PID/root/...``): whoever controls that container
controls it.  Every walk is bounded (the bytes read, the symbols, each name's length, which must
end inside its string table), so a crafted file costs at most a few hundred milliseconds of a
tick, never a stall.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# Bytes of a file read at most: libssl is under 1 MiB, libcrypto ~5 MiB; a bound keeps a hostile
# or huge file from being read whole.
MAX_ELF_BYTES = 64 << 20
# Dynamic symbols read at most (libcrypto 3 exports ~5000) and the longest name taken.
MAX_SYMBOLS = 1 << 17
MAX_NAME = 1024

PT_LOAD = 1
SHT_DYNSYM = 11
STT_FUNC = 2


class ElfError(ValueError):
    """The file is not a 64-bit little-endian ELF file this reader understands."""


@dataclass(frozen=True)
class Segment:
    vaddr: int
    offset: int
    filesz: int


class ElfImage:
    """Dynamic function symbols and loadable segments of one ELF file."""

    def __init__(self, data: bytes) -> None:
        if len(data) < 64 or data[:4] != b"\x7fELF":
            raise ElfError("not an ELF file")
        if data[4] != 2 or data[5] != 1:
            raise ElfError("not a 64-bit little-endian ELF file")
        self.data = data
        (self.machine,) = struct.unpack_from("<H", data, 18)
        phoff, shoff = struct.unpack_from("<QQ", data, 32)
        phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", data, 54)
        self.segments = tuple(self._segments(phoff, phentsize, phnum))
        self.functions = self._dynamic_functions(shoff, shentsize, shnum)

    @classmethod
    def open(cls, path: str) -> ElfImage:
        """Read path (at most MAX_ELF_BYTES). Raises OSError or ElfError."""
        with open(path, "rb") as f:
            data = f.read(MAX_ELF_BYTES + 1)
        if len(data) > MAX_ELF_BYTES:
            raise ElfError(f"larger than {MAX_ELF_BYTES} bytes")
        return cls(data)

    def _unpack(self, fmt: str, off: int) -> tuple:
        try:
            return struct.unpack_from(fmt, self.data, off)
        except struct.error as e:
            raise ElfError(f"truncated at offset {off}") from e

    def _segments(self, phoff: int, entsize: int, num: int):
        for i in range(num):
            p_type, _flags, offset, vaddr, _paddr, filesz = self._unpack(
                "<IIQQQQ", phoff + i * entsize)
            if p_type == PT_LOAD:
                yield Segment(vaddr, offset, filesz)

    def _dynamic_functions(self, shoff: int, entsize: int, num: int) -> dict[str, int]:
        sections = [self._unpack("<IIQQQQIIQQ", shoff + i * entsize) for i in range(num)]
        out: dict[str, int] = {}
        for sh in sections:
            if sh[1] != SHT_DYNSYM:
                continue
            offset, size, link, symsize = sh[4], sh[5], sh[6], sh[9]
            if link >= len(sections) or symsize < 24:
                raise ElfError("bad .dynsym section")
            if size // symsize > MAX_SYMBOLS:
                raise ElfError(f".dynsym has {size // symsize} symbols, more than {MAX_SYMBOLS}")
            strtab = sections[link][4]
            strend = min(strtab + sections[link][5], len(self.data))
            for i in range(size // symsize):
                name_off, info, _other, shndx, value, _size = self._unpack(
                    "<IBBHQQ", offset + i * symsize)
                if info & 0xF != STT_FUNC or shndx == 0 or value == 0:
                    continue  # not a function, or an import
                start = strtab + name_off
                end = self.data.find(b"\0", start, min(strend, start + MAX_NAME + 1))
                if end < 0:
                    raise ElfError(f"symbol {i}: no name of at most {MAX_NAME} bytes ending "
                                   "inside .dynstr")
                out[self.data[start:end].decode("ascii", "replace")] = value
        return out

    def symbol(self, name: str) -> int | None:
        """The virtual address of exported function name, or None."""
        return self.functions.get(name)

    def read(self, vaddr: int, n: int) -> bytes:
        """n bytes at vaddr as mapped by a PT_LOAD segment. Raises ElfError when unmapped."""
        for s in self.segments:
            if s.vaddr <= vaddr and vaddr + n <= s.vaddr + s.filesz:
                off = s.offset + (vaddr - s.vaddr)
                return self.data[off:off + n]
        raise ElfError(f"address {vaddr:#x} is not in a loadable segment")
