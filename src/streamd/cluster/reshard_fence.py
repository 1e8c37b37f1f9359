"""Fencing of a reshard run from any node of a cluster: one runner, seals that cannot outlive it.

Pure functions on the stream document (no I/O, no trio); the engine calls them inside catalog
compare-and-swaps, so each decision is taken on the document as it is in etcd, atomically with
its write. docs/cluster.md ("Resharding from any node") says why each rule is there.

The reshard progress (``StreamMeta.reshard``, written at begin) carries, in cluster mode:

- ``id``: a random id of this reshard (a later reshard of the stream has another);
- ``runner``: the node id running it. Every step's switch compares it; a node takes a reshard
  over only with a compare-and-swap that rewrites it, and only while the runner is not live;
- ``released``: the seal tokens (``<id>.<nonce>``, one per step attempt) that a sealing node
  gave up after its hold expired. A switch whose token is listed is refused, so a node that
  unseals a parent by itself can never be contradicted by a switch that closes it.

Decisions when a seal's hold expires (``release_decision``), on the document read from etcd:

- *closed* (the shard is closed): ``CLOSED``, stay sealed and adopt the close; the switch
  happened.
- *marked* (UPDATING, the same reshard id, the shard open): ``MARK`` the token released in the
  compare-and-swap that read the document, then unseal; the switch may still come, so it is
  fenced first.
- *other* (the stream gone or another incarnation, not UPDATING, another reshard): ``UNSEAL``;
  no switch with this token can apply any more.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import replace
from enum import Enum
from typing import Any, Final

from streamd_client.errors import ResourceInUseError

from ..catalog import StreamMeta

RELEASED_KEEP_MAX: Final = 16  # tokens kept in ``released``: only the current step's matter


class NotRunnerError(ResourceInUseError):
    """This node no longer runs the stream's reshard (another node took it over, or the
    reshard it ran ended). Crosses the wire as RESOURCE_IN_USE."""


class SealReleasedError(ResourceInUseError):
    """A parent's seal of this step attempt expired and its node unsealed it: the step is
    refused and may be tried again with a fresh seal."""


class Release(Enum):
    CLOSED = "closed"
    MARK = "mark"
    UNSEAL = "unseal"


def new_reshard_id() -> str:
    return secrets.token_hex(6)


def new_token(reshard_id: str) -> str:
    """A seal token for one attempt of one step of reshard ``reshard_id``."""
    return f"{reshard_id}.{secrets.token_hex(4)}"


def reshard_id_of(token: str) -> str:
    return token.partition(".")[0]


def begin_progress(progress: dict[str, Any], runner: str) -> dict[str, Any]:
    """The progress a reshard begins with in cluster mode."""
    return {**progress, "done": 0, "id": new_reshard_id(), "runner": runner}


def runner_of(meta: StreamMeta) -> str | None:
    """The node running the stream's reshard (None: none recorded, or not UPDATING)."""
    if meta.status != "UPDATING" or meta.reshard is None:
        return None
    runner = meta.reshard.get("runner")
    return runner if isinstance(runner, str) else None


def check_runner(meta: StreamMeta, reshard_id: str, runner: str) -> dict[str, Any]:
    """The progress of ``meta`` if ``runner`` still runs reshard ``reshard_id`` of it.

    Raises ResourceInUseError (not resharding any more), NotRunnerError (another reshard, or
    another runner)."""
    if meta.status != "UPDATING" or meta.reshard is None:
        raise ResourceInUseError(f"stream {meta.name!r} is no longer resharding")
    progress = meta.reshard
    if progress.get("id") != reshard_id or progress.get("runner") != runner:
        raise NotRunnerError(
            f"node {runner} no longer runs the reshard of stream {meta.name!r} "
            f"(runner now: {progress.get('runner')})",
            runner=progress.get("runner"),
        )
    return progress


def check_switch(meta: StreamMeta, reshard_id: str, runner: str, token: str) -> dict[str, Any]:
    """``check_runner``, and the step attempt's seals still hold. Raises as check_runner,
    SealReleasedError."""
    progress = check_runner(meta, reshard_id, runner)
    if token in progress.get("released", ()):
        raise SealReleasedError(
            f"a parent of this step of stream {meta.name!r} was unsealed after its hold expired"
        )
    return progress


def release_decision(meta: StreamMeta | None, stream_id: str, shard_id: str, token: str) -> Release:
    """What a node holding a seal of ``shard_id`` under ``token`` does when the hold expires
    (the table in the module docstring)."""
    if meta is None or meta.stream_id != stream_id:
        return Release.UNSEAL
    shard = meta.shard(shard_id)
    if shard is not None and not shard.is_open:
        return Release.CLOSED
    if shard is None or meta.status != "UPDATING" or meta.reshard is None:
        return Release.UNSEAL
    if meta.reshard.get("id") != reshard_id_of(token):
        return Release.UNSEAL
    return Release.MARK


def with_released(meta: StreamMeta, token: str) -> StreamMeta:
    """``meta`` with ``token`` listed as released (the last RELEASED_KEEP_MAX kept)."""
    assert meta.reshard is not None
    released = [t for t in meta.reshard.get("released", ()) if t != token] + [token]
    return replace(meta, reshard={**meta.reshard, "released": released[-RELEASED_KEEP_MAX:]})


def may_take_over(meta: StreamMeta, me: str, live: Callable[[str], bool]) -> bool:
    """Whether node ``me`` may take the stream's reshard over: it is UPDATING and its runner is
    ``me`` (a restarted node resumes its own) or not live (no runner recorded counts as not
    live: a document from before runners were recorded)."""
    if meta.status != "UPDATING" or meta.reshard is None:
        return False
    runner = runner_of(meta)
    return runner is None or runner == me or not live(runner)


def taken_over(meta: StreamMeta, me: str, live: Callable[[str], bool]) -> StreamMeta:
    """The document with ``me`` as the runner. Raises NotRunnerError when it may not
    (``may_take_over``), ResourceInUseError when the stream is not resharding."""
    if meta.status != "UPDATING" or meta.reshard is None:
        raise ResourceInUseError(f"stream {meta.name!r} is no longer resharding")
    if not may_take_over(meta, me, live):
        raise NotRunnerError(
            f"the reshard of stream {meta.name!r} runs on live node {runner_of(meta)}",
            runner=runner_of(meta),
        )
    progress = dict(meta.reshard)
    progress.setdefault("id", new_reshard_id())
    progress["runner"] = me
    return replace(meta, reshard=progress)
