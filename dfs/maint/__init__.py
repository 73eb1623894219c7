"""Maintenance shared by the repair leader (nodes/leader/), gc, `dfs status`, `dfs drain` and fsck."""
