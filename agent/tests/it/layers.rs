//! Large input roots through a real agent: laid out once as a shared layer that each lease sees
//! through its own overlay mount, or file by file where layers are off; what a lease writes
//! stays its own; the overlays of a killed agent are unmounted at its next start.
//!
//! Overlay mounts need root: these stories skip when not root, unless `CI` is set (CI runs
//! them as root, so there they must not skip).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tessera_agent::{Agent, AgentConfig, SandboxMode};
use tessera_proto::tessera::v1::{LeaseOutcome, LeaseResult, LeaseStage};
use tokio_util::sync::CancellationToken;

use crate::harness::{
    FakeCoordinator, TestAgent, input_dir, lease, namespaces_available, set_platform,
};

/// Files in the large root.
const FILES: usize = 300;
/// The agents' `layer_min_entries` here: the large root is above it.
const LAYER_MIN_ENTRIES: u64 = 256;

/// A root of [`FILES`] files in 10 directories, plus `data.txt` ("original").
fn large_root() -> tempfile::TempDir {
    let files: Vec<(String, String)> = (0..FILES)
        .map(|n| (format!("d{}/f{n}.txt", n % 10), format!("file {n}")))
        .chain([("data.txt".to_owned(), "original".to_owned())])
        .collect();
    let entries: Vec<(&str, &str, bool)> = files
        .iter()
        .map(|(path, contents)| (path.as_str(), contents.as_str(), false))
        .collect();
    input_dir(&entries)
}

/// Whether this process may mount overlays; skips (false) only outside CI.
fn can_mount() -> bool {
    let root = nix::unistd::geteuid().is_root();
    assert!(
        root || std::env::var("CI").is_err(),
        "CI runs the layer stories as root"
    );
    if !root {
        eprintln!("not root: skipping the overlay stories");
    }
    root
}

/// Overlay mount points below `dir`, as `/proc/self/mountinfo` lists them.
fn overlays_below(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    text.lines()
        .filter(|line| line.contains(" - overlay "))
        .filter_map(|line| line.split(' ').nth(4).map(PathBuf::from))
        .filter(|point| point.starts_with(dir))
        .collect()
}

/// The layers kept in an agent's work directory.
fn layers_in(work_dir: &Path) -> Vec<String> {
    match std::fs::read_dir(work_dir.join("layers")) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

async fn stdout_of(coordinator: &FakeCoordinator, answer: &LeaseResult) -> String {
    assert_eq!(
        answer.outcome(),
        LeaseOutcome::Completed,
        "{}",
        answer.message
    );
    let result = answer.result.as_ref().expect("a result");
    let stdout = coordinator.read(result.stdout_digest.as_ref()).await;
    String::from_utf8_lossy(&stdout).into_owned()
}

/// Writes to an input file (the agent runs as root, which may), adds a file, waits so the
/// other lease does the same meanwhile, then shows what it sees.
const WRITER: &str = r#"stat -f -c %T .
cat data.txt; echo
echo "$1" > data.txt
echo "$1" > "new-$1"
sleep 0.5
ls new-*
cat data.txt
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leases_on_one_large_root_share_one_layer_and_keep_their_writes() {
    if !can_mount() {
        return;
    }
    let mut coordinator = FakeCoordinator::start().await;
    let inputs = large_root();
    let root = coordinator.upload_dir(inputs.path()).await;
    let agent = TestAgent::start(&coordinator.endpoint, |c| {
        c.layer_min_entries = LAYER_MIN_ENTRIES;
    });
    let work_dir = agent.work_dir.path().to_owned();
    let mut link = coordinator.link().await;

    // Two leases at once: one builds the layer while the other waits for it.
    for name in ["a", "b"] {
        link.lease(lease(name, root, &["sh", "-c", WRITER, "sh", name]))
            .await;
    }
    let mut seen = HashMap::new();
    for _ in 0..2 {
        let answer = link.result().await;
        seen.insert(
            answer.lease_id.clone(),
            stdout_of(&coordinator, &answer).await,
        );
    }
    for name in ["a", "b"] {
        assert_eq!(
            seen[name],
            format!("overlayfs\noriginal\nnew-{name}\n{name}\n"),
            "lease {name} sees the layer and only its own writes"
        );
    }

    let layers = layers_in(&work_dir);
    assert_eq!(layers.len(), 1, "one layer for both: {layers:?}");
    let layer = work_dir.join("layers").join(&layers[0]);
    assert_eq!(
        std::fs::read_to_string(layer.join("data.txt")).unwrap(),
        "original"
    );
    assert!(!layer.join("new-a").exists() && !layer.join("new-b").exists());
    let built = std::fs::metadata(&layer).unwrap().ino();

    // A later lease: the same layer, none of the earlier writes.
    let script = "cat data.txt; echo; ls new-* 2>/dev/null; cat d3/f13.txt";
    link.lease(lease("c", root, &["sh", "-c", script])).await;
    let answer = link.result().await;
    assert_eq!(stdout_of(&coordinator, &answer).await, "original\nfile 13");
    assert_eq!(layers_in(&work_dir), layers);
    assert_eq!(
        std::fs::metadata(&layer).unwrap().ino(),
        built,
        "not built again"
    );

    // Clean-up unmounted every lease's overlay and removed its directories. It runs after the
    // result is sent, so give it a moment rather than race it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while (!overlays_below(&work_dir).is_empty()
        || std::fs::read_dir(work_dir.join("x")).unwrap().count() != 0)
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(overlays_below(&work_dir).is_empty());
    assert_eq!(std::fs::read_dir(work_dir.join("x")).unwrap().count(), 0);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fixed_exec_root_shows_the_layer_with_and_without_namespaces() {
    if !can_mount() {
        return;
    }
    let mut modes = vec![SandboxMode::Off];
    if namespaces_available() {
        modes.push(SandboxMode::Auto);
    }
    for mode in modes {
        let mut coordinator = FakeCoordinator::start().await;
        let inputs = large_root();
        let root = coordinator.upload_dir(inputs.path()).await;
        let agent = TestAgent::start(&coordinator.endpoint, |c| {
            c.sandbox = mode;
            c.layer_min_entries = LAYER_MIN_ENTRIES;
        });
        let mut link = coordinator.link().await;
        let fixed = std::env::temp_dir()
            .join(format!("tessera-it-layers-{:08x}", rand::random::<u32>()))
            .join("repo");
        let fixed_value = fixed.display().to_string();
        let script = format!("cat {fixed_value}/d2/f2.txt; echo; stat -f -c %T {fixed_value}/");
        let mut l = lease("fixed", root, &["sh", "-c", &script]);
        set_platform(&mut l, &[("exec-root", &fixed_value)]);
        link.lease(l).await;
        let answer = link.result().await;
        assert_eq!(
            stdout_of(&coordinator, &answer).await,
            "file 2\noverlayfs\n",
            "{mode:?}"
        );
        let _ = std::fs::remove_dir_all(fixed.parent().unwrap());
        agent.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_layers_every_root_is_laid_out_file_by_file() {
    let mut coordinator = FakeCoordinator::start().await;
    let inputs = large_root();
    let root = coordinator.upload_dir(inputs.path()).await;
    let agent = TestAgent::start(&coordinator.endpoint, |c| {
        c.layers = false;
        c.layer_min_entries = LAYER_MIN_ENTRIES;
    });
    let work_dir = agent.work_dir.path().to_owned();
    let mut link = coordinator.link().await;
    let script = "cat d4/f4.txt; echo; stat -f -c %T .; stat -c %h data.txt";
    link.lease(lease("plain", root, &["sh", "-c", script]))
        .await;
    let answer = link.result().await;
    let stdout = stdout_of(&coordinator, &answer).await;
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "file 4");
    assert_ne!(lines[1], "overlayfs");
    assert_eq!(lines[2], "2", "a hard link to the cached blob");
    assert!(layers_in(&work_dir).is_empty());
    assert!(overlays_below(&work_dir).is_empty());
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_input_file_stays_read_only_to_a_command_that_may_not_write_it() {
    // As on a plain layout: a user other than the owner cannot write a 0444 input, and the
    // overlay does not loosen that.
    let mut layouts = vec![false];
    if can_mount() {
        layouts.push(true);
    }
    for layers in layouts {
        let mut coordinator = FakeCoordinator::start().await;
        let inputs = large_root();
        let root = coordinator.upload_dir(inputs.path()).await;
        let agent = TestAgent::start(&coordinator.endpoint, |c| {
            c.layers = layers;
            c.layer_min_entries = LAYER_MIN_ENTRIES;
        });
        let mut link = coordinator.link().await;
        let script = "stat -c %a data.txt; \
            setpriv --reuid=65534 --regid=65534 --clear-groups sh -c 'echo x >> data.txt' \
            2>/dev/null && echo written || echo denied; cat data.txt";
        link.lease(lease("nobody", root, &["sh", "-c", script]))
            .await;
        let answer = link.result().await;
        assert_eq!(
            stdout_of(&coordinator, &answer).await,
            "444\ndenied\noriginal",
            "layers: {layers}"
        );
        agent.stop().await;
    }
}

/// Set for the agent process the crash story starts: its work directory, then its coordinator.
const AGENT_PROCESS_ENV: &str = "TESSERA_IT_LAYERS_AGENT";

/// Not a story: the agent process [`overlays_a_killed_agent_left_are_unmounted_at_the_next_start`]
/// starts from this test binary (and kills); returns at once unless [`AGENT_PROCESS_ENV`] is
/// set.
#[test]
fn agent_process_for_the_crash_story() {
    let Ok(value) = std::env::var(AGENT_PROCESS_ENV) else {
        return;
    };
    let (work_dir, coordinator) = value.split_once(' ').expect("WORK_DIR ENDPOINT");
    let config = AgentConfig {
        coordinator: coordinator.to_owned(),
        work_dir: PathBuf::from(work_dir),
        id: Some("killed".into()),
        layer_min_entries: LAYER_MIN_ENTRIES,
        ..AgentConfig::default()
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime
        .block_on(Agent::run(config, CancellationToken::new()))
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overlays_a_killed_agent_left_are_unmounted_at_the_next_start() {
    if !can_mount() {
        return;
    }
    let mut coordinator = FakeCoordinator::start().await;
    let inputs = large_root();
    let root = coordinator.upload_dir(inputs.path()).await;
    let work_dir = tempfile::tempdir().unwrap();

    // An agent process, SIGKILLed mid-lease: nothing of it runs after that.
    let mut process = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "layers::agent_process_for_the_crash_story",
            "--exact",
            "--nocapture",
        ])
        .env(
            AGENT_PROCESS_ENV,
            format!("{} {}", work_dir.path().display(), coordinator.endpoint),
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut link = coordinator.link().await;
    link.lease(lease("sleepy", root, &["sleep", "2"])).await;
    link.wait_stage("sleepy", LeaseStage::Executing).await;
    process.kill().unwrap();
    process.wait().unwrap();
    let left = overlays_below(work_dir.path());
    assert_eq!(left.len(), 1, "the lease's overlay outlives the agent");
    let layers = layers_in(work_dir.path());
    assert_eq!(layers.len(), 1);
    let half_built = work_dir.path().join("layers/.building-99");
    std::fs::create_dir_all(half_built.join("d0")).unwrap();

    let agent = TestAgent::start_in(&coordinator.endpoint, work_dir, |c| {
        c.layer_min_entries = LAYER_MIN_ENTRIES;
    });
    let mut link = coordinator.link().await;
    let work_dir = agent.work_dir.path().to_owned();
    assert!(overlays_below(&work_dir).is_empty(), "unmounted at start");
    assert_eq!(std::fs::read_dir(work_dir.join("x")).unwrap().count(), 0);
    assert!(!half_built.exists(), "a half-built layer is removed");
    assert_eq!(layers_in(&work_dir), layers, "a complete one is kept");

    // And it serves the next lease on that root.
    link.lease(lease("again", root, &["cat", "d1/f1.txt"]))
        .await;
    let answer = link.result().await;
    assert_eq!(stdout_of(&coordinator, &answer).await, "file 1");
    agent.stop().await;
}
