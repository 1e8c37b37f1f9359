"""EtcdProcess without etcd installed: a clear failure that says how to install it (the etcd
tests fail with it; they are never skipped)."""

from __future__ import annotations

import pytest

from streamd.testing.etcd import EtcdNotInstalledError, EtcdProcess


def test_missing_etcd_fails_with_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("STREAMD_ETCD_BIN", raising=False)
    process = EtcdProcess()
    try:
        with pytest.raises(EtcdNotInstalledError, match="apt-get install etcd-server"):
            process.start()
        assert not process.running
    finally:
        process.close()
    assert not process.data_dir.exists()
