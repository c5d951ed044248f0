"""What each SPF result does in each `ipAuthority.spf` mode (spf.spf_verdict), with plain results."""

from __future__ import annotations

import pytest

from smtp_relay.policy.spf import SpfResult, spf_verdict
from smtp_relay.policy.verdict import Action


def test_fail_is_rejected_with_the_explanation_in_reject_mode() -> None:
    verdict = spf_verdict(SpfResult("fail", "1.2.3.4 may not\r\nsend", domain="d.test"), "reject")
    assert verdict is not None
    assert (verdict.action, verdict.code, verdict.status) == (Action.REJECT, 550, "5.7.23")
    assert verdict.text == "SPF fail for d.test: 1.2.3.4 may not send"  # CR/LF from DNS cannot split the reply


@pytest.mark.parametrize("result", ["fail", "softfail"])
def test_fail_and_softfail_are_tagged_in_tag_mode(result: str) -> None:
    verdict = spf_verdict(SpfResult(result, "x", domain="d.test"), "tag")  # type: ignore[arg-type]
    assert verdict is not None and verdict.action is Action.TAG
    assert verdict.reason == f"spf_{result}"


def test_softfail_is_only_tagged_even_in_reject_mode() -> None:
    verdict = spf_verdict(SpfResult("softfail", "x"), "reject")
    assert verdict is not None and verdict.action is Action.TAG


def test_temperror_defers_in_reject_mode_only() -> None:
    verdict = spf_verdict(SpfResult("temperror", "DNS timeout"), "reject")
    assert verdict is not None
    assert (verdict.action, verdict.code, verdict.status) == (Action.DEFER, 451, "4.7.24")
    assert spf_verdict(SpfResult("temperror", "DNS timeout"), "tag") is None


@pytest.mark.parametrize("result", ["pass", "neutral", "none", "permerror"])
@pytest.mark.parametrize("mode", ["tag", "reject"])
def test_results_without_a_verdict(result: str, mode: str) -> None:
    assert spf_verdict(SpfResult(result, "x"), mode) is None  # type: ignore[arg-type]


@pytest.mark.parametrize("result", ["fail", "softfail", "temperror"])
def test_off_gives_no_verdict(result: str) -> None:
    assert spf_verdict(SpfResult(result, "x"), "off") is None  # type: ignore[arg-type]
