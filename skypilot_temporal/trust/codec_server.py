"""A Temporal remote codec server: lets the Web UI and the `temporal` CLI show encrypted payloads.

    python -m skypilot_temporal codec-server

POST <any path>/decode and <any path>/encode take and return `{"payloads": [...]}` (Temporal's
Payloads message in protobuf JSON), decrypting and encrypting with the keys of trust/codec.py. Point
the UI at it (`temporal server start-dev --ui-codec-endpoint http://127.0.0.1:8081`, or the
codec server setting of a Temporal Cloud namespace) and the CLI with
`temporal workflow show --codec-endpoint http://127.0.0.1:8081`.

Settings (environment or .env):
    CODEC_SERVER_HOST          listen address (default 127.0.0.1: this machine only)
    CODEC_SERVER_PORT          default 8081
    CODEC_SERVER_CORS_ORIGINS  browser origins allowed to call it, comma separated (default: the
                               origin of TEMPORAL_UI_URL, else http://localhost:8233)
    CODEC_SERVER_TOKEN         when set, every encode/decode needs `Authorization: Bearer <token>`
    CODEC_SERVER_ALLOWED_HOSTS the names it answers to besides 127.0.0.1, localhost and [::1] (and
                               CODEC_SERVER_HOST), comma separated, e.g. codec.example.com: a
                               request for any other Host is refused (DNS rebinding)
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Collection, Mapping
from urllib.parse import urlsplit

from aiohttp import web
from google.protobuf import json_format
from temporalio.api.common.v1 import Payloads

from skypilot_temporal import config
from skypilot_temporal.trust.codec import EncryptionCodec, PayloadDecryptionError, find_codec_keys

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8081
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
# What the Web UI sends: Content-Type and X-Namespace always; with "pass access token" the
# user's access token as Authorization and its ID token as Authorization-Extras.
ALLOWED_HEADERS = "Content-Type, Authorization, Authorization-Extras, X-Namespace"
MAX_BODY_BYTES = 32 * 2**20

log = logging.getLogger("codec-server")


def origin_of(url: str) -> str:
    """`scheme://host[:port]` of a URL, as browsers send it in the Origin header."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def cors_origins(environ: Mapping[str, str]) -> list[str]:
    raw = environ.get("CODEC_SERVER_CORS_ORIGINS", "").strip()
    if not raw:
        ui_url = environ.get("TEMPORAL_UI_URL", "").strip() or config.DEFAULT_UI_URL
        try:
            return [origin_of(ui_url)]
        except ValueError:
            raise config.ConfigError(
                f"TEMPORAL_UI_URL {ui_url!r} is not an http(s) URL (or set CODEC_SERVER_CORS_ORIGINS)"
            ) from None
    origins = []
    for entry in filter(None, (e.strip() for e in raw.split(","))):
        try:
            origin = origin_of(entry)
        except ValueError:
            origin = ""
        if not origin or urlsplit(entry).path not in ("", "/"):
            raise config.ConfigError(
                f"CODEC_SERVER_CORS_ORIGINS: {entry!r} is not an origin like https://ui.example.com:8233"
            )
        origins.append(origin)
    return origins


def served_hosts(host: str, port: int, extra_names: Collection[str] = ()) -> frozenset[str]:
    """The Host header values a codec server on `host`:`port` answers to: its loopback names,
    its own address and `extra_names`, each as `name:port` (`name` alone matches any port)."""
    names = [*LOOPBACK_NAMES, f"[{host}]" if ":" in host else host]
    return frozenset({f"{name.lower()}:{port}" for name in names} | {n.lower() for n in extra_names})


def create_app(
    codec: EncryptionCodec,
    allowed_origins: Collection[str],
    token: str | None = None,
    hosts: Collection[str] | None = None,
) -> web.Application:
    """The codec endpoints, CORS for `allowed_origins` only, and the optional bearer token; a
    request whose Host is not one of `hosts` (default: the loopback names, any port) is refused,
    so a page whose name resolves to 127.0.0.1 is not same-origin with it (DNS rebinding)."""
    origins = frozenset(allowed_origins)
    served = frozenset(hosts) if hosts is not None else frozenset(LOOPBACK_NAMES)

    def host_served(request: web.Request) -> bool:
        host = request.headers.get("Host", "").lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return host in served or name in served

    def cors_headers(request: web.Request) -> dict[str, str]:
        origin = request.headers.get("Origin", "")
        if origin not in origins:
            return {}
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Credentials": "true",
            "Vary": "Origin",
        }

    @web.middleware
    async def cors_and_errors(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as err:
            response = web.Response(status=err.status, text=err.text or err.reason)
        except Exception as err:
            log.exception("codec request failed")
            response = web.Response(status=500, text=f"codec server error: {config.one_line(err)}")
        response.headers.update(cors_headers(request))
        return response

    def authorized(request: web.Request) -> bool:
        if not token:
            return True
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            credentials.strip().encode(), token.encode()
        )

    async def handle(request: web.Request) -> web.Response:
        if not host_served(request):
            return web.Response(status=421, text="this codec server does not serve that host name")
        # Only the last path segment counts (Temporal's codec protocol): /decode, /ns/decode, ...
        action = request.path.rstrip("/").rsplit("/", 1)[-1]
        if action not in ("encode", "decode"):
            return web.Response(status=404, text="not found: POST .../encode or .../decode")
        if request.method == "OPTIONS":
            return preflight(request)
        if request.method != "POST":
            return web.Response(status=405, text="use POST", headers={"Allow": "POST, OPTIONS"})
        if not authorized(request):
            return web.Response(
                status=401, text="missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
            )
        try:
            payloads = parse_payloads(await request.read())
        except ValueError as err:
            return web.Response(status=400, text=f"bad request: {err}")
        try:
            if action == "encode":
                result = await codec.encode(payloads.payloads)
            else:
                result = await codec.decode(payloads.payloads)
        except PayloadDecryptionError as err:
            return web.Response(status=400, text=f"cannot decode: {err}")
        body = json_format.MessageToDict(Payloads(payloads=result))
        body.setdefault("payloads", [])
        return web.json_response(body)

    def preflight(request: web.Request) -> web.Response:
        if request.headers.get("Origin", "") not in origins:
            return web.Response(status=403, text="origin not allowed (CODEC_SERVER_CORS_ORIGINS)")
        headers = {
            "Access-Control-Allow-Methods": "POST, OPTIONS",
            "Access-Control-Allow-Headers": ALLOWED_HEADERS,
            "Access-Control-Max-Age": "600",
        }
        # Chrome's Private Network Access: a public page (Temporal Cloud) calling a local server.
        if request.headers.get("Access-Control-Request-Private-Network", "").lower() == "true":
            headers["Access-Control-Allow-Private-Network"] = "true"
        return web.Response(status=204, headers=headers)

    app = web.Application(middlewares=[cors_and_errors], client_max_size=MAX_BODY_BYTES)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def parse_payloads(body: bytes) -> Payloads:
    """The request body as Payloads; ValueError with a one-line reason when it is not one."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError('body is not JSON (expected {"payloads": [...]})') from None
    if not isinstance(data, dict) or not isinstance(data.get("payloads"), list):
        raise ValueError('expected a JSON object {"payloads": [...]}')
    try:
        return json_format.ParseDict(data, Payloads(), ignore_unknown_fields=True)
    except json_format.ParseError as err:
        raise ValueError(f"not Temporal payloads: {config.one_line(err)}") from None


def main() -> int:
    config.load_env()
    try:
        keys, source = find_codec_keys(os.environ)
        if not keys:
            raise config.ConfigError(
                "no payload codec keys: set PAYLOAD_CODEC_KEY_FILE or PAYLOAD_CODEC_KEYS, or create "
                "~/.config/skypilot-temporal/codec.keys (python -m skypilot_temporal new-key)"
            )
        host = config.env_str("CODEC_SERVER_HOST", DEFAULT_HOST)
        port = config.env_int("CODEC_SERVER_PORT", DEFAULT_PORT)
        origins = cors_origins(os.environ)
        token = config.env_str("CODEC_SERVER_TOKEN") or None
        hosts = served_hosts(host, port, config.env_list("CODEC_SERVER_ALLOWED_HOSTS"))
    except config.ConfigError as err:
        print(f"codec-server: error: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    app = create_app(EncryptionCodec(keys), origins, token, hosts)
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    print(
        f"Codec server on {url}: keys {', '.join(keys)} from {source} ({next(iter(keys))} encrypts), "
        f"CORS {', '.join(origins)}, bearer token {'required' if token else 'not required'}",
        flush=True,
    )
    try:
        web.run_app(app, host=host, port=port, print=None, access_log=None)
    except OSError as err:
        print(f"codec-server: error: cannot listen on {host}:{port}: {err.strerror or err}", file=sys.stderr)
        return 2
    return 0
