"""The policy's checks, one small unit per concern, grouped by the SMTP stage that has their data.

Each module builds `Check`s (policy.verdict) from the settings and the lower helper modules (dnsbl,
spf, ratelimit, recipients, ...) it needs; the chains in policy.chain run them. A check module never
imports another check module, so any check can be changed, reordered or dropped on its own.
"""
