"""Token datasets: datatrove-format shards, a provenance table, a manifest, and a memory-flat reader."""
