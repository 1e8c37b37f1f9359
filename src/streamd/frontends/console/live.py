"""Live updates: each page's fragments, rendered again once a second and sent when changed.

An event stream (``GET /events/<page path>``) is Server-Sent Events: every ``LIVE_INTERVAL_S``
it renders the page's fragments with the same functions as the page itself (pages.py) and
sends, as one ``update`` event, a JSON object ``{"html": {id: html}, "charts": {id: data},
"append": {id: html}}`` holding only what changed since the last event (console.js swaps them
in). Nothing changed: nothing is sent, except a comment every ``KEEPALIVE_S`` so that proxies
keep the stream. At most ``streams_max`` event streams are open at once (then 503: the browser's
EventSource retries), each render is bounded by ``RENDER_TIMEOUT_S``, and a page whose stream
was deleted is told so and its event stream ends.

The live tail of a shard reads from the shard's end onwards (``wait_ms`` long polls), and sends
at most ``TAIL_ROWS_MAX`` new records per event, one event a second at most.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

import trio

from streamd_client.errors import InvalidArgumentError, StreamdError, StreamNotFoundError
from streamd_client.group_errors import GroupNotFoundError
from streamd_client.model import Position

from . import pages
from . import records as rec
from .groupwatch import GroupWatch
from .html import PAGE_SIZE, notice, page_number, paginate
from .http import NotFound, Request, Response

if TYPE_CHECKING:
    from ...engine import Engine
    from .actions import Actions
    from .groupwatch import GroupWatches
    from .sampler import RateSampler


class Console(Protocol):
    """What the live views use of the console (``app.Console``), named here so that the two
    modules do not import each other."""

    engine: Engine
    sampler: RateSampler
    actions: Actions
    watches: GroupWatches

    def stream_or_404(self, name: str) -> dict[str, Any]: ...

    async def nodes(self) -> list[dict[str, Any]] | None: ...

    async def groups_of(self, stream: str) -> tuple[list[dict[str, Any]] | None, str | None]: ...


LIVE_INTERVAL_S: Final = 1.0
KEEPALIVE_S: Final = 15.0
RENDER_TIMEOUT_S: Final = 3.0
TAIL_ROWS_MAX: Final = 100
TAIL_WAIT_MS: Final = 1000
SHARDS_PAGE_SIZE: Final = 100
CHART_SERIES_MAX: Final = 8

Update = dict[str, dict[str, Any]]


def sse_event(update: Update) -> bytes:
    data = json.dumps(update, separators=(",", ":"), allow_nan=False)
    return f"event: update\ndata: {data}\n\n".encode()


def changes(sent: dict[str, str], update: Update) -> Update:
    """What of ``update`` differs from what was sent last (``sent`` is updated)."""
    out: Update = {}
    for kind in ("html", "charts"):
        for key, value in update.get(kind, {}).items():
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            if sent.get(f"{kind}:{key}") != text:
                sent[f"{kind}:{key}"] = text
                out.setdefault(kind, {})[key] = value
    if update.get("append"):
        out["append"] = update["append"]
    return out


class Gone(Exception):
    """The page's subject was deleted: say so, then end the event stream."""

    def __init__(self, update: Update) -> None:
        super().__init__("gone")
        self.update = update


class Live:
    def __init__(self, console: Console, streams_max: int = 64) -> None:
        self.console = console
        self.streams_max = streams_max
        self.open = 0

    # -- fragments (shared with the first render) ----------------------------------------------

    async def streams_html(self, q: str, page: int) -> str:
        engine, sampler = self.console.engine, self.console.sampler
        names = engine.list_streams()
        if q:
            names = [n for n in names if q.lower() in n.lower()]
        chosen, page, pages_count = paginate(names, page, PAGE_SIZE)
        rows = []
        for name in chosen:
            try:
                meta = engine.stream_meta(name)
                status = engine.status_of(name)
            except StreamdError:
                continue
            rows.append(
                {
                    "name": name,
                    "status": status,
                    "shards_open": len(meta.open_shards()),
                    "shards_total": len(meta.shards),
                    "retention_hours": meta.retention_hours,
                    "write_rate": sampler.write_rate.get(name),
                    "read_rate": sampler.read_rate.get(name),
                    "bytes": sampler.bytes_stored.get(name),
                }
            )
        return pages.streams_fragment(rows, q, page, pages_count, len(names))

    async def stream_parts(self, name: str, described: dict[str, Any], page: int) -> dict[str, str]:
        console = self.console
        sampler = console.sampler
        shards = described["shards"]
        chosen, page, pages_count = paginate(shards, page, SHARDS_PAGE_SIZE)
        rates = {s: r for (n, s), r in sampler.shard_rate.items() if n == name}
        groups, error = await console.groups_of(name)
        return {
            "stream-summary": pages.stream_summary(
                described,
                sampler.write_rate.get(name, 0.0),
                sampler.read_rate.get(name, 0.0),
                sampler.bytes_stored.get(name, 0),
            ),
            "hashbar": pages.hash_bar(shards),
            "lineage": pages.lineage_fragment(shards),
            "shards": pages.shards_fragment(
                name, chosen, rates, page, pages_count, console.engine.clustered
            ),
            "groups": pages.groups_fragment(name, groups, error),
            "actions": pages.actions_fragment(console.actions.views(name)),
        }

    def write_chart(self, name: str, described: dict[str, Any]) -> dict[str, Any]:
        sampler = self.console.sampler
        open_ids = [s["shard_id"] for s in described["shards"] if s["ending_sequence"] is None]
        if len(open_ids) > CHART_SERIES_MAX:
            open_ids.sort(key=lambda s: -sampler.shard_rate.get((name, s), 0.0))
            open_ids = sorted(open_ids[:CHART_SERIES_MAX])
        stream_id = self.console.engine.stream_meta(name).stream_id
        return sampler.series(stream_id, open_ids)

    def group_parts(
        self, watch: GroupWatch, view: dict[str, Any] | None, error: str | None
    ) -> dict[str, str]:
        shown = view or watch.view or {"members": [], "shards": []}
        events = watch.chart()["events"]
        return {
            "group-members": pages.group_members(shown),
            "group-shards": pages.group_shards(shown),
            "group-events": pages.group_events(events, error or watch.error),
        }

    # -- event streams -------------------------------------------------------------------------

    async def events(self, request: Request, rest: list[str]) -> Response:
        render: Callable[[], Awaitable[Update]]
        match rest:
            case ["overview"]:
                q, page = request.query.get("q", ""), page_number(request.query.get("page"))
                render = self._overview_render(q, page)
            case ["streams", name]:
                self.console.stream_or_404(name)
                render = self._stream_render(name, page_number(request.query.get("page")))
            case ["streams", name, "groups", group]:
                self.console.stream_or_404(name)
                render = self._group_render(name, group)
            case ["streams", name, "shards", shard_id, "tail"]:
                described = self.console.stream_or_404(name)
                if not any(s["shard_id"] == shard_id for s in described["shards"]):
                    raise NotFound(f"stream {name[:200]!r} has no shard {shard_id[:100]!r}")
                fmt = request.query.get("format", "text")
                fmt = fmt if fmt in rec.FORMATS else "text"
                return self._open(self._tail(name, shard_id, fmt))
            case _:
                raise NotFound("no such event stream")
        return self._open(self._loop(render))

    def _open(self, events: AsyncIterator[bytes]) -> Response:
        if self.open >= self.streams_max:
            body = b"too many live pages open; close some tabs"
            return Response(503, body, "text/plain", [("retry-after", "5")])
        return Response(200, events=self._counted(events))

    async def _counted(self, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        self.open += 1
        try:
            async for chunk in events:
                yield chunk
        finally:
            self.open -= 1
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _loop(self, render: Callable[[], Awaitable[Update]]) -> AsyncIterator[bytes]:
        sent: dict[str, str] = {}
        yield b"retry: 2000\n\n"
        quiet_s = 0.0
        while True:
            update: Update | None = None
            gone = None
            with trio.move_on_after(RENDER_TIMEOUT_S):
                try:
                    update = await render()
                except Gone as exc:
                    gone = exc.update
            if gone is not None:
                yield sse_event(gone)
                return
            changed = changes(sent, update) if update is not None else {}
            if changed:
                quiet_s = 0.0
                yield sse_event(changed)
            elif quiet_s >= KEEPALIVE_S:
                quiet_s = 0.0
                yield b": keep-alive\n\n"
            await trio.sleep(LIVE_INTERVAL_S)
            quiet_s += LIVE_INTERVAL_S

    def _overview_render(self, q: str, page: int) -> Callable[[], Awaitable[Update]]:
        async def render() -> Update:
            console = self.console
            return {
                "html": {
                    "nodes": pages.nodes_fragment(await console.nodes()),
                    "streams": await self.streams_html(q, page),
                    "actions": pages.actions_fragment(console.actions.views()),
                }
            }

        return render

    def _stream_render(self, name: str, page: int) -> Callable[[], Awaitable[Update]]:
        async def render() -> Update:
            try:
                described = self.console.engine.describe_stream(name)
            except StreamNotFoundError:
                html = notice(f"The stream {name!r} no longer exists.", "error")
                raise Gone({"html": {"stream-summary": html}}) from None
            parts = await self.stream_parts(name, described, page)
            return {"html": parts, "charts": {"write-chart": self.write_chart(name, described)}}

        return render

    def _group_render(self, name: str, group: str) -> Callable[[], Awaitable[Update]]:
        async def render() -> Update:
            watch = self.console.watches.touch(name, group)
            try:
                self.console.engine.stream_meta(name)
            except StreamNotFoundError:
                html = notice(f"The stream {name!r} no longer exists.", "error")
                raise Gone({"html": {"group-events": html}}) from None
            if watch.error and "GROUP_NOT_FOUND" in watch.error:
                html = notice(f"The group {group!r} no longer exists.", "error")
                raise Gone({"html": {"group-events": html}})
            return {
                "html": self.group_parts(watch, None, None),
                "charts": {"lag-chart": watch.chart()},
            }

        return render

    async def _tail(self, name: str, shard_id: str, fmt: str) -> AsyncIterator[bytes]:
        engine = self.console.engine
        yield b"retry: 2000\n\n"
        try:
            with trio.fail_after(RENDER_TIMEOUT_S):
                first = await rec.read_page(engine, name, shard_id, Position.latest(), 1)
        except (StreamdError, TimeoutError) as exc:
            yield sse_event({"html": {"tail-status": notice(str(exc)[:200], "error")}})
            return
        offset = first.next_offset
        quiet_s = 0.0
        while True:
            page, said, stop = await self._tail_read(name, shard_id, offset)
            if said is not None:
                yield sse_event({"html": {"tail-status": said}})
            if stop:
                return
            if page is not None and page.records:
                offset = page.next_offset
                quiet_s = 0.0
                yield sse_event({"append": {"record-rows": pages.record_rows(page.records, fmt)}})
            elif page is not None and page.shard_end:
                html = notice("The shard is closed: no record will follow.", "info")
                yield sse_event({"html": {"tail-status": html}})
                return
            elif quiet_s >= KEEPALIVE_S:
                quiet_s = 0.0
                yield b": keep-alive\n\n"
            await trio.sleep(LIVE_INTERVAL_S)
            quiet_s += LIVE_INTERVAL_S

    async def _tail_read(
        self, name: str, shard_id: str, offset: int
    ) -> tuple[rec.Page | None, str | None, bool]:
        """(the records after ``offset``, a notice to show, whether the tail ends)."""
        engine = self.console.engine
        with trio.move_on_after(RENDER_TIMEOUT_S):
            try:
                page = await rec.read_page(
                    engine, name, shard_id, Position.at_offset(offset), TAIL_ROWS_MAX,
                    wait_ms=TAIL_WAIT_MS,
                )  # fmt: skip
            except (StreamNotFoundError, InvalidArgumentError, GroupNotFoundError):
                return None, notice("The stream is gone.", "error"), True
            except StreamdError as exc:
                return None, notice(exc.message[:200], "error"), False
            return page, None, False
        return None, None, False
