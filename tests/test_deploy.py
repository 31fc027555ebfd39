"""deploy/: the Kubernetes manifests against the Kubernetes schemas, the compose file's shape
(and `docker compose config` where Docker's compose plugin is installed), and the topology
they describe run without containers: two gateway processes, one Redis, the sandbox
upstream and a round-robin client."""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from gateway.config import Settings, env_name
from gateway.sandbox import ACCOUNTS, credential_headers
from tests.conftest import RedisServer, Sandbox, redis_server
from tests.servers import gateway_processes

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.33"
SETTINGS = {env_name(name) for name in Settings.model_fields}


def manifests() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for document in yaml.safe_load_all(path.read_text()):
            found.append(
                (f"{path.name}:{document['kind']}/{document['metadata']['name']}", document)
            )
    return found


MANIFESTS = manifests()


def one(kind: str, name: str = "catapult-gateway") -> dict[str, Any]:
    [found] = [d for _, d in MANIFESTS if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


@pytest.mark.parametrize(("where", "document"), MANIFESTS, ids=[w for w, _ in MANIFESTS])
def test_each_manifest_is_valid_against_the_kubernetes_schema(
    where: str, document: dict[str, Any]
) -> None:
    # strict: a misspelt or misplaced field is an error, not silently dropped.
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_the_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}

    assert set(kustomization["resources"]) == files


def test_the_deployment_probes_drains_and_reads_its_settings() -> None:
    deployment = one("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    config = one("ConfigMap")["data"]

    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["args"][0] == "serve"  # the image's entrypoint is catapult-gateway
    sources = {next(iter(s.values()))["name"] for s in container["envFrom"]}
    assert sources == {"catapult-gateway"}
    # SIGTERM comes after the preStop sleep; the drain then takes up to the shutdown timeout;
    # the kubelet's SIGKILL must come later still.
    sleep = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = int(config["GATEWAY_SHUTDOWN_TIMEOUT"])
    assert pod["terminationGracePeriodSeconds"] > sleep + drain
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        selector = one(kind)["spec"]["selector"]
        assert selector.get("matchLabels", selector).items() <= labels.items(), kind
    assert one("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"] == "catapult-gateway"


def test_the_config_holds_only_real_settings_and_no_secret() -> None:
    config = one("ConfigMap")["data"]

    assert set(config) <= SETTINGS
    # The keys are in the Secret; the cache URL carries the Redis password.
    assert not set(config) & {"GATEWAY_CACHE_KEY", "GATEWAY_CURSOR_KEY", "GATEWAY_CACHE_URL"}
    # Every setting value is one Settings accepts.
    Settings.model_validate(
        {name.removeprefix("GATEWAY_").lower(): value for name, value in config.items()}
    )


def _secret_refs() -> list[tuple[str, dict[str, Any]]]:
    """(manifest, secretKeyRef) of every container's environment."""
    found = []
    for where, document in MANIFESTS:
        pod = document.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod.get("containers", []):
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref is not None:
                    found.append((where, ref))
            for source in container.get("envFrom", []):
                assert "secretRef" not in source, f"{where}: envFrom a Secret makes keys optional"
    return found


EXAMPLE = K8S / "secrets.env.example"
KEYS = {"GATEWAY_CACHE_KEY", "GATEWAY_CURSOR_KEY", "REDIS_PASSWORD"}


def test_the_keys_come_from_a_git_ignored_file_never_from_the_repository() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    [generator] = kustomization["secretGenerator"]
    refs = _secret_refs()
    example = EXAMPLE.read_text().splitlines()

    # No Secret is a resource: `kubectl apply -k` never writes a repository's value over
    # real keys. Kustomize builds it from secrets.env, which git never sees.
    assert not [where for where, d in MANIFESTS if d["kind"] == "Secret"]
    assert (generator["name"], generator["envs"]) == ("catapult-gateway", ["secrets.env"])
    assert subprocess.run(["git", "check-ignore", "-q", str(K8S / "secrets.env")]).returncode == 0
    # The example names every key the pods read, and gives none a value: a copy of it as it
    # is leaves the keys out, and a pod whose required key is missing does not start.
    assert not [line for line in example if line.strip() and not line.startswith("#")]
    assert {line[1:].partition("=")[0] for line in example if line.endswith("=")} == KEYS
    assert {ref["key"] for _, ref in refs} == KEYS
    for where, ref in refs:
        assert ref["name"] == "catapult-gateway", where
        assert not ref.get("optional", False), where


def _kustomize(folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["kubectl", "kustomize", str(folder)], capture_output=True, text=True, timeout=120
    )


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed here")
def test_kustomize_builds_the_secret_from_secrets_env_and_refuses_without_it(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "kubernetes"
    shutil.copytree(K8S, folder, ignore=shutil.ignore_patterns("secrets.env"))

    missing = _kustomize(folder)
    (folder / "secrets.env").write_text("".join(f"{key}={'ab' * 16}\n" for key in sorted(KEYS)))
    built = _kustomize(folder)

    assert missing.returncode != 0
    assert "secrets.env" in missing.stderr
    assert built.returncode == 0, built.stderr
    documents = list(yaml.safe_load_all(built.stdout))
    [secret] = [d for d in documents if d["kind"] == "Secret"]
    assert set(secret["data"]) == KEYS
    # The name carries a hash of the keys, and every reference follows it.
    assert secret["metadata"]["name"].startswith("catapult-gateway-")
    for document in documents:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        pod = document.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod.get("containers", []):
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref is not None:
                    assert ref["name"] == secret["metadata"]["name"]


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {env["name"]: env for env in container["env"]}


def test_redis_requires_a_password_the_gateways_cache_url_carries() -> None:
    [gateway] = one("Deployment")["spec"]["template"]["spec"]["containers"]
    [redis] = one("Deployment", "catapult-gateway-redis")["spec"]["template"]["spec"]["containers"]
    [port] = one("Service", "catapult-gateway-redis")["spec"]["ports"]
    env = _env(gateway)
    redis_env = _env(redis)
    names = [e["name"] for e in gateway["env"]]

    # The server's requirepass and the probe's redis-cli both take the Secret's password.
    password_variable = redis["args"][redis["args"].index("--requirepass") + 1]
    [variable] = re.fullmatch(r"\$\((\w+)\)", password_variable).groups()  # type: ignore[union-attr]
    assert variable == "REDISCLI_AUTH"
    assert redis_env[variable]["valueFrom"]["secretKeyRef"]["key"] == "REDIS_PASSWORD"
    assert redis["readinessProbe"]["exec"]["command"] == ["redis-cli", "ping"]
    # The gateway's URL is built in the Deployment from the same key: the kubelet expands
    # $(REDIS_PASSWORD) only when it is defined earlier in the list.
    url = env["GATEWAY_CACHE_URL"]["value"]
    assert url == f"redis://:$(REDIS_PASSWORD)@catapult-gateway-redis:{port['port']}/0"
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "REDIS_PASSWORD"
    assert names.index("REDIS_PASSWORD") < names.index("GATEWAY_CACHE_URL")
    # What the gateway then reads is a URL Settings accepts (a hex password, as the example
    # writes it).
    expanded = url.replace("$(REDIS_PASSWORD)", "0123abcd" * 8)
    assert Settings.model_validate({"cache_url": expanded}).cache_url == expanded


def test_only_the_gateway_reaches_redis_and_the_gateway_only_on_its_port() -> None:
    redis_policy = one("NetworkPolicy", "catapult-gateway-redis")["spec"]
    gateway_policy = one("NetworkPolicy")["spec"]
    redis_pods = one("Deployment", "catapult-gateway-redis")["spec"]["template"]["metadata"]
    gateway_pod = one("Deployment")["spec"]["template"]
    [redis_port] = one("Service", "catapult-gateway-redis")["spec"]["ports"]
    [gateway_port] = gateway_pod["spec"]["containers"][0]["ports"]

    assert redis_policy["podSelector"]["matchLabels"].items() <= redis_pods["labels"].items()
    assert redis_policy["policyTypes"] == ["Ingress"]
    [rule] = redis_policy["ingress"]
    [source] = rule["from"]
    assert list(source) == ["podSelector"]  # pods of this namespace, no other namespace
    gateway_labels = gateway_pod["metadata"]["labels"]
    assert source["podSelector"]["matchLabels"].items() <= gateway_labels.items()
    assert rule["ports"] == [{"protocol": "TCP", "port": redis_port["port"]}]

    labels = gateway_pod["metadata"]["labels"]
    assert gateway_policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert gateway_policy["policyTypes"] == ["Ingress"]
    [rule] = gateway_policy["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": gateway_port["containerPort"]}]


def test_the_autoscaler_owns_the_replica_count_and_probes_allow_a_busy_loop() -> None:
    deployment = one("Deployment")
    [container] = deployment["spec"]["template"]["spec"]["containers"]

    # A `replicas` here would reset the autoscaler's count on every apply.
    assert "replicas" not in deployment["spec"]
    assert one("HorizontalPodAutoscaler")["spec"]["minReplicas"] >= 2
    # One event loop answers the probes and the traffic: a second's stall is not a failure.
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe].get("timeoutSeconds", 1) >= 3, probe


# -- compose --

COMPOSE = ROOT / "deploy" / "compose.yaml"
COMPOSE_ENV = {
    "GATEWAY_CACHE_KEY": "k" * 32,
    "GATEWAY_CURSOR_KEY": "c" * 32,
    "REDIS_PASSWORD": "p" * 32,
}
REQUIRED_PASSWORD = "${REDIS_PASSWORD:?"


def test_compose_runs_two_replicas_on_one_redis_scraped_by_prometheus() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    gateways = sorted(name for name in services if name.startswith("gateway-"))
    prometheus = yaml.safe_load((COMPOSE.parent / "prometheus.yml").read_text())
    [job] = prometheus["scrape_configs"]
    [targets] = [c["targets"] for c in job["static_configs"]]

    assert gateways == ["gateway-1", "gateway-2"]
    environments = [services[name]["environment"] for name in gateways]
    assert environments[0] == environments[1]
    environment = environments[0]
    assert environment["GATEWAY_CACHE_URL"].startswith("redis://:" + REQUIRED_PASSWORD)
    assert environment["GATEWAY_CACHE_URL"].endswith("}@redis:6379/0")
    for key in ("GATEWAY_CACHE_KEY", "GATEWAY_CURSOR_KEY"):
        assert environment[key].startswith("${" + key + ":?")  # required, never a default
    assert set(environment) <= SETTINGS
    assert "redis" in services
    assert services["gateway-1"]["command"][0] == "serve"
    assert sorted(targets) == [f"{name}:8000" for name in gateways]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    # Redis holds callers' call records: a password that has no default, and no port
    # outside the compose network.
    redis = services["redis"]
    command = redis["command"]
    assert command[command.index("--requirepass") + 1].startswith(REQUIRED_PASSWORD)
    assert redis["environment"]["REDISCLI_AUTH"].startswith(REQUIRED_PASSWORD)  # its probe
    assert "ports" not in redis
    # Every service keeps the image's HEALTHCHECK, which knows the sandbox's route too.
    assert not any(service.get("healthcheck", {}).get("disable") for service in services.values())
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in services["prometheus"]["volumes"]


def _compose_plugin() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _compose_plugin(), reason="docker compose is not installed here")
def test_docker_compose_config_accepts_the_file() -> None:
    done = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", **COMPOSE_ENV},
    )

    assert done.returncode == 0, done.stderr


# -- the same topology, without containers --

DEMO, SECOND = ACCOUNTS[0], ACCOUNTS[1]


REDIS_PASSWORD = "0123abcd" * 8


@pytest.fixture
def password_redis() -> Iterator[RedisServer]:
    """A redis-server that requires a password, as deploy/ runs it."""
    with redis_server("--requirepass", REDIS_PASSWORD, password=REDIS_PASSWORD) as server:
        yield server


@pytest.fixture
def replicas(sandbox: Sandbox, password_redis: RedisServer) -> Iterator[list[str]]:
    """Two `catapult-gateway serve` processes configured as deploy/ configures them."""
    [gateway] = one("Deployment")["spec"]["template"]["spec"]["containers"]
    # The Deployment's URL, with the Secret's password and this Redis's address.
    url = _env(gateway)["GATEWAY_CACHE_URL"]["value"]
    url = url.replace("$(REDIS_PASSWORD)", REDIS_PASSWORD)
    url = url.replace("catapult-gateway-redis:6379", f"127.0.0.1:{password_redis.port}")
    env = {
        "GATEWAY_UPSTREAM_URL": sandbox.url,
        "GATEWAY_CACHE_URL": url,
        "GATEWAY_CACHE_KEY": "the key both replicas are given",
        "GATEWAY_CURSOR_KEY": "the cursor key both replicas are given",
        "GATEWAY_CACHE_TTL": "600",
        # One upstream slot per account every 100 s, and no waiting in line for one: a
        # second upstream request for the account anywhere is refused at once.
        "GATEWAY_UPSTREAM_RATE": "0.01",
        "GATEWAY_UPSTREAM_QUEUE_TIMEOUT": "0",
        "GATEWAY_LOG_LEVEL": "warning",
    }
    with gateway_processes(env=env, count=2) as started:
        yield [url for _, url in started]


CONNECTION = """query($first: Int!, $after: String) {
  callsConnection(first: $first, after: $after) {
    edges { cursor node { id } } pageInfo { hasNextPage endCursor } } }"""


@pytest.mark.slow  # two gateway processes and a Redis, as deployed
@pytest.mark.serial  # the replicas' shared pacing against the sandbox's 429 window
def test_two_replicas_share_cache_pacing_and_cursor_keys(
    replicas: list[str], sandbox: Sandbox
) -> None:
    turn = itertools.cycle(replicas)  # the load balancer: round robin

    def post(query: str, account: Any = DEMO, **variables: Any) -> dict[str, Any]:
        answer = httpx.post(
            f"{next(turn)}/graphql",
            json={"query": query, "variables": variables},
            headers=credential_headers(account),
            timeout=30,
        )
        body: dict[str, Any] = answer.json()
        return body

    # Replica 1 fetches a page of three calls: the only upstream request of this test.
    first = post(CONNECTION, first=3)["data"]["callsConnection"]
    edges = first["edges"]
    assert len(edges) == 3
    assert len(sandbox.requests()) == 1

    # Replica 2 resumes after replica 1's first edge: the cursor key is shared (no forged
    # cursor error), and the page comes from the shared cache (no upstream request).
    resumed = post(CONNECTION, first=2, after=edges[0]["cursor"])
    assert "errors" not in resumed, resumed
    assert [e["node"]["id"] for e in resumed["data"]["callsConnection"]["edges"]] == [
        e["node"]["id"] for e in edges[1:]
    ]
    assert len(sandbox.requests()) == 1

    # Replica 1 again, and replica 2 with replica 1's first question: both from the cache.
    assert post(CONNECTION, first=3)["data"]["callsConnection"] == first
    assert post(CONNECTION, first=3)["data"]["callsConnection"] == first
    assert len(sandbox.requests()) == 1

    # Shared pacing: the account's one upstream slot went to replica 1; a new upstream
    # request on either replica finds it taken in Redis and is refused without reaching
    # the upstream. (Pacing per process would let each replica's first request through.)
    for _ in replicas:
        refused = post("{ calls(size: 7) { id } }")
        assert [e["extensions"]["code"] for e in refused["errors"]] == ["RATE_LIMITED"]
    assert len(sandbox.requests()) == 1

    # Another account has its own slot, taken by whichever replica asks first.
    assert post("{ calls(size: 7) { id } }", SECOND)["data"]["calls"]
    assert len(sandbox.requests()) == 2
