"""The compose stack (compose/): `docker-compose config` accepts it, its services reference
images, ports and volumes consistently, waxflow accepts the configuration it ships, and the
Prometheus and Grafana provisioning point at what the services serve."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest
import yaml

from flows import dashboards

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_DIR = ROOT / "compose"
COMPOSE = COMPOSE_DIR / "docker-compose.yml"
SERVICES = {"kafka", "clickhouse", "inlet", "outlet", "prometheus", "grafana", "demo-exporter"}
WAXFLOW_SERVICES = ("inlet", "outlet")


def dotenv() -> dict[str, str]:
    values = {}
    for line in (COMPOSE_DIR / ".env").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


@pytest.fixture(scope="module")
def stack() -> dict:
    """The compose file as docker-compose resolves it (compose/.env interpolated)."""
    if not shutil.which("docker-compose"):
        pytest.skip(reason="docker-compose is not installed (scripts/apt-packages.txt)")
    done = subprocess.run(["docker-compose", "-f", str(COMPOSE), "config"], capture_output=True, text=True,
                          timeout=120, env={k: v for k, v in os.environ.items() if k not in dotenv()})
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def settings_of(stack: dict, service: str) -> dict:
    """`waxflow config check --dump` of compose/dataflows.yaml with the service's environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAXFLOW")}
    env.update({k: str(v) for k, v in (stack["services"][service].get("environment") or {}).items()})
    done = subprocess.run([sys.executable, "-m", "flows.cli", "-c", str(COMPOSE_DIR / "dataflows.yaml"),
                           "config", "check", "--dump"], capture_output=True, text=True, env=env, timeout=60,
                          cwd=ROOT)
    assert done.returncode == 0, f"{service}: {done.stdout}{done.stderr}"
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def settings(stack: dict) -> dict[str, dict]:
    """The resolved waxflow configuration of each waxflow service."""
    return {name: settings_of(stack, name) for name in WAXFLOW_SERVICES}


def mounts(service: dict) -> dict[str, tuple[str, str]]:
    """target → (type, source) of a resolved service's volumes."""
    out = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            out[volume["target"]] = (volume["type"], volume.get("source", ""))
        else:
            source, target = volume.split(":")[:2]
            out[target] = ("bind" if source.startswith("/") else "volume", source)
    return out


def ports(service: dict) -> list[dict]:
    """A resolved service's published ports in long form (docker-compose 1.x prints ports with a
    host address in the short form "127.0.0.1:8123:8123/tcp")."""
    out = []
    for port in service.get("ports", []):
        if isinstance(port, str):
            spec, _, protocol = port.partition("/")
            *host, published, target = spec.split(":")
            port = {"host_ip": host[0] if host else "", "published": published, "target": int(target),
                    "protocol": protocol or "tcp"}
        out.append({"protocol": "tcp", **port, "published": int(port["published"])})
    return out


def test_compose_file_validates_with_every_service(stack: dict) -> None:
    assert set(stack["services"]) == SERVICES


def test_every_service_restarts_and_has_a_healthcheck(stack: dict) -> None:
    for name, service in stack["services"].items():
        assert service.get("restart") == "unless-stopped", name
        assert service.get("healthcheck", {}).get("test"), name


def test_images_are_pinned_in_env(stack: dict) -> None:
    env = dotenv()
    for name, service in stack["services"].items():
        image = service["image"]
        if "build" in service:  # built from this repository
            assert (Path(service["build"]["context"]) / service["build"]["dockerfile"]).exists(), name
            continue
        assert image in env.values(), f"{name}: {image} not set in compose/.env"
        assert re.fullmatch(r"[\w./-]+:\w[\w.-]*", image) and not image.endswith(":latest"), image
    raw = COMPOSE.read_text()
    used = set(re.findall(r"\$\{(\w+)", raw))
    assert used <= set(env), f"variables missing from compose/.env: {used - set(env)}"


def test_volumes_are_declared_and_data_is_kept(stack: dict) -> None:
    declared = set(stack.get("volumes", {}))
    used = set()
    for name, service in stack["services"].items():
        for target, (kind, source) in mounts(service).items():
            if kind == "volume":
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
            elif source.startswith(str(ROOT)):
                assert Path(source).exists(), f"{name}: {source} does not exist"
    assert used == declared, f"declared but unused: {declared - used}"
    data = {"kafka": "/var/lib/kafka/data", "clickhouse": "/var/lib/clickhouse", "grafana": "/var/lib/grafana",
            "prometheus": "/prometheus"}
    for name, target in data.items():
        assert mounts(stack["services"][name])[target][0] == "volume", f"{name} keeps its data in a volume"


def test_published_ports_are_unique(stack: dict) -> None:
    seen = set()
    for name, service in stack["services"].items():
        for port in ports(service):
            key = (port["published"], port["protocol"])
            assert key not in seen, f"{name}: port {key} published twice"
            seen.add(key)


def test_waxflow_accepts_the_shipped_configuration(stack: dict, settings: dict) -> None:
    env = dotenv()
    for name in WAXFLOW_SERVICES:
        resolved = settings[name]
        assert resolved["kafka"]["brokers"] == ["kafka:9092"] and "kafka" in stack["services"]
        assert resolved["kafka"]["partitions"] == int(env["KAFKA_PARTITIONS"])
        data_dir = resolved["data_dir"]
        assert mounts(stack["services"][name])[data_dir][0] == "volume", f"{name}: recovery data in a volume"
    outlet = settings["outlet"]
    assert outlet["clickhouse"]["dsn"] == (f"http://{env['CLICKHOUSE_USER']}:{env['CLICKHOUSE_PASSWORD']}"
                                           f"@clickhouse:8123")
    flush = settings["inlet"]["kafka"]["flush_timeout"]
    for name in WAXFLOW_SERVICES:  # a clean stop must not be cut short by SIGKILL
        assert _seconds(stack["services"][name]["stop_grace_period"]) > _seconds(flush), name
    assert stack["services"]["outlet"]["command"] == ["run", "outlet", "-w", env["OUTLET_WORKERS"]]
    assert stack["services"]["inlet"]["command"] == ["run", "inlet", "-w", env["INLET_WORKERS"]]


def test_inlet_publishes_its_listeners(stack: dict, settings: dict) -> None:
    env = dotenv()
    listeners = settings["inlet"]["inlet"]["listeners"]
    published = {p["target"]: p["published"] for p in ports(stack["services"]["inlet"])
                 if p["protocol"] == "udp"}
    assert set(published) == {listener["port"] for listener in listeners}
    assert published == {2055: int(env["NETFLOW_PORT"]), 4739: int(env["IPFIX_PORT"]),
                         6343: int(env["SFLOW_PORT"])}
    inlet = stack["services"]["inlet"]
    assert {"BPF", "NET_ADMIN"} <= set(inlet["cap_add"])
    assert mounts(inlet)["/sys/fs/bpf"][0] == "bind"


def _seconds(duration: str) -> float:
    from flows.settings import parse_duration

    return parse_duration(duration).total_seconds()


def _port(host_port: str) -> int:
    return int(host_port.rpartition(":")[2])


def test_prometheus_scrapes_the_metrics_ports(stack: dict, settings: dict) -> None:
    config = yaml.safe_load((COMPOSE_DIR / "prometheus" / "prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    inlet, outlet = settings["inlet"], settings["outlet"]
    assert targets["waxflow-inlet"] == [f"inlet:{_port(inlet['inlet']['metrics_listen'])}"]
    assert targets["waxflow-outlet"] == [f"outlet:{_port(outlet['api']['listen'])}"]
    assert inlet["inlet"]["metrics_listen"].startswith("0.0.0.0:") and outlet["api"]["listen"].startswith("0.0.0.0:")
    for name, settings_port in (("inlet", _port(inlet["inlet"]["metrics_listen"])),
                                ("outlet", _port(outlet["api"]["listen"]))):
        assert f":{settings_port}/metrics" in " ".join(stack["services"][name]["healthcheck"]["test"])
    prometheus = stack["services"]["prometheus"]
    assert mounts(prometheus)["/etc/prometheus/prometheus.yml"][1] == str(COMPOSE_DIR / "prometheus" / "prometheus.yml")


def test_prometheus_config_passes_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip(reason="promtool is not installed (Debian package prometheus)")
    done = subprocess.run([promtool, "check", "config", str(COMPOSE_DIR / "prometheus" / "prometheus.yml")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_grafana_provisioning_matches_dashboards_and_services(stack: dict, settings: dict) -> None:
    grafana = stack["services"]["grafana"]
    volumes = mounts(grafana)
    assert volumes["/etc/grafana/provisioning"][1] == str(COMPOSE_DIR / "grafana" / "provisioning")
    providers = yaml.safe_load((COMPOSE_DIR / "grafana/provisioning/dashboards/waxflow.yaml").read_text())
    path = providers["providers"][0]["options"]["path"]
    assert volumes[path][1] == str(COMPOSE_DIR / "grafana" / "dashboards")
    sources = yaml.safe_load((COMPOSE_DIR / "grafana/provisioning/datasources/datasources.yaml").read_text())
    by_uid = {s["uid"]: s for s in sources["datasources"]}
    assert set(by_uid) == {d["uid"] for d in dashboards.DATASOURCES}
    for source in dashboards.DATASOURCES:
        assert by_uid[source["uid"]]["type"] == source["type"]
    clickhouse = by_uid[dashboards.CLICKHOUSE["uid"]]["jsonData"]
    assert clickhouse["host"] in stack["services"] and clickhouse["protocol"] == "http"
    assert clickhouse["port"] in {p["target"] for p in ports(stack["services"]["clickhouse"])}
    assert clickhouse["defaultDatabase"] == dashboards.DATABASE == settings["outlet"]["clickhouse"]["database"]
    # Grafana reads with the read-only user defined in users.d, its password from the environment.
    users = ElementTree.parse(COMPOSE_DIR / "clickhouse/users.d/grafana.xml").getroot()
    user = users.find(f"users/{clickhouse['username']}")
    assert user is not None, "the data source's user is not defined in users.d/grafana.xml"
    profile = users.find(f"profiles/{user.find('profile').text}")
    assert profile.find("readonly").text == "2"
    password_var = user.find("password").get("from_env")
    secure = by_uid[dashboards.CLICKHOUSE["uid"]]["secureJsonData"]["password"]
    assert secure == f"${password_var}" and password_var in grafana["environment"]
    server = stack["services"]["clickhouse"]
    assert password_var in server["environment"]
    assert grafana["environment"][password_var] == server["environment"][password_var]
    assert mounts(server)["/etc/clickhouse-server/users.d/grafana.xml"][1] == str(
        COMPOSE_DIR / "clickhouse/users.d/grafana.xml")
    assert grafana["environment"]["GF_INSTALL_PLUGINS"].startswith(dashboards.CLICKHOUSE["type"])
    prometheus_url = by_uid[dashboards.PROMETHEUS["uid"]]["url"]
    assert prometheus_url == "http://prometheus:9090"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(path) and (COMPOSE_DIR / "grafana" / "dashboards" / Path(home).name).exists()


def test_demo_exporter_only_in_the_demo_profile(stack: dict) -> None:
    for name, service in stack["services"].items():
        assert service.get("profiles", []) == (["demo"] if name == "demo-exporter" else []), name
    assert stack["services"]["demo-exporter"]["command"].split()[0] == "demo-exporter"


def test_dockerfile_copies_what_exists_and_the_ignore_file_lets_it_through() -> None:
    dockerfile = (COMPOSE_DIR / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim-bookworm$", dockerfile, re.M)
    allowed = [line[1:] for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")]
    for line in re.findall(r"^COPY (.+)$", dockerfile, re.M):
        for item in line.split()[:-1]:  # the last word is the destination
            assert (ROOT / item).exists(), item
            assert any(item == a or item.startswith(a + "/") for a in allowed), f"{item} is ignored"
    assert "python3-bpfcc" in dockerfile and "pip install ." in dockerfile


def test_service_commands_parse_with_the_waxflow_cli(stack: dict) -> None:
    """The image's entrypoint is `waxflow`; each waxflow service's command is a valid command line
    of it (options checked by click, nothing run)."""
    import shlex

    from flows.cli import main

    assert re.search(r'^ENTRYPOINT \["waxflow"\]$', (COMPOSE_DIR / "Dockerfile").read_text(), re.M)
    for name in (*WAXFLOW_SERVICES, "demo-exporter"):
        command = stack["services"][name]["command"]
        args = list(command) if isinstance(command, list) else shlex.split(command)
        group = main.make_context("waxflow", list(args))
        sub = main.get_command(group, args[0])
        assert sub is not None, f"{name}: waxflow has no command {args[0]}"
        sub.make_context(args[0], args[1:], parent=group)
