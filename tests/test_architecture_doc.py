"""docs/architecture.md stays true to the tree: every package and module of the product is named in it."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "architecture.md").read_text()
PACKAGES = [ROOT / "relay_image" / "smtp_relay", ROOT / "operator" / "relay_operator", ROOT / "operator" / "crdgen"]


def _modules() -> list[str]:
    names: list[str] = []
    for package in PACKAGES:
        for path in sorted(package.rglob("*.py")):
            if path.name in ("__init__.py", "__main__.py"):
                continue
            names.append(str(path.relative_to(package.parent)))
    return names


@pytest.mark.parametrize("module", _modules())
def test_every_module_is_described(module: str) -> None:
    name = Path(module).name  # written in backticks, alone or with its folder: `envelope.py` or `model/envelope.py`
    assert f"{name}`" in DOC, f"docs/architecture.md does not name {module}"


@pytest.mark.parametrize(
    "folder", sorted({str(p.parent.relative_to(pkg)) for pkg in PACKAGES for p in pkg.rglob("__init__.py")} - {"."})
)
def test_every_folder_is_described(folder: str) -> None:
    assert f"`{Path(folder).name}/" in DOC, f"docs/architecture.md does not name the folder {folder}/"
