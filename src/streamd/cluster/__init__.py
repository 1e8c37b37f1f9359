"""Cluster mode's data-path side: where each shard lives (shardmap), the watched copies of
metadata it is built from (mirror), and the connections to the other nodes (peers)."""
