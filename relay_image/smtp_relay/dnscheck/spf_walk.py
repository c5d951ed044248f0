"""Does a domain's SPF record reach `include:<the fleet's record>`? For domains with no egress address to
evaluate check_host with, only an include.

The record's terms are parsed and validated by pyspf (`query.validate_mechanism`, its modifier syntax), so
a broken term is the permerror a receiver would give; the walk then follows what evaluation would: terms
left to right, `+include:` and `redirect=` depth first, nothing after `all` (and no redirect where there
is an `all`), DNS-querying terms counted against the 10-lookup limit (RFC 7208 4.6.4). A substring of the
text never counts: `-include:x`, or `include:x` after `-all`, authorizes nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import spf

from smtp_relay.dnscheck.verify import IncludeWalk, Observation

MAX_LOOKUPS = spf.MAX_LOOKUP
_QUERYING = frozenset({"a", "mx", "ptr", "exists", "include"})
_PROBE_IP = "192.0.2.1"
"""TEST-NET-1 (RFC 5737): terms are only parsed here, so the address only fills %{i} macros."""

LookupTxt = Callable[[str], Awaitable[Observation]]


class _Stop(Exception):
    def __init__(self, walk: IncludeWalk) -> None:
        super().__init__(walk.error)
        self.walk = walk


@dataclass
class _Walk:
    lookup_txt: LookupTxt
    want: str
    lookups: int = 0

    def count(self) -> None:
        self.lookups += 1
        if self.lookups > MAX_LOOKUPS:
            raise _Stop(IncludeWalk(False, f"permerror: more than {MAX_LOOKUPS} DNS lookups (RFC 7208 4.6.4)"))

    async def record(self, name: str) -> str:
        seen = await self.lookup_txt(name)
        if seen.state == "serverError":
            raise _Stop(IncludeWalk(False, f"TXT lookup of {name} failed: {seen.error}", temporary=True))
        records = [v for v in seen.values if v.lower() == "v=spf1" or v.lower().startswith("v=spf1 ")]
        if len(records) != 1:
            how = "no SPF record" if not records else f"{len(records)} SPF records"
            raise _Stop(IncludeWalk(False, f"permerror: {name} has {how}"))
        return records[0]

    async def reaches(self, name: str) -> bool:
        """Whether evaluating `name`'s record can get to the wanted include (raises _Stop otherwise)."""
        text = await self.record(name)
        query = spf.query(i=_PROBE_IP, s=f"postmaster@{name}", h=name)
        redirect = ""
        try:
            for term in text.split()[1:]:
                modifier = spf.RE_MODIFIER.split(term)[1:]
                if len(modifier) == 2:
                    if modifier[0].lower() == "redirect":
                        redirect = query.expand_domain(modifier[1]).rstrip(".").lower()
                    continue
                _, mechanism, arg, _, result = query.validate_mechanism(term)
                if mechanism == "all":
                    return False
                if mechanism in _QUERYING:
                    self.count()
                if mechanism == "include" and result == "pass":
                    target = str(arg).rstrip(".").lower()
                    if target == self.want or await self.reaches(target):
                        return True
        except spf.PermError as exc:
            raise _Stop(IncludeWalk(False, f"permerror in the SPF record of {name}: {exc}")) from None
        except spf.TempError as exc:  # a macro that needs the client (%{p}): only check_host can follow it
            why = f"the SPF record of {name} cannot be followed without a client: {exc}"
            raise _Stop(IncludeWalk(False, why)) from None
        if redirect:
            self.count()
            return redirect == self.want or await self.reaches(redirect)
        return False


async def walk_include(lookup_txt: LookupTxt, domain: str, include: str) -> IncludeWalk:
    """Whether `domain`'s SPF record reaches `include:<include>`, looking records up with `lookup_txt`."""
    walk = _Walk(lookup_txt, include.rstrip(".").lower())
    try:
        return IncludeWalk(await walk.reaches(domain.rstrip(".").lower()))
    except _Stop as stop:
        return stop.walk
