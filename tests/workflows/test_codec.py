"""Payload encryption (trust/codec.py), its settings, and the remote codec server (trust/codec_server.py)."""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import temporalio.converter
from aiohttp.test_utils import TestClient, TestServer
from google.protobuf import json_format
from temporalio import activity, workflow
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.api.history.v1 import History
from temporalio.client import Client, WorkflowFailureError, WorkflowHistory
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner, Worker

from skypilot_temporal import config
from skypilot_temporal.__main__ import main as package_command
from skypilot_temporal.trust import codec, codec_server
from skypilot_temporal.trust.codec import EncryptionCodec, PayloadDecryptionError
from testing import HISTORIES
from workflows import SkyPilotWorkflow

# Fixed test keys (never used anywhere else).
OLD_KEY = bytes(range(32))
NEW_KEY = bytes(range(100, 132))
OLD_B64 = base64.b64encode(OLD_KEY).decode()
NEW_B64 = base64.b64encode(NEW_KEY).decode()
UI_ORIGIN = "http://localhost:8233"

PLAIN = temporalio.converter.DataConverter.default.payload_converter


def plain_payload(value: object) -> Payload:
    return PLAIN.to_payloads([value])[0]


async def encode_one(codec_: EncryptionCodec, payload: Payload) -> Payload:
    return (await codec_.encode([payload]))[0]


async def decode_one(codec_: EncryptionCodec, payload: Payload) -> Payload:
    return (await codec_.decode([payload]))[0]


# ------------------------------------------------------------------------------------ the codec


async def test_round_trip_encrypts_the_whole_payload() -> None:
    codec_ = EncryptionCodec({"k1": OLD_KEY})
    original = plain_payload({"env_overrides": {"SECRET_MARKER": "v"}, "yaml_text": "run: echo hi"})
    encrypted = await encode_one(codec_, original)
    assert encrypted.metadata["encoding"] == b"binary/encrypted"
    assert encrypted.metadata["encryption-key-id"] == b"k1"
    assert set(encrypted.metadata) == {"encoding", "encryption-key-id"}
    # 12-byte nonce + ciphertext of the serialized payload (metadata included) + 16-byte GCM tag
    assert len(encrypted.data) == 12 + len(original.SerializeToString()) + 16
    assert b"SECRET_MARKER" not in encrypted.SerializeToString()
    assert b"json/plain" not in encrypted.SerializeToString()
    assert await decode_one(codec_, encrypted) == original


async def test_each_encryption_uses_a_fresh_nonce() -> None:
    codec_ = EncryptionCodec({"k1": OLD_KEY})
    payload = plain_payload("same text")
    first, second = await codec_.encode([payload, payload])
    assert first.data[:12] != second.data[:12]
    assert first.data != second.data


async def test_rotation_old_payloads_decode_and_new_ones_use_the_new_key() -> None:
    before = EncryptionCodec({"old": OLD_KEY})
    written_before = await encode_one(before, plain_payload("written with the old key"))
    after = EncryptionCodec({"new": NEW_KEY, "old": OLD_KEY})  # the new key prepended
    assert await decode_one(after, written_before) == plain_payload("written with the old key")
    written_after = await encode_one(after, plain_payload("written with the new key"))
    assert written_after.metadata["encryption-key-id"] == b"new"
    assert after.encrypting_key_id == "new"
    assert await decode_one(EncryptionCodec({"new": NEW_KEY}), written_after) == plain_payload(
        "written with the new key"
    )


async def test_plain_payloads_pass_through_decode_unchanged() -> None:
    codec_ = EncryptionCodec({"k1": OLD_KEY})
    payloads = [plain_payload({"a": 1}), plain_payload(None), plain_payload(b"raw bytes")]
    assert await codec_.decode(payloads) == payloads


async def test_unknown_key_id_names_the_id_and_the_setting() -> None:
    written = await encode_one(EncryptionCodec({"retired": OLD_KEY}), plain_payload("x"))
    with pytest.raises(PayloadDecryptionError) as err:
        await decode_one(EncryptionCodec({"current": NEW_KEY}), written)
    message = str(err.value)
    assert "\n" not in message
    assert "'retired'" in message and "PAYLOAD_CODEC_KEY_FILE" in message
    assert OLD_B64 not in message and NEW_B64 not in message


@pytest.mark.parametrize("where", ["nonce", "ciphertext", "tag"])
async def test_tampered_payload_fails_authentication(where: str) -> None:
    codec_ = EncryptionCodec({"k1": OLD_KEY})
    encrypted = await encode_one(codec_, plain_payload("do not change me"))
    data = bytearray(encrypted.data)
    data[{"nonce": 0, "ciphertext": 20, "tag": -1}[where]] ^= 0x01
    tampered = Payload(metadata=encrypted.metadata, data=bytes(data))
    with pytest.raises(PayloadDecryptionError, match="failed authentication"):
        await decode_one(codec_, tampered)


async def test_a_different_key_under_the_same_id_fails_authentication() -> None:
    encrypted = await encode_one(EncryptionCodec({"k1": OLD_KEY}), plain_payload("x"))
    with pytest.raises(PayloadDecryptionError, match="failed authentication"):
        await decode_one(EncryptionCodec({"k1": NEW_KEY}), encrypted)


def test_data_converter_encrypts_payloads_and_failures() -> None:
    assert codec.data_converter(None) is temporalio.converter.DataConverter.default
    converter = codec.data_converter({"k1": OLD_KEY})
    assert isinstance(converter.payload_codec, EncryptionCodec)
    assert isinstance(
        converter.failure_converter, temporalio.converter.DefaultFailureConverterWithEncodedAttributes
    )


# ------------------------------------------------------------------------------------ key settings


def test_inline_keys_keep_their_order(tmp_path: Path) -> None:
    keys = codec.load_codec_keys(
        {"PAYLOAD_CODEC_KEYS": f" new:{NEW_B64} , old:{OLD_B64}"}, default_file=tmp_path / "none"
    )
    assert keys == {"new": NEW_KEY, "old": OLD_KEY}
    assert list(keys) == ["new", "old"]


def test_key_file_skips_comments_and_blank_lines(tmp_path: Path) -> None:
    key_file = tmp_path / "codec.keys"
    key_file.write_text(f"# encrypting key first\n\nnew:{NEW_B64}\n  # retired soon\nold:{OLD_B64}\n")
    keys = codec.load_codec_keys({"PAYLOAD_CODEC_KEY_FILE": str(key_file)}, default_file=tmp_path / "none")
    assert list(keys or {}) == ["new", "old"] and keys == {"new": NEW_KEY, "old": OLD_KEY}


def test_default_key_file_is_used_only_when_nothing_is_set(tmp_path: Path) -> None:
    default = tmp_path / "codec.keys"
    assert codec.load_codec_keys({}, default_file=default) is None
    default.write_text(f"k1:{OLD_B64}\n")
    assert codec.load_codec_keys({}, default_file=default) == {"k1": OLD_KEY}
    assert codec.load_codec_keys({"PAYLOAD_CODEC_KEYS": f"k2:{NEW_B64}"}, default_file=default) == {
        "k2": NEW_KEY
    }


BAD_ENTRIES = [
    pytest.param("k1:not*base64!", "not valid base64", id="not-base64"),
    pytest.param(f"k1:{base64.b64encode(bytes(16)).decode()}", "16 bytes", id="16-byte-key"),
    pytest.param(f"k1:{OLD_B64},k1:{NEW_B64}", "appears twice", id="duplicate-id"),
    pytest.param(f":{OLD_B64}", "empty key id", id="empty-id"),
    pytest.param(f"my key:{OLD_B64}", "contains a space", id="id-with-space"),
    pytest.param(f"a:b:{OLD_B64}", "contains a colon", id="id-with-colon"),
    pytest.param(OLD_B64, "is not id:base64key", id="no-id"),
]


@pytest.mark.parametrize(("entries", "problem"), BAD_ENTRIES)
def test_bad_inline_keys_are_one_line_config_errors(entries: str, problem: str, tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError) as err:
        codec.load_codec_keys({"PAYLOAD_CODEC_KEYS": entries}, default_file=tmp_path / "none")
    message = str(err.value)
    assert problem in message and message.startswith("PAYLOAD_CODEC_KEYS")
    assert "\n" not in message
    assert OLD_B64 not in message and NEW_B64 not in message and "not*base64" not in message


@pytest.mark.parametrize(("entries", "problem"), BAD_ENTRIES)
def test_bad_key_files_are_one_line_config_errors(entries: str, problem: str, tmp_path: Path) -> None:
    key_file = tmp_path / "codec.keys"
    key_file.write_text("# keys\n" + entries.replace(",", "\n") + "\n")
    with pytest.raises(config.ConfigError) as err:
        codec.load_codec_keys({"PAYLOAD_CODEC_KEY_FILE": str(key_file)}, default_file=tmp_path / "none")
    message = str(err.value)
    assert problem in message and message.startswith(f"PAYLOAD_CODEC_KEY_FILE {key_file}")
    assert "line 2" in message or "line 3" in message
    assert "\n" not in message
    assert OLD_B64 not in message and NEW_B64 not in message and "not*base64" not in message


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        pytest.param({"PAYLOAD_CODEC_KEY_FILE": "/nonexistent/codec.keys"}, "cannot read", id="missing-file"),
        pytest.param({"PAYLOAD_CODEC_KEYS": " , "}, None, id="blank-inline-is-unset"),
        pytest.param(
            {"PAYLOAD_CODEC_KEYS": f"k1:{OLD_B64}", "PAYLOAD_CODEC_KEY_FILE": "/x"}, "only one", id="both-set"
        ),
    ],
)
def test_key_setting_errors(environ: dict[str, str], problem: str | None, tmp_path: Path) -> None:
    if problem is None:
        with pytest.raises(config.ConfigError, match="no keys"):
            codec.load_codec_keys(environ, default_file=tmp_path / "none")
        return
    with pytest.raises(config.ConfigError, match=problem):
        codec.load_codec_keys(environ, default_file=tmp_path / "none")


def test_empty_key_file_is_an_error(tmp_path: Path) -> None:
    key_file = tmp_path / "codec.keys"
    key_file.write_text("# nothing yet\n")
    with pytest.raises(config.ConfigError, match="no keys"):
        codec.load_codec_keys({"PAYLOAD_CODEC_KEY_FILE": str(key_file)}, default_file=tmp_path / "none")


def test_new_key_prints_a_line_the_loader_accepts(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert package_command(["new-key"]) == 0
    default_line = capsys.readouterr().out
    assert package_command(["new-key", "rotated-2"]) == 0
    named_line = capsys.readouterr().out
    key_file = tmp_path / "codec.keys"
    key_file.write_text(named_line + default_line)
    keys = codec.load_codec_keys({"PAYLOAD_CODEC_KEY_FILE": str(key_file)}, default_file=tmp_path / "none")
    assert keys is not None
    named_id, default_id = keys
    assert named_id == "rotated-2"
    assert re.fullmatch(r"k\d{8}t\d{4}-[0-9a-f]{4}", default_id), default_id
    assert all(len(key) == 32 for key in keys.values()) and len(set(keys.values())) == 2


def test_two_new_keys_made_the_same_minute_have_ids_a_key_file_takes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Rotation twice in a day: the second key file, with both, still loads."""
    for _ in range(2):
        assert package_command(["new-key"]) == 0
    key_file = tmp_path / "codec.keys"
    key_file.write_text(capsys.readouterr().out)
    keys = codec.load_codec_keys({"PAYLOAD_CODEC_KEY_FILE": str(key_file)}, default_file=tmp_path / "none")
    assert keys is not None and len(keys) == 2


def test_encryption_status(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no default key file
    monkeypatch.delenv("PAYLOAD_CODEC_KEY_FILE", raising=False)
    monkeypatch.delenv("PAYLOAD_CODEC_KEYS", raising=False)
    assert config.encryption_status().startswith("payloads NOT encrypted: set PAYLOAD_CODEC_KEY_FILE")
    monkeypatch.setenv("PAYLOAD_CODEC_KEYS", f"new:{NEW_B64},old:{OLD_B64}")
    status = config.encryption_status()
    assert status.startswith("payloads encrypted (key new, 2 keys")
    assert NEW_B64 not in status


async def test_connect_temporal_uses_the_configured_keys(
    env: WorkflowEnvironment, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("TEMPORAL_ADDRESS", env.client.service_client.config.target_host)
    monkeypatch.setenv("TEMPORAL_NAMESPACE", env.client.namespace)
    monkeypatch.delenv("PAYLOAD_CODEC_KEY_FILE", raising=False)
    monkeypatch.setenv("PAYLOAD_CODEC_KEYS", f"new:{NEW_B64}")
    client = await config.connect_temporal()
    assert isinstance(client.data_converter.payload_codec, EncryptionCodec)
    assert client.data_converter.payload_codec.encrypting_key_id == "new"
    monkeypatch.delenv("PAYLOAD_CODEC_KEYS")
    assert (await config.connect_temporal()).data_converter.payload_codec is None


# ------------------------------------------------------------------------------------ end to end


@dataclass
class MarkerInput:
    marker: str
    fail: bool


@activity.defn
async def echo_marker(marker: str) -> str:
    return f"result {marker}"


@activity.defn
async def fail_with_marker(marker: str) -> None:
    raise ApplicationError(f"activity failed {marker}", non_retryable=True)


@workflow.defn
class MarkerWorkflow:
    @workflow.run
    async def run(self, data: MarkerInput) -> str:
        result = await workflow.execute_activity(
            echo_marker,
            data.marker,
            start_to_close_timeout=timedelta(seconds=30),
            summary=f"echo {data.marker}",
        )
        if data.fail:
            try:
                await workflow.execute_activity(
                    fail_with_marker, data.marker, start_to_close_timeout=timedelta(seconds=30)
                )
            except ActivityError as err:
                raise ApplicationError(f"workflow failed {data.marker}", non_retryable=True) from err
        return result


async def test_history_holds_no_plaintext_and_the_codec_reads_it_back(env: WorkflowEnvironment) -> None:
    marker = f"MARKER-{uuid.uuid4().hex}"
    run = uuid.uuid4().hex[:8]  # workflow ids are never encrypted: no marker in them
    plain_client = env.client
    codec_client = Client(
        **{**plain_client.config(), "data_converter": codec.data_converter({"k1": OLD_KEY})}
    )
    task_queue = f"codec-{uuid.uuid4().hex[:8]}"
    async with Worker(
        codec_client,
        task_queue=task_queue,
        workflows=[MarkerWorkflow],
        activities=[echo_marker, fail_with_marker],
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        ok = await codec_client.start_workflow(
            MarkerWorkflow.run, MarkerInput(marker, fail=False), id=f"ok-{run}", task_queue=task_queue
        )
        assert await ok.result() == f"result {marker}"
        failed = await codec_client.start_workflow(
            MarkerWorkflow.run, MarkerInput(marker, fail=True), id=f"fail-{run}", task_queue=task_queue
        )
        with pytest.raises(WorkflowFailureError) as err:
            await failed.result()
    # With the codec, the failure chain reads as raised.
    assert err.value.cause.message == f"workflow failed {marker}"
    assert isinstance(err.value.cause.cause, ActivityError)
    assert err.value.cause.cause.cause.message == f"activity failed {marker}"

    for handle_id in (f"ok-{run}", f"fail-{run}"):
        # The raw history, as the server stores it and any client without the keys sees it.
        history = await plain_client.get_workflow_handle(handle_id).fetch_history()
        raw = History(events=history.events).SerializeToString()
        assert marker.encode() not in raw, f"plaintext marker in the history of {handle_id}"
        assert b"json/plain" not in raw
        # The input payload is ciphertext, and the codec client decodes it back.
        started = history.events[0].workflow_execution_started_event_attributes
        assert started.input.payloads[0].metadata["encoding"] == b"binary/encrypted"
        decoded = await codec_client.data_converter.decode(started.input.payloads, [MarkerInput])
        assert decoded[0].marker == marker

    failed_event = history.events[-1].workflow_execution_failed_event_attributes
    assert failed_event.failure.message == "Encoded failure"
    assert failed_event.failure.stack_trace == ""


async def test_a_history_recorded_before_encryption_replays_with_the_codec() -> None:
    """Runs started before encryption was switched on stay replayable (plain payloads pass through)."""
    recorded = json.loads((HISTORIES / "happy_path.json").read_text())
    history = WorkflowHistory.from_json(recorded["workflow_id"], recorded["history"])
    replayer = Replayer(workflows=[SkyPilotWorkflow], data_converter=codec.data_converter({"k1": OLD_KEY}))
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, result.replay_failure


# ------------------------------------------------------------------------------------ codec server


@asynccontextmanager
async def codec_http(token: str | None = None) -> AsyncIterator[TestClient]:
    app = codec_server.create_app(EncryptionCodec({"k1": OLD_KEY}), [UI_ORIGIN], token)
    async with TestClient(TestServer(app)) as client:
        yield client


def as_json(*payloads: Payload) -> dict:
    return json_format.MessageToDict(Payloads(payloads=payloads))


def from_json(body: dict) -> list[Payload]:
    return list(json_format.ParseDict(body, Payloads()).payloads)


async def test_codec_server_answers_only_the_host_names_it_serves() -> None:
    """DNS rebinding: a page at evil.example whose name resolves to 127.0.0.1 is refused."""
    encrypted = await encode_one(EncryptionCodec({"k1": OLD_KEY}), plain_payload({"secret": "s"}))
    async with codec_http() as http:
        for host, status in [
            ("evil.example:8081", 421),
            ("127.0.0.1.evil.example", 421),
            ("localhost:8081", 200),
        ]:
            response = await http.post("/decode", json=as_json(encrypted), headers={"Host": host})
            assert response.status == status, (host, await response.text())
    served = codec_server.served_hosts("0.0.0.0", 8081, ["codec.example.com"])
    app = codec_server.create_app(EncryptionCodec({"k1": OLD_KEY}), [UI_ORIGIN], hosts=served)
    async with TestClient(TestServer(app)) as http:
        for host, status in [("codec.example.com", 200), ("127.0.0.1:8081", 200), ("127.0.0.1:9999", 421)]:
            response = await http.post("/decode", json=as_json(encrypted), headers={"Host": host})
            assert response.status == status, (host, await response.text())


async def test_codec_server_decodes_what_the_codec_encoded() -> None:
    original = plain_payload({"log_tail": "epoch 3 loss 0.1"})
    encrypted = await encode_one(EncryptionCodec({"k1": OLD_KEY}), original)
    async with codec_http() as http:
        # As the Web UI calls it: <endpoint>/decode, X-Namespace, and a query string.
        response = await http.post(
            "/decode?preserveStorageRefs=true",
            json=as_json(encrypted, original),
            headers={"X-Namespace": "default", "Origin": UI_ORIGIN},
        )
        assert response.status == 200, await response.text()
        assert from_json(await response.json()) == [original, original]
        # As the CLI calls a templated endpoint: <endpoint>/<namespace>/decode
        response = await http.post("/default/decode", json=as_json(encrypted))
        assert from_json(await response.json()) == [original]


async def test_codec_server_encodes() -> None:
    original = plain_payload("signal input")
    async with codec_http() as http:
        response = await http.post("/encode", json=as_json(original))
        assert response.status == 200
        (encrypted,) = from_json(await response.json())
    assert encrypted.metadata["encryption-key-id"] == b"k1"
    assert await decode_one(EncryptionCodec({"k1": OLD_KEY}), encrypted) == original


def preflight_headers(origin: str) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-namespace,authorization",
    }


async def test_codec_server_cors_allows_the_ui_origin_only() -> None:
    async with codec_http() as http:
        allowed = await http.options("/decode", headers=preflight_headers(UI_ORIGIN))
        assert allowed.status == 204
        assert allowed.headers["Access-Control-Allow-Origin"] == UI_ORIGIN
        assert allowed.headers["Access-Control-Allow-Credentials"] == "true"
        allow_headers = {
            h.strip().lower() for h in allowed.headers["Access-Control-Allow-Headers"].split(",")
        }
        assert {"content-type", "authorization", "x-namespace"} <= allow_headers
        assert "POST" in allowed.headers["Access-Control-Allow-Methods"]

        other = await http.options("/decode", headers=preflight_headers("http://evil.example"))
        assert "Access-Control-Allow-Origin" not in other.headers
        assert "Access-Control-Allow-Headers" not in other.headers

        # The actual request: the browser reads the response only with a matching Allow-Origin.
        body = as_json(plain_payload("x"))
        response = await http.post("/decode", json=body, headers={"Origin": UI_ORIGIN})
        assert response.headers["Access-Control-Allow-Origin"] == UI_ORIGIN
        response = await http.post("/decode", json=body, headers={"Origin": "http://evil.example"})
        assert "Access-Control-Allow-Origin" not in response.headers


async def test_codec_server_requires_the_bearer_token_when_set() -> None:
    body = as_json(plain_payload("x"))
    async with codec_http(token="t0ken") as http:
        assert (await http.post("/decode", json=body)).status == 401
        for guess in ("Bearer nope", "Bearer ", "Bearer t0k", "Bearer t0ken0", "t0ken"):
            wrong = await http.post("/decode", json=body, headers={"Authorization": guess})
            assert wrong.status == 401, guess
        right = await http.post("/decode", json=body, headers={"Authorization": "Bearer t0ken"})
        assert right.status == 200
        # A browser's preflight never carries credentials: it must pass without the token.
        assert (await http.options("/decode", headers=preflight_headers(UI_ORIGIN))).status == 204
        # A 401 still carries CORS headers, so the UI can show the error.
        denied = await http.post("/decode", json=body, headers={"Origin": UI_ORIGIN})
        assert denied.status == 401 and denied.headers["Access-Control-Allow-Origin"] == UI_ORIGIN


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"{not json", id="not-json"),
        pytest.param(b"\xff\xfe", id="not-utf8"),
        pytest.param(b'{"foo": []}', id="no-payloads"),
        pytest.param(b'{"payloads": "x"}', id="payloads-not-a-list"),
        pytest.param(b'{"payloads": [{"data": 5}]}', id="data-not-base64"),
        pytest.param(b"[]", id="not-an-object"),
    ],
)
async def test_codec_server_rejects_bad_requests_with_one_line(body: bytes) -> None:
    async with codec_http() as http:
        response = await http.post("/decode", data=body, headers={"Content-Type": "application/json"})
        text = await response.text()
    assert response.status == 400
    assert text.startswith("bad request: ") and "\n" not in text.strip() and "Traceback" not in text


async def test_codec_server_reports_an_unknown_key_as_a_bad_request() -> None:
    encrypted = await encode_one(EncryptionCodec({"elsewhere": NEW_KEY}), plain_payload("x"))
    async with codec_http() as http:
        response = await http.post("/decode", json=as_json(encrypted))
        text = await response.text()
    assert response.status == 400 and "'elsewhere'" in text and "\n" not in text.strip()


async def test_codec_server_only_serves_encode_and_decode() -> None:
    async with codec_http() as http:
        assert (await http.post("/", json={"payloads": []})).status == 404
        assert (await http.get("/decode")).status == 405


def test_cors_origins_default_to_the_ui_url() -> None:
    assert codec_server.cors_origins({}) == ["http://localhost:8233"]
    assert codec_server.cors_origins({"TEMPORAL_UI_URL": "https://UI.example.com:8443/ns/x"}) == [
        "https://ui.example.com:8443"
    ]
    assert codec_server.cors_origins(
        {"CODEC_SERVER_CORS_ORIGINS": "http://localhost:8233, http://127.0.0.1:8233/"}
    ) == ["http://localhost:8233", "http://127.0.0.1:8233"]
    for bad in ("*", "localhost:8233", "http://ui.example.com/path"):
        with pytest.raises(config.ConfigError, match="CODEC_SERVER_CORS_ORIGINS"):
            codec_server.cors_origins({"CODEC_SERVER_CORS_ORIGINS": bad})


def test_codec_server_refuses_to_start_without_keys(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("")
    monkeypatch.setenv("ENV_FILE", str(env_file))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("PAYLOAD_CODEC_KEYS", raising=False)
    monkeypatch.delenv("PAYLOAD_CODEC_KEY_FILE", raising=False)
    assert codec_server.main() == 2
    err = capsys.readouterr().err
    assert err.startswith("codec-server: error: no payload codec keys") and err.count("\n") == 1
