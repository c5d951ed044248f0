"""HTTP API of the quarantine on the relay's admin server: list, release and delete held messages.

Release re-injects into the main spool through `reinject` (the relay's spool commit), which does not run
the policy chain again: the operator's release is the decision that overrides the check that held it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from smtp_relay.model.envelope import Envelope
from smtp_relay.policy.quarantine import QuarantineError, QuarantineStore

log = logging.getLogger(__name__)

ReinjectFn = Callable[[Envelope, bytes], Awaitable[str]]
"""Commits a released message to the main spool; returns its queue id."""


def add_quarantine_routes(app: web.Application, store: QuarantineStore, reinject: ReinjectFn) -> None:
    """GET /quarantine, GET /quarantine/{id} (metadata), POST /quarantine/{id}/release, DELETE /quarantine/{id}."""

    async def list_entries(_request: web.Request) -> web.Response:
        entries = await asyncio.to_thread(store.list)
        return web.json_response({"messages": [e.to_json() for e in entries]})

    async def get_entry(request: web.Request) -> web.Response:
        try:
            entry = await asyncio.to_thread(store.get, request.match_info["id"])
        except QuarantineError as exc:
            raise web.HTTPNotFound(text=str(exc)) from None
        return web.json_response(entry.to_json())

    async def release(request: web.Request) -> web.Response:
        entry_id = request.match_info["id"]
        try:
            envelope, data = await asyncio.to_thread(store.release, entry_id)
        except QuarantineError as exc:
            raise web.HTTPNotFound(text=str(exc)) from None
        try:
            queue_id = await reinject(envelope, data)
        except Exception as exc:
            await asyncio.to_thread(store.abort_release, entry_id)
            log.error("quarantine release of %s failed, kept in quarantine: %s", entry_id, exc)
            raise web.HTTPServiceUnavailable(text=f"release failed, message kept in quarantine: {exc}") from None
        await asyncio.to_thread(store.finish_release, entry_id)
        log.info("quarantine: released %s as %s", entry_id, queue_id)
        return web.json_response({"id": entry_id, "released": True, "queueId": queue_id})

    async def delete(request: web.Request) -> web.Response:
        entry_id = request.match_info["id"]
        try:
            await asyncio.to_thread(store.delete, entry_id)
        except QuarantineError as exc:
            raise web.HTTPNotFound(text=str(exc)) from None
        log.info("quarantine: deleted %s", entry_id)
        return web.json_response({"id": entry_id, "deleted": True})

    app.router.add_get("/quarantine", list_entries)
    app.router.add_get("/quarantine/{id}", get_entry)
    app.router.add_post("/quarantine/{id}/release", release)
    app.router.add_delete("/quarantine/{id}", delete)
