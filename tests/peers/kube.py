"""The Kubernetes API peer: an in-process API emulator (kmock-based) on 127.0.0.1 with a kubeconfig.

No real kube-apiserver can run here; `tests/kube/emulator.py` gives kopf, kubectl and the kubernetes
client the API semantics they rely on. The server runs in its own thread and event loop, so sync tests,
async tests and a kopf operator thread can all use it at once. It serves plain http (`KubeApi.url`) and
https (`KubeApi.tls_url`, which the kubeconfig names: kubectl sends bearer tokens over https only).

Usage::

    def test_x(kube_api):
        kube_api.register_crd(crd_manifest)
        kubectl(kube_api, "get", "smr", "-A")
        assert kube_api.live("relayfleet.io/v1/smtprelays", "default", "r1")["spec"]["replicas"] == 3
        operator = kube_api.as_service_account("default", "relayfleet-operator")  # RBAC applies to it
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kopf
import pytest
from kmock import KubernetesError

from tests.kube.audit import Audit
from tests.kube.emulator import KubeEmulator
from tests.kube.server import TOKEN, ThreadedServer, write_kubeconfig
from tests.peers.tls import IssuedCert, ThrowawayCA

KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"


@dataclass
class KubeApi:
    """A running emulator: its URLs, a kubeconfig for it, and the emulator itself for assertions."""

    url: str
    kubeconfig: Path
    emulator: KubeEmulator
    token: str = TOKEN
    server: ThreadedServer | None = field(default=None, repr=False)
    tls_url: str = ""
    ca_pem: bytes | None = field(default=None, repr=False)
    user: str = "kubernetes-admin"

    def register_crd(self, manifest: dict[str, Any]) -> None:
        """Serve a CRD's resources (as `kubectl apply` of the CRD would), safely from any thread."""
        self._call(lambda: self.emulator.register_crd(manifest))

    def live(self, resource: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The stored object (e.g. ``live('v1/configmaps', 'default', 'x')``), or None if absent/deleted."""
        found: dict[str, Any] | None = self._call(lambda: self.emulator.live(resource, namespace, name))
        return found

    def as_service_account(self, namespace: str, name: str) -> KubeApi:
        """The same server as ``system:serviceaccount:<namespace>:<name>``: its own token and kubeconfig.

        The ServiceAccount must exist when requests are made (else 401); RBAC objects decide the rest (403).
        """
        token: str = self._call(lambda: self.emulator.control.tokens.mint(namespace, name))
        kubeconfig = self.kubeconfig.with_name(f"kubeconfig-{namespace}-{name}")
        write_kubeconfig(kubeconfig, self.tls_url or self.url, namespace, token, self.ca_pem)
        user = f"system:serviceaccount:{namespace}:{name}"
        return dataclasses.replace(self, kubeconfig=kubeconfig, token=token, user=user)

    def login(self) -> kopf.ConnectionInfo:
        """What a kopf ``@kopf.on.login`` handler returns to act as this identity."""
        return kopf.ConnectionInfo(server=self.url, token=self.token, insecure=True, default_namespace="default")

    @property
    def audit(self) -> Audit:
        """Every request the emulator authorized or refused, per identity (read it once the traffic stopped)."""
        audit: Audit = self.emulator.control.audit
        return audit

    def _call(self, fn: Any) -> Any:
        return self.server.call(fn) if self.server is not None else fn()


def _tls(cert: IssuedCert) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert.cert_path, cert.key_path)
    return context


@pytest.fixture
def kube_api(tmp_path: Path, test_ca: ThrowawayCA, server_cert: IssuedCert) -> Iterator[KubeApi]:
    """An emulated Kubernetes API on 127.0.0.1 (free ports), stopped after the test.

    Fails the test if the emulator itself crashed on a request (an API error such as 404 is not a crash).
    """
    emulator = KubeEmulator()
    with ThreadedServer(emulator, tls=_tls(server_cert)) as server:
        kubeconfig = tmp_path / "kubeconfig"
        write_kubeconfig(kubeconfig, server.tls_url, ca_pem=test_ca.ca_pem)
        yield KubeApi(
            url=server.url,
            kubeconfig=kubeconfig,
            emulator=server.emulator,
            server=server,
            tls_url=server.tls_url,
            ca_pem=test_ca.ca_pem,
        )
        crashes = server.call(lambda: [e for e in server.emulator.errors if not isinstance(e, KubernetesError)])
    assert not crashes, f"the API emulator crashed on requests: {crashes!r}"


def kubectl(
    api: KubeApi, *args: str, check: bool = True, input: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the real kubectl against the emulator (skips when kubectl is absent); its discovery cache goes
    next to the kubeconfig, so no state is shared between tests or with the user's ~/.kube."""
    if not os.access(KUBECTL, os.X_OK):
        pytest.skip("kubectl is not installed")
    env = {**os.environ, "KUBECONFIG": str(api.kubeconfig)}
    cache = api.kubeconfig.parent / "kubectl-cache"
    cmd = [KUBECTL, f"--cache-dir={cache}", *args]
    result = subprocess.run(cmd, env=env, input=input, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result
