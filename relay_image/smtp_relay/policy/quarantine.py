"""The quarantine: a spool area of its own for messages held back by policy (virus, malware, spam).

Quarantined mail got a 250 (the sender must not retry or bounce it), so it is stored as durably as the
main spool: the message and a JSON sidecar (envelope, reason, verdicts, time) are each written to a
temporary file, fsynced and renamed, then the directory is fsynced. An operator lists, releases or
deletes entries through the relay's HTTP API. Release is two-phase (`release` moves the entry aside,
`finish_release` deletes it once the caller has spooled it, `abort_release` puts it back), so a crash
or a failed re-injection can duplicate a released message but never lose it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smtp_relay.model.envelope import Envelope
from smtp_relay.util.fsutil import fsync_dir, write_durably

_ID = re.compile(r"^[0-9a-f]{12}-[0-9a-f]{12}$")


class QuarantineError(Exception):
    """No such entry (or it is being released)."""


@dataclass(frozen=True)
class QuarantineEntry:
    """One quarantined message's metadata (the sidecar)."""

    id: str
    envelope: Envelope
    reason: str
    """Why it was held, e.g. "virus: Eicar-Signature" or "attachment: invoice.pdf.exe"."""
    verdicts: tuple[str, ...]
    """The replies of the checks that fired, for the operator deciding on release."""
    time: float
    """Unix time it was quarantined."""
    size: int

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "envelope": _envelope_to_json(self.envelope),
            "reason": self.reason,
            "verdicts": list(self.verdicts),
            "time": self.time,
            "size": self.size,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> QuarantineEntry:
        return cls(
            id=str(data["id"]),
            envelope=_envelope_from_json(data["envelope"]),
            reason=str(data["reason"]),
            verdicts=tuple(str(v) for v in data.get("verdicts", ())),
            time=float(data["time"]),
            size=int(data["size"]),
        )


def _envelope_to_json(envelope: Envelope) -> dict[str, Any]:
    out = dataclasses.asdict(envelope)
    out["rcpt_tos"] = list(envelope.rcpt_tos)
    return out


def _envelope_from_json(data: dict[str, Any]) -> Envelope:
    known = {f.name for f in dataclasses.fields(Envelope)}
    values = {k: v for k, v in data.items() if k in known}
    values["rcpt_tos"] = tuple(values.get("rcpt_tos", ()))
    return Envelope(**values)


class QuarantineStore:
    """Quarantined messages under `root` (SPOOL/quarantine): ID.eml plus ID.json per message.

    Blocking file I/O: the async relay calls it through `asyncio.to_thread`.
    """

    def __init__(self, root: Path, clock: Callable[[], float] = time.time) -> None:
        self.root = root
        self._releasing = root / "releasing"
        self._clock = clock
        self._releasing.mkdir(parents=True, exist_ok=True)
        for leftover in sorted(self._releasing.glob("*.json")):
            # A release that did not finish (crash): the message may or may not be spooled; keep it listed.
            entry_id = leftover.stem
            os.replace(self._releasing / f"{entry_id}.eml", root / f"{entry_id}.eml")
            os.replace(leftover, root / f"{entry_id}.json")

    def _paths(self, entry_id: str, folder: Path | None = None) -> tuple[Path, Path]:
        if not _ID.match(entry_id):
            raise QuarantineError(f"no quarantined message {entry_id!r}")
        base = folder or self.root
        return base / f"{entry_id}.eml", base / f"{entry_id}.json"

    def put(self, envelope: Envelope, data: bytes, reason: str, verdicts: Sequence[str] = ()) -> str:
        """Store a message durably and return its quarantine id (data first: a sidecar always has its message)."""
        now = self._clock()
        entry_id = f"{int(now * 1000):012x}-{secrets.token_hex(6)}"
        eml, sidecar = self._paths(entry_id)
        entry = QuarantineEntry(entry_id, envelope, reason, tuple(verdicts), now, len(data))
        write_durably(eml, data, sync_dir=False)
        write_durably(sidecar, json.dumps(entry.to_json(), sort_keys=True).encode())  # fsyncs self.root
        return entry_id

    def list(self) -> list[QuarantineEntry]:
        """Every entry, oldest first (ids start with the time)."""
        entries = []
        for sidecar in sorted(self.root.glob("*.json")):
            try:
                entries.append(QuarantineEntry.from_json(json.loads(sidecar.read_bytes())))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # removed meanwhile, or damaged: never let one file hide the others
        return entries

    def get(self, entry_id: str) -> QuarantineEntry:
        _, sidecar = self._paths(entry_id)
        try:
            return QuarantineEntry.from_json(json.loads(sidecar.read_bytes()))
        except FileNotFoundError:
            raise QuarantineError(f"no quarantined message {entry_id!r}") from None

    def data(self, entry_id: str) -> bytes:
        eml, _ = self._paths(entry_id)
        try:
            return eml.read_bytes()
        except FileNotFoundError:
            raise QuarantineError(f"no quarantined message {entry_id!r}") from None

    def release(self, entry_id: str) -> tuple[Envelope, bytes]:
        """Take the message out of the list for re-injection; then `finish_release` or `abort_release`.

        The move is atomic, so two concurrent releases of one id cannot both get it.
        """
        eml, sidecar = self._paths(entry_id)
        held_eml, held_sidecar = self._paths(entry_id, self._releasing)
        try:
            os.replace(sidecar, held_sidecar)
        except FileNotFoundError:
            raise QuarantineError(f"no quarantined message {entry_id!r}") from None
        os.replace(eml, held_eml)
        entry = QuarantineEntry.from_json(json.loads(held_sidecar.read_bytes()))
        return entry.envelope, held_eml.read_bytes()

    def finish_release(self, entry_id: str) -> None:
        """The caller has spooled the message durably: forget it."""
        for path in self._paths(entry_id, self._releasing):
            path.unlink(missing_ok=True)
        fsync_dir(self._releasing)

    def abort_release(self, entry_id: str) -> None:
        """Re-injection failed: list the message again."""
        held_eml, held_sidecar = self._paths(entry_id, self._releasing)
        eml, sidecar = self._paths(entry_id)
        os.replace(held_eml, eml)
        os.replace(held_sidecar, sidecar)
        fsync_dir(self.root)

    def delete(self, entry_id: str) -> None:
        """Remove the message for good (sidecar first, so it is never listed without its data)."""
        eml, sidecar = self._paths(entry_id)
        try:
            sidecar.unlink()
        except FileNotFoundError:
            raise QuarantineError(f"no quarantined message {entry_id!r}") from None
        eml.unlink(missing_ok=True)
        fsync_dir(self.root)
