"""Payload encryption: AES-256-GCM over every payload the worker and the starter send to Temporal.

Workflow inputs (env overrides, task YAML text), results (log tails), heartbeat details, activity
summaries and failure messages all travel as payloads; with a key configured the Temporal server
only ever stores ciphertext. The format is Temporal's sample encryption codec: metadata
`encoding: binary/encrypted` and `encryption-key-id: <id>`, data = 12-byte nonce + ciphertext
of the whole serialized original Payload.

Keys (never from workflow input), an ordered list of `id:base64key` entries, the first encrypts
and every one decrypts:

    PAYLOAD_CODEC_KEYS=k20261123:BASE64,k20250101:BASE64    inline
    PAYLOAD_CODEC_KEY_FILE=/path/codec.keys                 one id:base64key a line, # comments
    ~/.config/skypilot-temporal/codec.keys                  used when neither is set

With none of them, payloads are not encrypted. A new key:

    python -m skypilot_temporal new-key >> ~/.config/skypilot-temporal/codec.keys

appends it (it can decrypt); move it to the top of the file to make it the encrypting key.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import temporalio.converter
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload

from skypilot_temporal.errors import ConfigError

ENCODING = b"binary/encrypted"
KEY_ID_METADATA = "encryption-key-id"
NONCE_BYTES = 12
KEY_BYTES = 32
KEYS_SETTING = "PAYLOAD_CODEC_KEYS"
KEY_FILE_SETTING = "PAYLOAD_CODEC_KEY_FILE"
DEFAULT_KEY_FILE = Path("~/.config/skypilot-temporal/codec.keys")
KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class PayloadDecryptionError(Exception):
    """A payload this codec cannot decrypt: unknown key id, or ciphertext that fails authentication."""


class EncryptionCodec(temporalio.converter.PayloadCodec):
    """AES-256-GCM. The first key of `keys` encrypts; every key decrypts (key rotation)."""

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        if not keys:
            raise ValueError("EncryptionCodec needs at least one key")
        for key_id, key in keys.items():
            if not KEY_ID.fullmatch(key_id):
                raise ValueError(f"invalid key id {key_id!r}")
            if len(key) != KEY_BYTES:
                raise ValueError(f"key {key_id!r} is {len(key)} bytes, AES-256 needs {KEY_BYTES}")
        self._ciphers = {key_id: AESGCM(bytes(key)) for key_id, key in keys.items()}
        self.key_ids: tuple[str, ...] = tuple(keys)
        self.encrypting_key_id = self.key_ids[0]
        self._encrypting_cipher = self._ciphers[self.encrypting_key_id]
        self._encrypting_metadata = {"encoding": ENCODING, KEY_ID_METADATA: self.encrypting_key_id.encode()}

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(payload) for payload in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt(payload) for payload in payloads]

    def encrypt(self, payload: Payload) -> Payload:
        nonce = os.urandom(NONCE_BYTES)
        ciphertext = self._encrypting_cipher.encrypt(nonce, payload.SerializeToString(), None)
        return Payload(metadata=self._encrypting_metadata, data=nonce + ciphertext)

    def decrypt(self, payload: Payload) -> Payload:
        """The original payload; a payload that is not `binary/encrypted` is returned unchanged."""
        if payload.metadata.get("encoding") != ENCODING:
            return payload  # written before encryption was switched on: stays readable
        key_id = payload.metadata.get(KEY_ID_METADATA, b"").decode("utf-8", "replace")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise PayloadDecryptionError(
                f"payload encrypted with key id {key_id[:80]!r}, which is not configured "
                f"(configured: {', '.join(self.key_ids)}): add that key to {KEY_FILE_SETTING} "
                f"or {KEYS_SETTING}"
            )
        data = payload.data
        try:
            plaintext = cipher.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], None)
        except InvalidTag:
            raise PayloadDecryptionError(
                f"payload with key id {key_id!r} failed authentication: tampered with, or "
                f"encrypted with a different key under the same id"
            ) from None
        return Payload.FromString(plaintext)


# ------------------------------------------------------------------------------------ key loading


def parse_key_entries(entries: Sequence[tuple[str, str]], setting: str) -> dict[str, bytes]:
    """`(where, "id:base64key")` pairs into an ordered {id: key}; ConfigError names `setting`.

    Messages name the entry and the problem, never the key material (nor an invalid id, which
    could be a key pasted in the wrong place).
    """
    keys: dict[str, bytes] = {}
    for where, entry in entries:
        key_id, colon, encoded = entry.strip().rpartition(":")
        key_id, encoded = key_id.strip(), encoded.strip()
        if not colon:
            raise ConfigError(f"{setting}: {where} is not id:base64key")
        if not key_id:
            raise ConfigError(f"{setting}: {where} has an empty key id")
        if not KEY_ID.fullmatch(key_id):
            problem = (
                "contains a space"
                if any(c.isspace() for c in key_id)
                else "contains a colon"
                if ":" in key_id
                else "is longer than 64 characters"
                if len(key_id) > 64
                else "may only hold letters, digits, '.', '_' and '-'"
            )
            raise ConfigError(f"{setting}: the key id on {where} {problem}")
        if key_id in keys:
            raise ConfigError(f"{setting}: key id {key_id!r} appears twice ({where})")
        try:
            key = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(f"{setting}: the key of {key_id!r} ({where}) is not valid base64") from None
        if len(key) != KEY_BYTES:
            raise ConfigError(
                f"{setting}: the key of {key_id!r} ({where}) is {len(key)} bytes, AES-256 needs {KEY_BYTES} "
                f"(make one with `python -m skypilot_temporal new-key`)"
            )
        keys[key_id] = key
    if not keys:
        raise ConfigError(f"{setting}: no keys in it")
    return keys


def _read_key_file(path: Path, setting: str) -> dict[str, bytes]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else type(err).__name__
        raise ConfigError(f"{setting}: cannot read {path}: {reason}") from None
    entries = [
        (f"line {number}", line.strip())
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    return parse_key_entries(entries, f"{setting} {path}")


def find_codec_keys(
    environ: Mapping[str, str], default_file: Path | None = None
) -> tuple[dict[str, bytes] | None, str]:
    """The configured keys (None: no encryption) and where they came from, for messages."""
    inline = environ.get(KEYS_SETTING, "").strip()
    file_setting = environ.get(KEY_FILE_SETTING, "").strip()
    if inline and file_setting:
        raise ConfigError(f"set only one of {KEYS_SETTING} and {KEY_FILE_SETTING}")
    if inline:
        entries = [(f"entry {n}", e) for n, e in enumerate(inline.split(","), start=1) if e.strip()]
        return parse_key_entries(entries, KEYS_SETTING), KEYS_SETTING
    if file_setting:
        path = Path(file_setting).expanduser()
        return _read_key_file(path, KEY_FILE_SETTING), f"{KEY_FILE_SETTING}={path}"
    path = (default_file or DEFAULT_KEY_FILE).expanduser()
    if path.exists():
        return _read_key_file(path, f"{KEY_FILE_SETTING} (default)"), str(path)
    return None, ""


def load_codec_keys(environ: Mapping[str, str], default_file: Path | None = None) -> dict[str, bytes] | None:
    """{key id: 32-byte key}, the encrypting key first; None when no key is configured."""
    return find_codec_keys(environ, default_file)[0]


def data_converter(keys: Mapping[str, bytes] | None) -> temporalio.converter.DataConverter:
    """The converter for clients and workers: encrypting payloads and failures, or the default."""
    if not keys:
        return temporalio.converter.DataConverter.default
    return temporalio.converter.DataConverter(
        payload_codec=EncryptionCodec(keys),
        # Failure messages and stack traces move into an encoded payload too.
        failure_converter_class=temporalio.converter.DefaultFailureConverterWithEncodedAttributes,
    )


def configured_data_converter(environ: Mapping[str, str] | None = None) -> temporalio.converter.DataConverter:
    """The converter every client of this project uses: the one the worker and starter use."""
    return data_converter(load_codec_keys(os.environ if environ is None else environ))


# ------------------------------------------------------------------------------------ CLI


def new_key_line(key_id: str | None = None) -> str:
    """A fresh `id:base64key` line; the default id is `k`, the UTC time and a random suffix
    (k20261123t1405-3fa2): two keys made the same day never share an id."""
    key_id = key_id or f"k{datetime.now(UTC):%Y%m%dt%H%M}-{secrets.token_hex(2)}"
    if not KEY_ID.fullmatch(key_id):
        raise ConfigError(f"key id {key_id!r}: use 1 to 64 letters, digits, '.', '_' or '-'")
    return f"{key_id}:{base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()}"
