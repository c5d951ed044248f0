"""Watch streams: list-then-watch from resourceVersion 0, resumption from the event log, 410 once compacted."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import math
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import aiohttp.web
import kmock
from kmock._internal import rendering

from tests.kube.selectors import Matcher
from tests.kube.vocab import Json, fail

if TYPE_CHECKING:
    from tests.kube.emulator import KubeEmulator


async def watch(
    emu: KubeEmulator, request: rendering.Request, res: kmock.resource, ns: str | None, name: str | None
) -> aiohttp.web.StreamResponse:
    params = request.params
    match = emu._matcher(params, ns, name)
    since_text = params.get("resourceVersion") or "0"
    try:
        since = int(since_text)
        timeout = float(params["timeoutSeconds"]) if params.get("timeoutSeconds") else math.inf
    except ValueError:
        raise fail(400, "BadRequest", f"invalid resourceVersion or timeoutSeconds: {since_text!r}") from None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    raw = request._raw_request
    assert raw is not None
    response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(raw)
    try:
        async for event in events(emu, res, match, since, deadline):
            await response.write(json.dumps(event).encode() + b"\n")
        if params.get("allowWatchBookmarks") in ("true", "1") and not emu._closing:
            bookmark = {
                "kind": emu._extras[res].kind,
                "apiVersion": emu._gv(res),
                "metadata": {"resourceVersion": str(emu._rv)},
            }
            await response.write(json.dumps({"type": "BOOKMARK", "object": bookmark}).encode() + b"\n")
        await response.write_eof()
    except ConnectionError:
        pass  # the client went away; nothing to report to anyone
    return response


async def events(
    emu: KubeEmulator, res: kmock.resource, match: Matcher, since: int, deadline: float
) -> AsyncIterator[Json]:
    """Yield changes after ``since``; with 0, first the existing objects as ADDED (real list-then-watch)."""
    if since == 0:
        since = emu._rv
        for obj in sorted(
            (o for _, o in emu._all(res) if match(o)), key=lambda o: int(o["metadata"]["resourceVersion"])
        ):
            yield {"type": "ADDED", "object": obj}
    elif since < emu._log_floor:
        yield {
            "type": "ERROR",
            "object": {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "reason": "Expired",
                "code": 410,
                "message": f"too old resource version: {since} ({emu._log_floor})",
            },
        }
        return
    loop = asyncio.get_running_loop()
    while not emu._closing:
        wakeup = emu._wakeup
        for rv, kind, r, obj, old in emu._log[bisect.bisect_right(emu._log, since, key=lambda e: e[0]) :]:
            since = rv
            if r != res:
                continue
            was, now_ = old is not None and match(old), kind != "DELETED" and match(obj)
            if kind == "DELETED":
                event = "DELETED" if was else None
            else:
                event = ("MODIFIED" if was else "ADDED") if now_ else ("DELETED" if was else None)
            if event:
                yield {"type": event, "object": obj}
        remaining = deadline - loop.time()
        if remaining <= 0 or emu._closing:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wakeup.wait(), timeout=min(remaining, 1.0))
