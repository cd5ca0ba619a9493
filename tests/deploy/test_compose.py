"""deploy/compose.yaml: valid against the Compose Specification's schema (bundled by the
PyPI package check-jsonschema, so offline), every file it mounts or builds from exists,
and the services agree on names and ports with the image, the gateway's config,
Prometheus and Grafana."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.deploy.files import (
    DASHBOARD,
    DEPLOY,
    RULES,
    compose_required,
    dockerfile_instructions,
    dockerfile_stages,
    load_yaml,
    required_env,
    tool,
)

COMPOSE = DEPLOY / "compose.yaml"
# Written elsewhere in issue 9: their absence skips the checks that need them.
NOT_MINE = {RULES, DASHBOARD}


def _compose() -> dict:
    return load_yaml(COMPOSE)


def _services() -> dict:
    return _compose()["services"]


def _bind_mounts(service: dict) -> list[tuple[str, str]]:
    mounts = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append((source, target))
    return mounts


def _published(spec: str) -> tuple[str, str, str]:
    """A `ports:` entry as (host address, host port or range, container port)."""
    parts = spec.split(":")
    assert len(parts) == 3, f"{spec}: publish on an explicit address (127.0.0.1:HOST:CONTAINER)"
    return parts[0], parts[1], parts[2]


def _expose() -> int:
    final = dockerfile_stages(dockerfile_instructions())[-1]
    return int([a for k, a in final["instructions"] if k == "EXPOSE"][-1])


def test_compose_file_matches_the_compose_specification():
    checker = tool("check-jsonschema", "pip install -e '.[dev]'")
    result = subprocess.run(
        [checker, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_services_the_issue_asks_for():
    services = _services()
    assert set(services) == {"gateway", "redis", "fake-upstream", "prometheus", "grafana"}
    assert services["gateway"]["deploy"]["replicas"] == 2
    assert services["fake-upstream"]["command"][:3] == ["fake-upstream", "--host", "0.0.0.0"]
    # A read-only root, with /tmp writable: `--workers` keeps its metrics files there.
    assert services["gateway"]["read_only"] is True and "/tmp" in services["gateway"]["tmpfs"]


def test_every_image_is_pinned():
    for name, service in _services().items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest" and re.search(r"\d", tag), f"{name}: {image} is not pinned"


def test_builds_from_the_dockerfile_in_this_repository():
    for name, service in _services().items():
        if "build" not in service:
            continue
        context = (DEPLOY / service["build"]["context"]).resolve()
        assert (context / service["build"]["dockerfile"]).resolve() == (DEPLOY / "Dockerfile").resolve(), name
        assert (context / ".dockerignore").exists(), name


def test_every_mounted_file_exists():
    missing_elsewhere = []
    for name, service in _services().items():
        for source, _ in _bind_mounts(service):
            path = (DEPLOY / source).resolve()
            if path in NOT_MINE and not path.exists():
                missing_elsewhere.append(path.relative_to(DEPLOY.parent))
                continue
            assert path.exists(), f"{name} mounts {source}, which does not exist"
    if missing_elsewhere:
        pytest.skip(f"not written yet (another part of issue 9): {', '.join(map(str, missing_elsewhere))}")


def test_ports_agree():
    services = _services()
    port = _expose()
    gateway_config = load_yaml(DEPLOY / "gateway.compose.yaml")
    assert gateway_config["server"]["port"] == port
    assert all(_published(p)[2] == str(port) for p in services["gateway"]["ports"])
    published = _published(services["gateway"]["ports"][0])[1]
    first, _, last = published.partition("-")
    assert int(last or first) - int(first) + 1 == services["gateway"]["deploy"]["replicas"], "one host port per replica"

    # Prometheus finds the gateway replicas by the service's name, on the container port.
    scrape = {job["job_name"]: job for job in load_yaml(DEPLOY / "prometheus.yml")["scrape_configs"]}["gateway"]
    assert scrape["metrics_path"] == "/metrics"
    assert scrape["dns_sd_configs"] == [{"names": ["gateway"], "type": "A", "port": port, "refresh_interval": "15s"}]

    # The gateway reaches the fake upstream and Redis by service name, on the ports they listen on.
    upstream = services["fake-upstream"]["command"]
    upstream_port = upstream[upstream.index("--port") + 1]
    for name, backend in gateway_config["backends"].items():
        for key in ("base_url", "tokenize_url"):
            url = backend.get(key, "")
            if "fake-upstream" in url:
                assert url.startswith(f"http://fake-upstream:{upstream_port}"), f"{name}.{key}: {url}"
    assert f"{upstream_port})" in services["fake-upstream"]["healthcheck"]["test"][-1], (
        "the healthcheck knocks on that port"
    )
    assert services["gateway"]["environment"]["REDIS_URL"].startswith("redis://redis:6379/")

    # Grafana reads Prometheus at the port Prometheus publishes.
    datasource = load_yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yaml")["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"
    assert [_published(p)[1:] for p in services["prometheus"]["ports"]] == [("9090", "9090")]

    host_ports = [_published(p)[1] for s in services.values() for p in s.get("ports", [])]
    assert len(host_ports) == len(set(host_ports)), "two services publish the same host port"


def test_every_port_is_published_on_loopback_only():
    """Docker publishes on every interface unless told otherwise: the demo's gateways,
    Prometheus and Grafana stay on this machine."""
    for name, service in _services().items():
        for spec in service.get("ports", []):
            assert _published(spec)[0] == "127.0.0.1", f"{name}: {spec} is published beyond this machine"


# Secrets a service gets from the environment: none may fall back to a value written here.
SECRET_NAME = re.compile(r"(TOKEN|KEY|PASSWORD)$")
REQUIRED_SECRETS = {"GATEWAY_ADMIN_TOKEN", "GATEWAY_DEMO_KEY", "GRAFANA_ADMIN_PASSWORD"}
COMPOSE_SECRET = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(:\?[^}]+|:-)\}")


def test_secrets_have_no_defaults():
    """The admin token, the demo key and Grafana's password are `${NAME:?...}`: compose
    refuses to start without them, rather than run with a string published here. A
    provider key may be left empty (`${NAME:-}`: that backend answers 500), never given
    a default."""
    required = set()
    for name, service in _services().items():
        for variable, value in (service.get("environment") or {}).items():
            value = str(value)
            required |= compose_required(value)
            if SECRET_NAME.search(variable):
                assert COMPOSE_SECRET.fullmatch(value), (
                    f"{name}: {variable}: {value} (a secret is ${{NAME:?message}}, or ${{NAME:-}} to leave it empty)"
                )
    assert REQUIRED_SECRETS <= required


def test_the_gateway_gets_every_variable_its_config_needs():
    config = DEPLOY / "gateway.compose.yaml"
    mounts = dict(_bind_mounts(_services()["gateway"]))
    assert mounts["./gateway.compose.yaml"] == "/etc/gateway/config.yaml"
    environment = _services()["gateway"]["environment"]
    missing = required_env(config.read_text()) - set(environment)
    assert not missing, f"gateway.compose.yaml needs {sorted(missing)}, which compose.yaml does not set"


def test_prometheus_loads_the_rules_beside_its_config():
    """prometheus.yml names its rule file relative to itself; compose mounts both into the
    same directory, so the path resolves in the container and for promtool alike."""
    config = load_yaml(DEPLOY / "prometheus.yml")
    mounts = dict(_bind_mounts(_services()["prometheus"]))
    config_target = mounts["./prometheus.yml"]
    assert f"--config.file={config_target}" in _services()["prometheus"]["command"]
    directory = config_target.rsplit("/", 1)[0]
    for rule_file in config["rule_files"]:
        assert not rule_file.startswith("/")
        source = next(s for s, t in mounts.items() if t == f"{directory}/{rule_file}")
        assert (DEPLOY / source).resolve() == (DEPLOY / rule_file).resolve() == RULES


def test_grafana_provisions_the_datasource_and_the_dashboard():
    grafana = _services()["grafana"]
    mounts = dict(_bind_mounts(grafana))
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = load_yaml(DEPLOY / "grafana/provisioning/dashboards/gateway.yaml")["providers"][0]
    dashboard_target = mounts["./grafana-dashboard.json"]
    assert dashboard_target.rsplit("/", 1)[0] == provider["options"]["path"]
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == dashboard_target
    datasources = load_yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yaml")["datasources"]
    assert [(d["type"], d["uid"]) for d in datasources] == [("prometheus", "prometheus")]


def test_the_dashboard_can_be_provisioned():
    """A provisioned dashboard gets no import dialog: `__inputs` placeholders
    (${DS_PROMETHEUS}) would stay unresolved. It must name the provisioned datasource
    (uid `prometheus`) or a datasource template variable."""
    if not DASHBOARD.exists():
        pytest.skip(f"{DASHBOARD.relative_to(DEPLOY.parent)} is not written yet (another part of issue 9)")
    dashboard = json.loads(DASHBOARD.read_text())
    assert "__inputs" not in dashboard, "exported 'for sharing externally': provisioning cannot fill __inputs"
    uids = set()

    def walk(value):
        if isinstance(value, dict):
            source = value.get("datasource")
            if isinstance(source, dict) and "uid" in source:
                uids.add(source["uid"])
            elif isinstance(source, str):
                uids.add(source)
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(dashboard)
    unknown = {
        uid
        for uid in uids
        if uid not in ("prometheus", "Prometheus", "-- Grafana --", "grafana") and not uid.startswith("$")
    }
    assert not unknown, f"datasources Grafana will not have: {sorted(unknown)}"
