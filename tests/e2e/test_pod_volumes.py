"""The relay kubelet's projected volumes behave as the kubelet's: one atomic swap per update, stale keys gone, and
the relay's change detection sees every update (what hot reload in the fleet tests relies on)."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from smtp_relay.config.source import ConfigSource
from tests.harness.pod_volumes import Source, VolumeNotReady, payload, read_payload, source_of, write_atomic


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_a_projection_is_a_data_symlink_swap_with_one_link_per_key(tmp_path: Path) -> None:
    folder = tmp_path / "vol"
    write_atomic(folder, {"tls.crt": b"one", "tls.key": b"k1"}, 0o440)
    first = os.readlink(folder / "..data")
    assert first.startswith("..2") and os.readlink(folder / "tls.crt") == "..data/tls.crt"
    assert (folder / "tls.crt").read_bytes() == b"one" and (folder / "tls.key").stat().st_mode & 0o777 == 0o440
    write_atomic(folder, {"tls.crt": b"two"})
    second = os.readlink(folder / "..data")
    assert second != first and not (folder / first).exists(), "the old payload folder is removed after the swap"
    assert read_payload(folder) == {"tls.crt": b"two"}
    assert not (folder / "tls.key").is_symlink(), "a key the object no longer has disappears"


def test_payloads_of_configmaps_and_secrets(tmp_path: Path) -> None:
    config = source_of({"name": "config", "configMap": {"name": "r-config"}})
    assert config == Source("configmaps", "r-config")
    assert payload(config, {"data": {"relay.yaml": "spec: {}"}}) == {"relay.yaml": b"spec: {}"}
    secret = source_of({"name": "t", "secret": {"secretName": "tls", "defaultMode": 0o440}})
    assert secret is not None and secret.mode == 0o440
    assert payload(secret, {"data": {"tls.crt": _b64("C")}, "stringData": {"x": "y"}}) == {"tls.crt": b"C", "x": b"y"}
    with pytest.raises(VolumeNotReady, match="secret 'tls' not found"):
        payload(secret, None)
    optional = source_of({"name": "o", "secret": {"secretName": "gone", "optional": True}})
    assert optional is not None and payload(optional, None) == {}
    picked = source_of({"name": "p", "secret": {"secretName": "s", "items": [{"key": "token", "path": "t/tok"}]}})
    assert picked is not None and payload(picked, {"data": {"token": _b64("T"), "other": _b64("O")}}) == {"t/tok": b"T"}
    with pytest.raises(VolumeNotReady, match="has no key 'token'"):
        payload(picked, {"data": {}})
    assert source_of({"name": "spool", "persistentVolumeClaim": {"claimName": "c"}}) is None


def test_the_relay_notices_every_projected_update(tmp_path: Path) -> None:
    manifest = tmp_path / "relay.yaml"
    manifest.write_text("kind: SmtpRelay\n")
    secrets = tmp_path / "secrets"
    write_atomic(secrets / "relay-tls", {"tls.crt": b"first"})
    source = ConfigSource(manifest, secrets)
    before = source.fingerprint()
    assert source.fingerprint() == before, "stable while nothing changes"
    write_atomic(secrets / "relay-tls", {"tls.crt": b"renewed"})
    assert source.fingerprint() != before
