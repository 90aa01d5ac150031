"""Checks of deploy/kubernetes-sharded/, the exporter for a fleet of stores as a StatefulSet.

What ``kubectl kustomize`` renders is checked, not the files one by one: kubernetes-validate
for the core objects, hand-written checks for the Prometheus Operator's CRDs, how the
objects fit together (Service, pods, mounts, the paths of the configuration), the shard
index from the pod index label, ``--total-shards`` equal to the replicas (one value in
kustomization.yaml drives both), and the configuration accepted by the exporter itself.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.cli import build_parser
from tests.test_deploy import (
    ALERTS,
    K8S_VERSIONS,
    REPO,
    check_hardened_exporter,
    check_service_monitor,
    kubectl,
    load_yaml,
    run,
    slug,
    tool,
    validate_core_objects,
)

SHARDED_DIR = REPO / "deploy" / "kubernetes-sharded"
NAME = "shoplazza-upload-exporter"
POD_INDEX_FIELD = "metadata.labels['apps.kubernetes.io/pod-index']"
TOKEN_SECRET = "shoplazza-upload-exporter-tokens"
# Kubernetes' $(VAR) syntax in command and args ($$ escapes a dollar).
_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


# --- helpers ---------------------------------------------------------------------------


def render(directory: Path) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize`` renders from a directory (the test extras' kubectl)."""
    result = run(kubectl(), "kustomize", str(directory))
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict[str, Any]]:
    """The rendered objects, keyed by (kind, name)."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for obj in render(SHARDED_DIR):
        key = (obj["kind"], obj["metadata"]["name"])
        assert key not in found, f"rendered twice: {key}"
        found[key] = obj
    return found


def one(objects: dict[tuple[str, str], dict[str, Any]], kind: str) -> dict[str, Any]:
    """The only rendered object of a kind."""
    (obj,) = [obj for (k, _), obj in objects.items() if k == kind]
    return obj


def exporter_container(statefulset: dict[str, Any]) -> dict[str, Any]:
    """The exporter container of the StatefulSet's pod template (the only container)."""
    (item,) = statefulset["spec"]["template"]["spec"]["containers"]
    assert item["name"] == "exporter"
    found: dict[str, Any] = item
    return found


def shard_settings(statefulset: dict[str, Any]) -> tuple[int, dict[str, Any], list[str]]:
    """(replicas, env by name, args) of the rendered StatefulSet."""
    item = exporter_container(statefulset)
    env = {var["name"]: var for var in item.get("env", [])}
    return statefulset["spec"]["replicas"], env, list(item["args"])


def expand(arg: str, values: dict[str, str]) -> str:
    """An argument as Kubernetes expands it from the container's environment."""

    def one_ref(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return values.get(name, match.group(0))  # undefined references stay as written

    return _VAR_REF.sub(one_ref, arg)


def pod_args(statefulset: dict[str, Any], index: int) -> list[str]:
    """The exporter's arguments in pod ``index``, as the kubelet passes them."""
    _, env, args = shard_settings(statefulset)
    values: dict[str, str] = {}
    for name, var in env.items():
        if "value" in var:
            values[name] = expand(var["value"], values)
        elif var["valueFrom"].get("fieldRef", {}).get("fieldPath") == POD_INDEX_FIELD:
            values[name] = str(index)
    return [expand(arg, values) for arg in args]


def mounts_and_volumes(
    statefulset: dict[str, Any],
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """(mounts by mount path, volumes and claim templates by name) of the exporter."""
    pod = statefulset["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    for claim in statefulset["spec"].get("volumeClaimTemplates", []):
        volumes[claim["metadata"]["name"]] = {"claim": claim}
    mounts = {
        mount["mountPath"]: mount for mount in exporter_container(statefulset)["volumeMounts"]
    }
    return mounts, volumes


def volume_for(path: str, statefulset: dict[str, Any]) -> dict[str, Any]:
    """The volume mounted at the directory of ``path`` (a file path or a glob)."""
    mounts, volumes = mounts_and_volumes(statefulset)
    directory = str(Path(path).parent)
    assert directory in mounts, f"nothing is mounted at {directory} (for {path})"
    return volumes[mounts[directory]["name"]]


def main_config(objects: dict[tuple[str, str], dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """(path of --config.file, the parsed main configuration of the ConfigMap)."""
    statefulset = objects[("StatefulSet", NAME)]
    (arg,) = [a for a in exporter_container(statefulset)["args"] if a.startswith("--config.file=")]
    path = arg.partition("=")[2]
    volume = volume_for(path, statefulset)
    config_map = objects[("ConfigMap", volume["configMap"]["name"])]
    config: dict[str, Any] = yaml.safe_load(config_map["data"][Path(path).name])
    return path, config


# --- the kustomization -------------------------------------------------------------------


def test_kustomization_lists_every_manifest() -> None:
    kustomization = load_yaml(SHARDED_DIR / "kustomization.yaml")
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    manifests = {path.name for path in SHARDED_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(manifests)


def test_renders_the_fleet_objects_and_no_secret(
    objects: dict[tuple[str, str], dict[str, Any]],
) -> None:
    kinds = sorted(kind for kind, _ in objects)
    assert kinds == sorted(
        [
            "ConfigMap",
            "ConfigMap",
            "StatefulSet",
            "Service",
            "ServiceMonitor",
            "PrometheusRule",
            "PodDisruptionBudget",
            "NetworkPolicy",
        ]
    )
    # Tokens come from a Secret created out of band, never a placeholder applied by -k.
    assert all(kind != "Secret" for kind, _ in objects)
    assert "REPLACE" not in yaml.safe_dump_all(list(objects.values()))


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_core_objects_validate(
    objects: dict[tuple[str, str], dict[str, Any]], version: str
) -> None:
    validate_core_objects(
        ((f"{kind} {name}", obj) for (kind, name), obj in objects.items()), version
    )


# --- shards ------------------------------------------------------------------------------


def test_shard_index_comes_from_the_pod_index_label(
    objects: dict[tuple[str, str], dict[str, Any]],
) -> None:
    statefulset = objects[("StatefulSet", NAME)]
    item = exporter_container(statefulset)
    _, env, args = shard_settings(statefulset)
    assert env["SHARD"]["valueFrom"] == {"fieldRef": {"fieldPath": POD_INDEX_FIELD}}
    assert "--shard=$(SHARD)" in args
    assert "--total-shards=$(TOTAL_SHARDS)" in args
    # No shell: the image's entrypoint gets the arguments, Kubernetes expands $(VAR).
    assert "command" not in item


def test_total_shards_equals_the_replicas(
    objects: dict[tuple[str, str], dict[str, Any]],
) -> None:
    statefulset = objects[("StatefulSet", NAME)]
    replicas, env, _ = shard_settings(statefulset)
    assert replicas >= 2
    assert env["TOTAL_SHARDS"] == {"name": "TOTAL_SHARDS", "value": str(replicas)}


def test_every_pod_gets_its_own_shard(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    statefulset = objects[("StatefulSet", NAME)]
    replicas, _, _ = shard_settings(statefulset)
    parser = build_parser()
    for index in range(replicas):
        parsed = parser.parse_args(pod_args(statefulset, index))
        assert (parsed.shard, parsed.total_shards) == (index, replicas)
        assert parsed.config_file.endswith("config.yaml")


def test_the_shard_count_is_one_value(tmp_path: Path) -> None:
    """Changing the count in kustomization.yaml changes both replicas and --total-shards."""
    copy = tmp_path / "kubernetes-sharded"
    shutil.copytree(SHARDED_DIR, copy)
    shutil.copytree(SHARDED_DIR.parent / "components", tmp_path / "components")
    kustomization = load_yaml(copy / "kustomization.yaml")
    (entry,) = kustomization["replicas"]
    assert entry == {"name": NAME, "count": entry["count"]}
    entry["count"] = 7
    (copy / "kustomization.yaml").write_text(yaml.safe_dump(kustomization), encoding="utf-8")
    (statefulset,) = [obj for obj in render(copy) if obj["kind"] == "StatefulSet"]
    replicas, env, _ = shard_settings(statefulset)
    assert replicas == 7
    assert env["TOTAL_SHARDS"]["value"] == "7"
    # statefulset.yaml itself holds no second copy of the count.
    raw = load_yaml(SHARDED_DIR / "statefulset.yaml")
    assert "replicas" not in raw["spec"]
    raw_env = {var["name"]: var for var in exporter_container(raw)["env"]}
    assert not str(raw_env["TOTAL_SHARDS"].get("value", "")).isdigit()


# --- how the objects fit together ------------------------------------------------------


def test_headless_service_selects_the_pods(
    objects: dict[tuple[str, str], dict[str, Any]],
) -> None:
    statefulset, service = objects[("StatefulSet", NAME)], one(objects, "Service")
    assert service["spec"]["clusterIP"] == "None"
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    pod_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert statefulset["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    named = {p["name"]: p["containerPort"] for p in exporter_container(statefulset)["ports"]}
    assert named[port["targetPort"]] == port["port"] == 9877
    # The Prometheus Operator makes the Service name the `job`; the alerts select on it.
    rule = one(objects, "PrometheusRule")
    (down,) = [
        r
        for group in rule["spec"]["groups"]
        for r in group["rules"]
        if r.get("alert") == "ShoplazzaExporterDown"
    ]
    job = re.search(r'up\{job=~"([^"]+)"\}', down["expr"])
    assert job is not None and re.fullmatch(job.group(1), service["metadata"]["name"])


def test_service_monitor_scrapes_every_pod(
    objects: dict[tuple[str, str], dict[str, Any]],
) -> None:
    monitor, service = one(objects, "ServiceMonitor"), one(objects, "Service")
    assert set(monitor["spec"]) == {"selector", "endpoints"}
    endpoint = check_service_monitor(monitor, service)
    assert re.fullmatch(r"\d+s", endpoint["interval"])
    # A headless Service lists every pod as an endpoint: one target per shard, none
    # balanced away (a ClusterIP would hide all but one shard behind one address).
    assert service["spec"]["clusterIP"] == "None"


def test_prometheus_rule_equals_alerts_file(
    objects: dict[tuple[str, str], dict[str, Any]],
) -> None:
    rule = one(objects, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule["spec"]) == {"groups"}
    assert rule["spec"]["groups"] == load_yaml(ALERTS)["groups"]
    # Alerts hold across shards: none groups or joins by instance except the ones about
    # the exporter process itself.
    for group in rule["spec"]["groups"]:
        for item in group["rules"]:
            if item["alert"].startswith(("ShoplazzaUploadTask", "ShoplazzaApi")):
                assert "instance" not in item["expr"], item["alert"]


def test_security_probes_and_parallel_shards(
    objects: dict[tuple[str, str], dict[str, Any]],
) -> None:
    statefulset = objects[("StatefulSet", NAME)]
    assert statefulset["spec"]["podManagementPolicy"] == "Parallel"
    pod = statefulset["spec"]["template"]["spec"]
    check_hardened_exporter(pod, exporter_container(statefulset))
    assert pod["securityContext"]["fsGroup"] == 65532  # the state volume is writable
    assert pod["automountServiceAccountToken"] is False


def test_each_pod_has_its_own_state_volume(
    objects: dict[tuple[str, str], dict[str, Any]],
) -> None:
    statefulset = objects[("StatefulSet", NAME)]
    _, config = main_config(objects)
    volume = volume_for(config["state_file"], statefulset)
    assert "claim" in volume, "the state file must live on a volumeClaimTemplates claim"
    claim = volume["claim"]["spec"]
    assert claim["accessModes"] == ["ReadWriteOnce"]
    assert claim["resources"]["requests"]["storage"]
    mounts, _ = mounts_and_volumes(statefulset)
    assert mounts[str(Path(config["state_file"]).parent)].get("readOnly") is not True


def test_config_paths_match_the_mounts(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    statefulset = objects[("StatefulSet", NAME)]
    mounts, _ = mounts_and_volumes(statefulset)
    assert all("subPath" not in mount for mount in mounts.values())  # rotation reaches files
    _, config = main_config(objects)
    assert config["store_files"]
    for pattern in config["store_files"]:
        volume = volume_for(pattern, statefulset)
        stores = objects[("ConfigMap", volume["configMap"]["name"])]
        assert stores["metadata"]["name"] != NAME, "store files in their own ConfigMap"
        assert all(Path(key).match(Path(pattern).name) for key in stores["data"])
    defaults = config["defaults"]
    token = volume_for(defaults["access_token_file"], statefulset)
    assert token["secret"]["secretName"] == TOKEN_SECRET
    assert Path(defaults["access_token_file"]).name == "{store}"
    for pattern in defaults["task_id_files"]:
        assert "{store}" in pattern
        tasks = volume_for(str(Path(pattern).parent), statefulset)
        assert tasks["persistentVolumeClaim"]["readOnly"] is True


def test_configmaps_are_accepted_by_the_exporter(
    objects: dict[tuple[str, str], dict[str, Any]], tmp_path: Path
) -> None:
    """The rendered ConfigMaps, written where the pod mounts them (under tmp_path), pass
    ``--config.check``, with every store of the store files; without a store's token the
    check fails and names that store's file."""
    statefulset = objects[("StatefulSet", NAME)]
    config_path, _ = main_config(objects)
    mounts, volumes = mounts_and_volumes(statefulset)
    names: list[str] = []
    for mount_path, mount in mounts.items():
        directory = tmp_path / mount_path.lstrip("/")
        directory.mkdir(parents=True)
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            for key, text in objects[("ConfigMap", volume["configMap"]["name"])]["data"].items():
                text = text.replace("/etc/", f"{tmp_path}/etc/").replace(
                    "/var/", f"{tmp_path}/var/"
                )
                (directory / key).write_text(text, encoding="utf-8")
                if key != Path(config_path).name:
                    names += [store["name"] for store in yaml.safe_load(text)["stores"]]
    assert len(names) >= 2
    token_dir = tmp_path / "var/run/secrets/shoplazza"
    for name in names:
        (token_dir / name).write_text(f"{name}-token-0123456789abcdef\n", encoding="utf-8")

    command = [sys.executable, "-m", "exporter", f"--config.file={tmp_path}{config_path}"]

    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command, "--config.check"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    result = check()
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(names)} stores" in result.stdout

    (token_dir / names[-1]).unlink()
    result = check()
    assert result.returncode != 0
    assert f"{names[-1]}.yaml" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


# --- docs/sharding.md (was the README's "Many stores") -------------------------------------

SHARDING_MD = REPO / "docs" / "sharding.md"


def many_stores_section() -> str:
    """docs/sharding.md: many stores and sharding."""
    return SHARDING_MD.read_text(encoding="utf-8")


def test_sharding_doc_promql_parses(tmp_path: Path) -> None:
    section = many_stores_section()
    exprs = [
        line.strip()
        for block in re.findall(r"```promql\n(.*?)```", section, re.DOTALL)
        for line in block.splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert "count by (store, task_id) (shoplazza_upload_task_files) > 1" in exprs
    assert any(expr.startswith("sum by (store) (rate(") for expr in exprs)
    records = [{"record": f"readme:fleet{i}", "expr": expr} for i, expr in enumerate(exprs)]
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "fleet", "rules": records}]}))
    result = run(tool("promtool"), "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_sharding_doc_links_exist() -> None:
    section = many_stores_section()
    links = re.findall(r"\]\(\.\./(deploy/[^)#]+)\)", section)
    assert "deploy/kubernetes-sharded/" in links
    for link in links:
        assert (REPO / link).exists(), link
    anchors = {slug(heading) for heading in re.findall(r"^#+ (.+)$", section, re.MULTILINE)}
    for anchor in re.findall(r"\]\(#([^)]+)\)", section):
        assert anchor in anchors, anchor
    kustomization = load_yaml(SHARDED_DIR / "kustomization.yaml")
    assert "replicas[0].count" in section and kustomization["replicas"][0]["count"]
    assert TOKEN_SECRET in section


# --- disruption budget and network policy (deploy/components/) ---------------------------


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a label selector of matchLabels only matches these labels."""
    assert set(selector) == {"matchLabels"}, selector
    return bool(selector["matchLabels"]) and selector["matchLabels"].items() <= labels.items()


def test_disruption_budget_takes_one_shard_at_a_time(
    objects: dict[tuple[str, str], dict[str, Any]],
) -> None:
    budget = one(objects, "PodDisruptionBudget")
    statefulset = objects[("StatefulSet", NAME)]
    assert selects(
        budget["spec"]["selector"], statefulset["spec"]["template"]["metadata"]["labels"]
    )
    # One at a time, and never 0 (that would block every node drain for ever).
    assert budget["spec"]["maxUnavailable"] == 1
    assert "minAvailable" not in budget["spec"]
    assert budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    # Reusable: it names no shard, no StatefulSet, no replica count.
    assert load_yaml(REPO / "deploy/components/disruption-budget/kustomization.yaml")["kind"] == (
        "Component"
    )


PROMETHEUS_PEER = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
}


def test_network_policy_admits_prometheus_and_lets_out_dns_and_https_only(
    objects: dict[tuple[str, str], dict[str, Any]],
) -> None:
    policy = one(objects, "NetworkPolicy")
    statefulset = objects[("StatefulSet", NAME)]
    spec = policy["spec"]
    assert selects(spec["podSelector"], statefulset["spec"]["template"]["metadata"]["labels"])
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    # Ingress: one rule, from Prometheus' pods in its namespace (both selectors in ONE
    # peer: pods of that name in that namespace, not either), to the metrics port only.
    (ingress,) = spec["ingress"]
    assert ingress["from"] == [PROMETHEUS_PEER]
    (port,) = ingress["ports"]
    named = {p["name"]: p["containerPort"] for p in exporter_container(statefulset)["ports"]}
    assert port == {"protocol": "TCP", "port": "metrics"} and "metrics" in named
    # Egress: to any address, but DNS and HTTPS only.
    allowed = set()
    for rule in spec["egress"]:
        assert "to" not in rule, rule
        allowed |= {(p["protocol"], p["port"]) for p in rule["ports"]}
    assert allowed == {("UDP", 53), ("TCP", 53), ("TCP", 443)}
    # The labels the policy expects are the ones the docs tell users to adapt.
    docs = (REPO / "docs" / "mixin.md").read_text(encoding="utf-8")
    for text in ("kubernetes.io/metadata.name: monitoring", "app.kubernetes.io/name: prometheus"):
        assert text in docs


def test_documented_proxy_patch_opens_the_proxy_and_nothing_else(tmp_path: Path) -> None:
    """docs/mixin.md's overlay for an outbound proxy, rendered: egress to the proxy's
    address and port is added, every other rule stays."""
    docs = (REPO / "docs" / "mixin.md").read_text(encoding="utf-8")
    section = docs.split("### With an outbound proxy", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    shutil.copytree(REPO / "deploy", tmp_path / "deploy")
    overlay = tmp_path / "deploy" / "my-fleet"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(block, encoding="utf-8")
    rendered = {(o["kind"], o["metadata"]["name"]): o for o in render(overlay)}
    policy = one(rendered, "NetworkPolicy")
    unpatched = {(o["kind"], o["metadata"]["name"]): o for o in render(SHARDED_DIR)}
    before = one(unpatched, "NetworkPolicy")
    added = [rule for rule in policy["spec"]["egress"] if rule not in before["spec"]["egress"]]
    (rule,) = added
    (peer,) = rule["to"]
    assert set(peer) == {"ipBlock"} and peer["ipBlock"]["cidr"].endswith("/32")
    assert [p["protocol"] for p in rule["ports"]] == ["TCP"]
    assert policy["spec"]["ingress"] == before["spec"]["ingress"]
    validate_core_objects([("NetworkPolicy with a proxy", policy)], K8S_VERSIONS[-1])
