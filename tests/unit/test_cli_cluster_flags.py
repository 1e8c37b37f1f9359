"""``streamd serve``'s cluster flags (CLUSTER-CONTRACT: --cluster, --node-id, --advertise,
--advertise-kinesis, --cluster-namespace, --cluster-id): what reaches the ServerConfig, and
each bad combination refused with a message naming the flag (exit 2, no traceback)."""

from __future__ import annotations

import pytest

from streamd.cli import app as cli
from streamd.cli import common, serve
from streamd.config import ServerConfig, is_wildcard_host, parse_cluster_url

CLUSTER = ("--cluster", "etcd://127.0.0.1:2379")


def config_of(*argv: str) -> ServerConfig:
    config: ServerConfig = serve._serve_config(cli.parse_args(["serve", *argv]))
    return config


def refusal(*argv: str) -> str:
    with pytest.raises(ValueError) as raised:
        config_of(*argv)
    return str(raised.value)


def test_without_cluster_the_config_is_the_embedded_default() -> None:
    config = config_of()
    assert config.cluster is None and config.node_id is None
    assert config.advertise is None and config.advertise_kinesis is None
    assert config.cluster_namespace == "streamd/" and config.cluster_id is None
    assert ServerConfig().cluster is None


def test_cluster_flags_reach_the_config_with_advertised_defaults_from_the_listeners() -> None:
    config = config_of(
        "--cluster", "etcd://10.0.0.1:2379,10.0.0.2", "--node-id", "node-1.a_b",
        "--listen", "127.0.0.1:7071", "--kinesis-listen", "127.0.0.1:4571",
    )  # fmt: skip
    assert config.cluster == ("http://10.0.0.1:2379", "http://10.0.0.2:2379")
    assert config.node_id == "node-1.a_b"
    assert config.advertise == "127.0.0.1:7071"
    assert config.advertise_kinesis == "127.0.0.1:4571"
    assert config.cluster_namespace == "streamd/"
    assert config.cluster_id is None


def test_explicit_advertise_namespace_and_cluster_id() -> None:
    config = config_of(
        *CLUSTER, "--node-id", "n1", "--listen", "0.0.0.0:7070", "--advertise", "h1.lan:7070",
        "--kinesis-listen", "[::]:4567", "--advertise-kinesis", "[fd00::1]:4567",
        "--cluster-namespace", "test-1/", "--cluster-id", "prod-eu", "--insecure-no-auth",
    )  # fmt: skip
    assert config.advertise == "h1.lan:7070"
    assert config.advertise_kinesis == "[fd00::1]:4567"
    assert config.cluster_namespace == "test-1/"
    assert config.cluster_id == "prod-eu"


def test_kinesis_off_advertises_no_kinesis_address() -> None:
    config = config_of(*CLUSTER, "--node-id", "n1", "--kinesis-listen", "off")
    assert config.kinesis_listen is None and config.advertise_kinesis is None


def test_cluster_needs_a_node_id() -> None:
    assert "--cluster needs --node-id" in refusal(*CLUSTER)


@pytest.mark.parametrize("node_id", ["", "a b", "n/1", "x" * 129, "nöde"])
def test_a_node_id_outside_the_key_alphabet_is_refused(node_id: str) -> None:
    message = refusal(*CLUSTER, "--node-id", node_id)
    assert "--node-id" in message and "[a-zA-Z0-9_.-]{1,128}" in message


def test_a_bad_cluster_id_is_refused() -> None:
    assert "--cluster-id" in refusal(*CLUSTER, "--node-id", "n1", "--cluster-id", "a/b")


@pytest.mark.parametrize(
    "url, says",
    [("127.0.0.1:2379", "expected etcd://"), ("http://127.0.0.1:2379", "expected etcd://"),
     ("etcd://", "empty etcd endpoint"), ("etcd://h1:2379,,h2:2379", "empty etcd endpoint"),
     ("etcd://h1:port", "numeric port"), ("etcd://h1:99999", "out of range"),
     ("etcd://h1:2379/v3", "no path"), ("etcd://:2379", "needs a host"),
     ("etcd://h1:0", "other than 0")],
)  # fmt: skip
def test_a_bad_etcd_url_is_refused(url: str, says: str) -> None:
    message = refusal("--cluster", url, "--node-id", "n1")
    assert message.startswith("--cluster: ") and says in message


def test_etcd_urls_parse_to_http_endpoints() -> None:
    assert parse_cluster_url("etcd://a:1, b ,[::1]:3,a:1") == (
        "http://a:1",
        "http://b:2379",
        "http://[::1]:3",
    )


@pytest.mark.parametrize("listen", ["0.0.0.0:7070", "[::]:7070", ":7070"])
def test_a_wildcard_listen_address_needs_advertise(listen: str) -> None:
    message = refusal(*CLUSTER, "--node-id", "n1", "--listen", listen)
    assert "--listen" in message and "--advertise HOST:PORT" in message


def test_a_wildcard_kinesis_listen_address_needs_advertise_kinesis() -> None:
    message = refusal(*CLUSTER, "--node-id", "n1", "--kinesis-listen", "0.0.0.0:4567")
    assert "--kinesis-listen" in message and "--advertise-kinesis HOST:PORT" in message


def test_port_0_in_cluster_mode_needs_advertise() -> None:
    assert "port 0" in refusal(*CLUSTER, "--node-id", "n1", "--listen", "127.0.0.1:0")


@pytest.mark.parametrize("advertise", ["0.0.0.0:7070", "h1:0", ":7070", "h1:x"])
def test_an_advertise_others_cannot_connect_to_is_refused(advertise: str) -> None:
    assert "--advertise" in refusal(*CLUSTER, "--node-id", "n1", "--advertise", advertise)


def test_advertise_kinesis_with_the_gateway_off_is_refused() -> None:
    message = refusal(
        *CLUSTER, "--node-id", "n1", "--kinesis-listen", "off", "--advertise-kinesis", "h:1"
    )
    assert "--advertise-kinesis" in message and "off" in message


@pytest.mark.parametrize("namespace", ["", "streamd", "a b/", "x\n/"])
def test_a_namespace_must_be_a_prefix_ending_in_a_slash(namespace: str) -> None:
    assert "--cluster-namespace" in refusal(
        *CLUSTER, "--node-id", "n1", "--cluster-namespace", namespace
    )


@pytest.mark.parametrize(
    "flags",
    [("--node-id", "n1"), ("--advertise", "h:1"), ("--advertise-kinesis", "h:1"),
     ("--cluster-namespace", "x/"), ("--cluster-id", "c")],
)  # fmt: skip
def test_cluster_only_flags_without_cluster_are_refused(flags: tuple[str, str]) -> None:
    message = refusal(*flags)
    assert message.startswith(flags[0]) and "needs --cluster" in message


def test_a_refused_flag_exits_2_with_one_line_and_no_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = cli.main(["serve", *CLUSTER, "--data-dir", "/nonexistent/never-created"])
    captured = capsys.readouterr()
    assert code == common.EXIT_USAGE
    assert captured.err == "error: --cluster needs --node-id ID (this node's name in the cluster)\n"


@pytest.mark.parametrize(
    "host, wildcard",
    [("0.0.0.0", True), ("::", True), ("[::]", True), ("", True), ("0:0::0", True),
     ("127.0.0.1", False), ("::1", False), ("h1.lan", False)],
)  # fmt: skip
def test_wildcard_hosts(host: str, wildcard: bool) -> None:
    assert is_wildcard_host(host) is wildcard
