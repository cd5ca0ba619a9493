"""deploy/kubernetes: every object validates against the Kubernetes API's own schemas
(offline, with the schemas bundled by the PyPI package kubernetes-validate), the
ServiceMonitor against tests/deploy/schemas/servicemonitor-v1.json, and the objects agree
with one another, with the image and with the gateway's configuration."""

from __future__ import annotations

import copy
import json
import subprocess

import pytest
import yaml

from tests.deploy.files import (
    DEPLOY,
    KUBERNETES,
    SCHEMAS,
    dockerfile_instructions,
    dockerfile_stages,
    load_yaml,
    manifest,
    manifests,
    required_env,
    tool,
)

# Custom resources, not in the Kubernetes API's schemas: test_servicemonitor_matches_its_schema checks it.
NOT_CORE = {"ServiceMonitor"}
OLDEST_KUBERNETES = "1.30"  # the oldest minor these manifests are meant for


def _kubernetes_validate():
    try:
        import kubernetes_validate
        from kubernetes_validate import utils
    except ImportError:
        pytest.skip("kubernetes-validate is not installed (pip install -e '.[dev]')")
    return kubernetes_validate, utils


def _versions() -> list[str]:
    """The oldest supported minor the package bundles schemas for, and its newest."""
    _, utils = _kubernetes_validate()
    bundled = utils.all_versions()
    oldest = [v for v in bundled if tuple(map(int, v.split(".")[:2])) >= tuple(map(int, OLDEST_KUBERNETES.split(".")))]
    return sorted({oldest[0], bundled[-1]}, key=lambda v: tuple(map(int, v.split("."))))


def _container(deployment: dict | None = None) -> dict:
    deployment = deployment or manifest("Deployment")
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


@pytest.mark.parametrize(
    "path", sorted(p for p, obj in manifests().items() if obj["kind"] not in NOT_CORE), ids=lambda p: p.name
)
def test_manifest_validates_against_the_kubernetes_schemas(path):
    kubernetes_validate, _ = _kubernetes_validate()
    obj = manifests()[path]
    for version in _versions():
        try:
            # strict: unknown fields are errors, as kubectl's server-side field validation makes them.
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{path.name} against Kubernetes {version}: {where}: {exc.message}")


def test_the_schema_validator_refuses_a_broken_deployment():
    """Guards the test above against a validator that accepts anything (a missing schema
    set, a strict flag ignored): a misspelt field and a wrong type must both fail."""
    kubernetes_validate, _ = _kubernetes_validate()
    version = _versions()[-1]
    typo = copy.deepcopy(manifest("Deployment"))
    _container(typo)["securityContext"]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, version, strict=True)
    wrong_type = copy.deepcopy(manifest("Deployment"))
    _container(wrong_type)["ports"][0]["containerPort"] = "eighty"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, version, strict=True)


def test_servicemonitor_matches_its_schema(tmp_path):
    checker = tool("check-jsonschema", "pip install -e '.[dev]'")
    schema = SCHEMAS / "servicemonitor-v1.json"
    result = subprocess.run(
        [checker, "--schemafile", str(schema), str(KUBERNETES / "servicemonitor.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # And the schema does refuse what the operator would: no selector, a misspelt field.
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        "apiVersion: monitoring.coreos.com/v1\nkind: ServiceMonitor\nmetadata: {name: x}\n"
        "spec:\n  endpoints: [{port: http, intervall: 15s}]\n"
    )
    result = subprocess.run(
        [checker, "--schemafile", str(schema), str(broken)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "selector" in result.stdout and "intervall" in result.stdout, result.stdout


def test_kustomization_lists_every_object_but_the_secret():
    kustomization = load_yaml(KUBERNETES / "kustomization.yaml")
    listed = set(kustomization["resources"])
    on_disk = {path.name for path in manifests()}
    # The Secret holds placeholders: applying it with the rest would overwrite the real one.
    assert listed == on_disk - {"secret.yaml"}
    assert manifest("Secret")["metadata"]["name"] == "gateway-secrets"


def test_every_kind_the_issue_asks_for_is_there():
    kinds = {(obj["apiVersion"], obj["kind"]) for obj in manifests().values()}
    assert kinds == {
        ("apps/v1", "Deployment"),
        ("v1", "Service"),
        ("autoscaling/v2", "HorizontalPodAutoscaler"),
        ("policy/v1", "PodDisruptionBudget"),
        ("v1", "ConfigMap"),
        ("v1", "Secret"),
        ("monitoring.coreos.com/v1", "ServiceMonitor"),
    }


def _matches(selector: dict, labels: dict) -> bool:
    assert set(selector) == {"matchLabels"}, "only matchLabels selectors are used here"
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


def test_objects_refer_to_one_another():
    deployment, service = manifest("Deployment"), manifest("Service")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    container = _container()
    port_names = {p["name"]: p["containerPort"] for p in container["ports"]}

    assert _matches(deployment["spec"]["selector"], pod_labels)
    assert all(pod_labels.get(k) == v for k, v in service["spec"]["selector"].items()), "the Service selects the pods"
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in port_names, f"Service port {port['name']} targets a port the container names"

    assert _matches(manifest("PodDisruptionBudget")["spec"]["selector"], pod_labels)
    target = manifest("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        "apps/v1",
        "Deployment",
        deployment["metadata"]["name"],
    )

    monitor = manifest("ServiceMonitor")["spec"]
    assert _matches(monitor["selector"], service["metadata"]["labels"]), "the ServiceMonitor selects the Service"
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["endpoints"]:
        assert endpoint["port"] in service_ports
        assert endpoint["path"] == "/metrics"

    config_map, secret = manifest("ConfigMap"), manifest("Secret")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert set(mounts) <= set(volumes)
    config_volume = next(v for v in volumes.values() if "configMap" in v)
    assert config_volume["configMap"]["name"] == config_map["metadata"]["name"]
    for item in config_volume["configMap"]["items"]:
        assert item["key"] in config_map["data"]
    config_path = mounts[config_volume["name"]]["mountPath"] + "/" + config_volume["configMap"]["items"][0]["path"]
    args = container["args"]
    assert args[args.index("--config") + 1] == config_path, "--config names the mounted ConfigMap key"

    for env in container["env"]:
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["name"] == secret["metadata"]["name"]
            assert ref["key"] in secret["stringData"], f"{env['name']}: the Secret has no key {ref['key']}"


def test_every_variable_the_config_needs_comes_from_the_deployment():
    """A ${NAME} without a default that the pod does not set stops the gateway at start."""
    config_text = manifest("ConfigMap")["data"]["config.yaml"]
    provided = {env["name"] for env in _container()["env"]}
    missing = required_env(config_text) - provided
    assert not missing, f"configmap.yaml needs {sorted(missing)}, which deployment.yaml does not set"


def test_the_secret_holds_only_marked_placeholders():
    secret = manifest("Secret")
    assert "data" not in secret, "stringData only, so the placeholders stay readable"
    for key, value in secret["stringData"].items():
        assert "REPLACE_ME" in value, f"{key}: a real-looking value in a committed Secret"


def test_the_pod_runs_unprivileged_on_a_read_only_root():
    pod = manifest("Deployment")["spec"]["template"]["spec"]
    container = _container()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    # The same uid as the image's USER, so the two never disagree about who owns what.
    final = dockerfile_stages(dockerfile_instructions())[-1]
    user = [arguments for keyword, arguments in final["instructions"] if keyword == "USER"][-1]
    assert str(pod["securityContext"]["runAsUser"]) == user.split(":")[0]
    # Writable scratch space only where mounted.
    assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])


def test_probes_resources_and_draining():
    deployment = manifest("Deployment")
    pod, container = deployment["spec"]["template"]["spec"], _container()
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), f"resources.{kind} needs cpu and memory"
    # Workers: one per core of the pod's CPU limit (the default would count the node's).
    args = container["args"]
    assert args[args.index("--workers") + 1] == str(container["resources"]["limits"]["cpu"])
    # The HPA owns the replica count.
    assert "replicas" not in deployment["spec"]
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    # preStop keeps the pod serving while its endpoint is withdrawn; the grace period must
    # leave the gateway time to drain its streams after that.
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] >= int(pre_stop[1]) + 60
    assert manifest("HorizontalPodAutoscaler")["spec"]["minReplicas"] >= 2, "a PDB of maxUnavailable 1 needs two pods"


def test_the_image_is_pinned():
    image = _container()["image"]
    name, _, tag = image.rpartition(":")
    assert name and tag and tag != "latest", f"{image}: pin a version"
    assert "@sha256:" in image or any(ch.isdigit() for ch in tag)


def test_the_container_runs_the_images_command():
    """The Deployment's args are the image's CMD plus --workers (deploy/Dockerfile)."""
    instructions = dockerfile_stages(dockerfile_instructions())[-1]["instructions"]
    cmd = json.loads([a for k, a in instructions if k == "CMD"][-1])
    args = _container()["args"]
    assert args[: len(cmd)] == cmd
    assert "command" not in _container(), "the image's ENTRYPOINT (gateway) stays"
    assert (DEPLOY / "Dockerfile").exists()


def test_admin_and_metrics_have_a_port_of_their_own():
    """The ConfigMap's `server.admin_listen` is the container's `admin` port; the Service
    carries it beside `http` and the ServiceMonitor scrapes it (the API's port answers
    /metrics and /admin 404), so an Ingress routed to `http` cannot expose either."""
    server = yaml.safe_load(manifest("ConfigMap")["data"]["config.yaml"])["server"]
    host, _, port = server["admin_listen"].rpartition(":")
    assert host == "0.0.0.0" and int(port) != server["port"]
    ports = {p["name"]: p["containerPort"] for p in _container()["ports"]}
    assert ports == {"http": server["port"], "admin": int(port)}
    service = {p["name"]: p["targetPort"] for p in manifest("Service")["spec"]["ports"]}
    assert service == {"http": "http", "admin": "admin"}
    assert [e["port"] for e in manifest("ServiceMonitor")["spec"]["endpoints"]] == ["admin"]
