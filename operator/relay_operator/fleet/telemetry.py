"""Reading the relay pods' queue figures: the fleet's I/O towards the pods (not the Kubernetes API).

On each status refresh (the resync timer) the operator lists an SmtpRelay's pods and asks each for `/queue`
on its admin port, with the bearer token it generated for the relays (read once per relay, again after a 401),
a timeout per pod, and one bound on the requests in flight across all relays, so a thousand relays cost a
steady trickle, not a burst. What the pods answered becomes `status.queue` (`queue_status.summarize`).
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Mapping
from typing import Any

import aiohttp

from relay_operator.fleet.queue_status import PodSample, summarize
from relay_operator.kube import Kube
from relay_operator.relays.render.admin_token import ADMIN_TOKEN_KEY, admin_token_secret_name
from relay_operator.relays.render.common import ADMIN_PORT, Owner, selector_string

KEEPALIVE_SECONDS = 90.0
"""How long an idle connection to a pod is kept: longer than the resync interval (60 s by default), shorter than
the relay's admin server keeps one (aiohttp's default, an hour)."""


def admin_url(pod: Mapping[str, Any]) -> str:
    """The base URL of a pod's admin API (its IP, the admin port); "" while it has no IP."""
    ip = str((pod.get("status") or {}).get("podIP") or "")
    if not ip:
        return ""
    return f"http://{f'[{ip}]' if ':' in ip else ip}:{ADMIN_PORT}"


def is_ready(pod: Mapping[str, Any]) -> bool:
    """Running, not terminating, with an IP and condition Ready True: a pod that takes mail (and hand-offs)."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    if meta.get("deletionTimestamp") or status.get("phase") != "Running" or not status.get("podIP"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


class Telemetry:
    """One per operator (per event loop): the HTTP session, the concurrency bound, the last samples."""

    def __init__(self, concurrency: int = 64, timeout: float = 2.0) -> None:
        self._concurrency = concurrency
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._slots: asyncio.Semaphore | None = None
        self._tokens: dict[tuple[str, str], str] = {}
        self._closed = False
        self._previous: dict[tuple[str, str], dict[str, PodSample]] = {}
        """The last answers per SmtpRelay, by pod uid: the base of the next rates."""

    async def close(self) -> None:
        """For good (the operator stops): a later call answers "operator stopping" without opening a session."""
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def queue_status(self, kube: Kube, owner: Owner, pods: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """status.queue of one SmtpRelay, from each of its pods (`pods`: as the watches showed them, else listed)."""
        if pods is None:
            pods = await kube.list("Pod", owner.namespace, selector_string(owner))
        token = await self._token(kube, owner)
        samples = await asyncio.gather(*(self._sample(pod, token) for pod in pods))
        if any(s.error == "401 Unauthorized" for s in samples):
            self._tokens.pop((owner.namespace, owner.name), None)  # rotated or recreated: read it again next time
        queue, keep = summarize(samples, self._previous.get((owner.namespace, owner.name), {}))
        self._previous[(owner.namespace, owner.name)] = keep  # pods that are gone drop out
        return queue

    def forget(self, namespace: str, name: str) -> None:
        """An SmtpRelay was deleted: its samples and token go."""
        self._previous.pop((namespace, name), None)
        self._tokens.pop((namespace, name), None)

    async def _token(self, kube: Kube, owner: Owner) -> str:
        key = (owner.namespace, owner.name)
        if key not in self._tokens:
            secret = await kube.get("Secret", owner.namespace, admin_token_secret_name(owner))
            encoded = ((secret or {}).get("data") or {}).get(ADMIN_TOKEN_KEY, "")
            self._tokens[key] = base64.b64decode(encoded).decode() if encoded else ""
        return self._tokens[key]

    def _open(self) -> tuple[aiohttp.ClientSession, asyncio.Semaphore]:
        if self._session is None or self._slots is None:
            # One kept-alive connection per pod, reused by the next resync (KEEPALIVE_SECONDS outlasts its interval):
            # at a thousand relays of three pods, setting up and tearing down a connection per call was most of the
            # operator's idle CPU. The semaphore, not the connector, bounds what is in flight.
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_SECONDS)
            self._session = aiohttp.ClientSession(timeout=self._timeout, connector=connector)
            self._slots = asyncio.Semaphore(self._concurrency)
        return self._session, self._slots

    async def call(
        self, pod: Mapping[str, Any], method: str, path: str, token: str, body: Any = None
    ) -> tuple[Any, str]:
        """One admin request to a pod (`body`: sent as JSON): (its JSON answer, "") or (None, why there is none)."""
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        ip = status.get("podIP")
        if meta.get("deletionTimestamp"):
            return None, "terminating"
        if status.get("phase") != "Running" or not ip:
            return None, f"not running ({status.get('phase') or 'Pending'})"
        if self._closed:
            return None, "operator stopping"
        session, slots = self._open()
        async with slots:
            for attempt in (1, 2):
                try:
                    headers = {"Authorization": f"Bearer {token}"}
                    url = f"{admin_url(pod)}{path}"
                    async with session.request(method, url, headers=headers, json=body) as response:
                        if response.status != 200:
                            return None, f"{response.status} {response.reason}"
                        return await response.json(content_type=None), ""
                except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                    if attempt == 1 and method == "GET":
                        continue  # a kept-alive connection the pod closed meanwhile (a restart): once more, anew
                    return None, str(exc) or type(exc).__name__
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    return None, str(exc) or type(exc).__name__
            raise AssertionError("unreachable")

    async def token(self, kube: Kube, owner: Owner) -> str:
        """The relays' admin token (read once per relay; `forget_token` after a 401)."""
        return await self._token(kube, owner)

    def remember_token(self, owner: Owner, token: str) -> None:
        """The token a reconcile just created or read: the first resync then needs no read of the Secret."""
        if token:
            self._tokens[(owner.namespace, owner.name)] = token

    def forget_token(self, owner: Owner) -> None:
        self._tokens.pop((owner.namespace, owner.name), None)

    async def _sample(self, pod: Mapping[str, Any], token: str) -> PodSample:
        meta = pod.get("metadata") or {}
        name, uid = str(meta.get("name", "")), str(meta.get("uid", ""))
        body, error = await self.call(pod, "GET", "/queue", token)
        figures = body.get("queue") if isinstance(body, dict) else None
        if error or not isinstance(figures, dict):
            return PodSample(name, uid, time.monotonic(), error=error or "no queue figures in its answer")
        digest = str((body.get("config") or {}).get("digest") or "") if isinstance(body, dict) else ""
        return PodSample(name, uid, time.monotonic(), figures=figures, config_digest=digest)
