"""Where a deployment runs: the local harness, and (later) Azure ML managed online endpoints."""
