"""The images' dependency locks: they match pyproject.toml, and each installs, hash-checked, into a fresh venv.

No container engine runs here, so the slow tests run the images' own build stage (relay_image/build-venv.sh,
which both Dockerfiles run) into a temporary folder and check what an image would hold: exactly the lock's
packages, entry points that start, and for the relay every module of smtp_relay importable without kopf,
the kubernetes client or relay_operator.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
RELAY_LOCK = ROOT / "relay_image" / "requirements.lock"
OPERATOR_LOCK = ROOT / "requirements-operator.lock"
BUILD_LOCK = ROOT / "requirements-build.lock"
BUILD_VENV = ROOT / "relay_image" / "build-venv.sh"
# The images run CPython 3.11 on Linux: markers are judged for that platform, as `make locks` compiles them.
IMAGE_ENVIRONMENT = {
    "python_version": "3.11",
    "python_full_version": "3.11.15",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "os_name": "posix",
    "platform_machine": "x86_64",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "extra": "",
}
OPERATOR_ONLY = {"kopf", "kubernetes"}
DIRECT = "relayfleet (pyproject.toml)"


@dataclass
class Pin:
    version: Version
    hashes: list[str] = field(default_factory=list)
    via: list[str] = field(default_factory=list)


def parse_lock(text: str) -> dict[str, Pin]:
    """`uv pip compile --generate-hashes` output: name==version, its --hash lines, then its `# via` lines."""
    pins: dict[str, Pin] = {}
    current: Pin | None = None
    for line in text.splitlines():
        stripped = line.strip().rstrip("\\").strip()
        if not stripped or (current is None and stripped.startswith("#")):
            continue
        if not line[0].isspace():
            name, sep, version = stripped.partition("==")
            assert sep, f"not a pinned requirement: {line!r}"
            current = pins[canonicalize_name(name)] = Pin(Version(version))
        elif current is not None and stripped.startswith("--hash=sha256:"):
            current.hashes.append(stripped.removeprefix("--hash=sha256:"))
        elif current is not None and stripped.startswith("#"):
            via = stripped.lstrip("#").strip().removeprefix("via").strip()
            if via:
                current.via.append(via)
    return pins


def applies(requirement: Requirement) -> bool:
    return requirement.marker is None or Marker(str(requirement.marker)).evaluate(IMAGE_ENVIRONMENT)


def lock_problems(requirements: list[str], lock_text: str) -> list[str]:
    """What makes a lock disagree with the requirements it was compiled from (empty: it agrees).

    Every requirement that applies to the image is pinned within its specifier, every pin has hashes, every
    pin that is direct is still required, and every other pin is wanted by another pin of the lock.
    """
    pins = parse_lock(lock_text)
    wanted = {canonicalize_name(Requirement(r).name): Requirement(r) for r in requirements}
    problems = []
    for name, requirement in wanted.items():
        if not applies(requirement):
            continue
        if name not in pins:
            problems.append(f"{requirement} is in pyproject.toml but not in the lock: run `make locks`")
        elif not requirement.specifier.contains(pins[name].version, prereleases=True):
            problems.append(f"{name}=={pins[name].version} does not satisfy {requirement}: run `make locks`")
    for name, pin in pins.items():
        if not pin.hashes:
            problems.append(f"{name}=={pin.version} has no --hash")
        direct = DIRECT in pin.via or not pin.via  # uv names no source for requirements it read from stdin
        if direct and name not in wanted:
            problems.append(f"{name} is pinned as a direct dependency but pyproject.toml no longer asks for it")
        if any(v != DIRECT and canonicalize_name(v) not in pins for v in pin.via):
            problems.append(f"{name} is wanted by {pin.via}, not by the lock's packages")
    return problems


def relay_requirements() -> list[str]:
    return list(PYPROJECT["project"]["dependencies"])


def operator_requirements() -> list[str]:
    return relay_requirements() + list(PYPROJECT["project"]["optional-dependencies"]["operator"])


def test_relay_lock_matches_pyproject() -> None:
    assert lock_problems(relay_requirements(), RELAY_LOCK.read_text()) == []


def test_operator_lock_matches_pyproject() -> None:
    assert lock_problems(operator_requirements(), OPERATOR_LOCK.read_text()) == []


def test_build_lock_matches_build_system() -> None:
    assert lock_problems(list(PYPROJECT["build-system"]["requires"]), BUILD_LOCK.read_text()) == []


def test_relay_lock_holds_none_of_the_operators_stack() -> None:
    relay, operator = parse_lock(RELAY_LOCK.read_text()), parse_lock(OPERATOR_LOCK.read_text())
    assert operator.keys() >= OPERATOR_ONLY
    assert not OPERATOR_ONLY & relay.keys()
    # What the operator adds comes only from its own extra: the packages both images share are pinned alike.
    assert {n: p.version for n, p in relay.items()} == {n: operator[n].version for n in relay}
    assert {canonicalize_name(Requirement(r).name) for r in PYPROJECT["project"]["dependencies"]}.isdisjoint(
        OPERATOR_ONLY
    )


def test_a_dependency_added_to_pyproject_but_not_locked_is_caught() -> None:
    lock = RELAY_LOCK.read_text()
    assert lock_problems([*relay_requirements(), "requests>=2"], lock) == [
        "requests>=2 is in pyproject.toml but not in the lock: run `make locks`"
    ]
    assert lock_problems([*relay_requirements(), "aiohttp>=99"], lock) == [
        f"aiohttp=={parse_lock(lock)['aiohttp'].version} does not satisfy aiohttp>=99: run `make locks`"
    ]
    # Windows-only requirements do not reach the Linux image, so they need no pin.
    assert lock_problems([*relay_requirements(), "pywin32>=300; sys_platform == 'win32'"], lock) == []


def test_a_dependency_dropped_from_pyproject_but_still_locked_is_caught() -> None:
    without_pyspf = [r for r in relay_requirements() if not r.startswith("pyspf")]
    assert lock_problems(without_pyspf, RELAY_LOCK.read_text()) == [
        "pyspf is pinned as a direct dependency but pyproject.toml no longer asks for it"
    ]


def test_a_pin_without_hashes_is_caught() -> None:
    unhashed = re.sub(r"(?m)^(pyspf==[^ ]+) \\\n(\s+--hash=\S+\n)+", r"\1\n", RELAY_LOCK.read_text())
    assert "pyspf==2" in unhashed
    assert any(p.startswith("pyspf==") and p.endswith("has no --hash") for p in lock_problems([], unhashed))


# --- the images' build stage, run for real --------------------------------------------------------------------


@pytest.fixture(scope="module")
def build_tools(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One venv of build tools (requirements-build.lock) for both images' builds: it is made only once."""
    return tmp_path_factory.mktemp("build-tools") / "venv"


def build_venv(lock: Path, source: Path, target: Path, tools: Path) -> None:
    """relay_image/build-venv.sh, as the Dockerfiles run it (it fetches the pinned files from the index)."""
    result = subprocess.run(
        ["sh", str(BUILD_VENV), str(BUILD_LOCK), str(lock), str(source), str(target)],
        env={**os.environ, "BUILD_TOOLS": str(tools), "PYTHON": sys.executable},  # the 3.11 the locks are for
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert result.returncode == 0, f"build-venv.sh failed:\n{result.stdout}\n{result.stderr}"


def source_tree(tmp: Path, *packages: str) -> Path:
    """The files the Dockerfile copies into its build stage, and nothing else."""
    source = tmp / "src"
    for name in ("pyproject.toml", "README.md"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, source / name)
    for package in packages:
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    return source


PROBE = """
import importlib, importlib.metadata, importlib.util, json, pkgutil, sys
root = importlib.import_module(sys.argv[1])
modules = [root.__name__] + [m.name for m in pkgutil.walk_packages(root.__path__, root.__name__ + ".")
                             if not m.name.endswith(".__main__")]  # importing __main__ runs the program
for name in modules:
    importlib.import_module(name)
print(json.dumps({
    "modules": modules,
    "missing": [n for n in sys.argv[2:] if importlib.util.find_spec(n) is None],
    "distributions": [d.metadata["Name"] for d in importlib.metadata.distributions()],
}))
"""


def probe(venv: Path, package: str, absent: list[str]) -> dict[str, list[str]]:
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-c", PROBE, package, *absent],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=venv,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def expected_distributions(lock: Path) -> list[str]:
    return sorted([*parse_lock(lock.read_text()), "relayfleet"])


def package_modules(package: str, folder: Path) -> set[str]:
    """Every module of the package in the checkout, by file, to compare with what the venv imported."""
    names = {package}  # a namespace package has no __init__.py, and still imports
    for path in (folder / package).rglob("*.py"):
        parts = path.relative_to(folder).with_suffix("").parts
        if parts[-1] != "__main__":
            names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


@pytest.mark.slow
def test_relay_image_venv_holds_the_relay_lock_and_imports_without_the_operator(
    tmp_path: Path, build_tools: Path
) -> None:
    venv = tmp_path / "relay"
    build_venv(RELAY_LOCK, source_tree(tmp_path, "relay_image/smtp_relay"), venv, build_tools)

    found = probe(venv, "smtp_relay", ["kopf", "kubernetes", "relay_operator", "pip", "setuptools"])
    assert found["missing"] == ["kopf", "kubernetes", "relay_operator", "pip", "setuptools"]
    assert set(found["modules"]) == package_modules("smtp_relay", ROOT / "relay_image")
    assert sorted(canonicalize_name(d) for d in found["distributions"]) == expected_distributions(RELAY_LOCK)

    assert not (venv / "bin" / "relayfleet-operator").exists()  # its package is not in this image
    started = subprocess.run(
        [str(venv / "bin" / "smtp-relay"), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert started.returncode == 0, started.stderr
    assert "usage: smtp-relay" in started.stdout and "run" in started.stdout
    checked = subprocess.run(
        [str(venv / "bin" / "smtp-relay"), "check", "-f", str(ROOT / "examples" / "quickstart.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.slow
def test_operator_image_venv_holds_the_operator_lock_and_starts(tmp_path: Path, build_tools: Path) -> None:
    venv = tmp_path / "operator"
    source = source_tree(tmp_path, "relay_image/smtp_relay", "operator/relay_operator")
    build_venv(OPERATOR_LOCK, source, venv, build_tools)

    found = probe(venv, "relay_operator", ["crdgen", "pip", "setuptools", "pytest"])
    assert found["missing"] == ["crdgen", "pip", "setuptools", "pytest"]
    assert set(found["modules"]) == package_modules("relay_operator", ROOT / "operator")
    assert sorted(canonicalize_name(d) for d in found["distributions"]) == expected_distributions(OPERATOR_LOCK)

    for script, expected in (("relayfleet-operator", "kopf"), ("smtp-relay", "usage: smtp-relay")):
        started = subprocess.run(
            [str(venv / "bin" / script), "--help"], capture_output=True, text=True, timeout=60, check=False
        )
        assert started.returncode == 0, started.stderr
        assert expected in started.stdout


def test_the_build_stage_script_is_the_one_both_dockerfiles_run() -> None:
    for dockerfile in (ROOT / "relay_image" / "Dockerfile", ROOT / "Dockerfile.operator"):
        assert "RUN sh /locks/build-venv.sh /locks/requirements-build.lock" in dockerfile.read_text(), dockerfile
