#!/bin/sh
# The images' build stage, also run by tests/test_images_locks.py so the tests install what the images do:
#   build-venv.sh BUILD_LOCK LOCK SOURCE TARGET
# builds a virtualenv at TARGET holding exactly the packages of LOCK (each checked against its hashes) and
# the project at SOURCE. Build tools (pip, setuptools, wheel from BUILD_LOCK) stay in a separate venv that
# the final image never copies: TARGET gets no pip. Sdists in LOCK (pyspf) are built with those tools too.
set -eu
[ "$#" -eq 4 ] || { echo "usage: $0 BUILD_LOCK LOCK SOURCE TARGET" >&2; exit 2; }
build_lock=$1 lock=$2 source=$3 target=$4
python=${PYTHON:-python3}  # the interpreter the venvs are made from (the image's /usr/local/bin/python3)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# BUILD_TOOLS names a tools venv to make once and reuse (the tests build both images' venvs in one run).
tools=${BUILD_TOOLS:-$work/tools}
if [ ! -x "$tools/bin/pip" ]; then
  "$python" -m venv "$tools"
  "$tools/bin/pip" --quiet --disable-pip-version-check install --require-hashes --no-deps -r "$build_lock"
fi
pip="$tools/bin/pip --quiet --disable-pip-version-check"
$pip wheel --require-hashes --no-deps --no-build-isolation --wheel-dir "$work/wheels" -r "$lock"
$pip wheel --no-deps --no-build-isolation --wheel-dir "$work/wheels" "$source"
"$python" -m venv --without-pip "$target"
$pip --python "$target/bin/python" install --no-index --no-deps "$work/wheels"/*.whl
# A console script of the project whose package SOURCE did not hold (the relay image is built without
# relay_operator, so relayfleet-operator) would only fail with ModuleNotFoundError: remove it.
"$target/bin/python" - "$target" <<'PY'
import importlib.metadata, importlib.util, pathlib, sys
for script in importlib.metadata.distribution("relayfleet").entry_points.select(group="console_scripts"):
    if importlib.util.find_spec(script.module.partition(".")[0]) is None:
        (pathlib.Path(sys.argv[1]) / "bin" / script.name).unlink()
PY
# Bytecode now: on a read-only root filesystem Python could never write it, and every start would recompile.
"$target/bin/python" -m compileall -q "$target/lib"
