"""Service-account tokens of the local stack's SkyPilot API server (its REST API: SkyPilot's CLI
has no command for them; a production server's dashboard does the same under Users).

    python -m scripts.skypilot_tokens issue NAME --out FILE     # create, or rotate if NAME exists
    python -m scripts.skypilot_tokens rotate NAME --out FILE    # a new value; the old one stops working
    python -m scripts.skypilot_tokens delete NAME               # once it owns no cluster
    python -m scripts.skypilot_tokens list                      # every token's name

The admin's basic-auth password is read from $SKYPILOT_ADMIN_PASSWORD_FILE (default
~/.sky/local-stack-admin.password, written by scripts/local_stack.sh). The token goes to FILE
(mode 0600), never to the output.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import requests

ADMIN_USER = "admin"
TIMEOUT = 30
ENDPOINT = "/users/service-account-tokens"
DEFAULT_PASSWORD_FILE = Path.home() / ".sky" / "local-stack-admin.password"


def password_file() -> Path:
    return Path(os.environ.get("SKYPILOT_ADMIN_PASSWORD_FILE") or DEFAULT_PASSWORD_FILE)


def admin_session(password: str) -> requests.Session:
    session = requests.Session()
    session.auth = (ADMIN_USER, password)
    # From 127.0.0.1 the server skips basic auth without reading the header (a loopback caller
    # is trusted); a proxy header makes it check the admin's password, which the endpoint needs.
    session.headers["X-Forwarded-For"] = "192.0.2.1"
    return session


def _call(session: requests.Session, method: str, url: str, **kwargs: Any) -> Any:
    response = session.request(method, url, timeout=TIMEOUT, **kwargs)
    if response.status_code >= 400:
        try:
            body = response.json()
        except ValueError:
            body = response.text or response.reason
        # FastAPI's errors are {"detail": ...}; the basic-auth middleware answers a bare string.
        detail = body.get("detail", body) if isinstance(body, dict) else body
        detail = " ".join(str(detail).split())[:300]
        raise SystemExit(f"skypilot_tokens: {method} {url}: HTTP {response.status_code}: {detail}")
    return response.json()


def token_id(session: requests.Session, api: str, name: str) -> str | None:
    tokens = _call(session, "GET", api + ENDPOINT)
    return next((str(t["token_id"]) for t in tokens if t.get("token_name") == name), None)


def token_names(session: requests.Session, api: str) -> list[str]:
    """Every service-account token's name (SkyPilot's own too: `managed-job-<job>-<id>`)."""
    return [str(t.get("token_name")) for t in _call(session, "GET", api + ENDPOINT)]


def rotate(session: requests.Session, api: str, name: str) -> str:
    existing = token_id(session, api, name)
    if existing is None:
        raise SystemExit(f"skypilot_tokens: no service account named {name!r}")
    answer = _call(session, "POST", f"{api}{ENDPOINT}/rotate", json={"token_id": existing})
    return str(answer["token"])


def issue(session: requests.Session, api: str, name: str, role: str) -> str:
    """A token of service account `name`: a new account, or a new value of the existing one (it
    keeps its user id, so the clusters it owns)."""
    if token_id(session, api, name) is not None:
        return rotate(session, api, name)
    body = {"token_name": name, "role": role, "expires_in_days": 0}
    return str(_call(session, "POST", api + ENDPOINT, json=body)["token"])


def delete(session: requests.Session, api: str, name: str) -> bool:
    """Delete service account `name`'s token; False if there is none."""
    existing = token_id(session, api, name)
    if existing is not None:
        _call(session, "POST", f"{api}{ENDPOINT}/delete", json={"token_id": existing})
    return existing is not None


def write_secret(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(value)
    path.with_suffix(".tmp").replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.skypilot_tokens", description=__doc__.splitlines()[0]
    )
    parser.add_argument("action", choices=["issue", "rotate", "delete", "list"])
    parser.add_argument("name", nargs="?", default="")
    parser.add_argument("--out", type=Path, help="where the token goes (mode 0600)")
    parser.add_argument("--role", default="admin", choices=["admin", "user"])
    parser.add_argument(
        "--api", default=os.environ.get("SKYPILOT_API_SERVER_ENDPOINT", "http://127.0.0.1:46580")
    )
    args = parser.parse_args(argv)
    passwords = password_file()
    if not passwords.is_file():
        print(
            f"skypilot_tokens: no admin password file {passwords} (set SKYPILOT_ADMIN_PASSWORD_FILE)",
            file=sys.stderr,
        )
        return 2
    session = admin_session(passwords.read_text().strip())
    api = args.api.rstrip("/")
    if args.action == "list":
        print("\n".join(token_names(session, api)))
        return 0
    if not args.name:
        parser.error("NAME is required")
    if args.action == "delete":
        if not delete(session, api, args.name):
            print(f"skypilot_tokens: no service account named {args.name!r}", file=sys.stderr)
            return 1
        print(f"service account {args.name}: deleted")
        return 0
    if args.out is None:
        parser.error("--out is required")
    token = (
        issue(session, api, args.name, args.role)
        if args.action == "issue"
        else rotate(session, api, args.name)
    )
    write_secret(args.out, token)
    print(f"service account {args.name}: token written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
