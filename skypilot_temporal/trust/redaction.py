"""Masking of secret values in every text that leaves the worker (logs, log tails, heartbeat
details, failure messages), of credentials in URLs and of SkyPilot service-account tokens."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

MASK = "***"
# A line of a multi-line secret (a PEM key, a JSON credential) is masked on its own when it is at
# least this long: output is read line by line, and an error message may join the lines.
MIN_SECRET_LINE_CHARS = 6
# `scheme://user:password@host`: the user info before the @ (an https token is often the user).
_URL_USERINFO = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*)://([^/@\s'\"]+)@")
# A SkyPilot service-account token (SKYPILOT_SERVICE_ACCOUNT_TOKEN): "sky_" and a JWT.
_SKYPILOT_TOKEN = re.compile(r"\bsky_[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+")


class Redactor:
    """Replaces secret values with *** in text: the longest first, so a secret that contains
    another is hidden whole; one regex pass, so masking is linear in the text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        fragments: set[str] = set()
        for secret in secrets:
            if not secret:
                continue
            fragments.add(secret)
            if "\n" in secret or "\r" in secret:
                fragments.update(
                    line.strip() for line in secret.splitlines() if len(line.strip()) >= MIN_SECRET_LINE_CHARS
                )
        ordered = sorted(fragments, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __call__(self, text: str) -> str:
        if self._pattern is not None:
            text = self._pattern.sub(MASK, text)
        return redact_credentials(text)


def redact_credentials(text: str) -> str:
    """`https://user:token@host/x` -> `https://***@host/x` and `sky_<token>` -> `sky_***`,
    anywhere in `text`. An ssh user name alone (`ssh://git@host/x`) is not a credential and stays."""
    if "sky_" in text:
        text = _SKYPILOT_TOKEN.sub(f"sky_{MASK}", text)
    return _URL_USERINFO.sub(_mask_userinfo, text) if "@" in text else text


def _mask_userinfo(match: re.Match[str]) -> str:
    scheme, userinfo = match.group(1), match.group(2)
    if "ssh" in scheme.lower() and ":" not in userinfo:
        return match.group(0)
    return f"{scheme}://{MASK}@"


def hide_credentials(record: logging.LogRecord) -> bool:
    """A logging filter: no log line shows a password or token of a URL (a repository, the API
    server endpoint) or a SkyPilot service-account token."""
    message = record.getMessage()
    if "@" in message or "sky_" in message:
        record.msg, record.args = redact_credentials(message), None
    return True
