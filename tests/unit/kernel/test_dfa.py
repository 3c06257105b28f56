"""The lexer table the kernel runs, executed here byte by byte (no kernel needed)."""

from __future__ import annotations

from tenantwatch.kernel import dfa


def run(data: bytes, start: str = "RQ0"):
    """Return (final state name, [(offset, action or event id)]) for the non-trivial bytes."""
    state = dfa.S[start]
    out = []
    for i, b in enumerate(data):
        e = dfa.TRANSITIONS[state][dfa.CLASSES[b]]
        state = e & 0xFF
        act = (e >> dfa.ACTION_SHIFT) & 0xFF
        if act:
            out.append((i, act))
        if act >= dfa.E_FIRST:
            break
    return dfa.STATE_NAMES[state], out


def test_request_head_ends_at_the_blank_line():
    head = b"GET /x HTTP/1.1\r\nHost: a\r\nX-Tenant-ID: alpha\r\n\r\n"
    state, acts = run(head)
    assert state == "HDONE"
    assert acts[-1] == (len(head) - 1, dfa.E_HEAD_END)
    assert [a for _, a in acts].count(dfa.A_NAME_END) == 2
    assert [a for _, a in acts].count(dfa.A_LINE_END) == 2


def test_bare_lf_line_endings_are_accepted():
    assert run(b"GET / HTTP/1.0\nA: b\n\n")[0] == "HDONE"


def test_status_line_digits_are_actions():
    state, acts = run(b"HTTP/1.1 204 No Content\r\n\r\n", start="RS0")
    assert state == "HDONE"
    assert [a for _, a in acts].count(dfa.A_STATUS) == 3


def test_not_http_dies_on_the_start_line():
    for blob in (b"\x16\x03\x01\x02\x00", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"get / HTTP/1.1\r\n",
                 b"GET / HTTP/2\r\n", b"\x00\x00\x00"):
        state, acts = run(blob)
        assert state == "DEAD", blob
        assert acts[-1][1] == dfa.E_DEAD
        # dying before HS is not a loss (bpf/http.c counts resync only from HS on)
        assert dfa.STATE_NAMES.index("HS") > max(dfa.S[n] for n in ("RQ0", "V7", "LREST"))


def test_obs_fold_and_lone_cr_are_flagged():
    _, acts = run(b"GET / HTTP/1.1\r\nX-Tenant-ID: a\r\n b\r\n\r\n")
    assert dfa.A_FOLD in [a for _, a in acts]
    _, acts = run(b"GET / HTTP/1.1\r\nX-Tenant-ID: a\rb\r\n\r\n")
    assert dfa.A_VALUE_BAD in [a for _, a in acts]


def test_chunk_size_line():
    _state, acts = run(b"1a;ext=1\r\n", start="CS")
    assert [a for _, a in acts] == [dfa.A_HEX, dfa.A_HEX, dfa.E_CHUNK_LINE]


def test_header_matches_the_generated_c_header():
    text = dfa.header_text()
    assert f"#define TW_S_HS {dfa.S['HS']}" in text
    assert f"#define TW_E_DEAD {dfa.E_DEAD}" in text


def test_skip_steps_end_at_lf_in_hs_with_no_action():
    # bpf/parse.c skips a TW_STEP_SKIP line a word at a time and sets HS after its '\n'
    # without a DFA byte: that is only right while the table says exactly this.
    skip_states = [i for i, step in enumerate(dfa.STEPS) if step == dfa.STEP_SKIP]
    assert {dfa.STATE_NAMES[i] for i in skip_states} == {"SKIP", "LREST"}
    for state in skip_states:
        for cls in range(dfa.NCLASSES):
            e = dfa.TRANSITIONS[state][cls]
            assert (e >> dfa.ACTION_SHIFT) & 0xFF == dfa.A_NONE
            want = dfa.S["HS"] if cls == dfa.C_LF else state
            assert e & 0xFF == want, (dfa.STATE_NAMES[state], cls)
