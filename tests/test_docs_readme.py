"""The README a newcomer follows stays true: its first message needs no Debian package, its shown capture is
what the script prints, and every `make` target and repository path it names exists."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from bench.peers.ports import free_port

from tests.harness.relay_proc import relay_factory

__all__ = ["relay_factory"]

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCS = {path: path.read_text() for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]}
SENDER = ROOT / "examples" / "send_test_message.py"


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    return README[start : README.index("\n## ", start + 1)]


def make_targets() -> set[str]:
    return set(re.findall(r"(?m)^([a-z][a-z-]*):", (ROOT / "Makefile").read_text()))


def test_every_make_target_the_docs_name_exists() -> None:
    targets = make_targets()
    for path, text in DOCS.items():
        for target in re.findall(r"`make ([a-z][a-z-]*)", text):
            assert target in targets, f"{path.name} names `make {target}`, which the Makefile does not have"


def test_every_repository_path_the_docs_name_exists() -> None:
    roots = ("examples/", "docs/", "relay_image/", "operator/", "charts/", "crds/", "tests/", "bench/", ".ci/")
    names = ("Dockerfile.operator", "requirements-operator.lock", "requirements-build.lock", "pyproject.toml")
    for path, text in DOCS.items():
        # Code spans name paths from the repository root; Markdown links are relative to the document.
        spans = [ROOT / n for n in re.findall(r"`([A-Za-z0-9_./-]+)`", text) if n.startswith(roots) or n in names]
        links = [path.parent / n for n in re.findall(r"\]\(([^)#:]+)\)", text)]
        for found in spans + links:
            if "<" not in str(found) and "*" not in str(found):
                assert found.exists(), f"{path.name} names {found.relative_to(ROOT)}: not found"


def test_the_first_message_after_make_run_needs_only_the_standard_library() -> None:
    local = section("Try it locally")
    assert local.index("make send") < local.index("swaks"), "the first message must not need swaks"
    assert re.search(r"(?m)^send:\n\tpython3 examples/send_test_message.py$", (ROOT / "Makefile").read_text())
    imported = set()
    for node in ast.walk(ast.parse(SENDER.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.partition(".")[0])
    assert imported and imported <= sys.stdlib_module_names | {"__future__"}, imported - sys.stdlib_module_names
    run = re.search(r"(?m)^run: (.*)\n\t(.*)$", (ROOT / "Makefile").read_text())
    assert run and "peers" not in run[1] and "examples/quickstart.yaml" in run[2]


def header_names(text: str) -> list[str]:
    head = text.split("\n\n", 1)[0]
    return [line.split(":", 1)[0] for line in head.splitlines() if re.match(r"^[A-Za-z-]+:", line)]


def send(relay: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SENDER), "--port", str(relay.smtp_port), "--spool", str(relay.spool), *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def quickstart(relay_factory: Any) -> Any:
    spec = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())["spec"]
    spec["listeners"][0]["port"] = free_port()
    relay = relay_factory(spec)
    relay.smtp_port = spec["listeners"][0]["port"]
    return relay


def test_the_capture_the_readme_shows_is_what_make_send_prints(relay_factory: Any) -> None:
    relay = quickstart(relay_factory)
    sent = send(relay)
    assert sent.returncode == 0, sent.stderr
    shown = re.search(r"```console\n\$ make send\npython3 examples/send_test_message.py\n(.*?)```", README, re.S)
    assert shown, "README's local trial shows no `make send` output"
    readme_lines, printed_lines = shown[1].splitlines(), sent.stdout.splitlines()
    assert readme_lines[0].startswith("relay answered: 250 2.0.0 Ok: queued as ")
    assert printed_lines[0].startswith("relay answered: 250 2.0.0 Ok: queued as ")
    readme_message = shown[1].split("\n\n", 1)[1]
    printed_message = sent.stdout.split("\n\n", 1)[1]
    assert header_names(readme_message) == header_names(printed_message)
    for line in ("X-Spam-Status: No, score=0.0 required=5.0 tests=none engine=builtin", "Subject: hello from"):
        assert line in readme_message and line in printed_message
    assert readme_message.rstrip().splitlines()[-1] == printed_message.rstrip().splitlines()[-1]


def test_remote_mode_sends_without_looking_for_the_capture(relay_factory: Any) -> None:
    relay = quickstart(relay_factory)
    sent = send(relay, "--remote", "--to", "ops@example.org")
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.startswith("relay answered: 250 2.0.0 Ok: queued as ") and "captured" not in sent.stdout
    assert "--remote" in section("End to end in a cluster")
