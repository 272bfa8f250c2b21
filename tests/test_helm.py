"""helm/evalstream, checked with real tools and real schemas; no cluster runs here.

- a real helm v4 (``bash .ci/install`` puts it in ~/.cache/evalstream/tools/bin) lints the chart with
  ``--strict`` and renders it for the default values and each example in helm/evalstream/examples/;
- every rendered core object passes kubernetes-validate's strict schemas of two Kubernetes versions;
- every ServiceMonitor, PrometheusRule and FlinkDeployment passes its CRD's OpenAPI schema from
  ../shared/k8s-crds/ (unknown fields rejected, as the API server's strict field validation does);
- the rendered rules pass ``promtool check rules`` and equal deploy/prometheus/rules/; the rendered
  dashboards equal deploy/grafana/dashboards/;
- the environment each container gets builds the process's real settings class;
- bad values fail in ``helm template`` with the schema's message naming the value.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic_settings import BaseSettings

from evalstream.exporter.settings import ExporterSettings
from evalstream.judges.llm_http import LLMJudgeSettings
from evalstream.judges.settings import EncoderSettings, JudgeServerSettings
from evalstream.pipeline.sampling import SamplingConfig
from evalstream.pipeline.settings import PipelineSettings, parse_endpoints
from evalstream.runtime.settings import KafkaSettings
from evalstream.wire.cascade_config import CascadeConfig, default_cascade

from .conftest import ROOT

CHART = ROOT / "helm" / "evalstream"
EXAMPLES = sorted((CHART / "examples").glob("*.yaml"))
VALUE_SETS = ["default", *(p.stem for p in EXAMPLES)]
RULES_DIR = ROOT / "deploy" / "prometheus" / "rules"
DASHBOARDS_DIR = ROOT / "deploy" / "grafana" / "dashboards"
CRDS = ROOT.parent / "shared" / "k8s-crds"
CRD_FILES = {
    "ServiceMonitor": CRDS / "prometheus-operator" / "monitoring.coreos.com_servicemonitors.yaml",
    "PrometheusRule": CRDS / "prometheus-operator" / "monitoring.coreos.com_prometheusrules.yaml",
    "FlinkDeployment": CRDS / "flink-kubernetes-operator" / "flinkdeployments.flink.apache.org-v1.yml",
}
#: The oldest Kubernetes the chart supports (native sidecars, Chart.yaml's kubeVersion) and a current one.
KUBE_VERSIONS = ["1.29.0", "1.35.0"]
#: Environment prefix -> the settings class that reads it.
SETTINGS: dict[str, type[BaseSettings]] = {
    "EVALSTREAM_KAFKA_": KafkaSettings,
    "EVALSTREAM_JUDGE_": JudgeServerSettings,
    "EVALSTREAM_ENCODER_": EncoderSettings,
    "EVALSTREAM_LLM_": LLMJudgeSettings,
    "EVALSTREAM_EXPORTER_": ExporterSettings,
    "EVALSTREAM_PIPELINE_": PipelineSettings,
}


# ------------------------------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def helm() -> str:
    tools = Path(os.environ.get("EVALSTREAM_TOOLS_DIR", Path.home() / ".cache" / "evalstream" / "tools"))
    path = tools / "bin" / "helm"
    if not path.is_file():
        pytest.fail(f"helm not found at {path}: run `bash .ci/install` (it fetches helm v4 once)")
    out = subprocess.run([str(path), "version", "--short"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("v4."), f"expected helm v4, got {out.stdout!r}"
    return str(path)


def _helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=120, check=False, cwd=ROOT)


def _values_args(value_set: str) -> list[str]:
    return [] if value_set == "default" else ["-f", str(CHART / "examples" / f"{value_set}.yaml")]


def _template(helm: str, *args: str) -> list[dict[str, Any]]:
    done = _helm(helm, "template", "ev", str(CHART), "--namespace", "evalstream", *args)
    assert done.returncode == 0, f"helm template {' '.join(args)} failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def rendered(helm: str) -> dict[str, list[dict[str, Any]]]:
    return {name: _template(helm, *_values_args(name)) for name in VALUE_SETS}


def _of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def _pod_specs(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod spec) of every pod an object makes, the FlinkDeployment's templates included."""
    name = f"{obj['kind']}/{obj['metadata']['name']}"
    if obj["kind"] in ("Deployment", "StatefulSet", "Job"):
        yield name, obj["spec"]["template"]["spec"]
    if obj["kind"] == "FlinkDeployment":
        for part in ("jobManager", "taskManager"):
            yield f"{name} {part}", obj["spec"][part]["podTemplate"]["spec"]


def _strict(schema: Any) -> Any:
    """A CRD schema that rejects unknown fields, as the API server's strict field validation does
    (CRD schemas leave additionalProperties open; the server prunes or rejects what they don't name)."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def crd_validators() -> dict[str, jsonschema.protocols.Validator]:
    validators = {}
    for kind, path in CRD_FILES.items():
        if not path.is_file():
            pytest.fail(f"CRD schema {path} missing: the chart's tests read ../shared/k8s-crds (SOURCE.md)")
        crd = yaml.safe_load(path.read_text())
        assert crd["spec"]["names"]["kind"] == kind
        (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
        schema = _strict(version["schema"]["openAPIV3Schema"])
        # The API server checks these itself; the CRD's schema leaves them out.
        schema["properties"] |= {
            "apiVersion": {"const": crd["spec"]["group"] + "/" + version["name"]},
            "kind": {"const": kind},
            "metadata": {"type": "object"},
        }
        validators[kind] = jsonschema.Draft7Validator(schema)
    return validators


def _crd_errors(validators: dict[str, Any], obj: dict[str, Any]) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validators[obj["kind"]].iter_errors(obj)
    ]


def _env(container: dict[str, Any]) -> dict[str, str]:
    """The container's plain environment; Secret references become a placeholder value."""
    env = {}
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", "<from-secret>")
    return env


# ------------------------------------------------------------------------------- one source of truth


def test_chart_copies_equal_deploy_files():
    for folder, source, pattern in (
        ("prometheus-rules", RULES_DIR, "*.yml"),
        ("dashboards", DASHBOARDS_DIR, "*.json"),
    ):
        ours = {p.name: p.read_bytes() for p in sorted((CHART / "files" / folder).glob(pattern))}
        theirs = {p.name: p.read_bytes() for p in sorted(source.glob(pattern))}
        assert theirs, f"nothing in {source}"
        assert ours == theirs, (
            f"helm/evalstream/files/{folder} differs from {source.relative_to(ROOT)}: "
            "run `python helm/sync_chart_files.py` and commit"
        )


def test_no_symlinks_in_the_chart():
    links = [str(p.relative_to(ROOT)) for p in CHART.rglob("*") if p.is_symlink()]
    assert links == []


# -------------------------------------------------------------------------------------- lint, render


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_lint_strict(helm, value_set):
    done = _helm(helm, "lint", "--strict", str(CHART), *_values_args(value_set))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


def test_examples_exist_and_render_what_they_say(rendered):
    assert {"minimal", "production", "judges-only"} <= set(VALUE_SETS)
    prod = rendered["production"]
    assert {h["spec"]["scaleTargetRef"]["name"] for h in _of_kind(prod, "HorizontalPodAutoscaler")} == {
        "ev-evalstream-judge-rules",
        "ev-evalstream-judge-encoder",
        "ev-evalstream-judge-llm",
    }
    judges_only = rendered["judges-only"]
    assert {o["kind"] for o in judges_only} == {
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "ServiceAccount",
    }
    assert len(_of_kind(judges_only, "Deployment")) == 3


def test_package_carries_the_files_and_not_the_examples(helm, tmp_path):
    done = _helm(helm, "package", str(CHART), "--destination", str(tmp_path))
    assert done.returncode == 0, done.stderr
    (package,) = tmp_path.glob("evalstream-*.tgz")
    with tarfile.open(package) as tar:
        names = set(tar.getnames())
    assert "evalstream/values.schema.json" in names
    assert {f"evalstream/files/prometheus-rules/{p.name}" for p in RULES_DIR.glob("*.yml")} <= names
    assert {f"evalstream/files/dashboards/{p.name}" for p in DASHBOARDS_DIR.glob("*.json")} <= names
    assert not [n for n in names if "/examples/" in n]


# ----------------------------------------------------------------------------------- schema checks


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_core_objects_pass_kubernetes_validate_strict(rendered, value_set, kube_version):
    core = [o for o in rendered[value_set] if o["kind"] not in CRD_FILES]
    assert core
    for obj in core:
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} ({value_set}, {kube_version}): {exc}")


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_custom_resources_pass_their_crd_schemas(rendered, crd_validators, value_set):
    custom = [o for o in rendered[value_set] if o["kind"] in CRD_FILES]
    assert custom
    for obj in custom:
        assert obj["apiVersion"] in {"monitoring.coreos.com/v1", "flink.apache.org/v1beta1"}
        errors = _crd_errors(crd_validators, obj)
        assert errors == [], f"{obj['kind']}/{obj['metadata']['name']} ({value_set}): {errors}"
    kinds = {o["kind"] for o in rendered["default"]}
    assert set(CRD_FILES) <= kinds


def test_the_validators_reject_broken_objects(rendered, crd_validators):
    """The checks above can fail: a misspelt field, a wrong type, are caught by both validators."""
    objects = rendered["default"]
    deployment = copy.deepcopy(_of_kind(objects, "Deployment")[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[0], strict=True)
    monitor = copy.deepcopy(_of_kind(objects, "ServiceMonitor")[0])
    monitor["spec"]["endpoints"][0]["scrapeTimout"] = "10s"
    assert any("scrapeTimout" in e for e in _crd_errors(crd_validators, monitor))
    flink = copy.deepcopy(_of_kind(objects, "FlinkDeployment")[0])
    flink["spec"]["job"]["parallelism"] = "two"
    assert any("job/parallelism" in e for e in _crd_errors(crd_validators, flink))


# ----------------------------------------------------------------------- rules and dashboards


def test_rendered_rules_equal_deploy_and_pass_promtool(rendered, tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: apt-get install prometheus (bash .ci/install does it)")
    (rule,) = _of_kind(rendered["default"], "PrometheusRule")
    groups = rule["spec"]["groups"]
    expected = [g for p in sorted(RULES_DIR.glob("*.yml")) for g in yaml.safe_load(p.read_text())["groups"]]
    assert groups == expected
    path = tmp_path / "rendered-rules.yml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    done = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    count = sum(len(g["rules"]) for g in expected)
    assert f"SUCCESS: {count} rules found" in done.stdout


def test_rendered_dashboards_equal_deploy(rendered):
    maps = {
        key: (cm, text)
        for cm in _of_kind(rendered["default"], "ConfigMap")
        for key, text in cm.get("data", {}).items()
        if key.endswith(".json")
    }
    files = {p.name: p.read_text() for p in sorted(DASHBOARDS_DIR.glob("*.json"))}
    assert set(maps) == set(files)
    for name, (cm, text) in maps.items():
        assert text == files[name], f"ConfigMap {cm['metadata']['name']}: {name} differs from deploy/"
        assert json.loads(text)["uid"]
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_dashboard_label_and_namespace_are_configurable(helm):
    objects = _template(
        helm,
        "--set",
        "monitoring.dashboards.label=my_dashboards",
        "--set",
        "monitoring.dashboards.labelValue=yes",
        "--set",
        "monitoring.dashboards.namespace=monitoring",
    )
    maps = _of_kind(objects, "ConfigMap")
    assert len(maps) == len(list(DASHBOARDS_DIR.glob("*.json")))
    for cm in maps:
        assert cm["metadata"]["labels"]["my_dashboards"] == "yes"
        assert "grafana_dashboard" not in cm["metadata"]["labels"]
        assert cm["metadata"]["namespace"] == "monitoring"


def test_prometheus_operator_selector_labels(rendered):
    for obj in [
        *_of_kind(rendered["minimal"], "ServiceMonitor"),
        *_of_kind(rendered["minimal"], "PrometheusRule"),
    ]:
        assert obj["metadata"]["labels"]["release"] == "kube-prometheus-stack", obj["metadata"]["name"]


def test_scraped_under_the_job_names_of_the_rules_and_the_local_stack(rendered):
    """The exporter is job evalstream-exporter (the alerts ask for up{job="evalstream-exporter"}); every
    judge tier is job evalstream-judges, as `evalstream up` names its scrape job and the rule tests do."""
    objects = rendered["production"]
    alerts = (RULES_DIR / "evalstream-alerts.yml").read_text()
    assert 'up{job="evalstream-exporter"}' in alerts
    assert 'job="evalstream-judges"' in (ROOT / "deploy" / "prometheus" / "tests" / "judges.yml").read_text()
    services = _of_kind(objects, "Service")
    monitors = _of_kind(objects, "ServiceMonitor")
    assert len(monitors) == 4
    for monitor in monitors:
        selector = monitor["spec"]["selector"]["matchLabels"].items()
        (service,) = [s for s in services if selector <= s["metadata"]["labels"].items()]
        job = service["metadata"]["labels"][monitor["spec"]["jobLabel"]]
        name = service["metadata"]["name"]
        assert job == ("evalstream-exporter" if name.endswith("-exporter") else "evalstream-judges"), name
        assert monitor["spec"]["endpoints"][0]["port"] in [p["name"] for p in service["spec"]["ports"]]


# ------------------------------------------------------------------ pods: security, probes, settings


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_container_is_locked_down_with_resources(rendered, value_set):
    pods = [p for o in rendered[value_set] for p in _pod_specs(o)]
    assert pods
    for where, pod in pods:
        flink_pod = "FlinkDeployment" in where
        containers = [*pod.get("initContainers", []), *pod["containers"]]
        for c in containers:
            if flink_pod and c["name"] == "flink-main-container":
                continue  # the operator's container; the shared podTemplate locks it down (below)
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, (where, c["name"])
            assert sc["allowPrivilegeEscalation"] is False, (where, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"], (where, c["name"])
            assert sc["runAsNonRoot"] is True, (where, c["name"])
            assert c["resources"]["requests"] and c["resources"]["limits"], (where, c["name"])
        if not flink_pod:
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["securityContext"]["runAsUser"] != 0
    for flink in _of_kind(rendered[value_set], "FlinkDeployment"):
        shared = flink["spec"]["podTemplate"]["spec"]
        assert shared["securityContext"]["runAsNonRoot"] is True
        (main,) = shared["containers"]
        assert main["name"] == "flink-main-container"
        assert main["securityContext"]["readOnlyRootFilesystem"] is True
        assert main["securityContext"]["capabilities"]["drop"] == ["ALL"]


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_long_running_containers_have_probes(rendered, value_set):
    for where, pod in (p for o in rendered[value_set] for p in _pod_specs(o)):
        long_running = [c for c in pod["containers"] if c["name"] != "flink-main-container"]
        long_running += [c for c in pod.get("initContainers", []) if c.get("restartPolicy") == "Always"]
        for c in long_running:
            assert "livenessProbe" in c, (where, c["name"])
            assert "readinessProbe" in c or "startupProbe" in c, (where, c["name"])


def test_judges_use_the_grpc_health_service(rendered):
    deployments = [
        d for d in _of_kind(rendered["production"], "Deployment") if "-judge-" in d["metadata"]["name"]
    ]
    assert len(deployments) == 3
    for d in deployments:
        (c,) = d["spec"]["template"]["spec"]["containers"]
        port = next(p["containerPort"] for p in c["ports"] if p["name"] == "grpc")
        assert c["readinessProbe"]["grpc"] == {"port": port, "service": "evalstream.v1.JudgeService"}
        assert c["livenessProbe"]["grpc"] == {"port": port}
        assert _env(c)["EVALSTREAM_JUDGE_PORT"] == str(port)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_environment_builds_the_real_settings(rendered, value_set, monkeypatch):
    """Every EVALSTREAM_* variable a container gets is a field of the settings class of its prefix, and
    the whole environment builds that class (types, ranges and validators of the code, not the chart)."""
    checked = 0
    for where, pod in (p for o in rendered[value_set] for p in _pod_specs(o)):
        for c in [*pod.get("initContainers", []), *pod["containers"]]:
            env = {k: v for k, v in _env(c).items() if k.startswith("EVALSTREAM_")}
            for prefix, cls in SETTINGS.items():
                ours = {k: v for k, v in env.items() if k.startswith(prefix)}
                unknown = {k for k in ours if k.removeprefix(prefix).lower() not in cls.model_fields}
                assert not unknown, f"{where} {c['name']}: {sorted(unknown)} are not fields of {cls.__name__}"
                if not ours:
                    continue
                with monkeypatch.context() as m:
                    for key in [k for k in os.environ if k.startswith("EVALSTREAM_")]:
                        m.delenv(key)
                    for key, value in ours.items():
                        m.setenv(key, value)
                    cls()  # raises a ValidationError naming the variable when the chart gets it wrong
                checked += 1
                env = {k: v for k, v in env.items() if not k.startswith(prefix)}
            assert env == {}, f"{where} {c['name']}: {sorted(env)} match no settings class"
    assert checked


def test_schema_settings_names_are_the_settings_fields():
    """values.schema.json lists, under each settings map, only fields of the class that reads them."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    defs, props = schema["definitions"], schema["properties"]
    maps = {
        "kafka": (props["kafka"]["properties"], KafkaSettings),
        "judges.*.settings": (defs["judgeSettings"]["properties"], JudgeServerSettings),
        "judges.llm.llm": (defs["llmSettings"]["properties"], LLMJudgeSettings),
        "exporter.settings": (props["exporter"]["properties"]["settings"]["properties"], ExporterSettings),
        "pipeline.settings": (props["pipeline"]["properties"]["settings"]["properties"], PipelineSettings),
    }
    chart_only = {
        "sasl_password_secret",
        "ssl_ca_secret",
    }  # Secret references, become sasl_password/ssl_cafile
    for where, (names, cls) in maps.items():
        unknown = set(names) - chart_only - set(cls.model_fields)
        assert not unknown, f"values.schema.json {where}: {sorted(unknown)} are not fields of {cls.__name__}"
        assert len(names) >= 4


#: Settings the chart sets itself (addresses, ports, paths, Secrets), and settings a deployment has no
#: use for, with why. Every other field of a settings class must be a value (the next test).
CHART_OWNED: dict[type[BaseSettings], set[str]] = {
    KafkaSettings: {"sasl_password", "ssl_cafile"},  # from kafka.sasl_password_secret, .ssl_ca_secret
    JudgeServerSettings: {"name", "host", "port", "metrics_port"},
    LLMJudgeSettings: {"api_key", "api_key_file"},  # from judges.llm.api_key_secret, as a file
    ExporterSettings: {"state_file", "metrics_host", "metrics_port", "cascade_config"},
    PipelineSettings: {
        "judges",  # from the enabled tiers' Services
        "cascade_config",  # from cascadeConfig
        "sampling_config",  # from pipeline.samplingConfig
        "metrics_port",  # the local runner's own /metrics; on Flink the steps run in the SDK harness
        "metrics_host",
        "exit_when_idle_s",  # for batch-like local runs; a streaming job runs until stopped
    },
}


def test_every_setting_is_a_value_or_set_by_the_chart():
    """A setting added to a process shows up here until the chart offers it (or says why not)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    defs, props = schema["definitions"], schema["properties"]
    offered = {
        KafkaSettings: set(props["kafka"]["properties"]),
        JudgeServerSettings: set(defs["judgeSettings"]["properties"]),
        LLMJudgeSettings: set(defs["llmSettings"]["properties"]),
        ExporterSettings: set(props["exporter"]["properties"]["settings"]["properties"]),
        PipelineSettings: set(props["pipeline"]["properties"]["settings"]["properties"]),
    }
    for cls, names in offered.items():
        missing = set(cls.model_fields) - names - CHART_OWNED[cls]
        assert not missing, (
            f"{cls.__name__} fields {sorted(missing)} are neither chart values nor set by the chart"
        )
        assert not CHART_OWNED[cls] - set(cls.model_fields), f"{cls.__name__}: stale CHART_OWNED entries"


def test_pipeline_reaches_the_rendered_judges(rendered):
    objects = rendered["production"]
    (flink,) = _of_kind(objects, "FlinkDeployment")
    init = {c["name"]: c for c in flink["spec"]["jobManager"]["podTemplate"]["spec"]["initContainers"]}
    endpoints = parse_endpoints(_env(init["submitter"])["EVALSTREAM_PIPELINE_JUDGES"])
    services = {s["metadata"]["name"]: s for s in _of_kind(objects, "Service")}
    assert sorted(endpoints) == [0, 1, 2]
    for tier, target in endpoints.items():
        host, port = target.rsplit(":", 1)
        name, namespace, _ = host.split(".", 2)
        assert namespace == "evalstream"
        assert name.endswith(("-judge-rules", "-judge-encoder", "-judge-llm")[tier])
        assert int(port) in [p["port"] for p in services[name]["spec"]["ports"] if p["name"] == "grpc"]
    args = init["submitter"]["args"]
    sidecar_port = flink["spec"]["taskManager"]["podTemplate"]["spec"]["containers"][0]["ports"][0][
        "containerPort"
    ]
    assert "--environment_type=EXTERNAL" in args
    assert f"--environment_config=localhost:{sidecar_port}" in args
    assert f"--output_executable_path={flink['spec']['job']['jarURI'].removeprefix('local://')}" in args
    assert flink["spec"]["flinkConfiguration"]["execution.checkpointing.interval"] == "60s"


@pytest.mark.parametrize("value_set", ["default", "production"])
def test_submitter_flags_are_ones_the_pipeline_and_beam_know(rendered, value_set):
    """Beam drops a flag it does not know with a log line only; here an unknown one fails."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from evalstream.pipeline.run import _arg_parser

    (flink,) = _of_kind(rendered[value_set], "FlinkDeployment")
    init = flink["spec"]["jobManager"]["podTemplate"]["spec"]["initContainers"]
    (submitter,) = [c for c in init if c["name"] == "submitter"]
    assert submitter["command"] == ["python", "-m", "evalstream.pipeline"]
    ours, beam_args = _arg_parser().parse_known_args(submitter["args"])
    assert ours.runner == "FlinkRunner"
    known = PipelineOptions(beam_args).get_all_options(retain_unknown_options=False)
    for flag in beam_args:
        name, _, value = flag.removeprefix("--").partition("=")
        assert name in known, f"{flag}: not an option of the installed Beam"
        assert str(known[name]) == value, flag


def test_cascade_config_reaches_the_submitter_and_the_exporter(helm, tmp_path):
    """One cascade config (--set-file cascadeConfig=...) for the pipeline that runs it and the exporter
    whose guarantee monitor tests it; the sampling config for the pipeline. Read by the real loaders."""
    cascade = tmp_path / "cascade.yaml"
    default_cascade().dump(cascade)
    objects = _template(helm, *_values_args("production"), "--set-file", f"cascadeConfig={cascade}")
    (config_map,) = [c for c in _of_kind(objects, "ConfigMap") if c["metadata"]["name"].endswith("-config")]
    (flink,) = _of_kind(objects, "FlinkDeployment")
    (exporter,) = [d for d in _of_kind(objects, "Deployment") if d["metadata"]["name"].endswith("-exporter")]
    jobmanager = flink["spec"]["jobManager"]["podTemplate"]["spec"]
    (submitter,) = [c for c in jobmanager["initContainers"] if c["name"] == "submitter"]
    exporter_pod = exporter["spec"]["template"]["spec"]
    files: dict[str, Path] = {}
    for pod, container, wanted in (
        (
            jobmanager,
            submitter,
            {"EVALSTREAM_PIPELINE_CASCADE_CONFIG", "EVALSTREAM_PIPELINE_SAMPLING_CONFIG"},
        ),
        (exporter_pod, exporter_pod["containers"][0], {"EVALSTREAM_EXPORTER_CASCADE_CONFIG"}),
    ):
        volume = next(
            v for v in pod["volumes"] if v.get("configMap", {}).get("name") == config_map["metadata"]["name"]
        )
        mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
        for variable in wanted:
            path = Path(_env(container)[variable])
            assert path.parent == Path(mount["mountPath"]), variable
            files[variable] = tmp_path / path.name
            files[variable].write_text(config_map["data"][path.name])
    assert CascadeConfig.load(files["EVALSTREAM_PIPELINE_CASCADE_CONFIG"]) == default_cascade()
    sampling = SamplingConfig.load(files["EVALSTREAM_PIPELINE_SAMPLING_CONFIG"])
    assert sampling.rate_for("gpt-4o", "support") == 1.0
    guarantee = ExporterSettings(cascade_config=files["EVALSTREAM_EXPORTER_CASCADE_CONFIG"]).guarantee()
    assert guarantee is not None


def test_secrets_come_from_existing_secrets_only(rendered):
    objects = rendered["production"]
    assert not _of_kind(objects, "Secret")
    (llm,) = [d for d in _of_kind(objects, "Deployment") if d["metadata"]["name"].endswith("-judge-llm")]
    pod = llm["spec"]["template"]["spec"]
    env = _env(pod["containers"][0])
    assert "EVALSTREAM_LLM_API_KEY" not in env
    key_file = Path(env["EVALSTREAM_LLM_API_KEY_FILE"])
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "llm-api-key")
    assert key_file.parent == Path(mount["mountPath"])
    volume = next(v for v in pod["volumes"] if v["name"] == "llm-api-key")
    assert volume["secret"]["secretName"] == "evalstream-llm"
    (exporter,) = [d for d in _of_kind(objects, "Deployment") if d["metadata"]["name"].endswith("-exporter")]
    container = exporter["spec"]["template"]["spec"]["containers"][0]
    password = next(e for e in container["env"] if e["name"] == "EVALSTREAM_KAFKA_SASL_PASSWORD")
    assert password["valueFrom"]["secretKeyRef"] == {"name": "evalstream-kafka", "key": "password"}
    assert _env(container)["EVALSTREAM_KAFKA_SSL_CAFILE"] == "/etc/evalstream/kafka-ca/ca.crt"


# ------------------------------------------------------------------------------------- bad values


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--set", "judges.rules.replicaCount=two"],
            "at '/judges/rules/replicaCount': got string, want integer",
        ),
        (["--set", "kafka.bootstrap=null"], "at '/kafka': missing property 'bootstrap'"),
        (
            ["--set", "judges.llm.enabled=true"],
            "at '/judges/llm/api_key_secret/name': minLength: got 0, want 1",
        ),
        (["--set", "kafka.bootstrap=kafka"], "at '/kafka/bootstrap': 'kafka' does not match pattern"),
        (
            ["--set", "kafka.security_protocol=SASL_SSL"],
            "at '/kafka/sasl_mechanism': minLength: got 0, want 1",
        ),
        (
            ["--set", "judges.rules.settings.max_batchh=10"],
            "at '/judges/rules/settings': additional properties 'max_batchh' not allowed",
        ),
        (
            ["--set", "pipeline.flink.upgradeMode=savepoint"],
            "at '/pipeline/flink/stateDir': minLength: got 0, want 1",
        ),
        (
            ["--set", "containerSecurityContext.readOnlyRootFilesystem=false"],
            "at '/containerSecurityContext/readOnlyRootFilesystem': value must be true",
        ),
    ],
    ids=[
        "wrong-type",
        "missing-bootstrap",
        "llm-without-secret",
        "bootstrap-without-port",
        "sasl-without-mechanism",
        "misspelt-setting",
        "savepoints-without-state-dir",
        "writable-root",
    ],
)
def test_bad_values_fail_naming_the_value(helm, args, message):
    done = _helm(helm, "template", "ev", str(CHART), *args)
    assert done.returncode != 0, f"helm template {args} rendered:\n{done.stdout[:500]}"
    assert "values don't meet the specifications of the schema" in done.stderr, done.stderr
    assert message in done.stderr, done.stderr


def test_kubernetes_older_than_native_sidecars_is_refused(helm):
    """The expansion service is a native sidecar (an init container with restartPolicy Always, 1.29+)."""
    done = _helm(helm, "template", "ev", str(CHART), "--kube-version", "1.28.0")
    assert done.returncode != 0
    assert "chart requires kubeVersion: >=1.29.0-0" in done.stderr, done.stderr
    assert _helm(helm, "template", "ev", str(CHART), "--kube-version", KUBE_VERSIONS[0]).returncode == 0
