"""Every path the gateway serves, in one table."""

from __future__ import annotations

from aiohttp import web

from gateway import handlers, probes
from gateway.admin.app import build_admin_app


def add_routes(app: web.Application) -> None:
    # The admin API: a nested app behind its own token (gateway/admin/routes.py has its paths).
    app.add_subapp("/admin", build_admin_app())
    app.router.add_post("/v1/messages", handlers.messages)
    app.router.add_post("/v1/messages/count_tokens", handlers.count_tokens)
    app.router.add_get("/v1/models", handlers.list_models)
    app.router.add_get("/v1/models/{model_id}", handlers.get_model)
    app.router.add_get("/health", handlers.health)
    # For machines, without a client key: Prometheus and Kubernetes probes (gateway/probes.py).
    app.router.add_get("/metrics", probes.metrics)
    app.router.add_get("/healthz", probes.healthz)
    app.router.add_get("/readyz", probes.readyz)


# The operator's paths. With `server.admin_listen` set, the admin listener serves them and
# the probes, and the client listener serves everything but them (gateway/connections.py).
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/health"})


def operator_path(path: str) -> bool:
    return path == "/metrics" or path == "/admin" or path.startswith("/admin/")


def client_listener_serves(path: str) -> bool:
    return not operator_path(path)


def admin_listener_serves(path: str) -> bool:
    return operator_path(path) or path in PROBE_PATHS
