"""The ``streamd`` command line without a server: argument parsing, ``--from`` positions,
stdin line handling for ``put``, the ``read --json`` record shape, exit codes."""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

import pytest

from streamd.cli import app as cli
from streamd.cli import common, records, serve
from streamd_client import Position
from streamd_client.model import make_sequence

SEQ = make_sequence(3, 42)


def parse(*argv: str) -> argparse.Namespace:
    return cli.parse_args(list(argv))


def test_serve_defaults_are_the_embedded_default() -> None:
    args = parse("serve")
    assert args.data_dir == Path("./streamd-data")
    assert args.listen == "127.0.0.1:7070"
    assert args.fsync == "always"
    assert args.log_format == "console"


def test_serve_rejects_an_unknown_fsync_mode(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse("serve", "--fsync", "sometimes")
    assert exit_info.value.code == common.EXIT_USAGE


def test_endpoint_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMD_ENDPOINT", "10.0.0.1:9999")
    assert parse("stream", "list").endpoint == "10.0.0.1:9999"
    assert parse("stream", "list", "--endpoint", "h:1").endpoint == "h:1"
    monkeypatch.delenv("STREAMD_ENDPOINT")
    assert parse("stream", "list").endpoint == "127.0.0.1:7070"


def test_endpoint_is_accepted_before_or_after_the_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STREAMD_ENDPOINT", "10.0.0.1:9999")
    assert parse("--endpoint", "a:1", "stream", "list").endpoint == "a:1"
    assert parse("--endpoint", "a:1", "read", "s", "--limit", "1").endpoint == "a:1"
    assert parse("--endpoint", "a:1", "group", "list", "s").endpoint == "a:1"
    assert parse("--endpoint", "a:1", "shard", "split", "s", "x").endpoint == "a:1"
    # Given twice: the last one (after the command) wins.
    assert parse("--endpoint", "a:1", "stream", "list", "--endpoint", "b:2").endpoint == "b:2"
    # bench: an --endpoint before it counts; without any it starts its own server (not $ENV).
    assert parse("--endpoint", "a:1", "bench", "produce").endpoint == "a:1"
    assert parse("bench", "consume").endpoint is None


def test_endpoint_check_refuses_urls_and_values_without_a_port(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv, needle in [
        (["--endpoint", "http://127.0.0.1:4567", "stream", "list"], "--endpoint: endpoint "),
        (["stream", "list", "--endpoint", "https://h:1"], "is a URL (https://)"),
        (["stream", "list", "--endpoint", "localhost"], "must look like host:port"),
        # A cluster's bootstrap list: each address checked, the bad one named.
        (["stream", "list", "--endpoint", "127.0.0.1:1,bad"], "host:port, got 'bad'"),
    ]:
        assert cli.main(argv) == common.EXIT_USAGE
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1 and "Traceback" not in err
    monkeypatch.setenv("STREAMD_ENDPOINT", "http://127.0.0.1:4567")
    assert cli.main(["stream", "list"]) == common.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("error: $STREAMD_ENDPOINT: endpoint 'http://127.0.0.1:4567' is a URL")
    assert "--listen address (127.0.0.1:7070 by default)" in err


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    with pytest.raises(SystemExit) as exit_info:
        parse("--version")
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"streamd {pyproject['project']['version']}\n"


def test_stream_create_requires_shards() -> None:
    with pytest.raises(SystemExit):
        parse("stream", "create", "orders")
    args = parse("stream", "create", "orders", "--shards", "4", "--retention-hours", "48")
    assert (args.name, args.shards, args.retention_hours) == ("orders", 4, 48)


def test_read_options() -> None:
    args = parse("read", "s", "--shard", "shardId-000000000001", "--limit", "5", "--follow")
    assert (args.shard, args.limit, args.follow, args.json, args.start) == (
        "shardId-000000000001",
        5,
        True,
        False,
        "trim-horizon",
    )


def test_bench_endpoint_defaults_to_starting_a_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMD_ENDPOINT", "10.0.0.1:9999")
    args = parse("bench", "produce", "--records", "1000", "--repeat", "1", "--json")
    assert args.endpoint is None and args.records == 1000 and args.json


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("trim-horizon", Position.trim_horizon()),
        ("latest", Position.latest()),
        (f"at:{SEQ}", Position.at_sequence(SEQ)),
        (f"after:{SEQ}", Position.after_sequence(SEQ)),
        ("ts:2024-05-01T00:00:00Z", Position.at_timestamp(1_714_521_600_000)),
        ("ts:2024-05-01T00:00:00", Position.at_timestamp(1_714_521_600_000)),
        ("ts:2024-05-01T02:00:00+02:00", Position.at_timestamp(1_714_521_600_000)),
    ],
)
def test_parse_position(text: str, expected: Position) -> None:
    assert common.parse_position(text) == expected


@pytest.mark.parametrize("text", ["", "oldest", "at:", "at:123", "after:x", "ts:yesterday"])
def test_parse_position_rejects(text: str) -> None:
    with pytest.raises(common.CliError):
        common.parse_position(text)


def test_iso_time_round_trips_through_parse_timestamp() -> None:
    assert common.iso_time(1_714_521_600_123) == "2024-05-01T00:00:00.123Z"
    assert common.parse_timestamp_ms(common.iso_time(1_714_521_600_123)) == 1_714_521_600_123


def test_split_lines_keeps_the_unfinished_rest() -> None:
    lines, rest = records.split_lines(b"par", b"tial\nsecond\n\nthi")
    assert lines == [b"partial", b"second", b""]
    assert rest == b"thi"


def test_unreachable_endpoint_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    # Port 1 on loopback: nothing listens there, the connection is refused at once.
    code = cli.main(["stream", "list", "--endpoint", "127.0.0.1:1"])
    captured = capsys.readouterr()
    assert code == common.EXIT_UNREACHABLE
    assert captured.err.startswith("error: CONNECTION_LOST")
    assert "Traceback" not in captured.err


def test_bad_from_exits_1_without_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["read", "s", "--from", "oldest", "--endpoint", "127.0.0.1:1"])
    captured = capsys.readouterr()
    assert code == common.EXIT_ERROR
    assert "--from 'oldest'" in captured.err and "Traceback" not in captured.err


def test_serve_connection_limits_reach_the_config() -> None:
    config = serve._serve_config(parse("serve", "--kinesis-listen", "off"))
    assert (config.connections_max, config.connections_per_address_max) == (1024, None)
    assert (config.handshake_timeout_ms, config.idle_timeout_ms) == (10_000, 600_000)
    assert config.kinesis_idle_timeout_ms == 120_000
    config = serve._serve_config(
        parse(
            "serve",
            "--kinesis-listen",
            "off",
            "--connections-max",
            "64",
            "--connections-per-address-max",
            "8",
            "--handshake-timeout-s",
            "2.5",
            "--idle-timeout-s",
            "30",
            "--kinesis-idle-timeout-s",
            "5",
        )
    )
    assert (config.connections_max, config.connections_per_address_max) == (64, 8)
    assert (config.handshake_timeout_ms, config.idle_timeout_ms) == (2500, 30_000)
    assert config.kinesis_idle_timeout_ms == 5000


@pytest.mark.parametrize(
    "flag, value",
    [("--connections-max", "0"), ("--connections-per-address-max", "-1"),
     ("--idle-timeout-s", "0"), ("--handshake-timeout-s", "inf")],
)  # fmt: skip
def test_serve_connection_limits_must_be_positive(flag: str, value: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse("serve", flag, value)
    assert exit_info.value.code == common.EXIT_USAGE


def test_serve_kinesis_account_id_reaches_the_config() -> None:
    assert serve._serve_config(parse("serve")).kinesis_account_id == "000000000000"
    config = serve._serve_config(parse("serve", "--kinesis-account-id", "123456789012"))
    assert config.kinesis_account_id == "123456789012"
    for bad in ("12345678901", "1234567890123", "12345678901a", "١٢٣٤٥٦٧٨٩٠١٢"):
        with pytest.raises(ValueError, match="--kinesis-account-id"):
            serve._serve_config(parse("serve", "--kinesis-account-id", bad))


def test_serve_quotas_are_off_unless_asked_for() -> None:
    from streamd.quotas import KINESIS_QUOTAS, QUOTAS_OFF

    assert serve._serve_config(parse("serve")).quotas == QUOTAS_OFF
    assert serve._serve_config(parse("serve", "--quotas", "kinesis")).quotas == KINESIS_QUOTAS
    custom = serve._serve_config(
        parse("serve", "--quotas", "kinesis", "--shard-write-records-per-s", "10")
    ).quotas
    assert custom.write_records_per_s == 10 and custom.write_bytes_per_s == 1024 * 1024
    alone = serve._serve_config(parse("serve", "--shard-read-calls-per-s", "3")).quotas
    assert alone.read_calls_per_s == 3 and alone.write_bytes_per_s is None
