"""The console's admin forms: checked, confirmed, then started as actions (actions.py).

Each form posts twice. The first post (no ``confirm`` field) is checked (fields parse, the
stream and shards exist) and answered with a confirmation that names exactly what will happen,
holding the same fields; only its ``Confirm`` (``confirm=yes``) starts the operation. Deleting
asks, in addition, for the stream's name typed out. The CSRF checks (csrf.py) and the read-only
mode are applied by app.py before anything here runs; the engine checks everything again.

    POST /streams                          create  name, shards, retention_hours
    POST /streams/<name>/split             shard_id, at (optional hash key)
    POST /streams/<name>/merge             shard_id, adjacent_shard_id
    POST /streams/<name>/resize            shard_count
    POST /streams/<name>/retention         retention_hours
    POST /streams/<name>/delete            confirm_name
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl

from streamd_client.errors import InvalidArgumentError, ShardNotFoundError
from streamd_client.model import HASH_KEY_MAX, check_stream_name

from ...engine import Engine
from . import pages
from .actions import Action, Actions
from .html import stream_url

FORM_FIELDS_MAX: Final = 16
STREAM_ACTIONS: Final = frozenset({"split", "merge", "resize", "retention", "delete"})


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    html: str


def form_of(body: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    for name, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
        if len(fields) >= FORM_FIELDS_MAX:
            break
        fields.setdefault(name, value)
    return fields


def _int(form: dict[str, str], name: str, low: int, high: int) -> int:
    text = form.get(name, "").strip()
    try:
        value = int(text)
    except ValueError:
        raise InvalidArgumentError(f"{name} must be a whole number, got {text[:30]!r}") from None
    if not low <= value <= high:
        raise InvalidArgumentError(f"{name} must be in {low}..{high}, got {value}")
    return value


class AdminForms:
    def __init__(self, engine: Engine, actions: Actions) -> None:
        self.engine = engine
        self.actions = actions

    def post(self, action: str, stream: str | None, form: dict[str, str], csrf: str) -> Answer:
        """Raises InvalidArgumentError, StreamNotFoundError, ShardNotFoundError (shown as the
        answer by app.py), LimitExceededError (too many operations running)."""
        if stream is None:
            return self._create(form, csrf)
        meta = self.engine.stream_meta(stream)  # raises StreamNotFoundError
        open_ids = {s.shard_id for s in meta.open_shards()}
        target = stream_url(stream, action)
        engine = self.engine

        def shard(name: str) -> str:
            value = form.get(name, "").strip()
            if value not in open_ids:
                raise ShardNotFoundError(f"stream {stream!r} has no open shard {value[:80]!r}")
            return value

        if action == "split":
            shard_id = shard("shard_id")
            at_text = form.get("at", "").strip()
            at = _int(form, "at", 1, HASH_KEY_MAX) if at_text else None
            where = "at its middle" if at is None else f"at hash key {at}"
            title = f"Split {shard_id} of {stream} {where}"
            fields = {"shard_id": shard_id, "at": at_text}

            async def call(act: Action) -> str:
                children = await engine.split_shard(stream, shard_id, at)
                return "children: " + ", ".join(children)

        elif action == "merge":
            shard_id, adjacent = shard("shard_id"), shard("adjacent_shard_id")
            title = f"Merge {shard_id} and {adjacent} of {stream}"
            fields = {"shard_id": shard_id, "adjacent_shard_id": adjacent}

            async def call(act: Action) -> str:
                return "child: " + await engine.merge_shards(stream, shard_id, adjacent)

        elif action == "resize":
            count = _int(form, "shard_count", 1, 100_000)
            title = f"Resize {stream} to {count} open shards"
            fields = {"shard_count": str(count)}

            async def call(act: Action) -> str:
                steps = await engine.resize_stream(stream, count)
                if steps:
                    act.follows_reshard, act.total = True, steps
                return f"{steps} steps planned"

        elif action == "retention":
            hours = _int(form, "retention_hours", 1, 1_000_000)
            title = f"Set the retention of {stream} to {hours} h"
            fields = {"retention_hours": str(hours)}

            async def call(act: Action) -> str:
                await engine.update_retention(stream, hours)
                return f"retention {hours} h"

        elif action == "delete":
            if form.get("confirm_name", "") != stream:
                raise InvalidArgumentError("type the stream's name exactly to delete it")
            title = f"Delete {stream} and all its records"
            fields = {"confirm_name": stream}

            async def call(act: Action) -> str:
                await engine.delete_stream(stream)
                return "deleted"

        else:  # app.py routes only STREAM_ACTIONS here
            raise InvalidArgumentError(f"unknown action {action[:40]!r}")
        if form.get("confirm") != "yes":
            return Answer(200, pages.confirm_fragment(title + "?", target, fields, csrf))
        started = self.actions.start(action, stream, title, call)
        return Answer(202, pages.started_fragment(started.view()))

    def _create(self, form: dict[str, str], csrf: str) -> Answer:
        name = form.get("name", "").strip()
        check_stream_name(name)
        shards = _int(form, "shards", 1, 100_000)
        hours = _int(form, "retention_hours", 1, 1_000_000)
        fields = {"name": name, "shards": str(shards), "retention_hours": str(hours)}
        title = (
            f"Create {name} with {shards} shard{'s' if shards != 1 else ''}, retention {hours} h"
        )
        if form.get("confirm") != "yes":
            return Answer(200, pages.confirm_fragment(title + "?", "/streams", fields, csrf))
        engine = self.engine

        async def call(act: Action) -> str:
            await engine.create_stream(name, shards, hours)
            return "created"

        started = self.actions.start("create", name, title, call)
        return Answer(202, pages.started_fragment(started.view()))
