"""A `Kubelet` for the API emulator that runs each pod's container as a real local process.

Why: the promise that no message with a 250 is lost on a scale-down or a rollout depends on what the real
pieces do together: the operator's drain calls, the StatefulSet controller's order, the relay's SIGTERM, the
spool on the claim. `InstantKubelet` only flips pod status; this one runs `smtp-relay` (the container's
command, from this venv) for every pod the emulator's StatefulSet controller creates, as a node would:

- the pod gets an IP of its own in 127.244.0.0/16 (a loopback address a process can bind, chosen at random
  and checked free, so two test runs on one machine do not collide), written to its status through the API;
  `0.0.0.0` in the command becomes that IP, so the relay listens on its container ports there;
- every volumeMount is materialised under the pod's folder (`pod_volumes`): ConfigMaps and Secrets projected
  as the kubelet's AtomicWriter does and kept up to date (every `sync_interval` s, so hot reload is exercised),
  emptyDirs as plain folders, a claim as a symlink to its folder under ``root/claims/<ns>/<claim>``, which
  outlives the process and the pod and is deleted only once the PersistentVolumeClaim is gone;
  absolute paths in the command are rewritten into the pod's folder (whole arguments only: there is no chroot,
  so a path inside a shell script is not);
- readiness follows the container's readinessProbe (an httpGet on the pod IP); a process that exits on its
  own is restarted (restartPolicy Always) on the same folders;
- deletion sends SIGTERM and reports the pod stopped when the process exits; the emulator's Node calls
  `kill` (SIGKILL) when the pod's grace runs out. Every exit is recorded in `exits`.

The kubelet reads and writes only through the API (`api_url`, `token`), as a node does.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.harness.pod_volumes import Source, VolumeNotReady, payload, read_payload, source_of, write_atomic
from tests.kube.kubelet import Node

Json = dict[str, Any]
BIN_DIR = Path(sys.executable).parent
"""Where a container's command is looked up: the image's binaries are this venv's console scripts."""


@dataclass(frozen=True)
class PodExit:
    """One end of a pod's process: how it ended and after how long a stop (None: it was not asked to stop)."""

    pod: str
    uid: str
    code: int
    killed: bool
    stop_seconds: float | None


@dataclass
class PodRun:
    """A pod on this node: its folders, address, process and the volumes kept up to date."""

    namespace: str
    name: str
    uid: str
    folder: Path
    ip: str = ""
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    projected: dict[Path, Source] = field(default_factory=dict)
    claims: dict[str, Path] = field(default_factory=dict)
    probe: tuple[int, str] | None = None
    proc: subprocess.Popen[bytes] | None = None
    ready: bool | None = None
    stopping: float | None = None
    killed: bool = False
    restarts: int = 0
    guard: threading.Lock = field(default_factory=threading.Lock)
    """Held while the process is started or signalled, so a stop never misses a process being started."""

    @property
    def fs(self) -> Path:
        return self.folder / "fs"

    @property
    def log(self) -> Path:
        return self.folder / "container.log"


class RelayKubelet:
    """Runs the emulator's pods as local processes; `close()` kills whatever still runs."""

    def __init__(self, api_url: str, token: str, root: Path, sync_interval: float = 0.5) -> None:
        self.api_url, self.token, self.root = api_url.rstrip("/"), token, Path(root)
        self.sync_interval = sync_interval
        self.exits: list[PodExit] = []
        self._runs: dict[str, PodRun] = {}
        self._lock = threading.Lock()
        self._node: Node | None = None
        self._closed = threading.Event()
        self._rng = random.Random()
        self._sync_thread = threading.Thread(target=self._sync_loop, name="relay-kubelet-sync", daemon=True)
        self._sync_thread.start()

    # -- the Kubelet protocol (called on the emulator's loop: never block) --

    def start(self, pod: Json, node: Node) -> None:
        self._node = node
        meta = pod["metadata"]
        folder = self.root / "pods" / f"{meta['namespace']}-{meta['name']}-{meta['uid'][:8]}"
        run = PodRun(meta["namespace"], meta["name"], meta["uid"], folder)
        with self._lock:
            self._runs[run.uid] = run
        threading.Thread(target=self._launch, args=(run, pod), name=f"kubelet-{run.name}", daemon=True).start()

    def stop(self, pod: Json, grace: int, node: Node) -> None:
        with self._lock:
            run = self._runs.get(pod["metadata"]["uid"])
        if run is not None:
            with run.guard:
                run.stopping = time.monotonic()
                proc = run.proc
        if run is None or proc is None:  # never started (still mounting: the launch gives up)
            if run is not None:
                with self._lock:
                    self._runs.pop(run.uid, None)
            node.stopped(pod["metadata"]["namespace"], pod["metadata"]["name"])
            return
        threading.Thread(
            target=self._terminate, args=(run, proc, grace, node), name=f"stop-{run.name}", daemon=True
        ).start()

    def kill(self, pod: Json, node: Node) -> None:
        with self._lock:
            run = self._runs.get(pod["metadata"]["uid"])
        if run is not None and run.proc is not None and run.proc.poll() is None:
            run.killed = True
            run.proc.send_signal(signal.SIGKILL)

    # -- for tests --

    def pod(self, namespace: str, name: str) -> PodRun | None:
        """The running (or stopping) pod of that name."""
        with self._lock:
            return next((r for r in self._runs.values() if (r.namespace, r.name) == (namespace, name)), None)

    def claim_folder(self, namespace: str, claim: str) -> Path:
        """Where the claim's data lives (it may not exist: never mounted, or deleted with its claim)."""
        return self.root / "claims" / namespace / claim

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            if run.proc is not None and run.proc.poll() is None:
                run.proc.send_signal(signal.SIGKILL)
                run.proc.wait(10)
        self._sync_thread.join(timeout=10)

    # -- starting --

    def _launch(self, run: PodRun, pod: Json) -> None:
        try:
            spec = pod.get("spec") or {}
            (container,) = spec.get("containers") or [{}]  # relay pods have one container
            ports = [int(p["containerPort"]) for p in container.get("ports") or []]
            run.ip = self._address(ports)
            self._api("PATCH", _pod_path(run) + "/status", {"status": {"podIP": run.ip, "podIPs": [{"ip": run.ip}]}})
            while run.stopping is None and not self._closed.is_set():
                try:
                    self._mount(run, spec, container)
                    break
                except VolumeNotReady as exc:  # as a real node: ContainerCreating until the object exists
                    _event(run, str(exc))
                    time.sleep(self.sync_interval)
            run.argv = self._argv(run, container)
            run.env = _env(container)
            run.probe = _probe(container)
            with run.guard:
                if run.stopping is None and not self._closed.is_set():
                    self._spawn(run)
        except Exception as exc:  # a harness bug: visible in the pod's folder, and the pod never gets ready
            _event(run, f"launch failed: {exc!r}")
            raise

    def _address(self, ports: list[int]) -> str:
        """A random 127.244.x.y where every container port is free."""
        for _ in range(200):
            ip = f"127.244.{self._rng.randint(1, 250)}.{self._rng.randint(2, 254)}"
            with self._lock:
                if any(r.ip == ip for r in self._runs.values()):
                    continue
            if all(_free(ip, port) for port in ports):
                return ip
        raise RuntimeError("no free pod address in 127.244.0.0/16")

    def _mount(self, run: PodRun, spec: Json, container: Json) -> None:
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        objects: dict[tuple[str, str], Json | None] = {}
        for mount in sorted(container.get("volumeMounts") or [], key=lambda m: str(m["mountPath"])):
            volume = volumes[mount["name"]]
            dest = run.fs / str(mount["mountPath"]).lstrip("/")
            source = source_of(volume)
            if source is not None:
                write_atomic(dest, payload(source, self._object(run.namespace, source, objects)), source.mode)
                run.projected[dest] = source
            elif "persistentVolumeClaim" in volume:
                name = volume["persistentVolumeClaim"]["claimName"]
                folder = self.claim_folder(run.namespace, name)
                folder.mkdir(parents=True, exist_ok=True)
                dest.parent.mkdir(parents=True, exist_ok=True)
                if not dest.is_symlink():
                    dest.symlink_to(folder, target_is_directory=True)
                run.claims[name] = folder
            else:  # emptyDir and anything else: a folder that lives as long as the pod
                dest.mkdir(parents=True, exist_ok=True)

    def _argv(self, run: PodRun, container: Json) -> list[str]:
        argv = [*(container.get("command") or []), *(container.get("args") or [])]
        if not argv:
            raise RuntimeError(f"pod {run.name}: the container has no command")
        binary = argv[0] if "/" in argv[0] else str(BIN_DIR / argv[0])
        rest = [
            str(run.fs / a.lstrip("/")) if a.startswith("/") else (run.ip if a == "0.0.0.0" else a) for a in argv[1:]
        ]
        return [binary, *rest]

    def _spawn(self, run: PodRun) -> None:
        run.folder.mkdir(parents=True, exist_ok=True)
        with run.log.open("ab") as log:
            run.proc = subprocess.Popen(run.argv, stdout=log, stderr=subprocess.STDOUT, env=run.env, cwd=run.folder)

    # -- stopping --

    def _terminate(self, run: PodRun, proc: subprocess.Popen[bytes], grace: int, node: Node) -> None:
        proc.send_signal(signal.SIGTERM if grace > 0 else signal.SIGKILL)
        run.killed = run.killed or grace <= 0
        code = proc.wait()
        stopped_in = time.monotonic() - run.stopping if run.stopping is not None else None
        self.exits.append(PodExit(run.name, run.uid, code, run.killed, stopped_in))
        with self._lock:
            self._runs.pop(run.uid, None)
        node.stopped(run.namespace, run.name)

    # -- the node's loop: volumes, probes, restarts, claims --

    def _sync_loop(self) -> None:
        while not self._closed.wait(self.sync_interval):
            with self._lock:
                runs = [r for r in self._runs.values() if r.proc is not None and r.stopping is None]
            objects: dict[tuple[str, str], Json | None] = {}
            for run in runs:
                try:
                    self._sync(run, objects)
                except (OSError, urllib.error.URLError) as exc:
                    _event(run, f"sync: {exc!r}")
            self._collect_claims()

    def _sync(self, run: PodRun, objects: dict[tuple[str, str], Json | None]) -> None:
        for dest, source in run.projected.items():
            try:
                files = payload(source, self._object(run.namespace, source, objects))
            except VolumeNotReady:
                continue  # a deleted object: the kubelet keeps the last projection
            if files != read_payload(dest):
                write_atomic(dest, files, source.mode)
        assert run.proc is not None and self._node is not None
        with run.guard:
            if run.proc.poll() is not None and run.stopping is None:  # crashed: restartPolicy Always
                self.exits.append(PodExit(run.name, run.uid, run.proc.returncode, False, None))
                run.restarts += 1
                self._spawn(run)
        ready = self._probe(run)
        if ready != run.ready:
            run.ready = ready
            self._node.ready(run.namespace, run.name, ready)

    def _probe(self, run: PodRun) -> bool:
        if run.proc is None or run.proc.poll() is not None:
            return False
        if run.probe is None:
            return True
        port, path = run.probe
        try:
            with urllib.request.urlopen(f"http://{run.ip}:{port}{path}", timeout=1) as reply:
                return bool(200 <= reply.status < 400)
        except (urllib.error.URLError, OSError):
            return False

    def _collect_claims(self) -> None:
        """Delete the folder of every claim whose PersistentVolumeClaim is gone and that no pod mounts."""
        claims_root = self.root / "claims"
        if not claims_root.is_dir():
            return
        with self._lock:
            mounted = {folder for r in self._runs.values() for folder in r.claims.values()}
        for folder in [f for ns in claims_root.iterdir() for f in ns.iterdir()]:
            if folder in mounted:
                continue
            status, _ = self._api(
                "GET", f"/api/v1/namespaces/{folder.parent.name}/persistentvolumeclaims/{folder.name}"
            )
            if status == 404:
                shutil.rmtree(folder, ignore_errors=True)

    # -- the API --

    def _object(self, namespace: str, source: Source, cache: dict[tuple[str, str], Json | None]) -> Json | None:
        key = (source.plural, source.name)
        if key not in cache:
            status, body = self._api("GET", f"/api/v1/namespaces/{namespace}/{source.plural}/{source.name}")
            cache[key] = body if status == 200 else None
        return cache[key]

    def _api(self, method: str, path: str, body: Json | None = None) -> tuple[int, Json | None]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/merge-patch+json" if method == "PATCH" else "application/json"
        request = urllib.request.Request(self.api_url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                return reply.status, json.loads(reply.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, None


def _event(run: PodRun, text: str) -> None:
    """A line in the pod's events.log (what `kubectl describe pod` would show as an event)."""
    run.folder.mkdir(parents=True, exist_ok=True)
    with (run.folder / "events.log").open("a") as log:
        log.write(f"{time.strftime('%H:%M:%S')} {text}\n")


def _pod_path(run: PodRun) -> str:
    return f"/api/v1/namespaces/{run.namespace}/pods/{run.name}"


def _free(ip: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((ip, port))
        except OSError:
            return False
    return True


def _env(container: Json) -> dict[str, str]:
    """The node's PATH and locale, then the container's literal env (the relay's own settings stay unset)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "RELAYFLEET_", "KUBECONFIG"))}
    env.update({str(e["name"]): str(e.get("value", "")) for e in container.get("env") or [] if "value" in e})
    return env


def _probe(container: Json) -> tuple[int, str] | None:
    """(port, path) of the readinessProbe's httpGet, a named port resolved through the container's ports."""
    get = ((container.get("readinessProbe") or {}).get("httpGet")) or None
    if get is None:
        return None
    port = get.get("port")
    if isinstance(port, str) and not port.isdigit():
        port = next(p["containerPort"] for p in container.get("ports") or [] if p.get("name") == port)
    return int(port), str(get.get("path") or "/")
