"""``cluster status``: nodes, liveness, shards and leaders per node (pure summary and text)."""

from __future__ import annotations

from streamd.controller.status import render, summarize
from streamd.meta.keys import NodeRegistration, ShardAssignment


def test_a_node_that_shards_name_but_that_is_not_registered_shows_as_not_live() -> None:
    regs = [NodeRegistration(n, f"h{n}:7071", f"h{n}:4571", 0, "0.1.0") for n in ["n1", "n2"]]
    shards = [
        ShardAssignment("s", "sh0", 1, ("n1",), "n1", 1, "ok"),
        ShardAssignment("s", "sh1", 1, ("n2",), "n2", 1, "ok"),
        ShardAssignment("s", "sh2", 1, ("n3",), None, 1, "unavailable"),
        ShardAssignment("s", "sh3", 2, ("n1", "n2"), "n1", 2, "ok"),
        ShardAssignment("s", "sh4", 3),
    ]
    status = summarize("c1", "n2", regs, shards)
    rows = {n.node_id: (n.live, n.replicas, n.leaders, n.controller) for n in status.nodes}
    assert rows == {
        "n1": (True, 2, 2, False),
        "n2": (True, 2, 1, True),
        "n3": (False, 1, 0, False),
    }
    assert (status.shards, status.shards_unavailable, status.shards_unassigned) == (5, 1, 1)
    text = render(status)
    assert "controller n2" in text and "1 unavailable" in text
    assert [line.split()[:2] for line in text.splitlines()[3:]] == [
        ["n1", "yes"],
        ["n2", "*"],
        ["n3", "NO"],
    ]
