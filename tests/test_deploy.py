"""deploy/: what can be checked here. Manifests parse, probe paths and ports match what the
app serves, the Dockerfile and compose file reference files that exist, and the systemd
units and nginx site pass their own tools' checks."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest
import yaml

from tests.helpers import ROOT

pytestmark = pytest.mark.slow  # real servers: pytest -m slow runs these alone

DEPLOY = os.path.join(ROOT, "deploy")


def load_yaml(name: str) -> list[dict]:
    with open(os.path.join(DEPLOY, name)) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def container() -> dict:
    (deployment,) = load_yaml("k8s/deployment.yaml")
    (app,) = deployment["spec"]["template"]["spec"]["containers"]
    return app


@pytest.mark.parametrize("name", ["k8s/deployment.yaml", "k8s/service.yaml", "k8s/hpa.yaml",
                                  "k8s/prometheus-scrape.yaml", "compose.yaml"])
def test_manifests_parse(name: str):
    assert load_yaml(name)


def test_probes_hit_the_paths_the_middleware_serves():
    """Liveness and startup on /livez, readiness on /readyz, scraping on /metrics: the
    middleware's own defaults, on the container's named port."""
    from poolclient import PoolClientMiddleware

    mw = PoolClientMiddleware(lambda e, s: [])
    app = container()
    assert app["livenessProbe"]["httpGet"]["path"] == mw.livez_path
    assert app["startupProbe"]["httpGet"]["path"] == mw.livez_path
    assert app["readinessProbe"]["httpGet"]["path"] == mw.readyz_path
    (deployment,) = load_yaml("k8s/deployment.yaml")
    notes = deployment["spec"]["template"]["metadata"]["annotations"]
    assert notes["prometheus.io/path"] == mw.metrics_path
    port_names = {p["name"]: p["containerPort"] for p in app["ports"]}
    for probe in ("livenessProbe", "startupProbe", "readinessProbe"):
        assert app[probe]["httpGet"]["port"] in port_names
    assert int(notes["prometheus.io/port"]) == port_names["http"]


def test_ports_agree_across_image_deployment_and_service():
    """The image's EXPOSE and BIND, the container port and the Service's target agree."""
    with open(os.path.join(DEPLOY, "Dockerfile")) as f:
        dockerfile = f.read()
    expose = int(re.search(r"^EXPOSE (\d+)", dockerfile, re.M).group(1))
    bind = int(re.search(r"BIND=0\.0\.0\.0:(\d+)", dockerfile).group(1))
    app = container()
    env = {e["name"]: e.get("value") for e in app["env"]}
    assert expose == bind == app["ports"][0]["containerPort"] == int(env["BIND"].split(":")[1])
    (service,) = load_yaml("k8s/service.yaml")
    assert service["spec"]["ports"][0]["targetPort"] == app["ports"][0]["name"]


def test_metrics_directory_is_a_memory_volume_and_shutdown_fits_the_grace_period():
    """PROMETHEUS_MULTIPROC_DIR is mounted from a Memory emptyDir; preStop plus gunicorn's
    graceful timeout (30 s) fit in terminationGracePeriodSeconds."""
    (deployment,) = load_yaml("k8s/deployment.yaml")
    spec = deployment["spec"]["template"]["spec"]
    app = container()
    env = {e["name"]: e.get("value") for e in app["env"]}
    mounts = {m["mountPath"]: m["name"] for m in app["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    metrics_volume = volumes[mounts[env["PROMETHEUS_MULTIPROC_DIR"]]]
    assert metrics_volume["emptyDir"]["medium"] == "Memory"
    pre_stop = app["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert spec["terminationGracePeriodSeconds"] > pre_stop + 30
    assert spec["securityContext"]["runAsNonRoot"] is True


def test_dockerfile_is_multi_stage_non_root_exec_form_and_copies_what_exists():
    with open(os.path.join(DEPLOY, "Dockerfile")) as f:
        lines = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    assert sum(line.startswith("FROM ") for line in lines) >= 2
    user = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert user and user[-1] not in ("0", "root")
    cmd = next(line for line in lines if line.startswith("CMD "))
    assert json.loads(cmd[4:])[:3] == ["gunicorn", "-c", "gunicorn.conf.py"]
    assert "--worker-tmp-dir" in cmd and "/dev/shm" in cmd
    for line in lines:
        if line.startswith("COPY ") and "--from=" not in line:
            for source in line.split()[1:-1]:
                assert os.path.exists(os.path.join(ROOT, source)), source


def test_compose_references_what_exists_and_wires_the_chain():
    (compose,) = load_yaml("compose.yaml")
    services = compose["services"]
    for service in services.values():
        if "build" in service:
            context = os.path.join(DEPLOY, service["build"]["context"])
            assert os.path.exists(os.path.join(context, service["build"]["dockerfile"]))
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert os.path.exists(os.path.join(DEPLOY, source)), source
    app_env = services["app"]["environment"]
    assert app_env["UPSTREAM_URL"].startswith("https://upstream:")
    assert "--name" in services["upstream"]["command"]
    assert services["app"]["depends_on"]["upstream"]["condition"] == "service_healthy"
    with open(os.path.join(DEPLOY, "nginx-compose.conf")) as f:
        assert "server app:8000" in f.read()


def test_grafana_dashboard_is_json():
    with open(os.path.join(DEPLOY, "grafana-dashboard.json")) as f:
        assert json.load(f)["panels"]


def test_systemd_units_pass_systemd_analyze(tmp_path):
    """systemd-analyze verify on the socket and service, installed (as the unit's comment
    says) at this checkout instead of /opt/poolclient."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze is missing: make test installs it (Debian: systemd)")
    for name in ("poolclient.socket", "poolclient.service"):
        with open(os.path.join(DEPLOY, name)) as f:
            (tmp_path / name).write_text(f.read().replace("/opt/poolclient", ROOT))
    result = subprocess.run([tool, "verify", "--man=no", str(tmp_path / "poolclient.socket"),
                             str(tmp_path / "poolclient.service")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_nginx_site_passes_nginx_t(tmp_path):
    """nginx -t on deploy/nginx.conf, included in a minimal main config."""
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx")
                                      else None)
    if nginx is None:
        pytest.fail("nginx is missing: make test installs it (Debian: nginx-light)")
    (tmp_path / "logs").mkdir()
    main = tmp_path / "nginx.conf"
    main.write_text(f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/logs/error.log;\n"
                    f"events {{}}\nhttp {{\n include {DEPLOY}/nginx.conf;\n}}\n")
    result = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(main)],
                            capture_output=True, text=True)
    assert result.returncode == 0 and "syntax is ok" in result.stderr, result.stderr
