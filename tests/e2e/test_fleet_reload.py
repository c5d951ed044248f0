"""A renewed certificate reaches a running relay pod without a restart (issue 12, "Reload visible").

cert-manager renews by updating the Secret; the kubelet projects the new payload into the pod's volume (the
``..data`` symlink swap); the relay notices the changed files and the next STARTTLS serves the new certificate.
"""

from __future__ import annotations

import base64
import smtplib
import ssl

import pytest
from cryptography import x509

from tests.e2e.fleet import MERGE, NAME, NAMESPACE, Fleet, until
from tests.operator.handlers.test_e2e import ok
from tests.peers.tls import IssuedCert, ThrowawayCA

pytestmark = [pytest.mark.e2e, pytest.mark.peers, pytest.mark.slow]
SECRETS = f"/api/v1/namespaces/{NAMESPACE}/secrets"


def _tls_data(cert: IssuedCert) -> dict[str, str]:
    return {"tls.crt": base64.b64encode(cert.cert_pem).decode(), "tls.key": base64.b64encode(cert.key_pem).decode()}


def _served_serial(host: str, port: int) -> int:
    """The serial of the certificate the relay presents on STARTTLS."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # the serial is what is compared
    with smtplib.SMTP(host, port, timeout=10) as client:
        client.starttls(context=context)
        sock = client.sock
        assert isinstance(sock, ssl.SSLSocket)
        der = sock.getpeercert(binary_form=True)
        assert der is not None
        return int(x509.load_der_x509_certificate(der).serial_number)


async def test_a_renewed_certificate_is_served_on_the_next_starttls_without_a_restart(
    fleet: Fleet,
    test_ca: ThrowawayCA,
) -> None:
    first, renewed = test_ca.issue(("relay.test",)), test_ca.issue(("relay.test",))
    secret = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls", "metadata": {"name": "relay-tls"}}
    ok(fleet.emulator, "POST", SECRETS, {**secret, "data": _tls_data(first)})
    listeners = [{"name": "relay", "port": fleet.port, "tls": "starttls"}]
    fleet.create(replicas=1, listeners=listeners, tls={"secretName": "relay-tls"})
    await fleet.settled(1)
    pod = fleet.kubelet.pod(NAMESPACE, f"{NAME}-0")
    assert pod is not None and pod.proc is not None
    pid, template = pod.proc.pid, fleet.statefulset()["spec"]["template"]
    assert _served_serial(pod.ip, fleet.port) == first.serial

    ok(fleet.emulator, "PATCH", f"{SECRETS}/relay-tls", {"data": _tls_data(renewed)}, MERGE)
    await until(lambda: _served_serial(pod.ip, fleet.port) == renewed.serial, seconds=20, interval=0.5)
    assert pod.proc.pid == pid and pod.restarts == 0 and pod.proc.poll() is None, "the same process"
    assert fleet.statefulset()["spec"]["template"] == template, "no rollout: the pod template did not change"
    assert fleet.kubelet.pod(NAMESPACE, f"{NAME}-0") is pod
