"""What a `--workers` supervisor runs: its workers, and which spool belongs to whom.

A spool is one process's (it holds a flock), so each listening worker has its own: `SPOOL` itself for a
lone worker, else `SPOOL/worker-<i>`. A spool that belongs to no listening worker of the current layout
but still holds mail is an orphan; the supervisor gives it a deliver-only worker, so that changing
`--workers` strands nothing.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from pathlib import Path

PORT_FILE = "http-port"
"""Written into a worker's spool once its admin HTTP serves: the port the supervisor asks it on."""
_WORKER_DIR = re.compile(r"^worker-(\d+)$")


@dataclass
class Worker:
    """One relay process the supervisor keeps running (or, deliver-only, runs until its spool is empty)."""

    name: str
    spool: Path
    listen: bool
    proc: asyncio.subprocess.Process | None = None
    port: int | None = None
    """Its admin HTTP port on 127.0.0.1, known once it started; None while (re)starting."""
    started_once: bool = False
    finished: bool = False
    """Deliver-only and done: its spool is empty."""
    restarts: int = 0
    returncode: int | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def port_file(self) -> Path:
        return self.spool / PORT_FILE


def read_port(path: Path) -> int | None:
    """The port a worker wrote to its port file; None until it has."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def worker_spool(root: Path, index: int, workers: int) -> Path:
    """Spool of listening worker `index`: SPOOL itself for a lone worker, else SPOOL/worker-<index>."""
    return root if workers == 1 else root / f"worker-{index}"


def _holds_mail(spool: Path) -> bool:
    """Whether a spool has segments left (it may still hold undelivered mail)."""
    queue = spool / "queue"
    return queue.is_dir() and any(queue.glob("seg-*.dat"))


def orphan_spools(root: Path, workers: int) -> list[Path]:
    """Spools under `root` that hold mail but belong to none of the `workers` listening workers."""
    if not root.is_dir():
        return []
    mine = {worker_spool(root, i, workers) for i in range(workers)}
    found = [root, *sorted((p for p in root.iterdir() if _WORKER_DIR.match(p.name)), key=lambda p: p.name)]
    return [p for p in found if p not in mine and _holds_mail(p)]


def needs_supervisor(root: Path, workers: int) -> bool:
    """N > 1, or spools of an earlier layout still hold mail that a single relay would not deliver."""
    return workers > 1 or bool(orphan_spools(root, workers))
