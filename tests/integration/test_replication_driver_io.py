"""Three replica drivers over real FileLogStores (real fsync), in one process and over TCP."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamd.storage.logstore import make_batch
from streamd.testing.replication_rig import replica_rig
from streamd_client.errors import NotLeaderError


@pytest.mark.parametrize("tcp", [False, True])
async def test_commit_failover_and_catch_up(tmp_path: Path, tcp: bool) -> None:
    async with replica_rig(tmp_path, tcp=tcp) as rig:
        leader = await rig.elect(0, 1)
        committed = [await leader.write(make_batch(0, 1, 0, b"a%d" % k)) for k in range(20)]
        batches, hw = await leader.read(0, 100)
        assert all(b.next_offset <= hw for b in batches)
        with pytest.raises(NotLeaderError):
            await rig.driver(1).write(make_batch(0, 1, 0, b"no"))
        await rig.kill(2)  # a lagging follower: writes still commit with 2 of 3
        committed += [await leader.write(make_batch(0, 1, 0, b"b%d" % k)) for k in range(10)]
        await rig.kill(0)  # the leader dies; another takes epoch 2
        await rig.start(2)
        new = await rig.elect(1, 2)
        got = []
        offset = 0
        while True:
            batches, hw = await new.read(offset, 100)
            if not batches:
                break
            got += batches
            offset = batches[-1].next_offset
        offsets = {b.base_offset for b in got}
        assert all(done.base_offset in offsets for done in committed)
        await new.write(make_batch(0, 1, 0, b"after"))
        follower = rig.driver(2)
        assert await follower.wait_for_hw(new.hw - 1, 5.0) >= new.hw
        assert follower.log_end >= new.hw
