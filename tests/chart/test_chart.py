"""The Helm chart, rendered with Helm's own engine and checked against the
Kubernetes schemas and the properties operators rely on."""

from __future__ import annotations

import copy
import json
import pathlib
import re

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

CHART = pathlib.Path(__file__).resolve().parents[2] / "helm" / "waitroom"
ALL_ON = yaml.safe_load((CHART / "ci" / "all-on-values.yaml").read_text())
KUBE_VERSIONS = ["1.27.0", kubernetes_validate.latest_version()]
# External Redis under Sentinel, scaled on streams per pod, sized by hand,
# mutual TLS with the test's client certificate, the policy on.
SENTINEL_STREAMS = {
    "replicaCount": 4,
    "signingKeys": {"existingSecret": "keys"},
    "externalRedis": {
        "url": "redis://sentinel-0:26379,redis://sentinel-1:26379",
        "sentinelMaster": "sale-redis",
        "existingSecret": "redis-password",
        "sentinelPasswordKey": "sentinel-password",
    },
    "autoscaling": {
        "enabled": True,
        "minReplicas": 4,
        "maxReplicas": 20,
        "targetCPUUtilizationPercentage": 0,
        "targetStreamsPerPod": 80000,
    },
    "config": {"maxStreams": 100000, "balanceInterval": "2s", "balanceStep": 0.2, "balanceTolerance": 0.05},
    "sizing": {"baseMemoryMiB": 256, "memoryPerStreamKiB": 5, "memoryLimitFactor": 2, "cpu": "2"},
    "tls": {"existingSecret": "tls", "clientCaSecret": "client-ca", "testClientSecret": "test-client"},
    "networkPolicy": {"enabled": True, "egress": {"redisCidrs": ["10.1.0.0/16"], "sentinelPort": 26380}},
}
VALUE_SETS = {"defaults": None, "all-on": ALL_ON, "sentinel-streams": SENTINEL_STREAMS}


def render(values=None):
    """The release's manifests, as Kubernetes objects."""
    chart = helm.Chart.load(str(CHART))
    rendered = chart.render(values, name="waitroom", namespace="sales", is_install=True)
    objects = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def notes(values=None):
    chart = helm.Chart.load(str(CHART))
    rendered = chart.render(values, name="waitroom", namespace="sales", is_install=True)
    return next(text for path, text in rendered.items() if path.endswith("NOTES.txt"))


def kinds(objects, kind):
    return [o for o in objects if o["kind"] == kind]


def deployment(values=None):
    [found] = kinds(render(values), "Deployment")
    return found


def container(values=None):
    return deployment(values)["spec"]["template"]["spec"]["containers"][0]


def with_values(**changes):
    values = {}
    for dotted, value in changes.items():
        node = values
        *path, last = dotted.split("__")
        for key in path:
            node = node.setdefault(key, {})
        node[last] = value
    return values


@pytest.mark.parametrize("name", VALUE_SETS)
def test_the_chart_passes_helm_lint(name):
    report = helm.lint(str(CHART), VALUE_SETS[name], strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_manifest_validates_against_the_kubernetes_schemas(name, kube_version):
    objects = render(VALUE_SETS[name])
    assert objects
    for obj in objects:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            # A Prometheus Operator CRD: no schema ships with Kubernetes.
            assert obj["kind"] in ("ServiceMonitor", "PrometheusRule")
            continue
        kubernetes_validate.validate(obj, kube_version, strict=True)


def test_all_optional_parts_render_when_switched_on():
    present = {o["kind"] for o in render(ALL_ON)}
    assert {
        "Deployment",
        "Service",
        "ConfigMap",
        "ServiceAccount",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "PrometheusRule",
        "NetworkPolicy",
        "StatefulSet",
        "Pod",
    } <= present
    names = [o["metadata"]["name"] for o in kinds(render(ALL_ON), "Service")]
    assert "waitroom-headless" in names
    assert kinds(render(ALL_ON), "HorizontalPodAutoscaler")[0]["apiVersion"] == "autoscaling/v2"


def test_probes_are_native_grpc_with_a_numeric_port():
    c = container()
    assert c["livenessProbe"]["grpc"] == {"port": 50051, "service": ""}
    assert c["readinessProbe"]["grpc"] == {"port": 50051, "service": "waitroom.v1.QueueService"}
    assert c["startupProbe"]["grpc"]["port"] == 50051
    assert isinstance(c["startupProbe"]["grpc"]["port"], int)


def test_with_tls_the_probes_read_the_same_health_over_http():
    c = container(ALL_ON)
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_shutdown_has_a_pre_stop_hook_and_a_grace_period_longer_than_the_drain():
    spec = deployment()["spec"]["template"]["spec"]
    assert spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][0] == "/usr/local/bin/waitroomctl"
    assert spec["terminationGracePeriodSeconds"] > 5 + 10
    with pytest.raises(helm.HelmError, match="terminationGracePeriodSeconds"):
        render(with_values(terminationGracePeriodSeconds=12))
    # The preStop pause counts too.
    with pytest.raises(helm.HelmError, match="preStopDelay"):
        render(with_values(preStopDelay="20s"))


def test_pods_are_hardened():
    pod = deployment()["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    sc = pod["containers"][0]["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]


def test_pods_spread_across_zones_and_nodes():
    spread = deployment()["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert {s["topologyKey"] for s in spread} == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}


def test_a_pod_disruption_budget_only_when_more_than_one_pod_can_run():
    key = {"signingKeys__existingSecret": "waitroom-signing-keys"}
    assert not kinds(render(), "PodDisruptionBudget")
    assert kinds(render(with_values(replicaCount=2, **key)), "PodDisruptionBudget")
    assert kinds(
        render(with_values(replicaCount=1, autoscaling__enabled=True, autoscaling__maxReplicas=4, **key)),
        "PodDisruptionBudget",
    )
    assert not kinds(
        render(with_values(replicaCount=1, autoscaling__enabled=True, autoscaling__minReplicas=1, autoscaling__maxReplicas=1)),
        "PodDisruptionBudget",
    )


def test_more_than_one_pod_without_a_shared_signing_key_is_refused_with_the_reason():
    for values in (
        with_values(replicaCount=2),
        with_values(autoscaling__enabled=True, autoscaling__maxReplicas=3),
    ):
        with pytest.raises(helm.HelmError, match="signingKeys.existingSecret"):
            render(values)


def test_secrets_are_referenced_never_generated():
    objects = render(ALL_ON)
    assert not kinds(objects, "Secret"), "the chart creates no Secret"
    for template in (CHART / "templates").rglob("*"):
        if template.is_file():
            text = template.read_text()
            assert "lookup" not in text and "randAlpha" not in text, template
    pod = deployment(ALL_ON)["spec"]["template"]["spec"]
    secret_volumes = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secret_volumes == {"waitroom-signing-keys", "waitroom-api-keys", "waitroom-tls", "waitroom-client-ca"}
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["WAITROOM_SIGNING_KEY"]["value"] == "/etc/waitroom/signing-keys/signing.pem"
    assert env["WAITROOM_API_KEYS"]["value"] == "/etc/waitroom/api-keys"
    external = render(
        with_values(
            externalRedis__existingSecret="redis-auth",
            externalRedis__url="redis://redis-0.db:6379,redis://redis-1.db:6379",
            externalRedis__cluster=True,
            externalRedis__subLines=True,
        )
    )
    [dep] = kinds(external, "Deployment")
    env = {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["WAITROOM_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "redis-auth", "key": "redis-password"}
    assert env["WAITROOM_REDIS_URL"]["value"] == "redis://redis-0.db:6379,redis://redis-1.db:6379"
    assert env["WAITROOM_REDIS_CLUSTER"]["value"] == "true"
    assert env["WAITROOM_REDIS_SUB_LINES"]["value"] == "true"
    # Off by default: a queue with shards above 1 is refused.
    [dep] = kinds(render(None), "Deployment")
    env = {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "WAITROOM_REDIS_SUB_LINES" not in env


def test_configuration_is_waitroom_env_from_a_config_map_with_the_declared_queues():
    [config] = [o for o in kinds(render(ALL_ON), "ConfigMap") if not o["metadata"]["name"].endswith("-dashboard")]
    data = config["data"]
    assert data["WAITROOM_LISTEN"] == "0.0.0.0:50051"
    assert data["WAITROOM_QUEUES"] == (
        "sale:max_active=500,admit_per_second=50,admission_ttl=10m,heartbeat_timeout=2m;"
        "drop:mode=paused,opens_at=2026-12-01T18:00:00Z,prequeue_window=1h"
    )
    assert data["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability:4317"
    envfrom = container(ALL_ON)["envFrom"][0]["configMapRef"]["name"]
    assert envfrom == config["metadata"]["name"]


def test_a_declared_queue_over_sub_lines_needs_the_preview():
    wide = {"queues": [{"id": "sale", "shards": 4, "maxActive": 500}]}
    with pytest.raises(helm.HelmError, match="externalRedis.subLines"):
        render(wide)
    on = {"externalRedis": {"subLines": True}}
    [config] = kinds(render({**wide, **on}), "ConfigMap")
    assert config["data"]["WAITROOM_QUEUES"] == "sale:max_active=500,shards=4"
    scheduled = {"queues": [{"id": "drop", "shards": 2, "opensAt": "2026-12-01T18:00:00Z"}]}
    [opening] = kinds(render({**scheduled, **on}), "ConfigMap")
    assert opening["data"]["WAITROOM_QUEUES"] == "drop:opens_at=2026-12-01T18:00:00Z,shards=2"
    [one] = kinds(render({"queues": [{"id": "plain", "shards": 1}]}), "ConfigMap")
    assert one["data"]["WAITROOM_QUEUES"] == "plain"


def test_freed_memory_goes_back_to_the_system_at_once_unless_told_otherwise():
    [default] = kinds(render(), "ConfigMap")
    assert default["data"]["MIMALLOC_PURGE_DELAY"] == "0"
    [slower] = kinds(render({"config": {"allocatorPurgeDelayMs": 2000000}}), "ConfigMap")
    assert slower["data"]["MIMALLOC_PURGE_DELAY"] == "2000000"


def test_the_bundled_redis_is_off_by_default_and_keeps_an_append_only_file():
    assert not kinds(render(), "StatefulSet")
    [redis] = kinds(render(ALL_ON), "StatefulSet")
    args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:2] == ["--appendonly", "yes"]
    assert container(ALL_ON)["env"][0]["value"].startswith("redis://waitroom-redis:6379")


def test_the_network_policy_admits_grpc_from_chosen_namespaces_and_lets_out_only_what_it_needs():
    [policy] = kinds(render(ALL_ON), "NetworkPolicy")
    grpc_from = policy["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchExpressions"][0]["values"]
    assert grpc_from == ["sales", "frontend", "booking"]
    egress_ports = [p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]]
    assert 6379 in egress_ports and 4317 in egress_ports and 53 in egress_ports


def test_helm_test_runs_waitroomctl_health():
    [pod] = kinds(render(), "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    c = pod["spec"]["containers"][0]
    assert c["command"] == ["/usr/local/bin/waitroomctl"]
    assert c["args"][-1] == "health"
    assert c["args"][1] == "http://waitroom:50051"


def test_notes_tell_how_to_reach_the_service_and_warn_about_missing_secrets():
    text = notes()
    assert "waitroom.sales.svc:50051" in text
    assert "/.well-known/jwks.json" in text
    assert "signingKeys.existingSecret is empty" in text
    assert "signingKeys.existingSecret is empty" not in notes(ALL_ON)


@pytest.mark.parametrize(
    "values, complaint",
    [
        ({"replicaCont": 3}, "replicaCont"),
        ({"service": {"grpcport": 50051}}, "grpcport"),
        ({"replicaCount": "three"}, "replicaCount"),
        ({"config": {"drainDelay": "five seconds"}}, "drainDelay"),
        ({"config": {"watchInterval": "0ms"}}, "watchInterval"),
        ({"config": {"positionBudget": -1}}, "positionBudget"),
        ({"queues": [{"id": "bad id"}]}, "id"),
        ({"queues": [{"maxActive": 3}]}, "id"),
        ({"queues": [{"id": "q", "shards": 17}]}, "shards"),
        ({"queues": [{"id": "q", "shards": 0}]}, "shards"),
        ({"extraVolume": []}, "extraVolume"),
        ({"image": {"digest": "latest"}}, "digest"),
        ({"probes": {"liveness": {"timeoutSecond": 3}}}, "timeoutSecond"),
        ({"serviceMonitor": {"relabeling": []}}, "relabeling"),
        ({"extraVolumeMounts": [{"name": "x"}]}, "mountPath"),
        ({"sizing": {"memoryPerStream": 4}}, "memoryPerStream"),
        ({"autoscaling": {"targetStreamPerPod": 1000}}, "targetStreamPerPod"),
        ({"config": {"balanceStep": 2}}, "balanceStep"),
        ({"externalRedis": {"sentinelmaster": "m"}}, "sentinelmaster"),
    ],
)
def test_the_values_schema_rejects_typos_and_bad_types(values, complaint):
    chart = helm.Chart.load(str(CHART))
    with pytest.raises(helm.HelmError) as refused:
        chart.validate_schema(values)
    assert complaint in str(refused.value)


def test_every_value_is_documented():
    """Each value carries a "# --" comment, unless it is a group of values
    that each carry one, or it sits inside a documented value (a security
    context, resources)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    ancestors = []  # (indent, documented)
    for number, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z][A-Za-z0-9]*):", line)
        if not match:
            continue
        indent = len(match.group(1))
        while ancestors and ancestors[-1][0] >= indent:
            ancestors.pop()
        documented = number > 0 and lines[number - 1].strip().startswith("# --")
        inside_documented = any(doc for _, doc in ancestors)
        rest = [l for l in lines[number + 1 :] if l.strip() and not l.strip().startswith("#")]
        is_group = bool(rest) and len(rest[0]) - len(rest[0].lstrip()) > indent and line.rstrip().endswith(":")
        if not inside_documented and not is_group:
            assert documented, f"values.yaml line {number + 1} ({line.strip()}) has no # -- comment"
        ancestors.append((indent, documented))


def test_common_needs_reach_the_manifests_without_forking_the_chart():
    objects = render(ALL_ON)
    [found] = kinds(objects, "Deployment")
    spec = found["spec"]
    pod = spec["template"]["spec"]
    c = pod["containers"][0]
    assert spec["minReadySeconds"] == 15
    assert pod["priorityClassName"] == "sale-critical"
    assert c["image"] == "waitroom@sha256:" + "0123456789abcdef" * 4
    assert {"secretRef": {"name": "waitroom-extra-env"}} in c["envFrom"]
    assert {"name": "scratch", "mountPath": "/scratch"} in c["volumeMounts"]
    assert {"name": "scratch", "emptyDir": {}} in pod["volumes"]
    assert [i["name"] for i in pod["initContainers"]] == ["wait-for-redis"]
    assert [x["name"] for x in pod["containers"]] == ["waitroom", "log-shipper"]
    assert c["lifecycle"]["preStop"]["exec"]["command"][-1] == "3s"
    assert c["livenessProbe"]["timeoutSeconds"] == 8
    [hpa] = kinds(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["behavior"] == {"scaleDown": {"stabilizationWindowSeconds": 600}}
    [monitor] = kinds(objects, "ServiceMonitor")
    assert monitor["metadata"]["namespace"] == "monitoring"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["sales"]}
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["scrapeTimeout"] == "10s"
    assert endpoint["relabelings"][0]["targetLabel"] == "node"
    assert endpoint["metricRelabelings"][0]["action"] == "drop"


def test_by_default_a_rollout_waits_for_each_pod_and_probes_allow_a_busy_pod_time():
    found = deployment()
    c = container()
    assert found["spec"]["minReadySeconds"] == 10
    assert c["livenessProbe"]["timeoutSeconds"] == 5
    assert c["readinessProbe"]["timeoutSeconds"] == 2
    assert c["lifecycle"]["preStop"]["exec"]["command"][-1] == "2s"
    assert "priorityClassName" not in found["spec"]["template"]["spec"]
    assert c["image"].startswith("waitroom:")


def test_the_service_monitor_selects_the_servers_services_and_not_the_demo_redis():
    objects = render(ALL_ON)
    [monitor] = kinds(objects, "ServiceMonitor")
    wanted = monitor["spec"]["selector"]["matchLabels"]
    selected = [
        s["metadata"]["name"]
        for s in kinds(objects, "Service")
        if wanted.items() <= s["metadata"]["labels"].items()
    ]
    assert "waitroom" in selected
    assert "waitroom-redis" not in selected
    for obj in objects:
        if obj["metadata"]["name"] == "waitroom-redis":
            assert obj["metadata"]["labels"]["app.kubernetes.io/component"] == "redis"


def test_with_reloader_a_change_of_a_secret_the_pods_read_rolls_them():
    reload = deployment(ALL_ON)["metadata"]["annotations"]["secret.reloader.stakater.com/reload"]
    assert reload.split(",") == ["waitroom-signing-keys", "waitroom-api-keys", "waitroom-tls", "waitroom-client-ca"]
    assert "annotations" not in deployment()["metadata"]


def test_pods_are_requested_at_what_they_hold_when_full():
    """Memory request = base + maxStreams x per-stream memory; the limit a
    multiple of it (values.yaml states the formula)."""
    resources = container()["resources"]
    assert resources == {
        "requests": {"cpu": "1", "memory": "910Mi"},
        "limits": {"memory": "1365Mi"},
    }
    smaller = container(with_values(config__maxStreams=100000, sizing__memoryLimitFactor=2))
    assert smaller["resources"]["requests"]["memory"] == "519Mi"
    assert smaller["resources"]["limits"]["memory"] == "1038Mi"
    given = {"requests": {"cpu": "2", "memory": "2Gi"}, "limits": {"memory": "3Gi"}}
    assert container({"resources": given})["resources"] == given


def test_the_autoscaler_can_scale_on_streams_per_pod_and_other_metrics():
    [hpa] = kinds(render(ALL_ON), "HorizontalPodAutoscaler")
    metrics = hpa["spec"]["metrics"]
    assert [m["type"] for m in metrics] == ["Resource", "Pods", "Pods"]
    streams = metrics[1]["pods"]
    assert streams["metric"]["name"] == "waitroom_open_watchers"
    assert streams["target"] == {"type": "AverageValue", "averageValue": "100000"}
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 600
    streams_only = with_values(
        autoscaling__enabled=True,
        autoscaling__targetCPUUtilizationPercentage=0,
        autoscaling__targetStreamsPerPod=50000,
        signingKeys__existingSecret="keys",
    )
    [hpa] = kinds(render(streams_only), "HorizontalPodAutoscaler")
    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["Pods"]
    no_metric = with_values(
        autoscaling__enabled=True,
        autoscaling__targetCPUUtilizationPercentage=0,
        signingKeys__existingSecret="keys",
    )
    with pytest.raises(helm.HelmError) as refused:
        render(no_metric)
    assert "autoscaling needs a metric" in str(refused.value)


def _selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("name", VALUE_SETS)
def test_helm_test_reaches_the_service_through_the_network_policy_and_is_no_endpoint(name):
    objects = render(VALUE_SETS[name])
    [pod] = kinds(objects, "Pod")
    labels = pod["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "test"
    for service in kinds(objects, "Service"):
        assert not _selects(service["spec"].get("selector", {}), labels), service["metadata"]["name"]
    for policy in kinds(objects, "NetworkPolicy"):
        # Not restricted by the server's policy, and let in by it: the
        # gRPC port admits the release's namespace, where the test runs.
        assert not _selects(policy["spec"]["podSelector"]["matchLabels"], labels)
        grpc = policy["spec"]["ingress"][0]
        assert {"port": "grpc", "protocol": "TCP"} in grpc["ports"]
        namespaces = grpc["from"][0]["namespaceSelector"]["matchExpressions"][0]["values"]
        assert "sales" in namespaces


def test_helm_test_presents_a_client_certificate_under_mutual_tls():
    [pod] = kinds(render(ALL_ON), "Pod")
    c = pod["spec"]["containers"][0]
    args = c["args"]
    assert args[1] == "https://waitroom:50051"
    assert args[args.index("--client-cert") + 1] == "/etc/waitroom/client/tls.crt"
    assert args[args.index("--client-key") + 1] == "/etc/waitroom/client/tls.key"
    volumes = {v["name"]: v["secret"]["secretName"] for v in pod["spec"]["volumes"]}
    assert volumes == {"tls": "waitroom-tls", "client": "waitroom-test-client"}
    mounts = {m["name"] for m in c["volumeMounts"]}
    assert mounts == {"tls", "client"}
    without = copy.deepcopy(ALL_ON)
    del without["tls"]["testClientSecret"]
    with pytest.raises(helm.HelmError) as refused:
        render(without)
    assert "tls.testClientSecret" in str(refused.value)
    without["tests"] = {"enabled": False}
    assert kinds(render(without), "Pod") == []


def test_redis_under_sentinel_is_asked_for_its_master_and_its_port_let_out():
    values = with_values(
        externalRedis__url="redis://sentinel-0:26379,redis://sentinel-1:26379",
        externalRedis__sentinelMaster="sale-redis",
        networkPolicy__enabled=True,
    )
    env = {e["name"]: e.get("value") for e in container(values)["env"]}
    assert env["WAITROOM_REDIS_SENTINEL_MASTER"] == "sale-redis"
    assert env["WAITROOM_REDIS_URL"] == "redis://sentinel-0:26379,redis://sentinel-1:26379"
    [policy] = kinds(render(values), "NetworkPolicy")
    ports = [p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]]
    assert 26379 in ports and 6379 in ports
    assert "WAITROOM_REDIS_SENTINEL_MASTER" not in {e["name"] for e in container()["env"]}
    # The Sentinels' password from the Secret, never in the URL.
    env = {e["name"]: e for e in container(SENTINEL_STREAMS)["env"]}
    assert env["WAITROOM_REDIS_SENTINEL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "redis-password",
        "key": "sentinel-password",
    }


def test_watchers_are_balanced_over_the_pods_as_configured():
    [config] = kinds(render(with_values(config__balanceInterval="2s", config__balanceStep=0.2)), "ConfigMap")
    data = config["data"]
    assert data["WAITROOM_BALANCE_INTERVAL"] == "2s"
    assert data["WAITROOM_BALANCE_STEP"] == "0.2"
    assert data["WAITROOM_BALANCE_TOLERANCE"] == "0.1"


def test_position_messages_are_paced_and_budgeted_as_configured():
    [config] = kinds(render(), "ConfigMap")
    assert config["data"]["WAITROOM_POSITION_PACE"] == "1s"
    assert config["data"]["WAITROOM_POSITION_BUDGET"] == "50000"
    [config] = kinds(render(with_values(config__positionPace="2s", config__positionBudget=120000)), "ConfigMap")
    assert config["data"]["WAITROOM_POSITION_PACE"] == "2s"
    assert config["data"]["WAITROOM_POSITION_BUDGET"] == "120000"


def _dashboard_map(values):
    [found] = [o for o in kinds(render(values), "ConfigMap") if o["metadata"]["name"].endswith("-dashboard")]
    return found


def test_the_dashboard_ships_for_the_grafana_sidecar_with_the_sales_panels():
    assert not [o for o in kinds(render(), "ConfigMap") if o["metadata"]["name"].endswith("-dashboard")]
    config_map = _dashboard_map(ALL_ON)
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "Sales"}
    dashboard = json.loads(config_map["data"]["waitroom.json"])
    assert dashboard["uid"] == "waitroom-sale"
    titles = {p["title"] for p in dashboard["panels"]}
    for wanted in [
        "Waiting",
        "Arrivals and admissions",
        "Abandonment",
        "Time waited before admission",
        "Estimated wait at the back of the line",
        "RPC rate",
        "RPC errors",
        "RPC latency p99",
        "Redis latency p99",
        "Streams open",
    ]:
        assert wanted in titles, wanted
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
    # Another sidecar's label, in the sidecar's namespace.
    moved = _dashboard_map(
        with_values(
            grafanaDashboard__enabled=True,
            grafanaDashboard__label="dashboards",
            grafanaDashboard__labelValue="sales",
            grafanaDashboard__namespace="monitoring",
        )
    )
    assert moved["metadata"]["labels"]["dashboards"] == "sales"
    assert moved["metadata"]["namespace"] == "monitoring"


def _rules(values):
    [rule] = kinds(render(values), "PrometheusRule")
    return rule


def test_alerts_ship_as_a_prometheus_rule_with_the_thresholds_given():
    assert not kinds(render(), "PrometheusRule")
    rule = _rules(ALL_ON)
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    alerts = {r["alert"]: r for r in rule["spec"]["groups"][0]["rules"]}
    assert set(alerts) == {
        "WaitroomReplicaNotReady",
        "WaitroomRedisErrors",
        "WaitroomAdmissionStalled",
        "WaitroomLatencyHigh",
        "WaitroomStreamsNearLimit",
        "WaitroomQueueVanished",
        "WaitroomQueueRemade",
    }
    for alert in alerts.values():
        assert 'job="waitroom"' in alert["expr"], alert["alert"]
        # A queue people wait in that nothing re-makes pages someone.
        severity = "critical" if alert["alert"] == "WaitroomQueueVanished" else "warning"
        assert alert["annotations"]["summary"] and alert["labels"]["severity"] == severity
    assert "waitroom_queues_vanished" in alerts["WaitroomQueueVanished"]["expr"]
    assert "> 0.9" in alerts["WaitroomStreamsNearLimit"]["expr"]
    tuned = _rules(
        with_values(
            prometheusRule__enabled=True,
            prometheusRule__selector='namespace="sales", service="waitroom"',
            prometheusRule__p99LatencySeconds=0.25,
            prometheusRule__admissionStalledFor="10m",
            prometheusRule__extraRules=[{"alert": "Mine", "expr": "vector(1)"}],
        )
    )
    tuned_alerts = {r["alert"]: r for r in tuned["spec"]["groups"][0]["rules"]}
    assert "> 0.25" in tuned_alerts["WaitroomLatencyHigh"]["expr"]
    assert '{namespace="sales", service="waitroom", grpc_type="unary"' in tuned_alerts["WaitroomLatencyHigh"]["expr"]
    assert "[10m]" in tuned_alerts["WaitroomAdmissionStalled"]["expr"]
    assert tuned_alerts["WaitroomAdmissionStalled"]["for"] == "10m"
    assert "Mine" in tuned_alerts
