"""Command-line tools: the `dfs` console script, local ZooKeeper and cluster management,
fsck, status and benchmarks. Imports `dfs`; starts storage nodes and mounts as processes."""
