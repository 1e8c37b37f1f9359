"""Records on the command line without a server: ``put`` lines to (data, key), records to
``read`` lines (plain, --json, --raw), and the refusals (streamd/cli/lines.py)."""

from __future__ import annotations

import base64

import pytest

from streamd.cli import app as cli
from streamd.cli import common
from streamd.cli.lines import (
    MissingKeyError,
    RecordInputError,
    parse_put_line,
    plain_line,
    record_document,
    terminal_text,
)
from streamd_client import Record
from streamd_client.model import make_sequence

SEQ = make_sequence(3, 42)


def test_put_plain_line_takes_the_given_key() -> None:
    assert parse_put_line(b"hello", False, "k") == (b"hello", "k")


def test_put_plain_line_gets_a_random_key_only_when_asked() -> None:
    (data, key), (data2, key2) = (parse_put_line(b"hi", False, None, True) for _ in range(2))
    assert data == data2 == b"hi" and key != key2 and len(key) == 32
    with pytest.raises(MissingKeyError):
        parse_put_line(b"hi", False, None)


def test_put_json_line() -> None:
    line = b'{"partition_key": "user-1", "data": "caf\\u00e9"}'
    assert parse_put_line(line, True, None) == ("café".encode(), "user-1")
    binary = base64.b64encode(b"\x00\xff").decode()
    line = f'{{"data": "{binary}", "encoding": "base64"}}'.encode()
    assert parse_put_line(line, True, "fallback") == (b"\x00\xff", "fallback")
    assert parse_put_line(
        b'{"data": "00ff", "encoding": "hex", "partition_key": "p"}', True, None
    ) == (
        b"\x00\xff",
        "p",
    )


def test_put_json_line_keys_empty_or_missing_are_refused_unless_random() -> None:
    missing = b'{"data": "x"}'
    empty = b'{"data": "x", "partition_key": ""}'
    with pytest.raises(MissingKeyError, match='no "partition_key"'):
        parse_put_line(missing, True, None)
    for default in (None, "fallback"):  # an explicit empty key is never replaced silently
        with pytest.raises(MissingKeyError, match="is empty"):
            parse_put_line(empty, True, default)
    for line in (missing, empty):
        _, key = parse_put_line(line, True, None, True)
        assert len(key) == 32


@pytest.mark.parametrize(
    "line",
    [
        b"not json",
        b'["data"]',
        b'{"partition_key": "k"}',
        b'{"data": 5}',
        b'{"data": "x", "partition_key": 7}',
        b'{"data": "***", "encoding": "base64"}',
        b'{"data": "zz", "encoding": "hex"}',
        b'{"data": "\\ud800", "partition_key": "k"}',
        b'{"data": "x", "encoding": "rot13"}',
    ],
)
def test_put_json_line_rejects(line: bytes) -> None:
    with pytest.raises(RecordInputError):
        parse_put_line(line, True, "k")


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"plain text", "plain text"),
        ("héllo wörld ✓".encode(), "héllo wörld ✓"),
        (b"tab\tand\r\nnewlines", "tab\tand\r\nnewlines"),
        (b"", ""),
        (b"\x1b[31mred\x1b[0m", None),  # a terminal escape: not printed as is
        (b"nul\x00byte", None),
        ("c1 \u009b control".encode(), None),
        (b"\xff\xfe\x00", None),  # not UTF-8
    ],
)
def test_terminal_text(data: bytes, text: str | None) -> None:
    assert terminal_text(data) == text


def test_plain_line_is_text_else_base64_or_hex() -> None:
    assert plain_line(b"hello") == b"hello\n"
    assert plain_line(b"\x00\xff\x1b") == base64.b64encode(b"\x00\xff\x1b") + b"\n"
    assert plain_line(b"\x00\xff\x1b", "hex") == b"00ff1b\n"


def test_record_document_text_and_binary() -> None:
    text = Record("shardId-000000000000", SEQ, "k", "héllo".encode(), 1_714_521_600_000, 0)
    assert record_document(text) == {
        "shard_id": "shardId-000000000000",
        "sequence_number": SEQ,
        "partition_key": "k",
        "data": "héllo",
        "arrival_time": "2024-05-01T00:00:00.000Z",
    }
    binary = Record("shardId-000000000000", SEQ, "k", b"\xff\x00", 0, 0)
    document = record_document(binary)
    assert document["encoding"] == "base64"
    assert base64.b64decode(document["data"]) == b"\xff\x00"
    assert record_document(binary, "hex")["data"] == "ff00"
    # UTF-8 with control characters is still text in JSON: JSON escapes them.
    escape = Record("shardId-000000000000", SEQ, "k", b"\x1b[0m", 0, 0)
    assert record_document(escape)["data"] == "\x1b[0m" and "encoding" not in record_document(
        escape
    )


def test_put_without_a_key_or_with_an_empty_one_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Refused before stdin is read or a server is reached (port 1: nothing listens there).
    for argv, needle in [
        (["put", "s"], "put needs a partition key: --partition-key K"),
        (["put", "s", "--partition-key", ""], "--partition-key must not be empty"),
    ]:
        assert cli.main([*argv, "--endpoint", "127.0.0.1:1"]) == common.EXIT_USAGE
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(["put", "s", "--partition-key", "k", "--random-key"])
    assert exit_info.value.code == common.EXIT_USAGE


def test_read_forms_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.parse_args(["read", "s", "--json", "--raw"])
    args = cli.parse_args(["read", "s", "--binary", "hex"])
    assert (args.binary, args.raw, args.json) == ("hex", False, False)
    code = cli.main(["read", "s", "--raw", "--binary", "hex", "--endpoint", "127.0.0.1:1"])
    assert code == common.EXIT_USAGE
    assert "--binary does not go with --raw" in capsys.readouterr().err
