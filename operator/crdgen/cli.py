"""`python -m crdgen`: print the CRDs, write them into folders, or check that folders hold them.

`make crds` runs it from the repository root with `PYTHONPATH=operator` (crdgen is a build-time
tool, not part of the wheel): `--out crds --out charts/relayfleet/crds`, the plain folder for
`kubectl apply -f crds/` and the chart's copy. A test runs `--check` on both.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from crdgen.documents import all_crds, render_yaml


def stale_files(folders: list[Path]) -> list[Path]:
    """The CRD files in `folders` that are missing or differ from what the models generate."""
    stale = []
    for name, crd in all_crds().items():
        text = render_yaml(crd)
        for folder in folders:
            path = folder / name
            if not path.exists() or path.read_text() != text:
                stale.append(path)
    return stale


def write(folders: list[Path]) -> None:
    """Write every CRD file into each folder (created if needed)."""
    for name, crd in all_crds().items():
        text = render_yaml(crd)
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)


def main(argv: list[str] | None = None) -> int:
    """Print the CRDs (no --out), write them into each --out folder, or check those (--check)."""
    parser = argparse.ArgumentParser(prog="python -m crdgen", description=main.__doc__)
    parser.add_argument("--out", type=Path, action="append", default=[], help="folder for the CRD files (repeatable)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 naming each stale file")
    args = parser.parse_args(argv)
    if not args.out:
        if args.check:
            parser.error("--check needs the folders to check (--out)")
        for crd in all_crds().values():
            sys.stdout.write("---\n" + render_yaml(crd))
        return 0
    if not args.check:
        write(args.out)
        return 0
    stale = stale_files(args.out)
    if stale:
        sys.stderr.write("stale, run `make crds`: " + ", ".join(str(path) for path in stale) + "\n")
        return 1
    return 0
