"""Model registry: versions, deploys, canaries and rollbacks in ClickHouse, artifacts on disk, audited."""
