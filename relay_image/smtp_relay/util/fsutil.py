"""Durable file writes: what a 250 (or a capture's "delivered") promises must survive a crash.

Blocking: async code calls these from a thread.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """fsync a directory, so that the names created, renamed or removed in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(
    path: Path,
    *chunks: bytes,
    tmp: Path | None = None,
    mode: int = 0o666,
    exclusive: bool = False,
    sync_dir: bool = True,
) -> None:
    """Write `chunks` to the file `tmp` (default: `.NAME.tmp` next to `path`), fsync it, rename it to `path`.

    The rename makes the file appear whole or not at all. `tmp` is truncated if it exists, or with
    `exclusive` must not exist (Maildir's rule). With `sync_dir` the directory of `path` is fsynced too;
    pass False to fsync it once after several files. On failure the temporary file is removed.
    """
    tmp = tmp or path.with_name(f".{path.name}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(tmp, flags, mode)
    try:
        with os.fdopen(fd, "wb", closefd=False) as handle:
            for chunk in chunks:
                handle.write(chunk)
        os.fsync(fd)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if sync_dir:
        fsync_dir(path.parent)
