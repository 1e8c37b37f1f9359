"""The pure rules of resharding from any node (cluster/reshard_fence.py): one runner, switches
fenced by it and by released seal tokens, and the decision a seal's expired hold takes."""

from __future__ import annotations

from dataclasses import replace

import pytest

from streamd.catalog import StreamMeta
from streamd.cluster import reshard_fence as fence
from streamd.cluster.reshard_fence import Release
from streamd.reshard import Step, apply
from streamd_client.errors import ResourceInUseError

PARENT = "shardId-000000000000"


def updating(runner: str = "node1", reshard_id: str = "r1") -> StreamMeta:
    meta = StreamMeta.new("s", 2, 24, 0)
    progress = {"kind": "split", "target": None, "total": 1, "done": 0}
    return replace(
        meta, status="UPDATING", reshard={**progress, "id": reshard_id, "runner": runner}
    )


def test_begin_progress_names_the_runner_and_a_fresh_id() -> None:
    one = fence.begin_progress({"kind": "resize", "target": 4, "total": 2}, "node2")
    two = fence.begin_progress({"kind": "resize", "target": 4, "total": 2}, "node2")
    assert one["runner"] == "node2" and one["done"] == 0
    assert one["id"] != two["id"]
    assert fence.reshard_id_of(fence.new_token(one["id"])) == one["id"]


def test_a_switch_is_refused_to_another_runner_another_reshard_or_a_released_token() -> None:
    meta = updating()
    token = fence.new_token("r1")
    assert fence.check_switch(meta, "r1", "node1", token) is meta.reshard
    with pytest.raises(fence.NotRunnerError):
        fence.check_switch(meta, "r1", "node2", token)
    with pytest.raises(fence.NotRunnerError):
        fence.check_switch(meta, "r0", "node1", token)
    with pytest.raises(fence.SealReleasedError):
        fence.check_switch(fence.with_released(meta, token), "r1", "node1", token)
    with pytest.raises(ResourceInUseError):
        fence.check_switch(replace(meta, status="ACTIVE", reshard=None), "r1", "node1", token)


def test_released_tokens_are_bounded() -> None:
    meta = updating()
    for n in range(fence.RELEASED_KEEP_MAX + 5):
        meta = fence.with_released(meta, f"r1.{n}")
    assert meta.reshard is not None
    released = meta.reshard["released"]
    assert len(released) == fence.RELEASED_KEEP_MAX
    assert released[-1] == f"r1.{fence.RELEASED_KEEP_MAX + 4}"


def test_an_expired_hold_decides_on_the_document() -> None:
    meta = updating()
    token = fence.new_token("r1")
    assert fence.release_decision(meta, meta.stream_id, PARENT, token) is Release.MARK
    closed = apply(meta, Step("split", (PARENT,), 2**126), (7,))
    assert fence.release_decision(closed, meta.stream_id, PARENT, token) is Release.CLOSED
    assert fence.release_decision(None, meta.stream_id, PARENT, token) is Release.UNSEAL
    assert fence.release_decision(meta, "another-incarnation", PARENT, token) is Release.UNSEAL
    active = replace(meta, status="ACTIVE", reshard=None)
    assert fence.release_decision(active, meta.stream_id, PARENT, token) is Release.UNSEAL
    other_reshard = fence.new_token("r9")
    assert fence.release_decision(meta, meta.stream_id, PARENT, other_reshard) is Release.UNSEAL


def test_a_takeover_only_from_a_runner_that_is_not_live_or_is_this_node() -> None:
    meta = updating(runner="node1")
    live = {"node1", "node2"}.__contains__
    assert not fence.may_take_over(meta, "node2", live)
    with pytest.raises(fence.NotRunnerError):
        fence.taken_over(meta, "node2", live)
    assert fence.may_take_over(meta, "node1", live)  # restarted: resumes its own
    dead = {"node2"}.__contains__
    taken = fence.taken_over(meta, "node2", dead)
    assert taken.reshard is not None and taken.reshard["runner"] == "node2"
    assert taken.reshard["id"] == "r1"  # the same reshard goes on: only the runner changes
    assert not fence.may_take_over(replace(meta, status="ACTIVE", reshard=None), "node2", dead)
    with pytest.raises(ResourceInUseError):
        fence.taken_over(replace(meta, status="ACTIVE", reshard=None), "node2", dead)
    no_runner = replace(meta, reshard={"kind": "resize", "target": 4, "total": 2, "done": 1})
    assert fence.may_take_over(no_runner, "node2", live)
