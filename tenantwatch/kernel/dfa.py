"""The HTTP/1.x head lexer the kernel runs, as a table built here.

bpf/http.c executes one table lookup per byte: ``entry = trans[state][cls[byte]]``;
the low 8 bits of the entry are the next state, the rest are action bits that the
C code applies (hash a header-name byte, keep a value byte, ...).  A table keeps the
per-byte code in the kernel tiny, so the verifier explores a 256-byte window in
~600k instructions instead of hitting its 1M limit, and it lets the
tests here check the grammar without a kernel.

Constants below are mirrored in bpf/include/tw_dfa.h (checked by tests/unit).
"""

from __future__ import annotations

import ctypes as ct
from collections.abc import Iterable

NSTATES = 64
NCLASSES = 32

# ---------------------------------------------------------------- classes
C_OTHER = 0  # visible token char not listed below (lowercase letters g-z, digits are separate)
C_CR = 1
C_LF = 2
C_SP = 3
C_HTAB = 4
C_COLON = 5
C_H = 6
C_T = 7
C_P = 8
C_SLASH = 9
C_DOT = 10
C_ONE = 11  # '1'
C_DIGIT = 12  # 0, 2-9
C_UHEX = 13  # A-F
C_UPPER = 14  # other capitals
C_LHEX = 15  # a-f
C_SEMI = 16
C_SEP = 17  # visible separators that are not token chars: "(),<=>?@[\]{}  and DQUOTE
C_CTL = 18  # other controls and DEL
C_HIGH = 19  # 0x80-0xff (obs-text)


def char_class(b: int) -> int:
    if b == 0x0D:
        return C_CR
    if b == 0x0A:
        return C_LF
    if b == 0x20:
        return C_SP
    if b == 0x09:
        return C_HTAB
    if b < 0x20 or b == 0x7F:
        return C_CTL
    if b >= 0x80:
        return C_HIGH
    c = chr(b)
    return {
        ":": C_COLON, "H": C_H, "T": C_T, "P": C_P, "/": C_SLASH, ".": C_DOT, "1": C_ONE,
        ";": C_SEMI,
    }.get(c) or (
        C_DIGIT if c.isdigit() else
        C_UHEX if c in "ABCDEF" else
        C_UPPER if c.isupper() else
        C_LHEX if c in "abcdef" else
        C_SEP if c in '"(),<=>?@[\\]{}' else
        C_OTHER
    )


# ---------------------------------------------------------------- states
# Order matters: every state before "HS" belongs to the start line (bpf/http.c
# counts lost(resync) only when a message dies at or after HS), and HS..HLF are the
# header-line states (a request cut there by the scan budget is still counted).
STATE_NAMES = [
    "RQ0", "METHOD", "TARGET0", "TARGET", "V0", "V1", "V2", "V3", "V4", "V5", "V6", "V7", "V8",
    "V9", "RS0", "R1", "R2", "R3", "R4", "R5", "R6", "R7", "R8", "ST0", "ST1", "ST2", "LREST",
    "HS", "HNAME", "HOWS", "HVAL", "HCR", "HTOK", "SKIP", "HLF", "CS", "CSCR", "CEXT", "CCRLF",
    "TS", "TL", "DEAD", "UNTIL_CLOSE", "HDONE", "RESYNC",
]
S: dict[str, int] = {n: i for i, n in enumerate(STATE_NAMES)}
assert len(STATE_NAMES) <= NSTATES

# ---------------------------------------------------------------- actions
# Bits 8..15 of an entry hold ONE action id (a switch in the kernel: every case
# rejoins at one point, so the verifier merges the paths of a byte).
A_NONE = 0
A_NAME_FIRST = 1  # h1 = seed1, pos = 0, then as A_NAME
A_NAME = 2  # h1 = (h1 ^ lower(b)) * P1; pos++
A_NAME_END = 3  # look the name up in tw_names
A_VALUE = 4  # a value byte for the current header kind
A_VALUE_BAD = 5  # a value byte after a lone CR
A_BAD = 6  # a lone CR inside a value
A_LINE_END = 7  # header line ended
A_METHOD = 8  # word = word << 8 | b
A_METHOD_END = 9  # word == "HEAD" -> M_HEAD
A_STATUS = 10  # status = status * 10 + digit
A_HEX = 11  # num = num * 16 + hex digit
A_FOLD = 12  # obs-fold continuation line
A_NUM_RESET = 13  # num = 0
# Events (ids >= E_FIRST): the byte loop stops and tw_parse handles them.
E_FIRST = 16
E_HEAD_END = 16
E_CHUNK_LINE = 17
E_MESSAGE_END = 18
E_DEAD = 19
E_TOKEN = 20  # a bearer token value starts (or goes on): tw_token reads it, from this byte
ACTION_SHIFT = 8

TOKEN = (C_OTHER, C_H, C_T, C_P, C_DOT, C_ONE, C_DIGIT, C_UHEX, C_UPPER, C_LHEX)
VISIBLE = TOKEN + (C_COLON, C_SLASH, C_SEMI, C_SEP, C_HIGH)
UPPER = (C_H, C_T, C_P, C_UHEX, C_UPPER)
DIGITS = (C_ONE, C_DIGIT)
HEX = DIGITS + (C_UHEX, C_LHEX)
ALL = tuple(range(NCLASSES))


def _build() -> list[list[int]]:
    dead = S["DEAD"] | E_DEAD << ACTION_SHIFT
    t = [[dead] * NCLASSES for _ in range(NSTATES)]

    def on(state: str, classes: Iterable[int], nxt: str, action: int = A_NONE) -> None:
        for c in classes:
            t[S[state]][c] = S[nxt] | action << ACTION_SHIFT

    # request line: METHOD SP TARGET SP HTTP/1.x CRLF
    on("RQ0", (C_CR, C_LF), "RQ0")
    on("RQ0", UPPER, "METHOD", A_METHOD)
    on("METHOD", UPPER, "METHOD", A_METHOD)
    on("METHOD", (C_SP,), "TARGET0", A_METHOD_END)
    on("TARGET0", VISIBLE, "TARGET")
    on("TARGET", VISIBLE, "TARGET")
    on("TARGET", (C_SP,), "V0")
    for a, b, c in (("V0", "V1", C_H), ("V1", "V2", C_T), ("V2", "V3", C_T), ("V3", "V4", C_P),
                    ("V4", "V5", C_SLASH), ("V5", "V6", C_ONE), ("V6", "V7", C_DOT)):
        on(a, (c,), b)
    on("V7", DIGITS, "V8")
    on("V8", (C_CR,), "V9")
    on("V8", (C_LF,), "HS")
    on("V9", (C_LF,), "HS")
    # status line: HTTP/1.x SP DDD anything CRLF
    on("RS0", (C_CR, C_LF), "RS0")
    for a, b, c in (("RS0", "R1", C_H), ("R1", "R2", C_T), ("R2", "R3", C_T), ("R3", "R4", C_P),
                    ("R4", "R5", C_SLASH), ("R5", "R6", C_ONE), ("R6", "R7", C_DOT)):
        on(a, (c,), b)
    on("R7", DIGITS, "R8")
    on("R8", (C_SP,), "ST0")
    on("ST0", DIGITS, "ST1", A_STATUS)
    on("ST1", DIGITS, "ST2", A_STATUS)
    on("ST2", DIGITS, "LREST", A_STATUS)
    on("LREST", ALL, "LREST")
    on("LREST", (C_LF,), "HS")
    # header lines
    on("HS", (C_CR,), "HLF")
    on("HS", (C_LF,), "HDONE", E_HEAD_END)
    on("HS", (C_SP, C_HTAB), "SKIP", A_FOLD)
    on("HS", TOKEN, "HNAME", A_NAME_FIRST)
    on("HS", (C_COLON, C_SLASH, C_SEMI, C_SEP, C_CTL, C_HIGH), "SKIP")
    on("HNAME", TOKEN, "HNAME", A_NAME)
    on("HNAME", (C_COLON,), "HOWS", A_NAME_END)
    on("HNAME", (C_SP, C_HTAB, C_CR, C_SLASH, C_SEMI, C_SEP, C_CTL, C_HIGH), "SKIP")
    on("HNAME", (C_LF,), "HS")
    on("HOWS", (C_SP, C_HTAB), "HOWS")
    on("HOWS", (C_CR,), "HCR")
    on("HOWS", (C_LF,), "HS", A_LINE_END)
    on("HOWS", VISIBLE + (C_CTL,), "HVAL", A_VALUE)
    on("HVAL", VISIBLE + (C_CTL, C_SP, C_HTAB), "HVAL", A_VALUE)
    on("HVAL", (C_CR,), "HCR")
    on("HVAL", (C_LF,), "HS", A_LINE_END)
    on("HCR", (C_LF,), "HS", A_LINE_END)
    on("HCR", VISIBLE + (C_CTL, C_SP, C_HTAB), "HVAL", A_VALUE_BAD)
    on("HCR", (C_CR,), "HCR", A_BAD)
    # HTOK: tw_parse set it after the name of a bearer-token header (or tw_token, when a
    # window ended inside the value); any byte hands the value to tw_token.
    on("HTOK", ALL, "HTOK", E_TOKEN)
    on("SKIP", ALL, "SKIP")
    on("SKIP", (C_LF,), "HS")
    on("HLF", (C_LF,), "HDONE", E_HEAD_END)
    # chunked bodies
    on("CS", HEX, "CS", A_HEX)
    on("CS", (C_SEMI, C_SP, C_HTAB), "CEXT")
    on("CS", (C_CR,), "CSCR")
    on("CS", (C_LF,), "CS", E_CHUNK_LINE)
    on("CSCR", (C_LF,), "CS", E_CHUNK_LINE)
    on("CEXT", ALL, "CEXT")
    on("CEXT", (C_LF,), "CS", E_CHUNK_LINE)
    on("CCRLF", (C_CR,), "CCRLF")
    on("CCRLF", (C_LF,), "CS", A_NUM_RESET)
    on("TS", (C_CR,), "TS")
    on("TS", (C_LF,), "TS", E_MESSAGE_END)
    on("TS", [c for c in ALL if c not in (C_CR, C_LF)], "TL")
    on("TL", ALL, "TL")
    on("TL", (C_LF,), "TS")
    # terminal states
    on("DEAD", ALL, "DEAD")
    on("UNTIL_CLOSE", ALL, "UNTIL_CLOSE")
    on("HDONE", ALL, "HDONE")
    # out of step with the stream: tw_exit waits for a syscall that starts a message
    on("RESYNC", ALL, "RESYNC")
    return t


TRANSITIONS: list[list[int]] = _build()

# ---------------------------------------------------------------- word steps
# What one step of bpf/http.c's loop does in a state, besides a DFA byte (struct tw_dfa.step).
# A table rather than tests of the state: the kernel branches on the step kind, so the
# verifier never learns the state (a known state on some paths would split them).
STEP_BYTE = 0  # one DFA byte
STEP_LINE = 1  # HS: a header line's name, a word at a time
STEP_SKIP = 2  # SKIP, LREST: up to the line end, words at a time
STEP_TARGET = 3  # TARGET: up to the end of the request target, words at a time
STEP_METHOD = 4  # RQ0: a request line's method
STEP_VERSION = 5  # V0: a request line's version and line end
STEP_STATUS = 6  # RS0: a status line up to its reason phrase
STEPS: tuple[int, ...] = tuple(
    {"HS": STEP_LINE, "SKIP": STEP_SKIP, "LREST": STEP_SKIP, "TARGET": STEP_TARGET,
     "RQ0": STEP_METHOD, "V0": STEP_VERSION, "RS0": STEP_STATUS}.get(n, STEP_BYTE)
    for n in STATE_NAMES) + (STEP_BYTE,) * (NSTATES - len(STATE_NAMES))
CLASSES: tuple[int, ...] = tuple(char_class(b) for b in range(256))
LOWER: tuple[int, ...] = tuple(b | 0x20 if 0x41 <= b <= 0x5A else b for b in range(256))
DIGIT_VALUE: tuple[int, ...] = tuple(b - 0x30 if 0x30 <= b <= 0x39 else 0 for b in range(256))
HEX_VALUE: tuple[int, ...] = tuple(int(chr(b), 16) if chr(b) in "0123456789abcdefABCDEF" else 0
                                   for b in range(256))


class Dfa(ct.Structure):
    """struct tw_dfa of bpf/include/tw_dfa.h."""

    _fields_ = [
        ("trans", (ct.c_uint32 * NCLASSES) * NSTATES),
        ("cls", ct.c_uint8 * 256),
        ("lower", ct.c_uint8 * 256),
        ("dval", ct.c_uint8 * 256),
        ("hval", ct.c_uint8 * 256),
        ("step", ct.c_uint8 * NSTATES),
    ]


def dfa_struct() -> Dfa:
    d = Dfa()
    for s in range(NSTATES):
        for c in range(NCLASSES):
            d.trans[s][c] = TRANSITIONS[s][c]
    for b in range(256):
        d.cls[b] = CLASSES[b]
        d.lower[b] = LOWER[b]
        d.dval[b] = DIGIT_VALUE[b]
        d.hval[b] = HEX_VALUE[b]
    for st in range(NSTATES):
        d.step[st] = STEPS[st]
    return d


def header_text() -> str:
    """The C header with the state, class and action constants (bpf/include/tw_dfa.h)."""
    lines = [
        "/* tw_dfa.h: generated by tenantwatch/kernel/dfa.py -- do not edit.",
        " * `python -m tenantwatch.kernel.dfa > bpf/include/tw_dfa.h` regenerates it. */",
        "#ifndef TW_DFA_H", "#define TW_DFA_H", "",
        f"#define TW_NSTATES {NSTATES}", f"#define TW_NCLASSES {NCLASSES}", "",
    ]
    lines += [f"#define TW_S_{n} {i}" for i, n in enumerate(STATE_NAMES)]
    lines.append("")
    lines += [f"#define TW_{name} {value}" for name, value in globals().items()
              if name.startswith("C_") and isinstance(value, int)]
    lines.append("")
    lines += [f"#define TW_{name} {value}" for name, value in globals().items()
              if (name[:2] in ("A_", "E_") or name == "ACTION_SHIFT") and isinstance(value, int)]
    lines.append("")
    lines += [f"#define TW_{name} {value}" for name, value in globals().items()
              if name.startswith("STEP_") and isinstance(value, int)]
    lines += [
        "", "struct tw_dfa {",
        "\t__u32 trans[TW_NSTATES][TW_NCLASSES];  /* next state (bits 0-7) | action id (8-15) */",
        "\t__u8 cls[256];    /* byte -> class */",
        "\t__u8 lower[256];  /* ASCII lowercase */",
        "\t__u8 dval[256];   /* decimal digit value */",
        "\t__u8 hval[256];   /* hex digit value */",
        "\t__u8 step[TW_NSTATES];  /* TW_STEP_*: what a loop step does in the state */",
        "};", "", "#endif /* TW_DFA_H */", "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(header_text(), end="")
