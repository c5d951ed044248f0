"""Fixtures of the emulator's tests."""

from __future__ import annotations

import pytest

from tests.kube.api_calls import CRD
from tests.peers.kube import KubeApi


@pytest.fixture
def crd_api(kube_api: KubeApi) -> KubeApi:
    """The emulator with the test CRD of SmtpRelay registered."""
    kube_api.register_crd(CRD)
    return kube_api
