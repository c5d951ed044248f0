"""The API emulator with `RelayKubelet` as its node, as a program: a one-node "cluster" of real relay pods.

Why: bench/scale_down runs the operator as its own process against a cluster whose pods are real relays; the
benchmarks never import the tests, so they start this module as a process (as bench/operator_scale starts
`tests.kube.server`).

    python -m tests.harness.relay_cluster --kubeconfig FILE --root DIR [--crd FILE ...] [--sync-interval S]

Prints the API's URL once it serves; pods live under DIR/pods, claims under DIR/claims/<namespace>/<claim>.
SIGTERM or SIGINT kills the pods' processes and stops the server.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from bench.common import until_stopped

from tests.harness.relay_kubelet import RelayKubelet
from tests.kube.emulator import KubeEmulator
from tests.kube.server import TOKEN, register_crds, start, stop, write_kubeconfig


async def serve(kubeconfig: Path, root: Path, crds: list[Path], sync_interval: float) -> None:
    emulator = KubeEmulator()
    register_crds(emulator, crds)
    runner, url = await start(emulator)
    kubelet = RelayKubelet(url, TOKEN, root, sync_interval=sync_interval)
    emulator.kubelet = kubelet  # before any pod exists: every pod of this cluster is a real relay
    write_kubeconfig(kubeconfig, url)
    print(url, flush=True)
    try:
        await until_stopped()
    finally:
        await asyncio.to_thread(kubelet.close)
        await stop(emulator, runner)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.harness.relay_cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubeconfig", type=Path, required=True, help="write a kubeconfig for the API here")
    parser.add_argument("--root", type=Path, required=True, help="the node's folder: pods and claims")
    parser.add_argument("--crd", type=Path, action="append", default=[], help="CRD manifest(s) to register")
    parser.add_argument("--sync-interval", type=float, default=0.5, help="volume, probe and claim sync period (s)")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.kubeconfig, args.root, args.crd, args.sync_interval))
    sys.exit(0)


if __name__ == "__main__":
    main()
