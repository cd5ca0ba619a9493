"""The `gateway` command: serve, check-config, demo, and the operator's teams, keys and usage."""
