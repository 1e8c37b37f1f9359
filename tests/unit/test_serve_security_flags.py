"""``serve``'s security flags: the safe default (a listener beyond loopback needs credentials
or --insecure-no-auth, and says so), the gateway's TLS files defaulting to the native ones,
flags that go together, and no flag that takes a secret."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from streamd.cli import app as cli
from streamd.cli import serve
from streamd.config import ServerConfig


def config_of(*argv: str) -> ServerConfig:
    config: ServerConfig = serve._serve_config(cli.parse_args(["serve", *argv]))
    return config


def test_the_embedded_default_stays_open_on_loopback() -> None:
    config = config_of()
    assert config.credentials_file is None and config.tls_cert is None


@pytest.mark.parametrize("listen", ["0.0.0.0:7070", "[::]:7070", "10.1.2.3:7070", "h1.lan:7070"])
def test_a_listener_beyond_loopback_without_credentials_is_refused(listen: str) -> None:
    with pytest.raises(ValueError, match=r"reachable from other hosts.*--insecure-no-auth"):
        config_of("--listen", listen)
    assert config_of("--listen", listen, "--insecure-no-auth").listen_host in listen


def test_a_kinesis_listener_beyond_loopback_needs_credentials_too(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"--kinesis-listen 0\.0\.0\.0 is reachable"):
        config_of("--kinesis-listen", "0.0.0.0:4567")
    path = tmp_path / "c"
    path.write_text("[k]\naws_access_key_id = K\naws_secret_access_key = S\n")
    assert config_of("--kinesis-listen", "0.0.0.0:4567", "--kinesis-credentials", str(path))


def test_credentials_make_any_listen_address_acceptable(tmp_path: Path) -> None:
    path = tmp_path / "credentials.toml"
    path.write_text("")
    config = config_of("--listen", "0.0.0.0:7070", "--kinesis-listen", "0.0.0.0:4567",
                       "--credentials", str(path))  # fmt: skip
    assert config.credentials_file == path


def test_the_gateway_gets_the_native_tls_files_unless_given_its_own(tmp_path: Path) -> None:
    for name in ("a.pem", "a.key", "b.pem", "b.key"):
        (tmp_path / name).write_text("x")
    native = ("--tls-cert", str(tmp_path / "a.pem"), "--tls-key", str(tmp_path / "a.key"))
    config = config_of(*native)
    assert config.kinesis_tls_cert == tmp_path / "a.pem"
    own = ("--kinesis-tls-cert", str(tmp_path / "b.pem"), "--kinesis-tls-key",
           str(tmp_path / "b.key"))  # fmt: skip
    config = config_of(*native, *own)
    assert (config.tls_cert, config.kinesis_tls_cert) == (tmp_path / "a.pem", tmp_path / "b.pem")
    with pytest.raises(ValueError, match="--tls-cert and --tls-key go together"):
        config_of("--tls-cert", str(tmp_path / "a.pem"))
    with pytest.raises(ValueError, match="no such file"):
        config_of("--tls-cert", str(tmp_path / "nope"), "--tls-key", str(tmp_path / "a.key"))


def test_no_flag_takes_a_secret() -> None:
    root = argparse.ArgumentParser()
    serve.register(root.add_subparsers())
    parser = root._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    flags = [flag for action in parser._actions for flag in action.option_strings]
    # --kinesis-secret-key exists only to be refused with a message (tested elsewhere).
    assert [f for f in flags if "secret" in f] == ["--kinesis-secret-key"]
