"""The relay pods: one StatefulSet per SmtpRelay.

A StatefulSet, not a Deployment, because each pod owns its spool: by default every pod gets
its own PersistentVolumeClaim back after a restart, so queued mail survives. The pod template changes
(and so rolls the pods) only for what hot reload cannot apply: listener ports and TLS modes, the
image, mounts. Policy and routes reach running pods through the ConfigMap.
"""

from __future__ import annotations

from typing import Any

from relay_operator.relays.render.admin_token import ADMIN_TOKEN_DIR, ADMIN_TOKEN_FILE, admin_token_secret_name
from relay_operator.relays.render.common import (
    ADMIN_PORT,
    ADMIN_PORT_NAME,
    ANNOTATION_PREFIX,
    Manifest,
    Owner,
    checksum,
    config_map_name,
    headless_service_name,
    labels,
    metadata,
    selector_labels,
    volume_name,
)
from relay_operator.relays.render.domains import dkim_secret_name
from relay_operator.settings import Settings
from smtp_relay.config.secret_refs import secret_refs
from smtp_relay.config.spec import SmtpRelaySpec

CONFIG_DIR = "/etc/relay"
SECRETS_DIR = "/etc/relay/secrets"
DKIM_VOLUME = "dkim-keys"
"""The relay's `<relay>-dkim-keys` Secret, always mounted (possibly empty): domains come and go without a restart."""
SPOOL_DIR = "/var/spool/relay"
RUN_AS = 65532
RELAY_COMMAND = [
    *("smtp-relay", "run", "-f", f"{CONFIG_DIR}/relay.yaml", "--secrets-dir", SECRETS_DIR),
    *("--spool", SPOOL_DIR, "--host", "0.0.0.0", "--http-port", str(ADMIN_PORT)),
    *("--admin-token-file", ADMIN_TOKEN_FILE),
]
UNPRIVILEGED_PORT_SYSCTL = "net.ipv4.ip_unprivileged_port_start"
"""A safe (namespaced) sysctl since Kubernetes 1.22: set to 0 in the pod, a non-root relay binds 25/465/587
on every runtime, also those (containerd 1.x, CRI-O) that do not lower it themselves."""
GRACE_MARGIN_SECONDS = 30
"""Of the pod's terminationGracePeriodSeconds kept back from the relay's drain (`--grace`) for its last
writes (journal, spool close) before the kubelet's SIGKILL."""
RESTART_CHECKSUM = f"{ANNOTATION_PREFIX}/restart-checksum"
"""Pod-template annotation: digest of the settings a running relay cannot reload."""


def relay_grace_seconds(termination_grace_seconds: int) -> int:
    """The relay's `--grace`, derived from the pod's termination grace: one source, a margin kept back."""
    margin = min(GRACE_MARGIN_SECONDS, termination_grace_seconds // 5)
    return max(0, termination_grace_seconds - margin)


def referenced_secrets(spec: SmtpRelaySpec) -> list[str]:
    """Every Secret the spec names, in a stable order, each once: one volume and mount each."""
    return list(dict.fromkeys(ref.name for ref in secret_refs(spec)))


def restart_checksum(spec: SmtpRelaySpec) -> str:
    """Digest of what needs new sockets: listener names, ports and TLS modes, and PROXY protocol."""
    return checksum(
        {
            "listeners": [[lst.name, lst.port, lst.tls] for lst in spec.listeners],
            "proxyProtocol": spec.clients.proxy_protocol,
        }
    )


def _container(owner: Owner, spec: SmtpRelaySpec, settings: Settings) -> dict[str, Any]:
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "spool", "mountPath": SPOOL_DIR},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "admin-token", "mountPath": ADMIN_TOKEN_DIR, "readOnly": True},
    ]
    mounts += [
        {"name": volume_name("secret", s), "mountPath": f"{SECRETS_DIR}/{s}", "readOnly": True}
        for s in referenced_secrets(spec)
    ]
    mounts.append({"name": DKIM_VOLUME, "mountPath": f"{SECRETS_DIR}/{dkim_secret_name(owner)}", "readOnly": True})
    ports = [{"name": lst.name, "containerPort": lst.port, "protocol": "TCP"} for lst in spec.listeners]
    ports.append({"name": ADMIN_PORT_NAME, "containerPort": ADMIN_PORT, "protocol": "TCP"})
    container: dict[str, Any] = {
        "name": "relay",
        "image": spec.image or settings.relay_image,
        "imagePullPolicy": "IfNotPresent",
        "command": [*RELAY_COMMAND, "--grace", str(relay_grace_seconds(settings.termination_grace_seconds))],
        "ports": ports,
        "livenessProbe": {
            "httpGet": {"path": "/livez", "port": ADMIN_PORT_NAME},
            "periodSeconds": 10,
            "timeoutSeconds": 3,
            "failureThreshold": 6,
        },
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": ADMIN_PORT_NAME},
            "periodSeconds": 5,
            "timeoutSeconds": 3,
            "failureThreshold": 2,
        },
        "volumeMounts": mounts,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if spec.resources:
        container["resources"] = dict(spec.resources)
    return container


def _volumes(owner: Owner, spec: SmtpRelaySpec) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": config_map_name(owner)}},
        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
        {"name": "admin-token", "secret": {"secretName": admin_token_secret_name(owner), "defaultMode": 0o440}},
    ]
    if spec.queue.ephemeral:
        volumes.append({"name": "spool", "emptyDir": {}})
    volumes += [
        {"name": volume_name("secret", s), "secret": {"secretName": s, "defaultMode": 0o440}}
        for s in referenced_secrets(spec)
    ]
    volumes.append({"name": DKIM_VOLUME, "secret": {"secretName": dkim_secret_name(owner), "defaultMode": 0o440}})
    return volumes


def _claim_templates(owner: Owner, spec: SmtpRelaySpec) -> list[dict[str, Any]]:
    if spec.queue.ephemeral:
        return []
    claim: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": str(spec.queue.storage)}},
    }
    if spec.queue.storage_class_name:
        claim["storageClassName"] = spec.queue.storage_class_name
    return [{"metadata": {"name": "spool", "labels": labels(owner)}, "spec": claim}]


def build_statefulset(owner: Owner, spec: SmtpRelaySpec, settings: Settings, replicas: int | None = None) -> Manifest:
    """StatefulSet `<name>`: relay pods, hardened, with spool, config and Secrets mounted; `replicas` overrides
    spec.replicas while a scale-down waits for the leaving pods to drain."""
    pod_security: dict[str, Any] = {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if any(lst.port < 1024 for lst in spec.listeners):
        pod_security["sysctls"] = [{"name": UNPRIVILEGED_PORT_SYSCTL, "value": "0"}]
    pod_spec: dict[str, Any] = {
        "terminationGracePeriodSeconds": settings.termination_grace_seconds,
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "securityContext": pod_security,
        "containers": [_container(owner, spec, settings)],
        "volumes": _volumes(owner, spec),
    }
    statefulset_spec: dict[str, Any] = {
        "replicas": spec.replicas if replicas is None else replicas,
        "serviceName": headless_service_name(owner),
        "podManagementPolicy": "Parallel",
        "updateStrategy": {"type": "RollingUpdate"},
        "selector": {"matchLabels": selector_labels(owner)},
        "template": {
            "metadata": {
                "labels": labels(owner),
                "annotations": {RESTART_CHECKSUM: restart_checksum(spec)},
            },
            "spec": pod_spec,
        },
    }
    claims = _claim_templates(owner, spec)
    if claims:
        statefulset_spec["volumeClaimTemplates"] = claims
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": metadata(owner, owner.name),
        "spec": statefulset_spec,
    }
