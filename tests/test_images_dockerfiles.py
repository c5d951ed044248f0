"""The two Dockerfiles, linted by parsing (no container engine runs here): pinned bases, stages, user, labels.

Each rule is a function returning the problems it finds, proven on a bad Dockerfile as well as on ours, so a
rule that could never fail would show.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RELAY = ROOT / "relay_image" / "Dockerfile"
OPERATOR = ROOT / "Dockerfile.operator"
PINNED = re.compile(r"^(?P<name>[\w./-]+):(?P<tag>[\w.-]+)@sha256:(?P<digest>[0-9a-f]{64})$")
# Package managers and compilers: none may run in the final stage (only the build stage builds).
BUILD_TOOLS = re.compile(r"\b(apt-get|apt|apk|dnf|yum|microdnf|gcc|cc|make|pip install|pip wheel|uv)\b")
LABELS = ("title", "description", "version", "revision", "licenses", "base.name", "base.digest")


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [value for kw, value in self.instructions if kw == keyword]


def parse(text: str) -> list[Stage]:
    """Instructions grouped by stage; comments dropped and backslash continuations joined."""
    stages: list[Stage] = []
    logical = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    for line in logical.splitlines():
        if not line.strip():
            continue
        keyword, _, value = line.strip().partition(" ")
        keyword, value = keyword.upper(), value.strip()
        if keyword == "FROM":
            words = value.split()
            named = len(words) == 3 and words[1].upper() == "AS"
            stages.append(Stage(words[0], words[2] if named else None))
        else:
            assert stages, f"{keyword} before any FROM"
            stages[-1].instructions.append((keyword, value))
    return stages


def base_images(stages: list[Stage]) -> list[str]:
    """The images that come from a registry, not from an earlier stage of the same file."""
    names = {s.name for s in stages if s.name}
    return [s.image for s in stages if s.image not in names]


def pinning_problems(stages: list[Stage]) -> list[str]:
    problems = []
    for image in base_images(stages):
        match = PINNED.match(image)
        if match is None or match["tag"] == "latest":
            problems.append(f"FROM {image} is not pinned by version tag and digest")
    return problems


def stage_problems(stages: list[Stage]) -> list[str]:
    if len(stages) < 2:
        return ["not multi-stage: the final image would carry the build"]
    final = stages[-1]
    problems = [f"final stage runs a build tool: RUN {run}" for run in final.args("RUN") if BUILD_TOOLS.search(run)]
    copies = [c for c in final.args("COPY") if not c.startswith("--from=")]
    problems += [f"final stage copies from the build context: COPY {c}" for c in copies]
    return problems


def user_problems(stages: list[Stage]) -> list[str]:
    users = stages[-1].args("USER")
    if not users:
        return ["the final stage sets no USER: it would run as root"]
    user, _, group = users[-1].partition(":")
    if not user.isdigit() or int(user) == 0 or (group and (not group.isdigit() or int(group) == 0)):
        return [f"USER {users[-1]}: must be a numeric non-root uid[:gid] (runAsNonRoot checks numbers)"]
    return []


def labels(stage: Stage) -> dict[str, str]:
    found = {}
    for value in stage.args("LABEL"):
        for word in shlex.split(value):
            key, _, text = word.partition("=")
            found[key] = text
    return found


def label_problems(stages: list[Stage]) -> list[str]:
    found = labels(stages[-1])
    problems = [
        f"missing label org.opencontainers.image.{k}" for k in LABELS if f"org.opencontainers.image.{k}" not in found
    ]
    pinned = [PINNED.match(image) for image in base_images(stages)]
    digests = {f"sha256:{m['digest']}" for m in pinned if m}
    if found.get("org.opencontainers.image.base.digest") not in digests:
        problems.append("org.opencontainers.image.base.digest is not the digest the base is pinned by")
    return problems


def problems(text: str) -> list[str]:
    stages = parse(text)
    return pinning_problems(stages) + stage_problems(stages) + user_problems(stages) + label_problems(stages)


@pytest.mark.parametrize("dockerfile", [RELAY, OPERATOR], ids=["relay", "operator"])
def test_dockerfile_passes_every_rule(dockerfile: Path) -> None:
    assert problems(dockerfile.read_text()) == []


def test_both_images_use_one_base_and_its_digest_is_a_real_tag() -> None:
    relay, operator = base_images(parse(RELAY.read_text())), base_images(parse(OPERATOR.read_text()))
    assert relay == operator and len(relay) == 1
    match = PINNED.match(relay[0])
    assert match and match["name"] == "python" and re.fullmatch(r"3\.11\.\d+-slim-bookworm", match["tag"])
    # The locks are compiled for that Python minor version (make locks: --python-version 3.11).
    assert "--python-version 3.11 " in (ROOT / "Makefile").read_text()


def test_relay_image_builds_from_the_relay_lock_and_without_the_operator() -> None:
    text = RELAY.read_text()
    build = parse(text)[1]
    copied = " ".join(build.args("COPY"))
    assert "relay_image/requirements.lock" in copied and "requirements-operator.lock" not in copied
    assert "operator/" not in copied.replace("requirements-operator", "")
    assert parse(text)[-1].args("ENTRYPOINT") == ['["smtp-relay"]']


def test_operator_image_builds_from_the_operator_lock() -> None:
    build = parse(OPERATOR.read_text())[1]
    copied = " ".join(build.args("COPY"))
    assert "requirements-operator.lock" in copied and "operator/relay_operator" in copied
    assert parse(OPERATOR.read_text())[-1].args("ENTRYPOINT") == ['["relayfleet-operator"]']


@pytest.mark.parametrize("dockerfile", [RELAY, OPERATOR], ids=["relay", "operator"])
def test_every_copied_path_exists_in_the_repository(dockerfile: Path) -> None:
    for stage in parse(dockerfile.read_text()):
        for value in stage.args("COPY"):
            if value.startswith("--from="):
                continue
            *sources, _destination = value.split()
            for source in sources:
                assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source} does not exist"


def test_the_build_context_leaves_out_the_checkouts_state() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip()}
    assert {".git", ".venv", ".tools", "var", "**/__pycache__"} <= ignored
    copied = " ".join(
        value for path in (RELAY, OPERATOR) for stage in parse(path.read_text()) for value in stage.args("COPY")
    )
    assert not any(entry in copied.split() for entry in ignored)  # nothing a Dockerfile copies is left out


@pytest.mark.parametrize("dockerfile", [RELAY, OPERATOR], ids=["relay", "operator"])
def test_final_stage_suits_a_read_only_root(dockerfile: Path) -> None:
    final = parse(dockerfile.read_text())[-1]
    env = " ".join(final.args("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env  # bytecode is compiled in the build stage (build-venv.sh)
    assert "compileall" in (ROOT / "relay_image" / "build-venv.sh").read_text()
    # pip, setuptools and wheel of the base image are removed; the venv never had them.
    assert any("pip uninstall --yes" in run and "setuptools" in run for run in final.args("RUN"))


BAD = """\
FROM python:3.11-slim
RUN apt-get update && apt-get install -y gcc
COPY . /src
"""

BAD_MULTI = """\
FROM python:latest@sha256:{digest} AS build
RUN pip wheel .
FROM build AS final-base
FROM python:3.11.15-slim-bookworm
LABEL org.opencontainers.image.title=x
RUN apt-get update && apt-get install -y \\
    build-essential
COPY src /src
USER root
""".format(digest="0" * 64)


def test_the_rules_catch_a_bad_dockerfile() -> None:
    assert problems(BAD) == [
        "FROM python:3.11-slim is not pinned by version tag and digest",
        "not multi-stage: the final image would carry the build",
        "the final stage sets no USER: it would run as root",
        *[f"missing label org.opencontainers.image.{k}" for k in LABELS],
        "org.opencontainers.image.base.digest is not the digest the base is pinned by",
    ]
    found = problems(BAD_MULTI)
    assert "FROM python:latest@sha256:" + "0" * 64 + " is not pinned by version tag and digest" in found
    assert "FROM python:3.11.15-slim-bookworm is not pinned by version tag and digest" in found
    assert "final stage runs a build tool: RUN apt-get update && apt-get install -y      build-essential" in found
    assert "final stage copies from the build context: COPY src /src" in found
    assert "USER root: must be a numeric non-root uid[:gid] (runAsNonRoot checks numbers)" in found
    assert user_problems(parse("FROM a AS b\nFROM b\nUSER 0:0\n"))
    assert user_problems(parse("FROM a AS b\nFROM b\nUSER 65532:0\n"))
    assert user_problems(parse("FROM a AS b\nFROM b\nUSER 65532:65532\n")) == []
