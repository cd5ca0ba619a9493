"""The paths deploy/ points machines at are served by the gateway, without a client key:
/healthz (Docker HEALTHCHECK, liveness and startup probes), /readyz (readiness probe) and
/metrics (Prometheus, the ServiceMonitor)."""

from __future__ import annotations

import json

import aiohttp

from tests.deploy.files import DEPLOY, ROOT, load_yaml, manifest
from tests.support.processes import start_gateway_process


def _paths() -> dict[str, str]:
    container = manifest("Deployment")["spec"]["template"]["spec"]["containers"][0]
    scrape = {job["job_name"]: job for job in load_yaml(DEPLOY / "prometheus.yml")["scrape_configs"]}["gateway"]
    return {
        "livenessProbe": container["livenessProbe"]["httpGet"]["path"],
        "startupProbe": container["startupProbe"]["httpGet"]["path"],
        "readinessProbe": container["readinessProbe"]["httpGet"]["path"],
        "ServiceMonitor": manifest("ServiceMonitor")["spec"]["endpoints"][0]["path"],
        "prometheus.yml": scrape["metrics_path"],
    }


async def test_every_probe_and_scrape_path_answers_200(tmp_path):
    gateway = await start_gateway_process((ROOT / "config.example.yaml").read_text(), tmp_path)
    try:
        async with aiohttp.ClientSession() as session:
            for who, path in _paths().items():
                async with session.get(gateway.url + path) as response:
                    body = await response.text()
                    assert response.status == 200, f"{who} → GET {path}: {response.status} {body[:300]}"
                    if path == "/metrics":
                        assert response.content_type.startswith(("text/plain", "application/openmetrics-text"))
    finally:
        await gateway.stop()


async def test_gateway_serve_writes_one_json_access_line_per_request_to_stderr(tmp_path):
    gateway = await start_gateway_process((ROOT / "config.example.yaml").read_text(), tmp_path)
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(3):
                async with session.get(gateway.url + "/v1/models") as response:  # no key: 401
                    assert response.status == 401
    finally:
        await gateway.stop()
    lines = [json.loads(line) for line in gateway.log.read_text().splitlines() if line.startswith("{")]
    assert [(line["path"], line["status"]) for line in lines] == [("/v1/models", 401)] * 3
