"""The console application: routes, the data each page needs, and its live updates.

``Console.answer(request)`` is the whole application (http.py serves it). Pages are rendered on
the server (pages.py) from the engine's public calls (``list_streams``, ``describe_stream``,
``status_of``, ``stream_meta``, ``read``), the node's bound group operations (``group_list``,
``group_describe``: cluster mode routes them to each group's coordinator) and ``cluster_nodes``,
and the sampler's rates (sampler.py). Each page names an event stream (``/events/...``,
live.py) that sends its changed fragments once a second.

Bounded work per request: one page of streams (50) or shards (100), at most 500 records, one
group; every call that may wait has a timeout (``CALL_TIMEOUT_S``; http.py also bounds the whole
answer). Unknown streams, shards, groups and paths get a 404 page that says what was not found;
invalid names count as unknown. Nothing secret is ever rendered: the pages show stream data and
metadata only (no credentials, no iterator key, no session token other than the page's own CSRF
token).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Final
from urllib.parse import unquote, urlencode

import structlog
import trio

from streamd_client.errors import (
    AccessDeniedError,
    InvalidArgumentError,
    LimitExceededError,
    ShardNotFoundError,
    StreamdError,
    StreamNotFoundError,
)
from streamd_client.group_errors import GroupNotFoundError

from ...engine import Engine
from ...security.guard import Guard
from ...security.principals import Principal
from ..native.api import BoundHandler
from . import pages
from . import records as rec
from .actions import Actions
from .admin import STREAM_ACTIONS, AdminForms, form_of
from .csrf import CsrfRefused, Sessions, session_cookie, session_of
from .groupwatch import GroupWatches
from .html import esc, notice, page_number, shell, stream_url
from .http import NotFound, Request, Response
from .live import Live
from .sampler import RateSampler
from .signin import SignIns, required

log = structlog.get_logger(__name__)

CALL_TIMEOUT_S: Final = 3.0
SIGN_IN_FAILED_PAUSE_S: Final = 0.5
_STATIC_TYPES: Final = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
}


@dataclass(slots=True)
class PageContext:
    """Per request: the session (made now if the browser had none) and its CSRF token."""

    session: str
    csrf: str
    new_session: bool
    principal: Principal | None = None  # signed in (only when the node has credentials)
    headers: list[tuple[str, str]] = field(default_factory=list)


def load_static() -> dict[str, bytes]:
    """The console's files (package data), read once at start."""
    root = resources.files(__package__).joinpath("static")
    files: dict[str, bytes] = {}
    for entry in root.iterdir():
        if entry.is_file():
            files[entry.name] = entry.read_bytes()
    for entry in root.joinpath("vendor").iterdir():
        if entry.is_file():
            files["vendor/" + entry.name] = entry.read_bytes()
    return files


class Console:
    def __init__(
        self,
        engine: Engine,
        handlers: dict[str, BoundHandler],
        *,
        read_only: bool = False,
        allowed_hosts: frozenset[str] = frozenset(),
        guard: Guard | None = None,
    ) -> None:
        self.engine = engine
        self.handlers = handlers
        self.read_only = read_only
        self.sessions = Sessions(allowed_hosts=allowed_hosts)
        self.signins = SignIns(guard)
        self.sampler = RateSampler(engine)
        self.watches = GroupWatches(self.describe_group)
        self.actions = Actions(engine)
        self.admin = AdminForms(engine, self.actions)
        self.live = Live(self)
        self.static = load_static()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The sampler, the group watches and the admin actions, until cancelled."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.actions.run)
            nursery.start_soon(self.sampler.run)
            nursery.start_soon(self.watches.run)
            task_status.started()

    # -- calls into the node, each with a timeout ---------------------------------------------

    async def call(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """A bound node operation. Raises its StreamdError, or TimeoutError."""
        with trio.fail_after(CALL_TIMEOUT_S):
            return await self.handlers[op](args)

    async def describe_group(self, stream: str, group: str) -> dict[str, Any]:
        answer = await self.call("group_describe", {"stream": stream, "group": group})
        view: dict[str, Any] = answer["group"]
        return view

    async def nodes(self) -> list[dict[str, Any]] | None:
        if not self.engine.clustered:
            return None
        try:
            answer = await self.call("cluster_nodes", {})
        except (StreamdError, TimeoutError):
            return []
        self_id = self.engine.locator.self_node()[0]
        nodes: list[dict[str, Any]] = answer["nodes"]
        for node in nodes:
            node["self"] = node["node_id"] == self_id
            node["shards_led"] = self.sampler.shards_led.get(node["node_id"], 0)
        return nodes

    async def groups_of(self, stream: str) -> tuple[list[dict[str, Any]] | None, str | None]:
        try:
            answer = await self.call("group_list", {"stream": stream})
        except StreamdError as exc:
            return None, f"{exc.code}: {exc.message}"[:200]
        except TimeoutError:
            return None, "the groups' coordinators did not answer in time"
        groups: list[dict[str, Any]] = answer["groups"]
        return groups, None

    # -- the application -----------------------------------------------------------------------

    async def answer(self, request: Request) -> Response:
        try:
            segments = [unquote(p) for p in request.path.split("/")[1:]]
        except ValueError:
            segments = []
        ctx = self._context(request)
        try:
            if segments in (["login"], ["logout"]):
                response = await self._sign_in_or_out(request, segments[0], ctx)
            elif not self._allowed(request, segments, ctx):
                response = self._to_sign_in(request, ctx)
            elif request.method in ("GET", "HEAD"):
                response = await self._get(request, segments, ctx)
            elif request.method == "POST":
                response = await self._post(request, segments, ctx)
            else:
                response = Response(405, b"method not allowed", "text/plain", [("allow", "GET")])
        except NotFound as exc:
            response = self._error(404, "Not found", exc.message, ctx, request)
        except CsrfRefused as exc:
            log.warning("console.csrf_refused", reason=exc.reason, path=request.path[:200])
            response = self._error(403, "Refused", exc.reason, ctx, request)
        except AccessDeniedError as exc:
            response = self._error(403, "Not allowed", exc.message, ctx, request)
        if ctx.new_session:
            response.headers.append(("set-cookie", session_cookie(ctx.session)))
        return response

    def _context(self, request: Request) -> PageContext:
        session = session_of(request.header("cookie"))
        new = session is None
        if session is None:
            session = self.sessions.new_session()
        principal = self.signins.principal_of(None if new else session)
        return PageContext(session, self.sessions.token_for(session), new, principal)

    def _allowed(self, request: Request, segments: list[str], ctx: PageContext) -> bool:
        """False: sign in first. Raises AccessDeniedError (the principal may not) and
        CsrfRefused (another Host)."""
        self.sessions.check_host(request.header("host"))  # DNS rebinding: refuse other names
        form = form_of(request.body) if request.method == "POST" else {}
        if request.method == "POST":  # a forged form is refused before anything else
            token = form.get("csrf") or request.header("x-csrf-token")
            session = None if ctx.new_session else ctx.session
            origin = request.header("origin")
            self.sessions.check_post(request.header("host"), origin, session, token)
        if not self.signins.required:
            return True
        name = form.get("name", "")
        need = required(request.method, segments, name)
        if need is None:
            return True
        if ctx.principal is None:
            return False
        assert self.signins.guard is not None
        self.signins.guard.authorize(
            ctx.principal, need[0], need[1], protocol="console", peer=request.header("host") or ""
        )
        return True

    def _to_sign_in(self, request: Request, ctx: PageContext) -> Response:
        if (
            request.method == "GET"
            and not request.wants_fragment
            and request.path[:8] != "/events/"
        ):
            target = "/login?" + urlencode({"next": request.path})
            return Response(303, b"", headers=[("location", target), ("cache-control", "no-store")])
        return self._error(401, "Sign in", "sign in first (reload the page)", ctx, request)

    async def _sign_in_or_out(self, request: Request, which: str, ctx: PageContext) -> Response:
        self.sessions.check_host(request.header("host"))
        next_path = request.query.get("next", "/")
        if not next_path.startswith("/") or next_path.startswith("//"):
            next_path = "/"
        if request.method != "POST":
            if which == "logout" or not self.signins.required:
                return Response(303, b"", headers=[("location", "/")])
            body = pages.sign_in_form(ctx.csrf, next_path, None)
            return self._page("Sign in", body, ctx)
        form = form_of(request.body)
        session = None if ctx.new_session else ctx.session
        self.sessions.check_post(
            request.header("host"), request.header("origin"), session, form.get("csrf")
        )
        if which == "logout":
            self.signins.sign_out(session)
            return Response(303, b"", headers=[("location", "/login")])
        if not self.signins.required:
            return Response(303, b"", headers=[("location", "/")])
        principal = self.signins.check(
            form.get("access_key_id", ""), form.get("secret", ""), request.header("host") or ""
        )
        if principal is None:
            await trio.sleep(SIGN_IN_FAILED_PAUSE_S)  # a guesser gets one try per pause
            body = pages.sign_in_form(ctx.csrf, next_path, "the access key id or secret is wrong")
            response = self._page("Sign in", body, ctx)
            response.status = 401
            return response
        fresh = self.sessions.new_session()  # never the id the browser held before
        self.signins.sign_in(fresh, principal)
        log.info("console.signed_in", principal=principal.name)
        target = form.get("next") or "/"
        if not target.startswith("/") or target.startswith("//"):
            target = "/"
        headers = [("location", target), ("set-cookie", session_cookie(fresh))]
        return Response(303, b"", headers=headers)

    def _page(self, title: str, body: str, ctx: PageContext, **kw: Any) -> Response:
        who = None if ctx.principal is None else ctx.principal.name
        text = shell(title, body, csrf=ctx.csrf, read_only=self.read_only, who=who, **kw)
        return Response(200, text.encode(), headers=[("cache-control", "no-store")])

    def _error(
        self, status: int, title: str, message: str, ctx: PageContext, request: Request
    ) -> Response:
        hint = '<a href="/">Back to the overview</a>'
        if request.wants_fragment:
            body = notice(message, "error")
        else:
            body = shell(title, pages.error_body(message, hint), csrf=ctx.csrf)
        return Response(status, body.encode(), headers=[("cache-control", "no-store")])

    async def _get(self, request: Request, segments: list[str], ctx: PageContext) -> Response:
        match segments:
            case [""]:
                return await self._overview(request, ctx)
            case ["streams-fragment"]:
                html = await self.live.streams_html(request.query.get("q", ""), 1)
                return Response(200, html.encode())
            case ["static", *rest]:
                return self._static("/".join(rest))
            case ["streams", name]:
                return await self._stream(request, name, ctx)
            case ["streams", name, "shards", shard_id, "records"]:
                return await self._records(request, name, shard_id, ctx)
            case ["streams", name, "groups", group]:
                return await self._group(name, group, ctx)
            case ["events", *rest]:
                return await self.live.events(request, rest)
        raise NotFound(f"there is no page at {request.path[:200]}")

    def _static(self, name: str) -> Response:
        data = self.static.get(name)
        if data is None:
            raise NotFound(f"no such file: /static/{name[:100]}")
        kind = _STATIC_TYPES.get(name[name.rfind(".") :], "application/octet-stream")
        cache = "public, max-age=31536000, immutable" if name.startswith("vendor/") else "no-cache"
        return Response(200, data, kind, [("cache-control", cache)])

    def stream_or_404(self, name: str) -> dict[str, Any]:
        try:
            return self.engine.describe_stream(name)
        except (StreamNotFoundError, InvalidArgumentError):
            raise NotFound(f"there is no stream named {name[:200]!r}") from None

    async def _overview(self, request: Request, ctx: PageContext) -> Response:
        q = request.query.get("q", "")
        page = page_number(request.query.get("page"))
        nodes = pages.nodes_fragment(await self.nodes())
        streams = await self.live.streams_html(q, page)
        actions = pages.actions_fragment(self.actions.views())
        body = pages.overview_body(nodes, streams, q, ctx.csrf, self.read_only, actions)
        events = "/events/overview?" + _query(q=q, page=page)
        return self._page("Overview", body, ctx, events=events)

    async def _stream(self, request: Request, name: str, ctx: PageContext) -> Response:
        described = self.stream_or_404(name)
        page = page_number(request.query.get("page"))
        parts = await self.live.stream_parts(name, described, page)
        open_ids = [s["shard_id"] for s in described["shards"] if s["ending_sequence"] is None]
        admin = "" if self.read_only else pages.stream_admin(name, open_ids, ctx.csrf)
        body = pages.stream_body(
            name,
            parts["stream-summary"],
            parts["hashbar"],
            parts["lineage"],
            parts["shards"],
            parts["groups"],
            self.live.write_chart(name, described),
            admin,
            parts["actions"],
        )
        events = f"/events{stream_url(name)}?" + _query(page=page)
        return self._page(name, body, ctx, events=events, crumbs=[(name, stream_url(name))])

    async def _records(
        self, request: Request, name: str, shard_id: str, ctx: PageContext
    ) -> Response:
        described = self.stream_or_404(name)
        if not any(s["shard_id"] == shard_id for s in described["shards"]):
            raise NotFound(f"stream {name[:200]!r} has no shard {shard_id[:100]!r}")
        q = request.query
        fmt = q.get("format") or "text"
        fmt = fmt if fmt in rec.FORMATS else "text"
        form = pages.records_form(name, shard_id, q)
        crumbs = [
            (name, stream_url(name)),
            (shard_id, stream_url(name, "shards", shard_id, "records")),
        ]
        title = f"Records of {shard_id}"
        if q.get("tail"):
            table_html = pages.records_table("", "Live tail: records as they arrive (newest last)")
            status = '<div id="tail-status" role="status"></div>'
            body = pages.records_body(form, status + table_html, "", None)
            events = f"/events{stream_url(name, 'shards', shard_id, 'tail')}?" + _query(format=fmt)
            return self._page(title, body, ctx, events=events, crumbs=crumbs)
        error = None
        rows, more = "", ""
        try:
            position = rec.position_of(q.get("type", ""), q.get("seq", ""), q.get("ts", ""))
            limit = rec.limit_of(q.get("limit", ""))
            with trio.fail_after(CALL_TIMEOUT_S):
                page = await rec.read_page(self.engine, name, shard_id, position, limit)
            rows = pages.record_rows(page.records, fmt)
            more = _next_link(name, shard_id, page, fmt, limit)
        except (InvalidArgumentError, ShardNotFoundError) as exc:
            error = exc.message
        except StreamdError as exc:
            error = f"{exc.code}: {exc.message}"
        except TimeoutError:
            error = "the shard did not answer in time"
        caption = f"Records of {shard_id} shown as {fmt}"
        body = pages.records_body(form, pages.records_table(rows, caption), more, error)
        return self._page(title, body, ctx, crumbs=crumbs)

    async def _group(self, name: str, group: str, ctx: PageContext) -> Response:
        self.stream_or_404(name)
        view: dict[str, Any] | None = None
        error: str | None = None
        try:
            view = await self.describe_group(name, group)
        except (GroupNotFoundError, InvalidArgumentError):
            raise NotFound(f"stream {name[:200]!r} has no consumer group {group[:130]!r}") from None
        except (StreamdError, TimeoutError) as exc:
            error = str(exc)[:200]
        watch = self.watches.touch(name, group)
        if view is not None:
            watch.add(self.watches.clock(), view)
        parts = self.live.group_parts(watch, view, error)
        body = pages.group_body(
            parts["group-members"], parts["group-shards"], parts["group-events"], watch.chart()
        )
        events = f"/events{stream_url(name, 'groups', group)}"
        crumbs = [(name, stream_url(name)), (group, stream_url(name, "groups", group))]
        return self._page(f"Group {group}", body, ctx, events=events, crumbs=crumbs)

    async def _post(self, request: Request, segments: list[str], ctx: PageContext) -> Response:
        form = form_of(request.body)  # its CSRF checks passed (``_allowed``)
        if self.read_only:
            raise CsrfRefused("this console is read-only (--console-read-only)")
        match segments:
            case ["streams"]:
                action, stream = "create", None
            case ["streams", name, action] if action in STREAM_ACTIONS:
                stream = name
                self.stream_or_404(name)
            case _:
                raise NotFound(f"there is no form at {request.path[:200]}")
        try:
            answer = self.admin.post(action, stream, form, ctx.csrf)
            status, html = answer.status, answer.html
        except StreamNotFoundError:
            raise NotFound(f"there is no stream named {stream!r}") from None
        except (InvalidArgumentError, ShardNotFoundError, LimitExceededError) as exc:
            status, html = 400, notice(exc.message, "error")
        if request.wants_fragment:
            return Response(status, html.encode(), headers=[("cache-control", "no-store")])
        back = stream_url(stream) if stream else "/"
        body = html + f'<p><a href="{esc(back)}">Back</a></p>'
        page = shell("Confirm" if status == 200 else "Operation", body, csrf=ctx.csrf)
        return Response(status, page.encode(), headers=[("cache-control", "no-store")])


def _query(**fields: object) -> str:
    return urlencode({k: v for k, v in fields.items() if v not in (None, "")})


def _next_link(name: str, shard_id: str, page: rec.Page, fmt: str, limit: int) -> str:
    if not page.records:
        return ""
    last = page.records[-1].sequence_number
    target = (
        stream_url(name, "shards", shard_id, "records")
        + "?"
        + _query(type="AFTER_SEQUENCE_NUMBER", seq=last, format=fmt, limit=limit)
    )
    end = " (the shard is closed and ends here)" if page.shard_end else ""
    return f'<p><a href="{esc(target)}" rel="next">next records</a>{esc(end)}</p>'
