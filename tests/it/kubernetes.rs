//! The Kubernetes manifests under `deploy/kubernetes/` (issue 14). No API server runs here, so
//! they are checked against what can be run:
//!
//! - `kubernetes-validate --strict` (PyPI; `.ci/install-deps.sh`) validates every document
//!   against the OpenAPI schemas of Kubernetes [`KUBERNETES`], unknown fields included. It has
//!   no schema for two kinds, which it reports as warnings: `Kustomization` (kustomize's own
//!   file, not an API object) and KEDA's `ScaledObject` (a CRD). Any other warning is a failure;
//!   those two are checked structurally below instead.
//! - The kustomization lists every manifest in the directory, and only those (`optional/`
//!   holds what is applied by hand: the prometheus-adapter rule and the KEDA alternative).
//! - The manifests agree with each other and with the binaries: every `--flag` and `TESSERA_*`
//!   variable is one `tessera coordinator --help` / `tessera agent --help` lists; the probes
//!   name the port each container's `--http-listen` opens, on paths a real coordinator and
//!   agent answer; the ConfigMap's TOML loads with the coordinator's configuration loader; the
//!   Service, selectors, volumes, the agent's coordinator URL, the grace period against the
//!   drain timeout, and the autoscaler's metric (one the coordinator exports) line up.
//!
//! YAML is read by the PyYAML that `kubernetes-validate` brings (`python3`), as JSON, so the
//! workspace takes no YAML crate. Without `kubernetes-validate` (or PyYAML) the tests skip
//! outside CI and fail under CI.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tessera_coordinator::{ConfigOverrides, CoordinatorConfig};
use tessera_tests::{AgentProcess, ServerProcess, free_port, in_ci, poll_until, tessera_bin};

use super::metrics::get;

/// The Kubernetes version the manifests are validated against (`-k`); its schemas ship with
/// kubernetes-validate.
const KUBERNETES: &str = "1.30.0";
/// Kinds kubernetes-validate has no schema for, and why that is expected.
const NO_SCHEMA: [(&str, &str); 2] = [
    ("Kustomization", "kustomize's file, not an API object"),
    ("ScaledObject", "a KEDA custom resource"),
];

fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

/// The `.yaml` files directly in `dir`, sorted.
fn yaml_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.ends_with(".yaml") || name.ends_with(".yml"))
        .collect();
    names.sort();
    names
}

/// Every file under `deploy/kubernetes/` (relative paths), `optional/` included.
fn all_files() -> Vec<String> {
    let mut files = yaml_files(&manifests_dir());
    files.extend(
        yaml_files(&manifests_dir().join("optional"))
            .into_iter()
            .map(|name| format!("optional/{name}")),
    );
    files
}

/// Whether a tool the tests need is missing: `false` (skip) outside CI, a failure under CI.
fn tool_missing(what: &str) -> bool {
    assert!(
        !in_ci(),
        "{what} is required under CI (.ci/install-deps.sh installs kubernetes-validate, which \
         brings PyYAML)"
    );
    eprintln!("skipping: {what} is not available (pip install kubernetes-validate)");
    false
}

/// The documents of each file (relative paths), read by PyYAML; `None` (skip) without it.
fn load(files: &[String]) -> Option<BTreeMap<String, Vec<Value>>> {
    const TO_JSON: &str = "import json, sys, yaml\n\
        json.dump({p: [d for d in yaml.safe_load_all(open(p)) if d is not None] \
        for p in sys.argv[1:]}, sys.stdout)";
    let output = match Command::new("python3")
        .args(["-c", TO_JSON])
        .args(files)
        .current_dir(manifests_dir())
        .output()
    {
        Ok(output) => output,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            tool_missing("python3");
            return None;
        }
        Err(error) => panic!("failed to run python3: {error}"),
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("No module named 'yaml'") {
        tool_missing("PyYAML");
        return None;
    }
    assert!(output.status.success(), "reading the YAML failed: {stderr}");
    Some(serde_json::from_slice(&output.stdout).expect("JSON from python3"))
}

/// The manifests in the kustomization, loaded, with lookups by kind and name.
struct Manifests {
    files: BTreeMap<String, Vec<Value>>,
}

impl Manifests {
    fn load() -> Option<Manifests> {
        Some(Manifests {
            files: load(&all_files())?,
        })
    }

    fn file(&self, name: &str) -> &[Value] {
        self.files
            .get(name)
            .unwrap_or_else(|| panic!("deploy/kubernetes/{name} is missing"))
    }

    /// The one object of `kind` named `name`, in whichever file holds it.
    fn object(&self, kind: &str, name: &str) -> &Value {
        let found: Vec<&Value> = self
            .files
            .values()
            .flatten()
            .filter(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "expected one {kind} {name}, found {found:?}"
        );
        found[0]
    }

    /// The one container of the workload `kind`/`name`.
    fn container(&self, kind: &str, name: &str) -> &Value {
        let containers = self.object(kind, name)["spec"]["template"]["spec"]["containers"]
            .as_array()
            .expect("containers");
        assert_eq!(containers.len(), 1, "{kind} {name}: one container");
        &containers[0]
    }
}

fn text(value: &Value) -> &str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("expected a string, found {value}"))
}

/// The container's `args` as strings.
fn args(container: &Value) -> Vec<&str> {
    container["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(text)
        .collect()
}

/// The value after `flag` in `args`.
fn flag<'a>(args: &[&'a str], flag: &str) -> &'a str {
    args.iter()
        .position(|a| *a == flag)
        .and_then(|i| args.get(i + 1))
        .unwrap_or_else(|| panic!("{flag} is not set in {args:?}"))
}

/// The port of a `HOST:PORT` address.
fn port_of(address: &str) -> u64 {
    address
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("not HOST:PORT: {address}"))
}

/// The container port a probe or a Service's `targetPort` names (by name or number).
fn container_port(container: &Value, port: &Value) -> u64 {
    if let Some(number) = port.as_u64() {
        return number;
    }
    container["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == *port)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port named {port} in {container}"))
}

/// The flags (`--name`) that `tessera SUBCOMMAND --help` lists.
fn flags_of(subcommand: &str) -> (BTreeSet<String>, String) {
    let output = Command::new(tessera_bin())
        .args([subcommand, "--help"])
        .output()
        .expect("run tessera --help");
    assert!(
        output.status.success(),
        "tessera {subcommand} --help failed"
    );
    let help = String::from_utf8(output.stdout).expect("UTF-8 help");
    let flags = help
        .lines()
        .filter_map(|line| {
            let word = line.trim_start().split([' ', ',']).next()?;
            word.starts_with("--").then(|| word.to_owned())
        })
        .collect();
    (flags, help)
}

/// The TOML the coordinator's ConfigMap holds.
fn coordinator_toml(manifests: &Manifests) -> &str {
    text(&manifests.object("ConfigMap", "tessera-coordinator")["data"]["coordinator.toml"])
}

#[test]
fn every_manifest_is_valid_for_kubernetes_1_30() {
    let files = all_files();
    let Some(loaded) = load(&files) else {
        return;
    };
    let output = match Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", KUBERNETES])
        .args(&files)
        .current_dir(manifests_dir())
        .output()
    {
        Ok(output) => output,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            tool_missing("kubernetes-validate");
            return;
        }
        Err(error) => panic!("failed to run kubernetes-validate: {error}"),
    };
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "kubernetes-validate failed:\n{report}"
    );
    for line in report.lines() {
        assert!(
            line.starts_with("INFO ")
                || NO_SCHEMA.iter().any(|(kind, _)| {
                    line.starts_with("WARN ")
                        && line.contains(&format!("Couldn't find schema for kind {kind} "))
                }),
            "unexpected line from kubernetes-validate: {line}\n{report}"
        );
    }
    // Every document with a schema passed; the others are the kinds named in NO_SCHEMA.
    let version = KUBERNETES.rsplit_once('.').expect("x.y.z").0;
    for (file, documents) in &loaded {
        for document in documents {
            let kind = text(&document["kind"]);
            if let Some((_, why)) = NO_SCHEMA.iter().find(|(k, _)| *k == kind) {
                eprintln!("{file}: {kind} not validated by schema ({why}); checked below");
                continue;
            }
            let name = text(&document["metadata"]["name"]);
            let passed = format!(
                "INFO {file} passed for resource {}/{name} against version {version}",
                kind.to_lowercase()
            );
            assert!(report.contains(&passed), "no {passed:?} in\n{report}");
        }
    }
}

#[test]
fn the_kustomization_lists_every_manifest_and_nothing_else() {
    let Some(loaded) = load(&["kustomization.yaml".to_owned()]) else {
        return;
    };
    let kustomization = &loaded["kustomization.yaml"][0];
    assert_eq!(kustomization["kind"], "Kustomization");
    let listed: Vec<&str> = kustomization["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(text)
        .collect();
    let mut sorted = listed.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), listed.len(), "a resource is listed twice");
    let on_disk: Vec<String> = yaml_files(&manifests_dir())
        .into_iter()
        .filter(|f| f != "kustomization.yaml")
        .collect();
    assert_eq!(
        sorted, on_disk,
        "kustomization.yaml resources against the directory"
    );
    // Every image the workloads run is one the kustomization pins (and can retarget).
    let Some(manifests) = Manifests::load() else {
        return;
    };
    let pinned: BTreeSet<&str> = kustomization["images"]
        .as_array()
        .expect("images")
        .iter()
        .map(|i| text(&i["name"]))
        .collect();
    for (kind, name) in [
        ("StatefulSet", "tessera-coordinator"),
        ("Deployment", "tessera-agent"),
    ] {
        let image = text(&manifests.container(kind, name)["image"]);
        let repository = image.split(':').next().expect("image name");
        assert!(
            pinned.contains(repository),
            "{image} is not in kustomization images"
        );
    }
    // Everything in the kustomization lands in its namespace.
    for file in &on_disk {
        for document in manifests.file(file) {
            if document["kind"] != "Namespace" {
                assert_eq!(
                    document["metadata"]["namespace"],
                    kustomization["namespace"]
                );
            }
        }
    }
}

#[test]
fn every_flag_and_variable_in_the_manifests_is_one_the_binary_accepts() {
    let Some(manifests) = Manifests::load() else {
        return;
    };
    for (kind, name, subcommand) in [
        ("StatefulSet", "tessera-coordinator", "coordinator"),
        ("Deployment", "tessera-agent", "agent"),
    ] {
        let container = manifests.container(kind, name);
        assert!(
            container.get("command").is_none(),
            "{name}: the image's entrypoint runs `tessera {subcommand}`; set args only"
        );
        let (flags, help) = flags_of(subcommand);
        let used: Vec<&str> = args(container)
            .into_iter()
            .filter(|a| a.starts_with("--"))
            .collect();
        assert!(!used.is_empty());
        for used in used {
            assert!(
                flags.contains(used),
                "{name} passes {used}, which `tessera {subcommand} --help` does not list: {flags:?}"
            );
        }
        for variable in container["env"].as_array().into_iter().flatten() {
            let variable = text(&variable["name"]);
            assert!(
                help.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .any(|word| word == variable),
                "{name} sets {variable}, which `tessera {subcommand} --help` does not name"
            );
        }
    }
}

#[test]
fn the_coordinator_config_map_loads_and_its_files_are_mounted() {
    let Some(manifests) = Manifests::load() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("coordinator.toml");
    std::fs::write(&file, coordinator_toml(&manifests)).unwrap();
    let config =
        CoordinatorConfig::load(Some(&file), &BTreeMap::new(), &ConfigOverrides::default())
            .unwrap_or_else(|e| panic!("the ConfigMap's coordinator.toml does not load: {e}"));

    let set = manifests.object("StatefulSet", "tessera-coordinator");
    let container = manifests.container("StatefulSet", "tessera-coordinator");
    let args = args(container);
    let mounts = container["volumeMounts"].as_array().expect("volumeMounts");
    let volumes = set["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .expect("volumes");
    // The volume mounted at `path` (or at a directory above it), by its kind of source.
    let source_of = |path: &str| -> (&str, &Value) {
        let mount = mounts
            .iter()
            .filter(|m| Path::new(path).starts_with(text(&m["mountPath"])))
            .max_by_key(|m| text(&m["mountPath"]).len())
            .unwrap_or_else(|| panic!("nothing is mounted at {path}"));
        let name = text(&mount["name"]);
        if let Some(volume) = volumes.iter().find(|v| v["name"] == name) {
            let (kind, source) = volume
                .as_object()
                .expect("volume")
                .iter()
                .find(|(k, _)| *k != "name")
                .expect("a volume source");
            return (kind.as_str(), source);
        }
        let templates = set["spec"]["volumeClaimTemplates"]
            .as_array()
            .expect("claims");
        let claim = templates
            .iter()
            .find(|t| t["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no volume {name}"));
        ("persistentVolumeClaim", &claim["spec"])
    };
    let (kind, source) = source_of(flag(&args, "--config"));
    assert_eq!(
        (kind, &source["name"]),
        ("configMap", &Value::from("tessera-coordinator"))
    );
    let (kind, claim) = source_of(flag(&args, "--data-dir"));
    assert_eq!(
        kind, "persistentVolumeClaim",
        "the data dir is on the volume"
    );
    assert_eq!(claim["accessModes"][0], "ReadWriteOnce");
    // TLS is on (a coordinator beyond loopback refuses to start without it, or tokens), and
    // the certificate comes from a Secret mount that is not a subPath (so renewals appear).
    let cert = config
        .tls_cert
        .as_ref()
        .expect("the ConfigMap turns TLS on");
    let key = config.tls_key.as_ref().expect("with a key");
    for path in [cert, key] {
        let (kind, source) = source_of(path.to_str().expect("path"));
        assert_eq!(
            (kind, &source["secretName"]),
            ("secret", &Value::from("tessera-coordinator-tls"))
        );
    }
    assert_eq!(config.auth, tessera_coordinator::config::AuthMode::Tokens);
    assert_eq!(
        set["spec"]["replicas"], 1,
        "one coordinator owns its data directory"
    );
}

#[test]
fn probes_and_the_service_name_the_ports_the_binaries_open() {
    let Some(manifests) = Manifests::load() else {
        return;
    };
    let tls_on = coordinator_toml(&manifests).contains("tls_cert");
    for (kind, name, scheme) in [
        (
            "StatefulSet",
            "tessera-coordinator",
            if tls_on { "HTTPS" } else { "HTTP" },
        ),
        // The agent's HTTP port is plain HTTP always.
        ("Deployment", "tessera-agent", "HTTP"),
    ] {
        let container = manifests.container(kind, name);
        let http = port_of(flag(&args(container), "--http-listen"));
        let mut probes = 0;
        for (probe, path) in [
            ("readinessProbe", "/readyz"),
            ("livenessProbe", "/healthz"),
            ("startupProbe", "/healthz"),
        ] {
            let Some(get) = container.get(probe).map(|p| &p["httpGet"]) else {
                continue;
            };
            probes += 1;
            assert_eq!(get["path"], path, "{name} {probe}");
            assert_eq!(get["scheme"], scheme, "{name} {probe}");
            assert_eq!(
                container_port(container, &get["port"]),
                http,
                "{name} {probe}"
            );
        }
        assert!(probes >= 2, "{name}: readiness and liveness probes");
    }

    // The Service reaches the coordinator's pods on the ports its flags open.
    let set = manifests.object("StatefulSet", "tessera-coordinator");
    let service = manifests.object("Service", "tessera-coordinator");
    assert_eq!(set["spec"]["serviceName"], service["metadata"]["name"]);
    let labels = &set["spec"]["template"]["metadata"]["labels"];
    for (key, value) in service["spec"]["selector"].as_object().expect("selector") {
        assert_eq!(&labels[key], value, "Service selector {key}");
    }
    let coordinator = manifests.container("StatefulSet", "tessera-coordinator");
    let coordinator_args = args(coordinator);
    let mut service_ports = BTreeMap::new();
    for port in service["spec"]["ports"].as_array().expect("ports") {
        let target = container_port(coordinator, &port["targetPort"]);
        service_ports.insert(
            text(&port["name"]).to_owned(),
            (port["port"].clone(), target),
        );
    }
    assert_eq!(
        service_ports["grpc"].1,
        port_of(flag(&coordinator_args, "--listen"))
    );
    assert_eq!(
        service_ports["http"].1,
        port_of(flag(&coordinator_args, "--http-listen"))
    );
    assert_eq!(service_ports["grpc"].0, 8980);
    assert_eq!(service_ports["http"].0, 9464);

    // Agents dial the Service by its cluster name, with TLS when the coordinator has it.
    let agent = args(manifests.container("Deployment", "tessera-agent"));
    let expected = format!(
        "{}://{}.{}.svc:{}",
        if tls_on { "https" } else { "http" },
        text(&service["metadata"]["name"]),
        text(&service["metadata"]["namespace"]),
        service_ports["grpc"].0
    );
    assert_eq!(flag(&agent, "--coordinator"), expected);
}

/// A real coordinator and agent answer the probes' paths on their `--http-listen` ports:
/// the coordinator is ready, the agent is live and, once connected, ready; and the
/// coordinator exports the metric the autoscaler reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_paths_and_the_scaling_metric_are_served() {
    let Some(manifests) = Manifests::load() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let coordinator_http = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let server = ServerProcess::start(
        &dir.path().join("data"),
        &["--http-listen", &coordinator_http.to_string()],
    );
    let agent_http = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let _agent = AgentProcess::start_connected(
        &server.endpoint(),
        &dir.path().join("work"),
        "probe",
        1,
        &["--http-listen", &agent_http.to_string()],
    )
    .await;
    for (name, kind, addr) in [
        ("tessera-coordinator", "StatefulSet", coordinator_http),
        ("tessera-agent", "Deployment", agent_http),
    ] {
        let container = manifests.container(kind, name);
        for probe in ["readinessProbe", "livenessProbe"] {
            let path = text(&container[probe]["httpGet"]["path"]);
            // The agent's HTTP port opens beside its session; it says nothing when it is up.
            let status = poll_until(
                &format!("{name} answering {path}"),
                Duration::from_secs(30),
                async || match tokio::net::TcpStream::connect(addr).await {
                    Ok(_) => Some(get(addr, path, None).await.0),
                    Err(_) => None,
                },
            )
            .await;
            assert_eq!(status, 200, "{name} {path}");
        }
    }
    let hpa = manifests.object("HorizontalPodAutoscaler", "tessera-agent");
    let metric = text(&hpa["spec"]["metrics"][0]["external"]["metric"]["name"]);
    let (status, scrape) = get(coordinator_http, "/metrics", None).await;
    assert_eq!(status, 200);
    assert!(
        scrape.lines().any(|l| l.starts_with(&format!("{metric} "))),
        "the coordinator does not export {metric}:\n{scrape}"
    );
}

#[test]
fn agents_drain_within_their_grace_period_with_the_sandbox_allowed() {
    let Some(manifests) = Manifests::load() else {
        return;
    };
    let deployment = manifests.object("Deployment", "tessera-agent");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = manifests.container("Deployment", "tessera-agent");
    // SIGTERM is the drain; the kubelet sends its own right after a preStop hook returns, and
    // a second SIGTERM would stop the leases at once (see agent-deployment.yaml).
    assert!(
        container["lifecycle"]["preStop"].is_null(),
        "a preStop hook on the agent: the kubelet's SIGTERM after it would cut the drain short"
    );
    let drain = duration_seconds(flag(&args(container), "--drain-timeout"));
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("grace period");
    assert!(
        grace >= drain + 60,
        "terminationGracePeriodSeconds {grace} leaves under a minute after the {drain} s drain"
    );
    // The sandbox: root with CAP_SYS_ADMIN and CAP_NET_ADMIN, AppArmor out of the way.
    let security = &container["securityContext"];
    assert_eq!(security["runAsUser"], 0);
    let added: Vec<&str> = security["capabilities"]["add"]
        .as_array()
        .expect("capabilities.add")
        .iter()
        .map(text)
        .collect();
    assert!(
        added.contains(&"SYS_ADMIN") && added.contains(&"NET_ADMIN"),
        "{added:?}"
    );
    assert_eq!(security["appArmorProfile"]["type"], "Unconfined");
    assert_ne!(
        security["privileged"], true,
        "the sandbox needs no more than that"
    );
    // ... which the namespace's Pod Security level must admit.
    assert_eq!(
        manifests.object("Namespace", "tessera")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );

    // The disruption budget and the autoscalers act on these pods.
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let pdb = manifests.object("PodDisruptionBudget", "tessera-agent");
    for (key, value) in pdb["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("selector")
    {
        assert_eq!(
            &pod_labels[key], value,
            "PodDisruptionBudget selector {key}"
        );
    }
    let hpa = manifests.object("HorizontalPodAutoscaler", "tessera-agent");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "tessera-agent");
    let metric = &hpa["spec"]["metrics"][0]["external"]["metric"]["name"];

    // The prometheus-adapter rule serves that metric (its config is YAML inside a ConfigMap).
    let adapter = &manifests.file("optional/prometheus-adapter-rules.yaml")[0];
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, text(&adapter["data"]["config.yaml"])).unwrap();
    let config_path = config.display().to_string();
    let adapter_config =
        load(std::slice::from_ref(&config_path)).expect("PyYAML was there a moment ago");
    let rule = &adapter_config[&config_path][0]["externalRules"][0];
    assert_eq!(&rule["name"]["as"], metric);
    assert!(text(&rule["seriesQuery"]).starts_with(text(metric)));

    // KEDA's ScaledObject, which no schema checks: the same target and metric.
    let scaled = manifests.object("ScaledObject", "tessera-agent");
    assert_eq!(scaled["apiVersion"], "keda.sh/v1alpha1");
    assert_eq!(scaled["spec"]["scaleTargetRef"]["name"], "tessera-agent");
    let trigger = &scaled["spec"]["triggers"][0];
    assert_eq!(trigger["type"], "prometheus");
    assert!(text(&trigger["metadata"]["query"]).contains(text(metric)));
    assert_eq!(
        trigger["metadata"]["threshold"],
        hpa["spec"]["metrics"][0]["external"]["target"]["averageValue"],
        "the same policy as the HPA"
    );
}

/// Seconds in a `--drain-timeout` value such as `10m` or `90s` (the forms the manifests use).
fn duration_seconds(value: &str) -> u64 {
    let (number, unit) = value.split_at(value.len() - 1);
    let number: u64 = number
        .parse()
        .unwrap_or_else(|_| panic!("not a duration: {value}"));
    match unit {
        "s" => number,
        "m" => number * 60,
        "h" => number * 3600,
        _ => panic!("duration unit in {value} not known to this test"),
    }
}
