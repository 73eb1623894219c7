"""The FUSE client: `python -m mount` (or `dfs mount`) mounts a dfs filesystem."""
