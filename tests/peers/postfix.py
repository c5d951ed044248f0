"""pytest fixtures for the postfix peer of bench/peers/postfix.py."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator

import pytest
from bench.peers.postfix import PostfixInstance, make_workdir, postfix_available

PostfixFactory = Callable[..., PostfixInstance]


@pytest.fixture
def postfix_factory() -> Iterator[PostfixFactory]:
    """Start real Postfix instances: `postfix_factory(relayhost=(host, port), port=None, myhostname=None,
    fast_retry=True, main_cf={...}, smtpd_process_limit=None)`.

    Each returned PostfixInstance is started and answering on its port; all are stopped and their
    folders removed at teardown. fast_retry defaults to True here (1-2 s retry), unlike the class.
    """
    if not postfix_available():
        pytest.skip("Postfix needs root and the postfix package (make peers)")
    instances: list[PostfixInstance] = []

    def make(*, relayhost: tuple[str, int] | None, fast_retry: bool = True, **options: object) -> PostfixInstance:
        instance = PostfixInstance(make_workdir(), relayhost=relayhost, fast_retry=fast_retry, **options)  # type: ignore[arg-type]
        instances.append(instance)
        return instance.start()

    try:
        yield make
    finally:
        for instance in instances:
            try:
                instance.stop()
            finally:
                shutil.rmtree(instance.workdir, ignore_errors=True)
