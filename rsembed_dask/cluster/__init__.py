"""Where a campaign runs: local clusters, cluster recipes and their checks."""
