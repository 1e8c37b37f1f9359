"""The console application in-process over a real engine: 404 pages, CSRF refusals, confirmed
admin forms, read-only mode, sign-in and policies, escaping of stored values, the HTTP
connection over a memory stream (frontends/console/app.py, signin.py, http.py)."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

import trio
import trio.testing

from streamd.config import ServerConfig
from streamd.frontends.console.app import Console
from streamd.frontends.console.csrf import COOKIE_NAME
from streamd.frontends.console.http import ConsoleConnection, ConsoleHttpLimits, Request
from streamd.meta.sqlite import SqliteMetaStore
from streamd.node import NodeParts, build_parts
from streamd.routing import RecordIn
from streamd.security.guard import Guard
from streamd_client.model import hash_bytes_of

HOST = "127.0.0.1:8080"
ORIGIN = f"http://{HOST}"


@asynccontextmanager
async def running_console(
    data_dir: Path, *, read_only: bool = False, guard: Guard | None = None
) -> AsyncIterator[tuple[NodeParts, Console]]:
    store = SqliteMetaStore(data_dir / "meta.sqlite3")
    parts = build_parts(ServerConfig(data_dir=data_dir), store)
    async with trio.open_nursery() as nursery:
        await nursery.start(parts.engine.run)
        console = Console(parts.engine, parts.handlers, read_only=read_only, guard=guard)
        await nursery.start(console.run)
        try:
            yield parts, console
        finally:
            await parts.engine.close()
            nursery.cancel_scope.cancel()
    await store.aclose()


def get(path: str, **headers: str) -> Request:
    return Request("GET", path.split("?")[0], _query(path), {"host": HOST, **headers}, b"")


def _query(path: str) -> dict[str, str]:
    return dict(parse_qsl(path.partition("?")[2]))


async def session_of(console: Console) -> tuple[str, str]:
    """A session cookie and its CSRF token, as a browser gets them from a page."""
    answer = await console.answer(get("/"))
    cookie = dict(answer.headers)["set-cookie"].split(";")[0]
    session = cookie.split("=", 1)[1]
    return cookie, console.sessions.token_for(session)


async def eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    with trio.fail_after(timeout_s):
        for _ in itertools.count():
            if check():
                return
            await trio.sleep(0.02)


def post(path: str, fields: dict[str, str], **headers: str) -> Request:
    body = urlencode(fields).encode()
    all_headers = {"host": HOST, "content-type": "application/x-www-form-urlencoded", **headers}
    return Request("POST", path, {}, all_headers, body)


async def test_unknown_streams_shards_groups_and_paths_get_a_404_page(tmp_path: Path) -> None:
    async with running_console(tmp_path) as (parts, console):
        await parts.engine.create_stream("known", 1, 24)
        for path, said in [
            ("/streams/nope", "there is no stream named &#x27;nope&#x27;"),
            ("/streams/..%2F..%2Fetc", "there is no stream named"),
            ("/streams/known/shards/shardId-000000000009/records", "has no shard"),
            ("/streams/known/shards/garbage/records", "has no shard"),
            ("/streams/known/groups/nobody", "has no consumer group"),
            ("/no/such/page", "there is no page at"),
            ("/events/streams/nope", "there is no stream"),
            ("/static/nothing.js", "no such file"),
        ]:
            answer = await console.answer(get(path))
            assert answer.status == 404, path
            assert said in answer.body.decode(), (path, answer.body[:300])
            assert b"<title>Not found" in answer.body
        assert (await console.answer(get("/streams/known"))).status == 200


async def test_forms_without_origin_token_or_from_elsewhere_are_refused(tmp_path: Path) -> None:
    async with running_console(tmp_path) as (parts, console):
        cookie, token = await session_of(console)
        fields = {"name": "made", "shards": "1", "retention_hours": "24", "confirm": "yes"}
        attempts = [
            post("/streams", {**fields, "csrf": token}, cookie=cookie),  # no Origin
            post("/streams", {**fields, "csrf": token}, cookie=cookie, origin="http://evil.test"),
            post("/streams", fields, cookie=cookie, origin=ORIGIN),  # no token
            post("/streams", {**fields, "csrf": "f" * 64}, cookie=cookie, origin=ORIGIN),
            post("/streams", {**fields, "csrf": token}, origin=ORIGIN),  # no cookie
        ]
        for attempt in attempts:
            answer = await console.answer(attempt)
            assert answer.status == 403, attempt
            assert b"Refused" in answer.body
        await trio.sleep(0.1)
        assert parts.engine.list_streams() == []


async def test_a_create_form_asks_for_confirmation_then_creates(tmp_path: Path) -> None:
    async with running_console(tmp_path) as (parts, console):
        cookie, token = await session_of(console)
        fields = {"name": "made", "shards": "2", "retention_hours": "48", "csrf": token}
        first = await console.answer(post("/streams", fields, cookie=cookie, origin=ORIGIN))
        assert first.status == 200
        assert b"Create made with 2 shards, retention 48 h?" in first.body
        assert b'name="confirm" value="yes"' in first.body
        assert parts.engine.list_streams() == []  # nothing happens before the confirmation
        confirmed = {**fields, "confirm": "yes"}
        second = await console.answer(
            post("/streams", confirmed, cookie=cookie, origin=ORIGIN, **{"hx-request": "true"})
        )
        assert second.status == 202 and b"Started #1" in second.body
        await eventually(lambda: parts.engine.list_streams() == ["made"])
        meta = parts.engine.stream_meta("made")
        assert len(meta.open_shards()) == 2 and meta.retention_hours == 48
        views = console.actions.views()
        assert views[0]["state"] == "done" and views[0]["done"] == views[0]["total"] == 1


async def test_a_split_form_names_unknown_shards_and_splits_known_ones(tmp_path: Path) -> None:
    async with running_console(tmp_path) as (parts, console):
        await parts.engine.create_stream("s", 1, 24)
        cookie, token = await session_of(console)
        bad = {"shard_id": "shardId-000000000007", "csrf": token, "confirm": "yes"}
        answer = await console.answer(post("/streams/s/split", bad, cookie=cookie, origin=ORIGIN))
        assert answer.status == 400 and b"has no open shard" in answer.body
        good = {**bad, "shard_id": "shardId-000000000000"}
        answer = await console.answer(post("/streams/s/split", good, cookie=cookie, origin=ORIGIN))
        assert answer.status == 202
        await eventually(lambda: len(parts.engine.stream_meta("s").open_shards()) == 2)
        page = (await console.answer(get("/streams/s"))).body.decode()
        assert "shardId-000000000001" in page and "shardId-000000000002" in page
        assert "children: shardId-000000000001, shardId-000000000002" in page


async def test_a_read_only_console_has_no_forms_and_refuses_posts(tmp_path: Path) -> None:
    async with running_console(tmp_path, read_only=True) as (parts, console):
        await parts.engine.create_stream("s", 1, 24)
        page = (await console.answer(get("/streams/s"))).body
        assert b'<form class="admin"' not in page and b"read-only" in page
        overview = (await console.answer(get("/"))).body
        assert b"Create a stream" not in overview
        cookie, token = await session_of(console)
        fields = {"csrf": token, "confirm": "yes", "confirm_name": "s"}
        answer = await console.answer(
            post("/streams/s/delete", fields, cookie=cookie, origin=ORIGIN)
        )
        assert answer.status == 403 and b"read-only" in answer.body
        assert parts.engine.list_streams() == ["s"]


async def test_stored_values_are_escaped_on_the_record_page(tmp_path: Path) -> None:
    async with running_console(tmp_path) as (parts, console):
        await parts.engine.create_stream("s", 1, 24)
        key = '<script>alert("k")</script>'
        await parts.engine.put_records(
            "s", [RecordIn(key, hash_bytes_of(key), b"<img src=x onerror=alert(1)>")]
        )
        answer = await console.answer(get("/streams/s/shards/shardId-000000000000/records"))
        body = answer.body.decode()
        assert "<script>alert" not in body and "<img src=x" not in body
        assert "&lt;script&gt;alert(&quot;k&quot;)&lt;/script&gt;" in body
        assert "&lt;img src=x onerror=alert(1)&gt;" in body


async def test_a_request_from_another_host_name_is_refused(tmp_path: Path) -> None:
    async with running_console(tmp_path) as (_, console):
        answer = await console.answer(
            Request("GET", "/", {}, {"host": "rebound.example:8080"}, b"")
        )
        assert answer.status == 403


async def test_the_http_connection_answers_pages_and_static_files(tmp_path: Path) -> None:
    async with running_console(tmp_path) as (_, console):
        client, server = trio.testing.memory_stream_pair()
        connection = ConsoleConnection(server, console.answer, ConsoleHttpLimits(), "test")

        async def serve() -> None:
            await connection.run()
            await server.aclose()  # what admission does once a connection task ends

        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            request = (
                f"GET /static/console.js HTTP/1.1\r\nhost: {HOST}\r\n\r\n"
                f"GET /nope HTTP/1.1\r\nhost: {HOST}\r\nconnection: close\r\n\r\n"
            )
            await client.send_all(request.encode())
            received = b""
            with trio.fail_after(5):
                while True:
                    chunk = await client.receive_some(65536)
                    if not chunk:
                        break
                    received += chunk
        first, _, rest = received.partition(b"\r\n\r\n")
        assert first.startswith(b"HTTP/1.1 200 ")
        assert b"content-type: text/javascript" in first
        assert b"content-security-policy: default-src 'self'" in first
        assert b"HTTP/1.1 404 " in rest
        assert f"set-cookie: {COOKIE_NAME}=".encode() in rest


CREDENTIALS = """
[[principal]]
name = "reader"
keys = [{ access_key_id = "AKREADER", secret_access_key = "reader-secret-0123456789" }]
allow = [{ actions = ["stream:list", "stream:describe", "stream:read"], streams = ["*"] }]

[[principal]]
name = "ops"
keys = [{ access_key_id = "AKOPS", secret_access_key = "ops-secret-0123456789ab" }]
allow = [{ actions = ["*"], streams = ["*"] }]
"""


@asynccontextmanager
async def guarded_console(tmp_path: Path) -> AsyncIterator[tuple[NodeParts, Console]]:
    path = tmp_path / "credentials.toml"
    path.write_text(CREDENTIALS)
    path.chmod(0o600)
    async with running_console(tmp_path, guard=Guard(path)) as running:
        yield running


async def sign_in(console: Console, key_id: str, secret: str) -> tuple[int, str | None]:
    """(status, the signed-in session cookie)."""
    cookie, token = await session_of(console)
    fields = {"access_key_id": key_id, "secret": secret, "csrf": token, "next": "/streams/s"}
    answer = await console.answer(post("/login", fields, cookie=cookie, origin=ORIGIN))
    new = dict(answer.headers).get("set-cookie")
    return answer.status, None if new is None else new.split(";")[0]


async def test_with_credentials_every_page_needs_a_sign_in(tmp_path: Path) -> None:
    async with guarded_console(tmp_path) as (parts, console):
        await parts.engine.create_stream("s", 1, 24)
        for path in ("/", "/streams/s", "/streams/s/shards/shardId-000000000000/records"):
            answer = await console.answer(get(path))
            assert answer.status == 303, path
            assert dict(answer.headers)["location"].startswith("/login?next=")
        assert (await console.answer(get("/events/streams/s"))).status == 401
        assert (await console.answer(get("/static/console.js"))).status == 200
        page = await console.answer(get("/login"))
        assert page.status == 200 and b'name="secret" type="password"' in page.body


async def test_a_wrong_secret_is_refused_and_a_right_one_opens_a_new_session(
    tmp_path: Path,
) -> None:
    async with guarded_console(tmp_path) as (parts, console):
        await parts.engine.create_stream("s", 1, 24)
        status, cookie = await sign_in(console, "AKREADER", "not-the-secret-at-all")
        assert status == 401 and cookie is None
        status, cookie = await sign_in(console, "AKNOBODY", "reader-secret-0123456789")
        assert status == 401 and cookie is None
        before, _ = await session_of(console)
        status, cookie = await sign_in(console, "AKREADER", "reader-secret-0123456789")
        assert status == 303 and cookie is not None and cookie != before
        page = await console.answer(get("/streams/s", cookie=cookie))
        assert page.status == 200 and b"signed in as reader" in page.body
        assert b"reader-secret" not in page.body


async def test_a_signed_in_principal_gets_only_what_its_policy_allows(tmp_path: Path) -> None:
    async with guarded_console(tmp_path) as (parts, console):
        await parts.engine.create_stream("s", 1, 24)
        _, reader = await sign_in(console, "AKREADER", "reader-secret-0123456789")
        assert reader is not None
        records = await console.answer(
            get("/streams/s/shards/shardId-000000000000/records", cookie=reader)
        )
        assert records.status == 200
        token = console.sessions.token_for(reader.split("=", 1)[1])
        fields = {"csrf": token, "confirm": "yes", "confirm_name": "s"}
        denied = await console.answer(
            post("/streams/s/delete", fields, cookie=reader, origin=ORIGIN)
        )
        assert denied.status == 403 and b"not allowed stream:delete" in denied.body
        assert parts.engine.list_streams() == ["s"]
        _, ops = await sign_in(console, "AKOPS", "ops-secret-0123456789ab")
        assert ops is not None
        token = console.sessions.token_for(ops.split("=", 1)[1])
        fields = {"csrf": token, "confirm": "yes", "confirm_name": "s"}
        allowed = await console.answer(post("/streams/s/delete", fields, cookie=ops, origin=ORIGIN))
        assert allowed.status == 202
        await eventually(lambda: parts.engine.list_streams() == [])
