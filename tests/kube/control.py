"""What runs beside the API in a cluster, wired into the emulator: authn/authz and the controllers.

Why: `emulator.py` stays the storage and HTTP layer; this module holds the per-emulator state of the rest
and the two hooks it calls: `admit` (every request: authenticate, authorize, record) and `poke` (every
stored change: schedule one pass of the garbage collector, the StatefulSet controller and the node, a
``controller_delay`` later, on the emulator's loop, so reactions are quick but never synchronous).
"""

from __future__ import annotations

import asyncio
import copy
from typing import TYPE_CHECKING

import kmock
from kmock._internal import rendering

from tests.kube import ownerrefs
from tests.kube.audit import Audit
from tests.kube.auth import RBAC, Authorizer, Tokens, bootstrap_policy, forbidden, request_attributes, unauthorized
from tests.kube.deletion import GarbageCollector
from tests.kube.kubelet import Node
from tests.kube.statefulsets import StatefulSetController

if TYPE_CHECKING:
    from tests.kube.emulator import KubeEmulator

ADMIN_TOKEN = "relayfleet-test-token"


class Control:
    def __init__(self, emulator: KubeEmulator) -> None:
        self.emulator = emulator
        self.tokens = Tokens(emulator, ADMIN_TOKEN)
        self.authorizer = Authorizer(emulator)
        self.audit = Audit()
        self.gc = GarbageCollector(emulator)
        self.statefulsets = StatefulSetController(emulator)
        self.node = Node(emulator)
        self._scheduled: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def bootstrap(self) -> None:
        """Store the default RBAC policy (system:discovery and friends), as kube-apiserver does at start."""
        for plural, body in bootstrap_policy():
            self.emulator._create(kmock.resource(RBAC, "v1", plural), None, copy.deepcopy(body))

    def admit(self, request: rendering.Request) -> None:
        """Authenticate the bearer token (401), authorize non-admins by RBAC (403); record the decision."""
        if not self.emulator.authorization:
            return
        identity = self.tokens.authenticate(self.emulator._header(request, "Authorization"))
        if identity is None:
            raise unauthorized()
        attrs = request_attributes(identity.name, request.method, request.url.path, request.params)
        allowed, reason = self.authorizer.authorize(identity, attrs)
        self.audit.record(attrs, allowed)
        if not allowed:
            raise forbidden(attrs, reason)
        if self.emulator.owner_references_permission_enforcement:
            ownerrefs.check(self, identity, attrs, request.body or b"")

    def poke(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # constructing, or a test thread without a loop: the next change on the loop schedules
        self._loop = loop
        if self._scheduled is None:
            self._scheduled = loop.call_later(self.emulator.controller_delay, self._pass)

    def _pass(self) -> None:
        self._scheduled = None
        try:
            self.gc.run_pass()
            if self.emulator.statefulset_controller:
                self.statefulsets.run_pass()
            if self.emulator.kubelet is not None:
                self.node.run_pass()
        except Exception as e:  # a controller bug must fail the test (kube_api checks .errors), not vanish
            if self.emulator._errors:
                self.emulator._errors[-1].append(e)
            raise
