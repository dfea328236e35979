"""The local stack's token script: the API server's error answers become one line."""

from __future__ import annotations

import pytest
import requests

from scripts import skypilot_tokens


class _Answer:
    def __init__(self, status: int, body: object) -> None:
        self.status_code, self._body, self.text, self.reason = status, body, str(body), "Unauthorized"

    def json(self) -> object:
        return self._body


@pytest.mark.parametrize(
    ("body", "detail"),
    [("Invalid credentials", "Invalid credentials"), ({"detail": "Forbidden"}, "Forbidden")],
)
def test_a_refused_call_is_one_line_with_the_servers_reason(
    monkeypatch: pytest.MonkeyPatch, body: object, detail: str
) -> None:
    session = requests.Session()
    monkeypatch.setattr(session, "request", lambda *args, **kwargs: _Answer(401, body))
    with pytest.raises(SystemExit) as refused:
        skypilot_tokens.token_id(session, "http://127.0.0.1:46580", "temporal-workers")
    assert str(refused.value) == (
        "skypilot_tokens: GET http://127.0.0.1:46580/users/service-account-tokens: HTTP 401: " + detail
    )
