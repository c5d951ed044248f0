"""Where the relay's config comes from, and how a change to it is noticed.

A `ConfigSource` reads the manifest file (and either the Secret documents inside it or the Secrets
mounted by the operator under `--secrets-dir`) into a checked `RelayConfig`. `fingerprint()` hashes
every input, so a reload is triggered by a real change: Kubernetes updates mounted ConfigMaps and
Secrets by swapping a symlink, which an mtime check on the file alone can miss.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

from smtp_relay.config.domains import resolve_domains
from smtp_relay.config.manifest import load_file, load_mounted_secrets
from smtp_relay.config.resolved import RelayConfig, resolve


def config_digest(text: bytes) -> str:
    """The identity of a config file's content, as the relay reports it and the operator computes it."""
    return hashlib.sha256(text).hexdigest()[:16]


@dataclass(frozen=True)
class ConfigSource:
    """The manifest file and, in a pod, the folder of mounted Secrets."""

    manifest: Path
    secrets_dir: Path | None = None

    def load(self) -> RelayConfig:
        """Read and check everything; raise ManifestError naming each problem."""
        try:
            digest = config_digest(self.manifest.read_bytes())
        except OSError:
            digest = ""  # load_file says why
        manifest = load_file(self.manifest)
        secrets = dict(manifest.secrets)
        if self.secrets_dir is not None:
            secrets.update(load_mounted_secrets(self.secrets_dir))
        config = dataclasses.replace(resolve(manifest.name, manifest.namespace, manifest.spec, secrets), digest=digest)
        # Known when the file holds the domains: a local file always does (none means none); in a pod, only
        # once the operator rendered them (until then senders needing verification are deferred, not refused).
        if manifest.domains_included or self.secrets_dir is None:
            config = dataclasses.replace(config, sending_domains=resolve_domains(manifest.domains, secrets))
        return config

    def fingerprint(self) -> str:
        """A digest of every input file; changes whenever a reload could change something."""
        digest = hashlib.sha256()
        paths = [self.manifest]
        if self.secrets_dir is not None and self.secrets_dir.is_dir():
            paths += sorted(p for p in self.secrets_dir.rglob("*") if p.is_file() and "..2" not in str(p))
        for path in paths:
            digest.update(str(path).encode())
            try:
                digest.update(path.read_bytes())
            except OSError:
                digest.update(b"<unreadable>")
        return digest.hexdigest()
