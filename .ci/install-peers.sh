#!/usr/bin/env bash
# Install the real programs the tests talk to, from Debian's packages, if any is missing.
# Idempotent and quiet when everything is there; nothing is started here (the tests start peers).
set -euo pipefail
need=()
for bin in smtp-sink:postfix postfix:postfix swaks:swaks nsd:nsd dig:dnsutils rspamd:rspamd \
           spamd:spamd clamd:clamav-daemon clamscan:clamav dnsmasq:dnsmasq-base; do
  command -v "${bin%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${bin%%:*}" ] || need+=("${bin##*:}")
done
[ "${#need[@]}" -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "missing peers (${need[*]}): run as root or install them: apt-get install ${need[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
apt-get update -qq
# spamassassin ships spamd's rules; postfix gives smtp-sink/smtp-source and the reference relay.
apt-get install -y -qq --no-install-recommends postfix swaks rspamd spamassassin spamd clamav-daemon \
  clamav dnsmasq-base nsd dnsutils >/dev/null
