"""kopf's side: the login a test can replace, one API client per event loop, kopf's settings, and
which API errors kopf retries soon. (Async only: looptime leaks a loop when sync and async tests
share a module.)"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import aiohttp
import kopf
import pytest

from relay_operator.handlers import wiring
from relay_operator.kube import ApiError

INFO = kopf.ConnectionInfo(server="http://127.0.0.1:1/", token="t0ken")


@pytest.fixture
def emulator_login() -> Iterator[list[str]]:
    """`set_login` with a recorder of the logins it answered."""
    logins: list[str] = []

    async def login(**_: object) -> kopf.ConnectionInfo:
        logins.append("login")
        return INFO

    wiring.set_login(login)
    yield logins
    wiring.set_login(None)


async def test_login_override_may_be_sync_or_async(emulator_login: list[str]) -> None:
    assert await wiring.login(logger=logging.getLogger("test")) is INFO
    wiring.set_login(lambda **_: INFO)
    assert await wiring.login(logger=logging.getLogger("test")) is INFO


async def test_one_client_per_loop_closed_at_cleanup(emulator_login: list[str]) -> None:
    kube = await wiring.client()
    assert kube.connection.server == "http://127.0.0.1:1"
    assert kube.connection.headers() == {"Authorization": "Bearer t0ken"}
    assert await wiring.client() is kube
    assert emulator_login == ["login"], "logged in once for the loop"
    await wiring.close_clients()
    fresh = await wiring.client()
    assert fresh is not kube
    await wiring.close_clients()


@pytest.mark.parametrize(("status", "retried"), [(409, True), (429, True), (500, True), (503, True), (403, False)])
async def test_transient_api_errors_become_temporary_errors(status: int, retried: bool) -> None:
    error = ApiError(status, "message", "PATCH", "/api/v1/namespaces/mail/services/outbound")
    with pytest.raises(kopf.TemporaryError if retried else ApiError) as raised, wiring.retried_when_transient():
        raise error
    if retried:
        assert isinstance(raised.value, kopf.TemporaryError)
        assert raised.value.delay == 2 and raised.value.__cause__ is error
    else:
        assert raised.value is error


@pytest.mark.parametrize("error", [TimeoutError(), aiohttp.ClientConnectionError("Connector is closed.")])
async def test_an_api_server_that_does_not_answer_is_retried_soon(error: Exception) -> None:
    with pytest.raises(kopf.TemporaryError) as raised, wiring.retried_when_transient():
        raise error
    assert raised.value.delay == wiring.UNREACHABLE_RETRY_SECONDS < 60 and raised.value.__cause__ is error
    assert str(raised.value).startswith("the API server did not answer: ")


async def test_progress_and_diff_base_live_in_our_annotations() -> None:
    settings = kopf.OperatorSettings()
    await wiring.configure(settings)
    assert settings.persistence.finalizer == "operator.relayfleet.io/finalizer"
    assert isinstance(settings.persistence.progress_storage, kopf.AnnotationsProgressStorage)
    assert isinstance(settings.persistence.diffbase_storage, kopf.AnnotationsDiffBaseStorage)
    assert settings.posting.level == logging.WARNING
