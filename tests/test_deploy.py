"""deploy/ stays true to the code: manifests parse, every EMBED_* they set is a real setting whose
value validates, ports/probes/volumes match the server's settings, the drain fits the grace
periods, and the Dockerfiles' commands are the README's and the CLIs' commands.

Docker and a cluster are not available here: these checks read the files; nothing is built.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import re
import shlex
import tomllib
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from edge_client.cli import build_parser as edge_parser
from embedcore import shardmap, transport
from server.cli import build_parser as server_parser
from server.settings import Settings, env_var
from tests._certs import self_signed

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


# --------------------------------------------------------------------------------------------
# Reading the files


def setting_env_names() -> set[str]:
    """Read at test time: fields other engineers add are picked up."""
    return {env_var(f.name) for f in dataclasses.fields(Settings)}


def k8s_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None)
    return docs


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in k8s_docs() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return data


def dockerfile(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comment lines dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in (DEPLOY / name).read_text().splitlines():
        if line.strip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, rest = pending.strip().partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    return instructions


def dockerfile_env(name: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in dockerfile(name):
        if keyword == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def container_env(container: dict[str, Any]) -> dict[str, str | None]:
    """Literal env of a Kubernetes container, ConfigMaps (envFrom) included; None = from a secret."""
    env: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        config_map = one("ConfigMap", source["configMapRef"]["name"])
        env.update(config_map["data"])
    for item in container.get("env", []):
        env[item["name"]] = item.get("value")
    return env


def server_container() -> dict[str, Any]:
    containers = one("StatefulSet", "embed-server")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def settings_for(env: dict[str, str | None]) -> Settings:
    """The Settings the server would build from this environment (validation included)."""
    literal = {k: v for k, v in env.items() if k.startswith("EMBED_") and v is not None}
    return Settings.from_env(literal)


def env_sources() -> Iterator[tuple[str, dict[str, str | None]]]:
    for doc in k8s_docs():
        pod = _pod_spec(doc)
        for container in (pod or {}).get("containers", []):
            yield f"{doc['kind']}/{doc['metadata']['name']}/{container['name']}", container_env(container)
    for name, service in compose()["services"].items():
        environment = service.get("environment", {})
        if isinstance(environment, list):
            environment = dict(item.partition("=")[::2] for item in environment)
        yield f"compose/{name}", {k: str(v) for k, v in environment.items()}
    for name in ("Dockerfile.server", "Dockerfile.edge"):
        yield name, dict(dockerfile_env(name))


def _pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    template = doc.get("spec", {}).get("template")
    return template["spec"] if template else None


def cli_invocations(argv: list[str]) -> list[list[str]]:
    """The embed-server / edge-client command lines inside an argv (also inside `sh -c` scripts)."""
    if argv and argv[0] in ("sh", "bash") and argv[1].startswith("-") and "c" in argv[1]:
        lines = [part for line in argv[2].splitlines() for part in line.split("&&")]
        found = []
        for line in lines:
            words = shlex.split(line)
            if words and words[0] == "exec":
                words = words[1:]
            if words:
                found.append(words)
        return [words for words in found if words[0] in ("embed-server", "edge-client")]
    if argv and argv[0] == "/usr/bin/tini":
        argv = argv[argv.index("--") + 1 :]
    return [argv] if argv and argv[0] in ("embed-server", "edge-client") else []


def assert_cli_parses(argv: list[str]) -> argparse.Namespace | None:
    parser = server_parser() if argv[0] == "embed-server" else edge_parser()
    if "--help" in argv:
        with pytest.raises(SystemExit) as info:
            parser.parse_args(argv[1:])
        assert info.value.code == 0
        return None
    parsed = parser.parse_args(argv[1:])  # exits (a failure) on an unknown command or flag
    assert parsed.command == argv[1]
    assert argv[1] in parser.format_help()
    return parsed


def pip_extras(text: str) -> list[frozenset[str]]:
    """Extras of every `pip install [-e] '.[a,b]'` in a text."""
    pattern = r"pip install (?:-q )?(?:-e )?'\.\[([a-z,]+)\]'"
    return [frozenset(m.split(",")) for m in re.findall(pattern, text)]


# --------------------------------------------------------------------------------------------
# Tests


def test_manifests_parse_and_name_their_kinds() -> None:
    kinds = {doc["kind"] for doc in k8s_docs()}
    assert {"StatefulSet", "Service", "PodDisruptionBudget", "ConfigMap", "Job"} <= kinds
    for doc in k8s_docs():
        assert doc["apiVersion"] and doc["metadata"]["name"]
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
    assert set(compose()["services"]) == {"server", "ingest", "edge"}


def test_every_embed_env_var_is_a_real_setting_and_validates() -> None:
    known = setting_env_names()
    seen = set()
    for source, env in env_sources():
        unknown = {k for k in env if k.startswith("EMBED_")} - known
        assert not unknown, f"{source} sets {sorted(unknown)}, not fields of server/settings.py Settings"
        seen |= {k for k in env if k.startswith("EMBED_")}
        settings_for(env)  # raises ValueError naming the option for a value the server rejects
    assert {"EMBED_PORT", "EMBED_DATA_DIR", "EMBED_GRACE_SECONDS"} <= seen
    # Anything spelled EMBED_* anywhere under deploy/ (README included) must exist too: a server
    # setting, or one of the connection variables every bundled client reads (embedcore.transport).
    known |= set(transport.ENV.values()) | {shardmap.ENV_VAR}
    for path in DEPLOY.rglob("*"):
        if path.is_file() and path.suffix != ".pyc":
            named = set(re.findall(r"\bEMBED_[A-Z][A-Z0-9_]*\b", path.read_text()))
            assert named <= known, f"{path.name} names {sorted(named - known)}"


def test_statefulset_ports_probes_and_volume_match_the_settings() -> None:
    container = server_container()
    settings = settings_for(container_env(container))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["grpc"] == settings.port
    assert settings.metrics_port > 0 and ports["metrics"] == settings.metrics_port
    assert settings.http_port > 0 and ports["http"] == settings.http_port
    for probe in PROBES:
        spec = container[probe]
        assert set(spec) & {"grpc", "httpGet", "tcpSocket", "exec"} == {"grpc"}, probe
        assert spec["grpc"]["port"] == settings.port, probe
        assert spec["grpc"].get("service", "") == "", probe  # the server-wide health entry
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    statefulset = one("StatefulSet", "embed-server")
    claims = [t["metadata"]["name"] for t in statefulset["spec"]["volumeClaimTemplates"]]
    assert claims == ["data"] and Path(mounts["data"]) == settings.data_dir


def test_services_and_disruption_budget_select_the_server_pods() -> None:
    statefulset = one("StatefulSet", "embed-server")
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    container_ports = {p["name"]: p["containerPort"] for p in server_container()["ports"]}
    # encoder.yaml's Service selects its own Deployment's pods (checked the same way below)
    services = [d for d in k8s_docs() if d["kind"] == "Service" and d["metadata"]["name"] != "embed-encoder"]
    encoder = one("Deployment", "embed-encoder")["spec"]["template"]["metadata"]["labels"]
    assert one("Service", "embed-encoder")["spec"]["selector"].items() <= encoder.items()
    for service in services:
        assert service["spec"]["selector"].items() <= labels.items()
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in container_ports, port
            assert port["port"] == container_ports[port["targetPort"]]
    headless = one("Service", statefulset["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert {"metrics", "http"} <= {p["name"] for p in one("Service", "embed-server")["spec"]["ports"]}
    pdb = one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"].get("maxUnavailable") == 1 or pdb["spec"].get("minAvailable") is not None


def test_shard_map_names_every_shard_pod_and_the_split_is_served() -> None:
    """shard-map.yaml's shard-N are pod N of both StatefulSets (ordinal = shard), reachable by
    the headless Service's DNS names on the gRPC port; the two sets run the same pod spec."""
    config = one("ConfigMap", "embed-shard-map")
    parsed = shardmap.ShardMap.loads(config["data"]["shard-map.json"], "shard-map.yaml")
    primary, replica = one("StatefulSet", "embed-server"), one("StatefulSet", "embed-server-replica")
    assert primary["spec"]["replicas"] == replica["spec"]["replicas"] == len(parsed.shards)
    port = settings_for(container_env(server_container())).port
    headless = primary["spec"]["serviceName"]
    assert replica["spec"]["serviceName"] == headless
    for n, shard in enumerate(parsed.shards):
        assert shard.name == f"shard-{n}"
        assert shard.replicas == (
            f"embed-server-{n}.{headless}:{port}",
            f"embed-server-replica-{n}.{headless}:{port}",
        )
    assert primary["spec"]["template"]["spec"] == replica["spec"]["template"]["spec"]
    # the two sets must not select each other's pods
    assert primary["spec"]["selector"]["matchLabels"] != replica["spec"]["selector"]["matchLabels"]
    job = one("Job")
    assert "--shard-map" in job["spec"]["template"]["spec"]["containers"][0]["args"][0]


def test_autoscaler_scales_the_stateless_tier_on_a_metric_the_server_exports() -> None:
    from server import metrics

    scaled = one("ScaledObject")
    target = scaled["spec"]["scaleTargetRef"]
    deployment = one(target["kind"], target["name"])
    assert deployment["kind"] == "Deployment"
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert [v for v in volumes if v["name"] == "data"] == [{"name": "data", "emptyDir": {}}]
    (trigger,) = scaled["spec"]["triggers"]
    metric = re.match(r"\w+\((\w+)", trigger["metadata"]["query"])
    assert metric is not None
    assert metric.group(1) == metrics.QUEUE_DEPTH._name
    assert 1 <= scaled["spec"]["minReplicaCount"] < scaled["spec"]["maxReplicaCount"]


def test_gpu_is_requested() -> None:
    resources = server_container()["resources"]
    gpus = resources["limits"]["nvidia.com/gpu"]
    assert gpus >= 1
    assert resources["requests"].get("nvidia.com/gpu", gpus) == gpus  # extended: requests = limits
    gpu = compose()["services"]["server"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]


def test_shutdown_grace_exceeds_the_servers_drain() -> None:
    container = server_container()
    grace = settings_for(container_env(container)).grace_seconds
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    pod = one("StatefulSet", "embed-server")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > float(pre_stop[1]) + grace
    # The startup probe must outwait the pool's own limit on a worker loading the model.
    startup = container["startupProbe"]
    settings = settings_for(container_env(container))
    worker_start = float(getattr(settings, "worker_start_timeout_s", 0.0))
    assert startup["periodSeconds"] * startup["failureThreshold"] > worker_start
    # A draining server is NOT_SERVING: liveness must not give up on it before the drain ends.
    liveness = container["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > grace
    server = compose()["services"]["server"]
    compose_grace = settings_for(dict(server["environment"])).grace_seconds
    assert float(server["stop_grace_period"].removesuffix("s")) > compose_grace


def test_compose_ports_and_volume_match_the_settings() -> None:
    server = compose()["services"]["server"]
    settings = settings_for({k: str(v) for k, v in server["environment"].items()})
    published = {int(p.split(":")[1]) for p in server["ports"]}
    assert published == {settings.port, settings.metrics_port, settings.http_port}
    targets = {volume.split(":")[1] for volume in server["volumes"]}
    assert str(settings.data_dir) in targets


def test_dockerfile_server_settings_ports_and_volume_agree() -> None:
    instructions = dockerfile("Dockerfile.server")
    settings = settings_for(dict(dockerfile_env("Dockerfile.server")))
    exposed = {int(p) for k, rest in instructions if k == "EXPOSE" for p in rest.split()}
    assert exposed == {settings.port, settings.metrics_port, settings.http_port}
    volumes = [rest for k, rest in instructions if k == "VOLUME"]
    assert volumes == [str(settings.data_dir)]


def test_dockerfile_entrypoints_are_real_cli_commands() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    parsed = {}
    for name, program in (("Dockerfile.server", "embed-server"), ("Dockerfile.edge", "edge-client")):
        instructions = dict(dockerfile(name))
        argv = json.loads(instructions["ENTRYPOINT"]) + json.loads(instructions.get("CMD", "[]"))
        (invocation,) = cli_invocations(argv)
        assert invocation[0] == program and program in scripts
        parsed[name] = assert_cli_parses(invocation)
    server = parsed["Dockerfile.server"]
    assert server is not None and server.command == "serve"
    assert server.host == "0.0.0.0"  # reachable from outside the container


def test_commands_in_compose_and_jobs_are_real_cli_commands() -> None:
    found = []
    for service in compose()["services"].values():
        entrypoint = service.get("entrypoint", [])
        command = service.get("command", [])
        command = shlex.split(command) if isinstance(command, str) else command
        found += cli_invocations(list(entrypoint) + list(command))
    for doc in k8s_docs():
        for container in (_pod_spec(doc) or {}).get("containers", []):
            found += cli_invocations(container.get("command", []) + container.get("args", []))
    programs = [argv[:2] for argv in found]
    assert ["embed-server", "ingest"] in programs and ["edge-client", "sync"] in programs
    for argv in found:
        assert_cli_parses(argv)


def test_dockerfile_install_lines_are_the_readmes() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras_defined = set(project["optional-dependencies"])
    readme_extras = pip_extras((REPO / "README.md").read_text())
    deploy_readme = (DEPLOY / "README.md").read_text()
    for name, expected in (("Dockerfile.server", {"server"}), ("Dockerfile.edge", {"edge"})):
        runs = " ".join(rest for k, rest in dockerfile(name) if k == "RUN")
        (extras,) = pip_extras(runs)
        assert extras == expected and extras <= extras_defined
        assert f"pip install '.[{','.join(sorted(extras))}]'" in deploy_readme
        assert f"docker build -f deploy/{name}" in deploy_readme
    # The GPU host line of README.md installs the same extras the server image does.
    assert frozenset({"server"}) in readme_extras


def test_server_image_installs_the_pinned_cuda_torch_before_the_project() -> None:
    server_extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (pin,) = [dep for dep in server_extra["server"] if dep.startswith("torch==")]
    runs = [rest for k, rest in dockerfile("Dockerfile.server") if k == "RUN"]
    torch_at = next(i for i, run in enumerate(runs) if f"pip install {pin}" in run)
    project_at = next(i for i, run in enumerate(runs) if "pip install '.[" in run)
    assert torch_at < project_at
    assert dockerfile("Dockerfile.server")[0][0] in ("ARG", "FROM")
    base = dict(dockerfile("Dockerfile.server"))["ARG"]
    assert base.startswith("CUDA_IMAGE=nvidia/cuda:") and "runtime" in base
    edge_runs = " ".join(rest for k, rest in dockerfile("Dockerfile.edge") if k == "RUN")
    assert "torch==" not in edge_runs


def test_docker_contexts_hold_what_the_dockerfiles_copy() -> None:
    for name in ("Dockerfile.server", "Dockerfile.edge"):
        allowed = {
            line[1:].rstrip("/")
            for line in (DEPLOY / f"{name}.dockerignore").read_text().splitlines()
            if line.startswith("!")
        }
        for keyword, rest in dockerfile(name):
            if keyword != "COPY":
                continue
            sources = [word for word in rest.split() if not word.startswith("--")][:-1]
            for source in sources:
                assert (REPO / source).exists(), f"{name} copies missing {source}"
                assert source.rstrip("/") in allowed, f"{name}.dockerignore excludes {source}"


# --------------------------------------------------------------------------------------------
# The health-check script the image and compose use, against a real gRPC health service


def _health_check_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("grpc_health_check", DEPLOY / "grpc_health_check.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_health_check_script_follows_serving_status(monkeypatch: pytest.MonkeyPatch) -> None:
    script = _health_check_module()
    servicer = health.HealthServicer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        monkeypatch.setenv("EMBED_PORT", str(port))
        assert script.default_target() == f"127.0.0.1:{port}"
        servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert script.main([]) == 1
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        assert script.main([]) == 0
        assert script.main(["--service", "no.such.Service"]) == 1  # NOT_FOUND
    finally:
        server.stop(None).wait()
    assert script.main([f"127.0.0.1:{port}", "--timeout", "2"]) == 1  # nothing listening


def test_health_check_script_speaks_tls_with_the_clients_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = _health_check_module()
    cert, key = self_signed(tmp_path)
    servicer = health.HealthServicer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    credentials = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        target = f"127.0.0.1:{port}"
        assert script.main([target, "--timeout", "5"]) == 1  # plaintext to a TLS port
        assert script.main([target, "--timeout", "5", "--tls-ca", str(cert)]) == 0
        monkeypatch.setenv("EMBED_TLS_CA", str(cert))  # as an image would set it
        assert script.main([target, "--timeout", "5"]) == 0
    finally:
        server.stop(None).wait()
