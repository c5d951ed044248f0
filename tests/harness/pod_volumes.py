"""A pod's volumes as files, as the kubelet projects them: ConfigMaps and Secrets, emptyDirs, claims.

Why: a relay started for an emulated pod must read its config where the pod spec mounts it and see
updates the way a real pod does. The kubelet's AtomicWriter writes a ConfigMap or Secret volume as a
timestamped folder ``..2026_12_03_10_00_00.123`` with a ``..data`` symlink to it and one symlink per key
(``relay.yaml -> ..data/relay.yaml``); an update writes a new timestamped folder and swaps ``..data`` in one
rename, so a reader sees the old payload or the new one, never half of each. `write_atomic` does the same.
A claim's folder lives under the claims root, outside any pod, so it outlives the process and the pod.
"""

from __future__ import annotations

import base64
import datetime
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Json = dict[str, Any]
DATA = "..data"


class VolumeNotReady(Exception):
    """The object a volume projects does not exist (yet): the real kubelet keeps the pod ContainerCreating."""


@dataclass(frozen=True)
class Source:
    """Where a projected volume's payload comes from: ("configmaps" | "secrets", name), and its options."""

    plural: str
    name: str
    items: tuple[tuple[str, str], ...] = ()
    """(key, path) pairs when the volume lists `items` (only those keys are projected)."""
    mode: int = 0o644
    optional: bool = False


def source_of(volume: Mapping[str, Any]) -> Source | None:
    """The ConfigMap or Secret a pod volume projects, or None for other volume kinds."""
    for kind, plural, name_key in (("configMap", "configmaps", "name"), ("secret", "secrets", "secretName")):
        spec = volume.get(kind)
        if isinstance(spec, dict):
            items = tuple((str(i["key"]), str(i.get("path") or i["key"])) for i in spec.get("items") or [])
            mode = int(spec.get("defaultMode", 0o644))
            return Source(plural, str(spec.get(name_key, "")), items, mode, bool(spec.get("optional")))
    return None


def payload(source: Source, obj: Mapping[str, Any] | None) -> dict[str, bytes]:
    """The files a volume holds for `obj` (a ConfigMap's data/binaryData, a Secret's data/stringData)."""
    if obj is None:
        if source.optional:
            return {}
        raise VolumeNotReady(f"{source.plural[:-1]} {source.name!r} not found")
    files: dict[str, bytes] = {}
    if source.plural == "configmaps":
        files.update({k: str(v).encode() for k, v in (obj.get("data") or {}).items()})
        files.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
    else:
        files.update({k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()})
        files.update({k: str(v).encode() for k, v in (obj.get("stringData") or {}).items()})  # the emulator keeps it
    if source.items:
        missing = [key for key, _ in source.items if key not in files and not source.optional]
        if missing:
            raise VolumeNotReady(f"{source.plural[:-1]} {source.name!r} has no key {missing[0]!r}")
        files = {path: files[key] for key, path in source.items if key in files}
    return files


def read_payload(folder: Path) -> dict[str, bytes] | None:
    """What `write_atomic` last wrote into `folder` (None before the first write)."""
    data = folder / DATA
    if not data.is_dir():
        return None
    return {str(p.relative_to(data)): p.read_bytes() for p in data.rglob("*") if p.is_file()}


def write_atomic(folder: Path, files: Mapping[str, bytes], mode: int = 0o644) -> None:
    """Project `files` into `folder` as the kubelet's AtomicWriter does: new timestamped folder, one rename."""
    folder.mkdir(parents=True, exist_ok=True)
    old = os.readlink(folder / DATA) if (folder / DATA).is_symlink() else None
    stamp = datetime.datetime.now(datetime.UTC).strftime("..%Y_%m_%d_%H_%M_%S.%f")
    stamp_dir = folder / stamp
    stamp_dir.mkdir()
    for rel, content in files.items():
        path = stamp_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(mode)
    tmp = folder / "..data_tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(stamp)
    tmp.replace(folder / DATA)
    tops = {rel.split("/", 1)[0] for rel in files}
    for top in tops:
        link = folder / top
        if not link.is_symlink():
            link.symlink_to(f"{DATA}/{top}")
    for entry in folder.iterdir():
        if entry.is_symlink() and not entry.name.startswith("..") and entry.name not in tops:
            entry.unlink()  # a key the object no longer has
    if old is not None and old != stamp:
        shutil.rmtree(folder / old, ignore_errors=True)
