"""The netperm-table reader: tokeniser, lines, program lists, prefixes."""

import pytest
from hypothesis import given, settings, strategies as st

from support.programs import REFERENCE_TABLE
from smapd.table import netperm
from smapd.table.netperm import Table, TokenError, quote, tokenize


@pytest.mark.parametrize("text, tokens", [
    ("a b  c", ["a", "b", "c"]),
    ("\ta\t b ", ["a", "b"]),
    ("", []),
    ("   ", []),
    ('"two words" x', ["two words", "x"]),
    ("'single quoted' x", ["single quoted", "x"]),
    ('ab"c d"e', ["abc de"]),
    ('""', [""]),
    ("a\\ b", ["a b"]),
    ('"say \\"hi\\""', ['say "hi"']),
    ("tab\\there", ["tab\there"]),
    ("new\\nline", ["new\nline"]),
    ("back\\\\slash", ["back\\slash"]),
    ("\\q", ["q"]),
    (",a ,b,, c", ["a", "b,,", "c"]),
    (",,, a", ["a"]),
    ("# not a comment", ["#", "not", "a", "comment"]),
    ("'it''s'", ["its"]),
    ('"a\'b"', ["a'b"]),
])
def test_tokenize(text, tokens):
    assert tokenize(text) == tokens


@pytest.mark.parametrize("text, problem", [
    ('"open', "unterminated \" quote"),
    ("'open", "unterminated ' quote"),
    ("end\\", "backslash at the end of the line"),
])
def test_tokenize_errors(text, problem):
    with pytest.raises(TokenError, match=problem):
        tokenize(text)


def parse(text):
    return Table.parse(text.encode(), "t")


def test_comments_only_in_column_zero():
    t = parse("# comment\n#smap: userid 1\nsmap: banner a # b\n\n   \n")
    assert t.diagnostics == [] and len(t.rules) == 1
    # "  # not a comment" has a program list "#", which is not a name.
    t = parse("  # indented: keyword\n")
    assert [str(d) for d in t.diagnostics] == ["t:1: error: bad program name '#' (a name or '*')"]
    t = parse("smap: banner a # b\n")
    assert t.rules[0].args == ("a", "#", "b")


def test_program_lists_and_star():
    t = parse("smap, smapd  ssl-gw,x: userid 99\n*: timeout 5\nother: timeout 6\n")
    assert t.rules[0].programs == ("smap", "smapd", "ssl-gw", "x")
    assert [r.line for r in t.rules_for(["smapd"])] == [1, 2]
    assert [r.line for r in t.rules_for(["other"])] == [2, 3]
    assert t.program_names() == ["smap", "smapd", "ssl-gw", "x", "other"]


def test_first_colon_splits():
    t = parse("smap: listen [::1]:25\n")
    assert t.rules[0].keyword == "listen" and t.rules[0].args == ("[::1]:25",)


def test_permit_and_deny_prefixes():
    t = parse("smap: permit-hosts 10.*\nsmap: DENY-hosts *\nsmap: permit- x\nsmap: relay-domain x\n")
    assert [(r.flag, r.keyword) for r in t.rules] == [
        ("permit", "hosts"), ("deny", "hosts"), (None, "permit-"), (None, "relay-domain")]


def test_keywords_fold_case_and_crlf_lines():
    t = parse("smap: MaxBytes 10\r\nsmap: banner x\r\n")
    assert [(r.keyword, r.args) for r in t.rules] == [("maxbytes", ("10",)), ("banner", ("x",))]


@pytest.mark.parametrize("line, message", [
    ("smap userid 99", "no ':' after the program list"),
    (": userid 99", "empty program list before ':'"),
    ("smap:", "no keyword after ':'"),
    ("smap:    ", "no keyword after ':'"),
    ("sm/ap: userid 99", "bad program name 'sm/ap'"),
    ('smap: banner "unterminated', "unterminated \" quote"),
    ("smap: banner x\\", "backslash at the end of the line"),
    ("smap: banner a\0b", "NUL byte"),
])
def test_malformed_lines_name_file_and_line(line, message):
    t = Table.parse(f"# first\nsmap: userid 1\n{line}\n".encode(), "/etc/table")
    assert len(t.diagnostics) == 1
    d = t.diagnostics[0]
    assert (d.file, d.line, d.severity) == ("/etc/table", 3, "error")
    assert message in d.message
    assert str(d).startswith("/etc/table:3: error: ")
    assert [r.line for r in t.rules] == [2]


def test_invalid_utf8_is_a_line_error():
    t = Table.parse(b"smap: banner \xff\xfe\nsmap: userid 1\n", "t")
    assert [str(d) for d in t.diagnostics] == ["t:1: error: the line is not valid UTF-8"]
    assert len(t.rules) == 1


def test_unreadable_table():
    with pytest.raises(netperm.ConfigError) as e:
        Table.read("/nonexistent/netperm-table")
    assert str(e.value) == "/nonexistent/netperm-table: error: cannot read the table: No such file or directory"


def test_reference_table_parses():
    t = Table.read(REFERENCE_TABLE)
    assert t.diagnostics == []
    assert t.program_names() == ["smmap", "smmapd", "smtpd"]
    by_line = {r.line: r for r in t.rules}
    assert by_line[6].programs == ("smmap", "smmapd") and by_line[6].args == ("99",)
    assert by_line[13].keyword == "executable"
    assert [r.args[0] for r in t.rules if r.keyword == "nospam"] == ["RFC821", "ns-required", "maps-rbl"]
    assert by_line[48].programs == ("smtpd",) and by_line[48].args == ("4000000",)


# ---------------------------------------------------------------- properties

@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=400))
def test_parser_never_crashes_on_bytes(data):
    t = Table.parse(data, "fuzz")
    for d in t.diagnostics:
        assert d.severity == "error" and d.file == "fuzz" and d.line >= 1
    for r in t.rules:
        assert r.programs and r.keyword and r.line >= 1


_tokens = st.lists(st.text(st.characters(blacklist_categories=("Cs",)), max_size=12), max_size=6)


@settings(max_examples=400, deadline=None)
@given(_tokens)
def test_quoted_tokens_round_trip(tokens):
    line = " ".join(quote(t) for t in tokens)
    assert tokenize(line) == tokens


@settings(max_examples=300, deadline=None)
@given(_tokens.filter(lambda ts: len(ts) > 0 and not any("\0" in t for t in ts)))
def test_table_line_round_trips(tokens):
    # A table line may hold any character but NUL, which is refused.
    keyword = "kw" + "".join(c for c in tokens[0] if c.isalnum())[:5]
    args = tokens[1:]
    text = f"smap: {keyword} " + " ".join(quote(a) for a in args) + "\n"
    t = Table.parse(text.encode("utf-8", "surrogatepass"), "t")
    assert t.diagnostics == []
    assert t.rules[0].args == tuple(args)
