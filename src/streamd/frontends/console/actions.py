"""Admin operations started from the console, run in the background, with their progress.

A confirmed form (admin.py) becomes an ``Action``: its engine call runs in the console's
nursery (so the request that started it answers at once and the event loop is never held),
bounded by ``ACTION_TIMEOUT_S``, at most ``running_max`` at once. Its state is ``running``, then
``done`` or ``failed`` with the engine's message. A resize returns as soon as its steps are
planned and runs on in the engine; its action follows the stream's ``reshard`` progress (steps
done of steps planned) until the stream is ACTIVE again. The last ``kept_max`` actions are kept
(in memory: they are this console's view, the engine's state is the truth) and shown on the
pages with their progress, updated live.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

import structlog
import trio

from streamd_client.errors import LimitExceededError, StreamdError

from ...engine import Engine

log = structlog.get_logger(__name__)

ACTION_TIMEOUT_S: Final = 120.0
State = Literal["running", "done", "failed"]


@dataclass(slots=True)
class Action:
    id: int
    kind: str
    stream: str
    title: str
    started_ms: int
    state: State = "running"
    message: str = ""
    done: int = 0
    total: int = 1
    follows_reshard: bool = False  # a resize: the engine runs its steps after the call

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "stream": self.stream,
            "title": self.title,
            "state": self.state,
            "message": self.message,
            "done": self.done,
            "total": self.total,
            "started_ms": self.started_ms,
        }


Call = Callable[[Action], Awaitable[str]]


class Actions:
    def __init__(self, engine: Engine, *, running_max: int = 8, kept_max: int = 100) -> None:
        self.engine = engine
        self.running_max = running_max
        self.kept: deque[Action] = deque(maxlen=kept_max)
        self._ids = itertools.count(1)
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def start(self, kind: str, stream: str, title: str, call: Call) -> Action:
        """Raises LimitExceededError when ``running_max`` actions run already."""
        assert self._nursery is not None, "Actions.run is not running"
        running = sum(1 for a in self.kept if a.state == "running")
        if running >= self.running_max:
            raise LimitExceededError(
                f"{running} console operations are running already; wait for one to end"
            )
        action = Action(next(self._ids), kind, stream, title, int(time.time() * 1000))
        self.kept.appendleft(action)
        self._nursery.start_soon(self._run, action, call)
        log.info("console.action_started", id=action.id, kind=kind, stream=stream)
        return action

    async def _run(self, action: Action, call: Call) -> None:
        try:
            with trio.fail_after(ACTION_TIMEOUT_S):
                action.message = await call(action)
        except StreamdError as exc:
            action.state, action.message = "failed", f"{exc.code}: {exc.message}"[:500]
        except TimeoutError:
            action.state = "failed"
            action.message = f"no answer within {ACTION_TIMEOUT_S:.0f} s (it may still apply)"
        else:
            if not action.follows_reshard:
                action.state, action.done = "done", action.total
        log.info("console.action_ended", id=action.id, state=action.state, message=action.message)

    def refresh(self) -> None:
        """Follow running resizes: their steps done, until the stream is ACTIVE again."""
        for action in self.kept:
            if action.state != "running" or not action.follows_reshard:
                continue
            try:
                meta = self.engine.stream_meta(action.stream)
            except StreamdError:
                action.state, action.message = "failed", "the stream is gone"
                continue
            reshard = meta.reshard
            if reshard is not None and reshard.get("kind") == "resize":
                action.done = int(reshard.get("done", 0))
                action.total = max(1, int(reshard.get("total") or 1))
            elif meta.status == "ACTIVE":
                action.state, action.done = "done", action.total
                action.message = f"{len(meta.open_shards())} open shards"

    def views(self, stream: str | None = None, count_max: int = 20) -> list[dict[str, Any]]:
        self.refresh()
        chosen = [a for a in self.kept if stream is None or a.stream == stream]
        return [a.view() for a in chosen[:count_max]]
