"""The one way checks are run: per stage, in order, the first DEFER/REJECT wins (Haraka's hook chain).

A TAG never ends the chain; the first one is the stage's answer when nothing refuses (the session
goes on, the tag is known). For policy checks the runner also counts the check and its verdict and
applies `policy.mode: audit` (decide, log and count, but accept); the listener's own checks are
run the same way without either. The runner is a plain loop over precomputed tuples: it runs for
every MAIL and RCPT, so it allocates nothing, and an async check costs a coroutine only when it
really has to wait.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import cast

from smtp_relay.policy.metrics import PolicyMetrics
from smtp_relay.policy.verdict import ACCEPT, SKIP, Action, Check, Decide, DecideAsync, Facts, Stage, Verdict

log = logging.getLogger(__name__)

_DEFER, _REJECT, _TAG = Action.DEFER, Action.REJECT, Action.TAG


class Accounting:
    """Counts policy checks and their verdicts, logs them, and applies audit mode."""

    __slots__ = ("audit", "metrics")

    def __init__(self, metrics: PolicyMetrics, *, audit: bool) -> None:
        self.metrics = metrics
        self.audit = audit

    def decide(self, check: str, verdict: Verdict | None, facts: Facts | None = None) -> Verdict | None:
        """Count a check and its verdict; in audit mode log what would have happened and return None."""
        self.metrics.count_check(check)
        if verdict is None or verdict.action is Action.ACCEPT:
            return None
        self.metrics.count_verdict(check, verdict.action.value)
        client = facts.client_ip if facts is not None else "-"
        if self.audit:
            self.metrics.audited.labels(check, verdict.action.value).inc()
            log.info("policy audit: %s would %s client %s: %s", check, verdict.action.value, client, verdict.reply)
            return None
        log.info("policy: %s %s client %s: %s", check, verdict.action.value, client, verdict.reply)
        return verdict

    def hold(self, check: str, reason: str, facts: Facts) -> bool:
        """Count a quarantine verdict; False in audit mode (logged, not enforced)."""
        self.metrics.count_check(check)
        self.metrics.count_verdict(check, "quarantine")
        if self.audit:
            self.metrics.audited.labels(check, "quarantine").inc()
            log.info("policy audit: %s would quarantine client %s: %s", check, facts.client_ip, reason)
            return False
        return True


_Account = Callable[[str, Verdict | None, Facts], Verdict | None]


class Chain:
    """The checks of one stage, in order; `append` adds one (a bare callable is a listener-style check)."""

    __slots__ = ("_accounting", "_checks", "_steps", "_sync_steps", "stage", "sync")

    def __init__(
        self,
        stage: Stage,
        checks: Iterable[Check | Decide] = (),
        accounting: Accounting | None = None,
        *,
        sync: bool = False,
    ) -> None:
        self.stage = stage
        self.sync = sync
        """Run with `run_sync` (the listener asks without awaiting): no check may wait."""
        self._accounting = accounting
        self._checks: list[Check] = []
        # (decide, name, accounting or None): each check as the loop reads it, looked up once here.
        self._steps: tuple[tuple[DecideAsync, str, _Account | None], ...] = ()
        self._sync_steps: tuple[tuple[Decide, str, _Account | None], ...] = ()
        for check in checks:
            self.append(check)

    @property
    def checks(self) -> tuple[Check, ...]:
        return tuple(self._checks)

    def append(self, check: Check | Decide) -> None:
        if not isinstance(check, Check):
            check = Check(getattr(check, "__name__", "check"), self.stage, check, policy=False)
        if check.stage != self.stage:
            raise ValueError(f"check {check.name} is for stage {check.stage}, not {self.stage}")
        if check.waits and self.sync:
            raise ValueError(f"check {check.name} waits for I/O: it cannot run in the synchronous {self.stage} chain")
        account: _Account | None = None
        if check.policy:
            if self._accounting is None:
                raise ValueError(f"policy check {check.name} needs a chain with accounting")
            account = self._accounting.decide
        self._checks.append(check)
        self._steps = (*self._steps, (check.decide, check.name, account))
        if self.sync:  # never waits (checked above), so its answer is always a verdict or None
            self._sync_steps = (*self._sync_steps, (cast(Decide, check.decide), check.name, account))

    def run_sync(self, facts: Facts) -> Verdict:
        """The stage's verdict, for a chain of checks that never wait."""
        if not self.sync:
            raise TypeError(f"the {self.stage} chain may wait for I/O: use run()")
        tagged = ACCEPT
        for decide, name, account in self._sync_steps:
            verdict = decide(facts)
            if verdict is SKIP:
                continue
            if account is not None:
                verdict = account(name, verdict, facts)
            if verdict is None:
                continue
            action = verdict.action
            if action is _DEFER or action is _REJECT:
                return verdict
            if action is _TAG and tagged is ACCEPT:
                tagged = verdict
        return tagged

    async def run(self, facts: Facts) -> Verdict:
        """The stage's verdict; a check's awaitable is awaited only when it returns one."""
        tagged = ACCEPT
        for decide, name, account in self._steps:
            outcome = decide(facts)
            if outcome is None or isinstance(outcome, Verdict):
                verdict = outcome
            else:
                verdict = await outcome
            if verdict is SKIP:
                continue
            if account is not None:
                verdict = account(name, verdict, facts)
            if verdict is None:
                continue
            action = verdict.action
            if action is _DEFER or action is _REJECT:
                return verdict
            if action is _TAG and tagged is ACCEPT:
                tagged = verdict
        return tagged
