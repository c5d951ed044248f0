"""The operator's client against the API emulator, which (like the apiserver) returns quantities canonical:
an equal amount written in another spelling is neither patched on every reconcile nor, in the StatefulSet's
immutable volumeClaimTemplates, a reason to recreate it. The StatefulSet's owner exists, so the emulator's
garbage collector leaves it alone."""

from __future__ import annotations

from crdgen.documents import smtprelay_crd
from relay_operator.kube import Connection, Kube
from relay_operator.relays.render.common import Owner
from relay_operator.relays.render.statefulset import build_statefulset
from relay_operator.settings import Settings
from smtp_relay.config.manifest import parse_spec
from tests.peers.kube import KubeApi


async def test_non_canonical_quantities_converge_without_patch_or_recreate(kube_api: KubeApi) -> None:
    kube_api.register_crd(smtprelay_crd())
    relay = {
        "apiVersion": "relayfleet.io/v1alpha1",
        "kind": "SmtpRelay",
        "metadata": {"name": "outbound", "namespace": "default"},
        "spec": {},
    }
    async with Kube(Connection(server=kube_api.url, token=kube_api.token, insecure=True)) as kube:
        created_relay = await kube.create(relay)
    owner = Owner(name="outbound", namespace="default", uid=created_relay["metadata"]["uid"], generation=1)
    spec = parse_spec(
        {
            "queue": {"storage": "1024Mi"},
            "resources": {"requests": {"cpu": "0.5", "memory": "1024Mi"}, "limits": {"memory": "1.5Gi"}},
        }
    )
    desired = build_statefulset(owner, spec, Settings())
    async with Kube(Connection(server=kube_api.url, token=kube_api.token, insecure=True)) as kube:
        outcome, created = await kube.apply(desired)
        assert outcome == "created"
        stored = created["spec"]["template"]["spec"]["containers"][0]["resources"]
        assert stored == {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "1536Mi"}}
        claim = created["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
        assert claim == "1Gi", "the emulator canonicalizes as the apiserver does"
        for _ in range(3):
            outcome, again = await kube.apply(desired)
            assert outcome == "unchanged"
            assert again["metadata"]["uid"] == created["metadata"]["uid"]
        bigger = build_statefulset(
            owner, parse_spec({**spec.model_dump(by_alias=True), "queue": {"storage": "2Gi"}}), Settings()
        )
        assert (await kube.apply(bigger))[0] == "recreated", "a different amount still is a change"
