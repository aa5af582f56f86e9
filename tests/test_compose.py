"""The compose stack (compose/): `docker-compose config` accepts it, its services reference
images, ports and volumes consistently, waxflow accepts the configuration it ships, and the
Prometheus and Grafana provisioning point at what the services serve."""

from __future__ import annotations

import ipaddress
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

from flows import dashboards, demo
from flows.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_DIR = ROOT / "compose"
COMPOSE = COMPOSE_DIR / "docker-compose.yml"
DEMO_SERVICES = {demo.compose_service(router): router for router in demo.ROUTERS}
SERVICES = {"kafka", "clickhouse", "inlet", "outlet", "prometheus", "grafana", *DEMO_SERVICES}
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
    done = _compose_config({"WAXFLOW_API_TOKEN": TOKEN})
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


TOKEN = "compose-test-token"


def _compose_config(extra: dict[str, str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in dotenv()}
    return subprocess.run(["docker-compose", "-f", str(COMPOSE), "--profile", "demo", "config"],
                          capture_output=True, text=True, timeout=120, env={**env, **extra})


def test_the_api_token_is_required_and_reaches_the_outlet(stack: dict, settings) -> None:
    """The shipped .env holds no token: compose refuses to start until one is set, and the outlet
    then runs with it (an empty token is refused by waxflow itself)."""
    done = _compose_config({})
    assert done.returncode != 0 and "WAXFLOW_API_TOKEN" in done.stderr
    assert stack["services"]["outlet"]["environment"]["WAXFLOW__API__TOKEN"] == TOKEN
    assert settings["outlet"]["api"]["token"] == TOKEN


def settings_of(stack: dict, service: str) -> dict:
    """`waxflow config check --dump` of compose/dataflows.yaml with the service's environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAXFLOW")}
    env.update({k: str(v) for k, v in (stack["services"][service].get("environment") or {}).items()})
    done = subprocess.run([sys.executable, "-m", "waxflow", "-c", str(COMPOSE_DIR / "dataflows.yaml"),
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
    # without the demo profile too (docker-compose 1.29 lists profiled services either way)
    done = subprocess.run(["docker-compose", "-f", str(COMPOSE), "config", "--quiet"], capture_output=True,
                          text=True, timeout=120,
                          env={**{k: v for k, v in os.environ.items() if k not in dotenv()}, "WAXFLOW_API_TOKEN": TOKEN})
    assert done.returncode == 0, done.stderr


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
        for _target, (kind, source) in mounts(service).items():
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


def test_demo_routers_only_in_the_demo_profile(stack: dict) -> None:
    for name, service in stack["services"].items():
        assert service.get("profiles", []) == (["demo"] if name in DEMO_SERVICES else []), name


def test_demo_routers_run_one_router_each_at_the_configured_address(stack: dict) -> None:
    """Each demo container runs one router at the fixed address the configuration names, on a
    subnet whose dynamic range keeps those addresses free for them."""
    import shlex

    network = stack["networks"]["default"]["ipam"]["config"]
    assert network == [{"subnet": demo.COMPOSE_SUBNET, "ip_range": demo.COMPOSE_DYNAMIC_RANGE}]
    subnet, dynamic = ipaddress.ip_network(demo.COMPOSE_SUBNET), ipaddress.ip_network(demo.COMPOSE_DYNAMIC_RANGE)
    static = load_settings(COMPOSE_DIR / "dataflows.yaml").enrichment.static
    for name, router in DEMO_SERVICES.items():
        service = stack["services"][name]
        address = service["networks"]["default"]["ipv4_address"]
        assert address == demo.compose_addresses()[router.name], name
        assert ipaddress.ip_address(address) in subnet and ipaddress.ip_address(address) not in dynamic
        assert static[f"{address}/32"].name == router.name
        args = shlex.split(service["command"])
        assert args[:5] == ["demo-exporter", "--target", "inlet", "--router", router.name], name
        assert "inlet" in service["depends_on"]
    assert len({s["networks"]["default"]["ipv4_address"] for n, s in stack["services"].items()
                if n in DEMO_SERVICES}) == len(demo.ROUTERS)


def test_compose_demo_block_is_generated_from_flows_demo() -> None:
    text = (COMPOSE_DIR / "dataflows.yaml").read_text()
    assert text == demo.with_compose_block(text), "stale demo block: run `waxflow demo-block`"


def test_compose_demo_flows_get_names_classes_and_countries() -> None:
    """Datagrams of each demo router, sent from its compose address, come out of the outlet's
    metadata and enrichment steps (with compose/dataflows.yaml) with the exporter's and the
    interfaces' names, site, connectivity, provider, boundary, and both countries."""
    from flows.schema import BOUNDARIES
    from tests.test_demo import NOW_MS, enriched_rows

    enrichment = load_settings(COMPOSE_DIR / "dataflows.yaml").enrichment
    providers = set()
    for router in demo.ROUTERS:
        address = demo.compose_addresses()[router.name]
        flows = demo.Traffic(seed=4).flows(router, demo.SAMPLES_PER_DATAGRAM, NOW_MS)
        rows = enriched_rows(enrichment, router, flows, address)
        assert len(rows) == len(flows)
        ports = {i.ifindex: i for i in demo.interfaces(router)}
        for flow, row in zip(flows, rows):
            assert str(ipaddress.ip_address(row["ExporterAddress"]).ipv4_mapped) == address
            assert (row["ExporterName"], row["ExporterSite"], row["ExporterRole"]) == (router.name, router.site, "edge")
            for side, ifindex in (("In", flow.in_if), ("Out", flow.out_if)):
                port = ports[ifindex]
                assert (row[f"{side}IfName"], row[f"{side}IfSpeed"]) == (port.name, port.speed)
                assert row[f"{side}IfConnectivity"] == port.kind
                external = port.kind != "customers"
                assert BOUNDARIES[row[f"{side}IfBoundary"]] == ("external" if external else "internal")
                assert bool(row[f"{side}IfProvider"]) == external
                providers.add(row[f"{side}IfProvider"])
            assert row["SrcCountry"] and row["DstCountry"] and row["SrcNetName"] and row["DstNetName"]
    assert {"cogent", "arelion", "netflix", "google"} & providers and "" in providers


def _healthchecks(stack: dict) -> dict[str, list[str]]:
    return {name: service["healthcheck"]["test"] for name, service in stack["services"].items()}


def test_waxflow_image_healthchecks_use_python(stack: dict) -> None:
    """The waxflow image (python:3.11-slim-bookworm) has no wget or curl: its services check
    themselves with the image's Python."""
    for name, service in stack["services"].items():
        if "build" in service:
            test = service["healthcheck"]["test"]
            assert test[:3] == ["CMD", "python", "-c"], name
            compile(test[3], name, "exec")


# Where each third-party image's healthcheck tool comes from (checked against their Dockerfiles):
# clickhouse-server is Ubuntu-based with GNU wget installed; prom/prometheus is FROM
# quay.io/prometheus/busybox and grafana/grafana is Alpine, both with BusyBox's wget applet.
WGET = {"clickhouse": ["wget"], "prometheus": ["busybox", "wget"], "grafana": ["busybox", "wget"]}

_NETNS_PROBE = """
import json, subprocess, sys, threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

checks, ports = json.loads(sys.argv[1])
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
def results():
    return {name: subprocess.run(argv, capture_output=True, timeout=20).returncode for name, argv in checks.items()}
servers = [ThreadingHTTPServer(("127.0.0.1", port), partial(SimpleHTTPRequestHandler, directory=sys.argv[2]))
           for port in ports]
for server in servers:
    threading.Thread(target=server.serve_forever, daemon=True).start()
serving = results()
for server in servers:
    server.shutdown()
    server.server_close()
print(json.dumps({"serving": serving, "down": results()}))
"""


def _in_new_netns(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run argv in a new network namespace (its own loopback and UDP counters, free ports)."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip(reason="needs root and unshare for a private network namespace")
    done = subprocess.run(["unshare", "-n", *argv], capture_output=True, text=True, timeout=120, **kwargs)
    if done.returncode != 0 and "unshare failed" in done.stderr:
        pytest.skip(reason=f"cannot create a network namespace: {done.stderr.strip()}")
    return done


def test_http_healthchecks_pass_when_served_and_fail_when_not(stack: dict, tmp_path: Path) -> None:
    """Every HTTP healthcheck, run with the tool its image has (Python for waxflow's, GNU wget for
    ClickHouse's, BusyBox wget for Prometheus' and Grafana's), passes while its URL answers 200
    and fails once nothing listens; in a private network namespace, so the real ports are free."""
    if shutil.which("busybox") is None or shutil.which("wget") is None:
        pytest.skip(reason="busybox and wget are not installed (scripts/apt-packages.txt)")
    checks, ports = {}, set()
    for name, test in _healthchecks(stack).items():
        urls = re.findall(r"http://127\.0\.0\.1:(\d+)(/[\w/-]*)", " ".join(test))
        if not urls:
            continue
        (port, path), = urls
        ports.add(int(port))
        (tmp_path / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path.lstrip("/")).write_text("ok\n")  # the URL answers 200
        argv = test[1:]
        if argv[0] == "python":
            argv = [sys.executable, *argv[1:]]
        elif argv[0] == "wget":
            argv = WGET[name] + argv[1:]
        else:
            raise AssertionError(f"{name}: unexpected healthcheck tool {argv[0]}")
        checks[name] = argv
    assert set(checks) == {"clickhouse", "prometheus", "grafana", "inlet", "outlet"}
    done = _in_new_netns([sys.executable, "-c", _NETNS_PROBE, json.dumps([checks, sorted(ports)]), str(tmp_path)])
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert results["serving"] == {name: 0 for name in checks}
    assert all(code != 0 for code in results["down"].values()), results["down"]


def test_demo_router_healthcheck_follows_udp_sent(stack: dict, tmp_path: Path) -> None:
    """The demo routers' healthcheck fails while the container has sent no UDP since the last
    check and passes once it has (its own network namespace's counters)."""
    (check,) = {tuple(_healthchecks(stack)[name]) for name in DEMO_SERVICES}
    assert check[:3] == ("CMD", "python", "-c")
    script = f"""
import socket, subprocess, sys
check = [sys.executable, "-c", {check[3]!r}]
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
codes = [subprocess.run(check).returncode]  # nothing sent yet
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.sendto(b"flow", ("127.0.0.1", 2055))
codes.append(subprocess.run(check).returncode)  # sent since
codes.append(subprocess.run(check).returncode)  # nothing new
sock.sendto(b"flow", ("127.0.0.1", 2055))
codes.append(subprocess.run(check).returncode)
print(codes)
"""
    done = _in_new_netns([sys.executable, "-c", script], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[1,", "0,", "1,", "0]"]


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

    from waxflow.cli import main

    assert re.search(r'^ENTRYPOINT \["waxflow"\]$', (COMPOSE_DIR / "Dockerfile").read_text(), re.M)
    for name in (*WAXFLOW_SERVICES, *DEMO_SERVICES):
        command = stack["services"][name]["command"]
        args = list(command) if isinstance(command, list) else shlex.split(command)
        group = main.make_context("waxflow", list(args))
        sub = main.get_command(group, args[0])
        assert sub is not None, f"{name}: waxflow has no command {args[0]}"
        sub.make_context(args[0], args[1:], parent=group)
