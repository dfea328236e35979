"""Error text and classification: what an activity's failure says, and whether it is retried.

`one_line` is the one way an error message is made readable: every message a person reads
(a refusal of a task, an SDK exception, a git error) goes through it. The classification turns
SkyPilot SDK exceptions into retryable or non-retryable `ApplicationError`s.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from temporalio.exceptions import ApplicationError

from skypilot_temporal.trust.redaction import redact_credentials

# A message is one line a person reads: a hostile 5000-character path is cut short in it.
MAX_MESSAGE_CHARS = 1000

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")

# SkyPilot exception class names (matched along the MRO, most specific first) whose cause is
# the request itself: retrying cannot help. Everything else (API server unreachable, network,
# a vanished allocation, ...) is retried with backoff by the workflow's retry policy.
NON_RETRYABLE_SKY_ERRORS = frozenset(
    {
        "ClusterDoesNotExist",
        "ClusterNotUpError",
        "ResourcesUnavailableError",
        "ResourcesMismatchError",
        "NoCloudAccessError",
        "InvalidCloudConfigs",
        "InvalidCloudCredentials",
        "CloudUserIdentityError",
        "ClusterOwnerIdentityMismatchError",
        "InvalidSkyPilotConfigError",
        "InvalidClusterNameError",
        "NotSupportedError",
        "ProvisionPrechecksError",
        "UserRequestRejectedByPolicy",
        "StorageSpecError",
        "PermissionDeniedError",
        "APIVersionMismatchError",
        "APINotSupportedError",
        "ValueError",
        "TypeError",
        "KeyError",
    }
)
RETRYABLE_SKY_ERRORS = frozenset(
    {
        "KubeAPIUnreachableError",
        "ApiServerConnectionError",
        "ServerTemporarilyUnavailableError",
        "RequestCancelled",
        "RequestInterruptedError",
        "CommandError",
        "ClusterSetUpError",
        "FetchClusterInfoError",
        "NetworkError",
        "SkyletUnavailableError",
    }
)
# What SkyPilot raises when its API server cannot be reached (a restarting server included:
# the SDK then claims that no endpoint is configured), or a log stream the server cut off
# mid-way (killed: the chunked response breaks; restarting: it asks the client to retry).
_UNREACHABLE_ERRORS = frozenset(
    {
        "ApiServerConnectionError",
        "ConnectionError",
        "ServerTemporarilyUnavailableError",
        "Timeout",
        "ChunkedEncodingError",
        "ProtocolError",
        "RequestInterruptedError",
    }
)
_UNREACHABLE_MESSAGES = ("no skypilot api server endpoint is configured", "could not connect to skypilot")


# `sky.get` says a refusal only in its text: "Failed to get request ID: 401 {...}" (a cloud's own
# 401/403, e.g. inside InvalidCloudCredentials, is not the API server refusing the worker).
_REFUSED = re.compile(r"^Failed to get request \S+: 40[13]\b")


class ConfigError(Exception):
    """Bad configuration: reported as one line, never a traceback."""


# ---------------------------------------------------------------- text


def strip_ansi(text: str) -> str:
    return _ANSI_ESCAPE.sub("", text)


def one_line(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`text` as one readable line: ANSI codes stripped, credentials masked, blank lines
    dropped, the others stripped and joined with a space; past `limit` characters it is cut,
    saying how long it was."""
    lines = (line.strip() for line in redact_credentials(strip_ansi(text)).splitlines())
    text = " ".join(line for line in lines if line)
    if len(text) > limit:
        text = f"{text[: limit - 20]}... ({len(text)} chars)"
    return text


def clean_message(exc: BaseException, limit: int = MAX_MESSAGE_CHARS) -> str:
    """One readable line from an exception (its class name when it has no text)."""
    return one_line(str(exc), limit) or type(exc).__name__


def refuse(message: str, kind: str) -> ApplicationError:
    """A non-retryable refusal: the input itself is wrong, no retry can help."""
    return ApplicationError(one_line(message), type=kind, non_retryable=True)


# ---------------------------------------------------------------- classification


def is_named(exc: BaseException, *names: str) -> bool:
    """Whether `exc` is of a class with one of `names` (SkyPilot's exceptions are matched by
    name: the worker does not import SkyPilot where it classifies them)."""
    return any(klass.__name__ in names for klass in type(exc).__mro__)


def is_server_unreachable(exc: BaseException) -> bool:
    """The SkyPilot API server could not be reached: wait for it, the request may not exist."""
    if is_named(exc, *_UNREACHABLE_ERRORS):
        return True
    return any(marker in str(exc).lower() for marker in _UNREACHABLE_MESSAGES)


def is_credentials_refused(exc: BaseException) -> bool:
    """The SkyPilot API server refused who the worker is (HTTP 401/403: a wrong, expired or
    revoked service-account token), as the SDK says it in each of its calls."""
    if is_named(exc, "ApiServerAuthenticationError"):
        return True
    if getattr(getattr(exc, "response", None), "status_code", None) in (401, 403):
        return True
    return _REFUSED.search(str(exc)) is not None


def is_retryable(exc: BaseException) -> bool:
    if is_server_unreachable(exc):
        return True
    for klass in type(exc).__mro__:
        if klass.__name__ in NON_RETRYABLE_SKY_ERRORS:
            return False
        if klass.__name__ in RETRYABLE_SKY_ERRORS:
            return True
    return True


def to_application_error(exc: BaseException, what: str, always_retry: bool = False) -> ApplicationError:
    """Classify a SkyPilot SDK exception as a retryable or non-retryable ApplicationError."""
    if isinstance(exc, ApplicationError):
        return exc
    if is_credentials_refused(exc):
        # Retried: a run of days should wait for the operator to fix the token, not fail.
        return ApplicationError(
            f"{what}: {type(exc).__name__}: the SkyPilot API server refused this worker's credentials "
            f"({clean_message(exc)}); "
            "fix SKYPILOT_SERVICE_ACCOUNT_TOKEN and restart the worker: the step retries until then",
            type="ApiServerAuthenticationError",
        )
    return ApplicationError(
        f"{what}: {type(exc).__name__}: {clean_message(exc)}",
        type=type(exc).__name__,
        non_retryable=not (always_retry or is_retryable(exc)),
    )


def masked(err: ApplicationError, redact: Callable[[str], str]) -> ApplicationError:
    """`err` with secrets masked in its message (its details are masked where they are made)."""
    message = redact(err.message)
    if message == err.message:
        return err
    return ApplicationError(
        message,
        *err.details,
        type=err.type,
        non_retryable=err.non_retryable,
        next_retry_delay=err.next_retry_delay,
    )
