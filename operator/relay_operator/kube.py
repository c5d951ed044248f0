"""The only module that talks to the Kubernetes API.

Plain JSON over aiohttp, authenticated with the same `kopf.ConnectionInfo` kopf itself logged in
with (kubeconfig, in-cluster service account, or a test's emulator): one set of credentials, no
blocking client in threads. Writes are JSON merge patches of the fields we render (see `merge`),
never server-side apply, so fields owned by others are left alone and an unchanged object is never
written at all.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp

from relay_operator.merge import adopt_equal_quantities, fingerprint, merge_patch

logger = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"


@dataclass(frozen=True)
class Connection:
    """Where and how to reach the API: the parts of kopf's ConnectionInfo this client uses."""

    server: str
    token: str | None = None
    scheme: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    insecure: bool = False
    ca_path: str | None = None
    ca_data: bytes | None = None
    certificate_path: str | None = None
    certificate_data: bytes | None = None
    private_key_path: str | None = None
    private_key_data: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_kopf(cls, info: Any) -> Connection:
        """From a `kopf.ConnectionInfo` (duck-typed: kopf is not needed to use this client)."""

        def data(value: str | bytes | None) -> bytes | None:
            if value is None:
                return None
            return value if isinstance(value, bytes) else base64.b64decode(value)

        def path(value: Any) -> str | None:
            return None if value is None else str(value)

        return cls(
            server=str(info.server).rstrip("/"),
            token=info.token,
            scheme=info.scheme,
            username=info.username,
            password=info.password,
            insecure=bool(info.insecure),
            ca_path=path(info.ca_path),
            ca_data=data(info.ca_data),
            certificate_path=path(info.certificate_path),
            certificate_data=data(info.certificate_data),
            private_key_path=path(info.private_key_path),
            private_key_data=data(info.private_key_data),
        )

    def ssl_context(self) -> ssl.SSLContext | bool:
        if not self.server.startswith("https"):
            return False
        context = ssl.create_default_context(cafile=self.ca_path)
        if self.ca_data:
            context.load_verify_locations(cadata=self.ca_data.decode())
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        cert, key = self.certificate_path, self.private_key_path
        with tempfile.TemporaryDirectory() as folder:  # ssl only loads client keys from files
            if self.certificate_data:
                cert = str(Path(folder) / "cert.pem")
                Path(cert).write_bytes(self.certificate_data)
            if self.private_key_data:
                key = str(Path(folder) / "key.pem")
                Path(key).write_bytes(self.private_key_data)
            if cert:
                context.load_cert_chain(cert, key)
        return context

    def headers(self) -> dict[str, str]:
        if self.token:
            return {"Authorization": f"{self.scheme or 'Bearer'} {self.token}"}
        if self.username is not None and self.password is not None:
            pair = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            return {"Authorization": f"Basic {pair}"}
        return {}


@dataclass(frozen=True)
class Kind:
    """A resource type: where its objects live in the API."""

    api_version: str
    plural: str
    namespaced: bool = True

    def collection(self, namespace: str | None) -> str:
        base = f"/api/{self.api_version}" if "/" not in self.api_version else f"/apis/{self.api_version}"
        if self.namespaced and namespace:
            return f"{base}/namespaces/{namespace}/{self.plural}"
        return f"{base}/{self.plural}"

    def item(self, namespace: str | None, name: str) -> str:
        return f"{self.collection(namespace)}/{name}"


KINDS: dict[str, Kind] = {
    "ConfigMap": Kind("v1", "configmaps"),
    "Secret": Kind("v1", "secrets"),
    "Service": Kind("v1", "services"),
    "Pod": Kind("v1", "pods"),
    "PersistentVolumeClaim": Kind("v1", "persistentvolumeclaims"),
    "StatefulSet": Kind("apps/v1", "statefulsets"),
    "PodDisruptionBudget": Kind("policy/v1", "poddisruptionbudgets"),
    "NetworkPolicy": Kind("networking.k8s.io/v1", "networkpolicies"),
    "ServiceMonitor": Kind("monitoring.coreos.com/v1", "servicemonitors"),
    "SmtpRelay": Kind("relayfleet.io/v1alpha1", "smtprelays"),
    "SendingDomain": Kind("relayfleet.io/v1alpha1", "sendingdomains"),
    "ClusterKopfPeering": Kind("kopf.dev/v1", "clusterkopfpeerings", namespaced=False),
}

IMMUTABLE: dict[str, tuple[str, ...]] = {
    "StatefulSet": ("selector", "serviceName", "volumeClaimTemplates", "podManagementPolicy"),
}
"""spec fields the apiserver refuses to change: a difference there needs the object recreated."""


class ApiError(Exception):
    """A refused request, with the apiserver's status code and message."""

    def __init__(self, status: int, message: str, method: str = "", path: str = "") -> None:
        super().__init__(f"{method} {path}: {status} {message}".strip())
        self.status = status
        self.message = message


class NameConflict(ApiError):
    """A child's name is taken by an object another owner (or nobody) controls: never adopted nor patched."""


def controller_of(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The controlling ownerReference of an object, if any."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return dict(ref)
    return None


def foreign_owner(desired: Mapping[str, Any], observed: Mapping[str, Any]) -> str | None:
    """Why `observed` is not ours to change (None when its controller is `desired`'s): a message naming
    who holds it. An object without a controller counts as someone else's (created by hand or by a tool)."""
    ours = controller_of(desired)
    if ours is None:
        return None
    theirs = controller_of(observed)
    kind, name = desired["kind"], desired["metadata"]["name"]
    if theirs is None:
        return (
            f"{kind} {name} already exists and is not controlled by {ours['kind']} {ours['name']};"
            " delete or rename it, the operator does not adopt objects it did not create"
        )
    if theirs.get("uid") != ours.get("uid"):
        return f"{kind} {name} already exists, controlled by {theirs.get('kind')} {theirs.get('name')}; rename one"
    return None


class SeenVersions:
    """uid -> (resourceVersion, fingerprint) of the objects this client applied, bounded (oldest forgotten).

    A watch event for a version in here was caused by the operator itself: no drift to heal. A newer version
    with the same fingerprint only changed status (a controller's report), not what the operator renders.
    """

    def __init__(self, limit: int = 50_000) -> None:
        self._limit = limit
        self._versions: dict[str, tuple[str, str | None]] = {}

    def remember(self, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        uid = str(meta.get("uid") or "")
        if not uid:
            return
        self._versions.pop(uid, None)
        self._versions[uid] = (str(meta.get("resourceVersion") or ""), fingerprint(obj))
        if len(self._versions) > self._limit:
            del self._versions[next(iter(self._versions))]

    def get(self, uid: str) -> tuple[str, str | None] | None:
        return self._versions.get(uid)


Outcome = Literal["created", "patched", "unchanged", "recreated"]
RecreateHook = Callable[[str, str, list[str]], None]
"""Told (kind, name, changed immutable fields) before an object is deleted to be recreated."""


class Kube:
    """Async JSON client of the Kubernetes API; create it in the loop that uses it, and close it."""

    def __init__(
        self,
        connection: Connection,
        relogin: Callable[[], Awaitable[Connection]] | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.connection = connection
        self._relogin = relogin
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self.requests = 0
        """Requests sent, for the benchmark and the idempotency tests."""
        self.writes = 0
        """Of those, the ones that changed something (create, patch, delete)."""
        self.seen = SeenVersions()
        """The versions of the objects `apply` wrote or found unchanged, so a watch event they caused is known."""

    async def __aenter__(self) -> Kube:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                base_url=self.connection.server,
                connector=aiohttp.TCPConnector(ssl=self.connection.ssl_context()),
                headers=self.connection.headers(),
                timeout=self._timeout,
            )
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        """One API call; JSON in and out. 404 on GET gives None; other errors raise ApiError."""
        for attempt in (1, 2):
            self.requests += 1
            if method != "GET":
                self.writes += 1
            session = self._open()
            headers = {"Content-Type": content_type} if body is not None else {}
            async with session.request(method, path, json=body, params=params, headers=headers) as response:
                if response.status == 401 and attempt == 1 and self._relogin is not None:
                    self.connection = await self._relogin()  # expired token: log in again, once
                    await self.close()
                    continue
                if response.status == 404 and method == "GET":
                    return None
                if response.status >= 400:
                    text = await response.text()
                    try:
                        message = str((await response.json(content_type=None)).get("message", text))
                    except ValueError:
                        message = text
                    raise ApiError(response.status, message, method, path)
                return await response.json(content_type=None)
        raise AssertionError("unreachable")

    # -- objects -----------------------------------------------------------------------------

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = await self.request("GET", KINDS[kind].item(namespace, name))
        return result

    async def list(self, kind: str, namespace: str, label_selector: str = "") -> list[dict[str, Any]]:
        params = {"labelSelector": label_selector} if label_selector else None
        result = await self.request("GET", KINDS[kind].collection(namespace), params=params)
        return list((result or {}).get("items") or [])

    async def create(self, body: Mapping[str, Any]) -> dict[str, Any]:
        meta = body["metadata"]
        result: dict[str, Any] = await self.request(
            "POST", KINDS[body["kind"]].collection(meta.get("namespace")), body=body
        )
        return result

    async def patch(
        self, kind: str, namespace: str, name: str, patch: Mapping[str, Any], subresource: str = ""
    ) -> dict[str, Any]:
        path = KINDS[kind].item(namespace, name) + (f"/{subresource}" if subresource else "")
        result: dict[str, Any] = await self.request("PATCH", path, body=patch, content_type=MERGE_PATCH)
        return result

    async def delete(self, kind: str, namespace: str, name: str, propagation: str | None = None) -> bool:
        """Delete; False when it was already gone."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation} if propagation else None
        try:
            await self.request("DELETE", KINDS[kind].item(namespace, name), body=body)
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def _wait_gone(self, kind: str, namespace: str, name: str, uid: str, patience: float = 60.0) -> None:
        """Until the object of `uid` is gone: an Orphan delete leaves it in place under the `orphan`
        finalizer until the garbage collector has released its dependents, and a create before that is 409."""
        deadline = asyncio.get_running_loop().time() + patience
        delay = 0.05
        while True:
            current = await self.get(kind, namespace, name)
            if current is None or current["metadata"].get("uid") != uid:
                return
            if asyncio.get_running_loop().time() > deadline:
                raise ApiError(409, f"{kind} {namespace}/{name} is still being deleted after {patience:g} s")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def apply(
        self, desired: Mapping[str, Any], create_first: bool = False, on_recreate: RecreateHook | None = None
    ) -> tuple[Outcome, dict[str, Any]]:
        """Create `desired`, or patch only the fields of it that differ; no write when none do.

        A change in an immutable field (a StatefulSet's volumeClaimTemplates, e.g. when spool storage
        is switched on) recreates the object with orphan propagation: the pods keep running and are
        adopted by the new object, which then rolls them. The create waits until the old object is really
        gone (the `orphan` finalizer holds it until the garbage collector is done), never a 409 loop.
        Quantities are compared by amount (`adopt_equal_quantities`): the apiserver returns them canonical.

        `create_first` (the object most likely does not exist yet, e.g. its owner was just created):
        POST without a GET first; only a 409 costs the GET and the comparison.

        An object of that name controlled by another owner (or by none) raises `NameConflict`: it is
        never patched, deleted or adopted. `on_recreate` hears of a recreate before the delete.
        """
        outcome, applied = await self._apply(desired, create_first, on_recreate)
        self.seen.remember(applied)
        return outcome, applied

    async def _apply(
        self, desired: Mapping[str, Any], create_first: bool, on_recreate: RecreateHook | None
    ) -> tuple[Outcome, dict[str, Any]]:
        kind, meta = str(desired["kind"]), desired["metadata"]
        namespace, name = str(meta["namespace"]), str(meta["name"])
        if create_first:
            try:
                return "created", await self.create(desired)
            except ApiError as exc:
                if exc.status != 409:
                    raise
        observed = await self.get(kind, namespace, name)
        if observed is None:
            return "created", await self.create(desired)
        conflict = foreign_owner(desired, observed)
        if conflict is not None:
            raise NameConflict(409, conflict)
        desired = adopt_equal_quantities(desired, observed)  # the apiserver returns them canonical
        frozen = IMMUTABLE.get(kind, ())
        desired_spec, observed_spec = desired.get("spec") or {}, observed.get("spec") or {}
        changed = [f for f in frozen if merge_patch({f: desired_spec.get(f)}, {f: observed_spec.get(f)})]
        if changed:
            if on_recreate is not None:
                on_recreate(kind, name, changed)
            await self.delete(kind, namespace, name, propagation="Orphan")
            await self._wait_gone(kind, namespace, name, str(observed["metadata"].get("uid", "")))
            return "recreated", await self.create(desired)
        patch = merge_patch({k: v for k, v in desired.items() if k not in ("apiVersion", "kind")}, observed)
        if patch is None:
            return "unchanged", observed
        return "patched", await self.patch(kind, namespace, name, patch)
