"""A plain-HTTP JSON client for the emulator's own tests: status code, decoded body and Warning headers."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from tests.peers.kube import KubeApi

Json = dict[str, Any]
MERGE = "application/merge-patch+json"
JSONPATCH = "application/json-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"


@dataclass
class Reply:
    code: int
    body: Json
    warnings: list[str] = field(default_factory=list)

    @property
    def message(self) -> str:
        return str(self.body.get("message", ""))


def send(
    api: KubeApi, method: str, path: str, body: Any = None, ctype: str = "application/json", **query: str
) -> Reply:
    url = api.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": ctype, "Accept": "application/json", "Authorization": f"Bearer {api.token}"}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return Reply(response.status, json.loads(response.read()), response.headers.get_all("Warning") or [])
    except urllib.error.HTTPError as e:
        return Reply(e.code, json.loads(e.read() or b"{}"), e.headers.get_all("Warning") or [])


def accepted(reply: Reply) -> Json:
    assert reply.code in (200, 201), (reply.code, reply.body)
    return reply.body
