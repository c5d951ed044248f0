"""spec.limits on the operator's side, against the emulator: the Redis Secrets are validated and mounted
through the one secret_refs walk, and the replica count reaches the pods in their config.

The relay divides a fleet-wide limit by spec.replicas x workers while Redis is unreachable. The replica
count travels in the ConfigMap (the relay reloads it by itself), not in the pod template: an env var
there would roll every pod on each scale, also on each autoscaling step.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest
import yaml

from crdgen.documents import smtprelay_crd
from relay_operator.kube import Connection, Kube
from relay_operator.relays import reconcile as rec
from relay_operator.settings import Settings
from smtp_relay.config.manifest import SecretData, parse_spec
from smtp_relay.config.resolved import resolve
from smtp_relay.policy.ratelimit import share
from tests.operator.relays.test_apply_errors import degraded, reread
from tests.operator.relays.test_reconcile import Events
from tests.peers.kube import KubeApi

NS = "default"
SPEC = {
    "replicas": 3,
    "policy": {"rateLimits": [{"key": "sender", "limit": 300, "per": "1m"}]},
    "limits": {
        "backend": "redis",
        "redis": {"address": "redis.mail.svc:6379", "secretName": "redis-auth", "tls": True, "caSecret": "redis-ca"},
    },
}


@pytest.fixture
async def kube(kube_api: KubeApi) -> AsyncIterator[Kube]:
    kube_api.register_crd(smtprelay_crd())
    async with Kube(Connection(server=kube_api.url, token=kube_api.token, insecure=True)) as client:
        yield client


def secret(name: str, **data: str) -> dict[str, Any]:
    encoded = {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS}, "data": encoded}


async def test_redis_secrets_are_checked_mounted_and_the_replicas_reach_the_config(kube: Kube) -> None:
    body = {
        "apiVersion": "relayfleet.io/v1alpha1",
        "kind": "SmtpRelay",
        "metadata": {"name": "outbound", "namespace": NS},
    }
    await kube.create({**body, "spec": SPEC})
    await kube.create(secret("redis-ca", **{"ca.crt": "CA PEM"}))
    result = await rec.reconcile(await reread(kube), kube, Settings(), Events())
    assert [p.reason for p in result.problems] == ["SecretNotFound"]
    cond = degraded(await reread(kube))
    assert cond["status"] == "True" and cond["reason"] == "SecretNotFound"
    assert "spec.limits.redis.secretName: Secret 'redis-auth' not found" in cond["message"]
    assert await kube.get("StatefulSet", NS, "outbound") is None  # no pods that would run without their limits

    await kube.create(secret("redis-auth", username="relay"))  # no password: named too
    await rec.reconcile(await reread(kube), kube, Settings(), Events())
    assert (
        "spec.limits.redis.secretName: Secret 'redis-auth' has no key password"
        in degraded(await reread(kube))["message"]
    )

    await kube.delete("Secret", NS, "redis-auth")
    await kube.create(secret("redis-auth", username="relay", password="s3cret"))
    result = await rec.reconcile(await reread(kube), kube, Settings(), Events())
    assert result.problems == []
    statefulset = await kube.get("StatefulSet", NS, "outbound")
    assert statefulset is not None
    pod = statefulset["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v.get("secret", {}).get("secretName") for v in pod["volumes"]}
    for name in ("redis-auth", "redis-ca"):
        assert name in volumes.values()
        volume = next(v for v, s in volumes.items() if s == name)
        assert mounts[volume] == f"/etc/relay/secrets/{name}"

    config = await kube.get("ConfigMap", NS, "outbound-config")
    assert config is not None
    document = next(yaml.safe_load_all(config["data"]["relay.yaml"]))
    assert document["spec"]["replicas"] == 3 and document["spec"]["limits"]["backend"] == "redis"
    mounted = {"redis-auth": SecretData("redis-auth", {"username": b"relay", "password": b"s3cret"}),
               "redis-ca": SecretData("redis-ca", {"ca.crt": b"CA PEM"})}  # fmt: skip
    relay_config = resolve("outbound", NS, parse_spec(document["spec"]), mounted)  # what a pod loads
    assert relay_config.redis_credentials is not None and relay_config.redis_credentials.username == "relay"
    assert share(relay_config.spec.replicas, 2) == 6  # with --workers 2, each process keeps a sixth

    template = statefulset["spec"]["template"]
    stored = await reread(kube)
    await kube.patch("SmtpRelay", NS, "outbound", {"spec": {"replicas": 5}})
    assert (await reread(kube))["metadata"]["generation"] > stored["metadata"]["generation"]
    await rec.reconcile(await reread(kube), kube, Settings(), Events())
    config = await kube.get("ConfigMap", NS, "outbound-config")
    assert config is not None and next(yaml.safe_load_all(config["data"]["relay.yaml"]))["spec"]["replicas"] == 5
    scaled = await kube.get("StatefulSet", NS, "outbound")
    assert scaled is not None and scaled["spec"]["replicas"] == 5
    assert scaled["spec"]["template"] == template  # scaling rolls no pod: the new count arrives by reload
