"""Helm for the chart tests: the binary `make peers` unpacks into .tools/bin, and rendering to documents."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "relayfleet"
VALUES = Path(__file__).resolve().parent / "values"
_LOCAL = ROOT / ".tools" / "bin" / "helm"
HELM = str(_LOCAL) if _LOCAL.exists() else shutil.which("helm")

needs_helm = pytest.mark.skipif(HELM is None, reason="helm not installed: run `make peers`")


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    assert HELM is not None
    result = subprocess.run([HELM, *args], capture_output=True, text=True, timeout=120, check=False)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def render(
    *sets: str, values: list[Path] | None = None, release: str = "rf", namespace: str = "relayfleet", crds: bool = False
) -> list[dict[str, Any]]:
    """`helm template` of the chart as documents (crds: with the crds/ folder, as `helm install` applies it)."""
    args = ["template", release, str(CHART), "--namespace", namespace]
    args += ["--include-crds"] if crds else []
    for path in values or []:
        args += ["-f", str(path)]
    for value in sets:
        args += ["--set", value]
    return [d for d in yaml.safe_load_all(helm(*args).stdout) if isinstance(d, dict)]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The only document of `kind` (and `name`)."""
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''} rendered"
    return found[0]
