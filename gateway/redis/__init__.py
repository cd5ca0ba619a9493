"""Connections to Redis: the clients the store uses, and the pipelined one the limiter uses."""
