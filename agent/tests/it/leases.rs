//! One lease end to end through a real agent and a fake coordinator: inputs fetched and laid
//! out, the command run, outputs of every kind uploaded, and each way a lease can fail.

use std::time::Duration;

use prost::Message;
use tessera_cas::digest::Digest;
use tessera_cas::resource::missing_subject;
use tessera_proto::reapi::{Directory, FileNode, SymlinkNode, Tree};
use tessera_proto::tessera::v1::coordinator_message::Kind as CoordinatorKind;
use tessera_proto::tessera::v1::{CancelLease, LeaseOutcome, LeaseStage};

use crate::harness::{F, FakeCoordinator, PATIENCE, TestAgent, command, input_dir, lease};

const TOOL: &str = r#"#!/bin/sh
set -e
cat link > out/file
chmod +x out/file
mkdir -p out/dir/sub
echo a > out/dir/a
echo b > out/dir/sub/b
ln -s file out/sym
stat -c '%a %h' src/data.txt bin/tool.sh
echo "args: $*"
echo oops >&2
exit 3
"#;

#[tokio::test]
async fn runs_a_command_and_uploads_files_directories_and_symlinks() {
    let mut coordinator = FakeCoordinator::start().await;
    let inputs = input_dir(&[
        ("src/data.txt", "hello", false),
        ("bin/tool.sh", TOOL, true),
    ]);
    std::os::unix::fs::symlink("src/data.txt", inputs.path().join("link")).unwrap();
    let root = coordinator.upload_dir(inputs.path()).await;
    let _agent = TestAgent::start(&coordinator.endpoint, |_| {});
    let mut link = coordinator.link().await;

    assert_eq!(link.hello.agent_id, "test-agent");
    assert_eq!(link.hello.slots, 2);
    assert_eq!(link.hello.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(
        link.hello.protocol_version,
        tessera_proto::AGENT_PROTOCOL_VERSION
    );
    assert!(
        link.hello
            .properties
            .iter()
            .any(|p| p.name == "OSFamily" && p.value == "linux")
    );

    let mut l = lease("l1", root, &["bin/tool.sh", "x", "y"]);
    command(&mut l).output_paths = ["out/file", "out/dir", "out/sym", "out/missing"]
        .map(String::from)
        .to_vec();
    link.lease(l).await;
    let answer = link.result().await;

    assert_eq!(answer.lease_id, "l1");
    assert_eq!(answer.attempt, 1);
    assert_eq!(
        answer.outcome(),
        LeaseOutcome::Completed,
        "{}",
        answer.message
    );
    let result = answer.result.unwrap();
    assert_eq!(result.exit_code, 3);
    let stages: Vec<LeaseStage> = link.progress.iter().map(|(_, s)| *s).collect();
    assert_eq!(
        stages,
        [
            LeaseStage::Fetching,
            LeaseStage::Executing,
            LeaseStage::Uploading
        ]
    );

    // Inputs: the plain file is a read-only hard link to the cached blob; the executable,
    // fetched as one, was stored 0555 and is a hard link to that blob and its executable
    // twin (three names, one file: nothing was copied).
    let stdout = coordinator.read(result.stdout_digest.as_ref()).await;
    assert_eq!(
        String::from_utf8_lossy(&stdout),
        "444 2\n555 3\nargs: x y\n"
    );
    let stderr = coordinator.read(result.stderr_digest.as_ref()).await;
    assert_eq!(&stderr[..], b"oops\n");

    assert_eq!(result.output_files.len(), 1);
    let file = &result.output_files[0];
    assert_eq!(file.path, "out/file");
    assert!(file.is_executable);
    assert_eq!(file.digest, Some(F.digest_of(b"hello").to_proto()));
    assert_eq!(&coordinator.read(file.digest.as_ref()).await[..], b"hello");

    assert_eq!(result.output_directories.len(), 1);
    let dir = &result.output_directories[0];
    assert_eq!(dir.path, "out/dir");
    assert!(!dir.is_topologically_sorted);
    let tree = Tree::decode(coordinator.read(dir.tree_digest.as_ref()).await).unwrap();
    let tree_root = tree.root.unwrap();
    assert_eq!(tree_root.files[0].name, "a");
    assert_eq!(tree_root.directories[0].name, "sub");
    assert_eq!(tree.children.len(), 1);
    assert_eq!(tree.children[0].files[0].name, "b");
    let root_dir =
        Directory::decode(coordinator.read(dir.root_directory_digest.as_ref()).await).unwrap();
    assert_eq!(
        root_dir, tree_root,
        "the root directory message is uploaded too"
    );
    assert_eq!(
        &coordinator
            .read(tree.children[0].files[0].digest.as_ref())
            .await[..],
        b"b\n"
    );

    assert_eq!(result.output_symlinks.len(), 1);
    assert_eq!(result.output_symlinks[0].path, "out/sym");
    assert_eq!(result.output_symlinks[0].target, "file");

    let metadata = result.execution_metadata.unwrap();
    assert_eq!(metadata.worker, "test-agent");
    for stamp in [
        metadata.worker_start_timestamp,
        metadata.input_fetch_start_timestamp,
        metadata.execution_start_timestamp,
        metadata.execution_completed_timestamp,
        metadata.output_upload_completed_timestamp,
        metadata.worker_completed_timestamp,
    ] {
        assert!(stamp.is_some());
    }
}

#[tokio::test]
#[expect(deprecated, reason = "REAPI 2.0 output fields")]
async fn working_directory_and_old_style_outputs() {
    let mut coordinator = FakeCoordinator::start().await;
    let inputs = input_dir(&[("pkg/BUILD", "", false)]);
    let root = coordinator.upload_dir(inputs.path()).await;
    let agent = TestAgent::start(&coordinator.endpoint, |_| {});
    let mut link = coordinator.link().await;

    let mut l = lease(
        "wd",
        root,
        &[
            "sh",
            "-c",
            "pwd; mkdir d; echo x > out/f; ln -s f out/l; test -d nested/deeper",
        ],
    );
    let c = command(&mut l);
    c.working_directory = "pkg/work".into();
    c.output_files = vec!["out/f".into(), "out/l".into(), "nested/deeper/x".into()];
    c.output_directories = vec!["d".into()];
    link.lease(l).await;
    let answer = link.result().await;
    assert_eq!(
        answer.outcome(),
        LeaseOutcome::Completed,
        "{}",
        answer.message
    );
    let result = answer.result.unwrap();
    assert_eq!(result.exit_code, 0, "output parents were created");
    let stdout = coordinator.read(result.stdout_digest.as_ref()).await;
    let work_dir = std::fs::canonicalize(agent.work_dir.path()).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&stdout),
        format!("{}/x/0/root/pkg/work\n", work_dir.display())
    );
    assert_eq!(result.output_files.len(), 1);
    assert_eq!(result.output_files[0].path, "out/f");
    assert_eq!(result.output_file_symlinks.len(), 1);
    assert_eq!(result.output_file_symlinks[0].path, "out/l");
    assert_eq!(result.output_symlinks, result.output_file_symlinks);
    assert_eq!(result.output_directories.len(), 1);
    assert_eq!(result.output_directories[0].path, "d");
}

/// A healthy link takes every result with its inline outputs, however many bytes went inline
/// in the last seconds: the agent's bound on inline outputs not known delivered (64 MiB)
/// counts only after each hand-over to the stream, so it never turns a result the link can
/// take into a retry. 72 results of nearly 1 MiB inline each, all sent within a few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_link_takes_every_result_with_its_inline_outputs() {
    const RESULTS: usize = 72;
    let mut coordinator = FakeCoordinator::start().await;
    coordinator.offer(1024 * 1024, false);
    let inputs = input_dir(&[("BUILD", "", false)]);
    let root = coordinator.upload_dir(inputs.path()).await;
    let _agent = TestAgent::start(&coordinator.endpoint, |c| c.slots = 4);
    let mut link = coordinator.link().await;
    let started = std::time::Instant::now();
    let mut inline_total = 0usize;
    let mut sent = 0usize;
    let mut received = 0usize;
    while received < RESULTS {
        while sent < RESULTS && sent - received < 4 {
            let mut l = lease(
                &format!("inline-{sent}"),
                root,
                &["sh", "-c", "head -c 1000000 /dev/urandom > out/f"],
            );
            command(&mut l).output_paths = vec!["out/f".into()];
            link.lease(l).await;
            sent += 1;
        }
        let answer = link.result().await;
        received += 1;
        assert_eq!(
            answer.outcome(),
            LeaseOutcome::Completed,
            "{}: {}",
            answer.lease_id,
            answer.message
        );
        let result = answer.result.as_ref().unwrap();
        let file = Digest::from_proto(F, result.output_files[0].digest.as_ref().unwrap()).unwrap();
        assert!(
            answer
                .blobs
                .iter()
                .any(|b| b.digest.as_ref() == Some(&file.to_proto())),
            "{}: its output went inline",
            answer.lease_id
        );
        inline_total += answer.blobs.iter().map(|b| b.data.len()).sum::<usize>();
    }
    assert!(
        inline_total > 64 << 20,
        "{inline_total} bytes inline in all"
    );
    eprintln!(
        "{RESULTS} results, {inline_total} bytes inline, in {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn small_outputs_ride_with_the_result_when_the_coordinator_takes_them() {
    let mut coordinator = FakeCoordinator::start().await;
    // 64 KiB inline, no stages.
    coordinator.offer(64 * 1024, false);
    let inputs = input_dir(&[("BUILD", "", false)]);
    let root = coordinator.upload_dir(inputs.path()).await;
    let _agent = TestAgent::start(&coordinator.endpoint, |_| {});
    let mut link = coordinator.link().await;

    // A small file, a directory, 40 KiB and another 40 KiB (the second no longer fits), and
    // 2 MiB (streamed, never inline).
    let mut l = lease(
        "inline",
        root,
        &[
            "sh",
            "-c",
            "echo small > out/small; mkdir out/dir; echo a > out/dir/a; \
             head -c 40960 /dev/urandom > out/first; head -c 40960 /dev/urandom > out/second; \
             head -c 2097152 /dev/urandom > out/big; echo printed",
        ],
    );
    command(&mut l).output_paths = ["out/small", "out/dir", "out/first", "out/second", "out/big"]
        .map(String::from)
        .to_vec();
    link.lease(l).await;
    let answer = link.result().await;
    assert_eq!(
        answer.outcome(),
        LeaseOutcome::Completed,
        "{}",
        answer.message
    );
    assert!(link.progress.is_empty(), "no stages: {:?}", link.progress);
    assert_eq!(answer.digest_function, F.to_proto());
    let result = answer.result.clone().unwrap();
    let file = |path: &str| {
        let file = result.output_files.iter().find(|f| f.path == path);
        Digest::from_proto(F, file.unwrap().digest.as_ref().unwrap()).unwrap()
    };
    let inline: std::collections::HashMap<Digest, bytes::Bytes> = answer
        .blobs
        .iter()
        .map(|blob| {
            let digest = Digest::from_proto(F, blob.digest.as_ref().unwrap()).unwrap();
            assert_eq!(
                F.digest_of(&blob.data),
                digest,
                "inline data matches its digest"
            );
            assert_eq!(blob.compressor, 0, "uncompressed");
            (digest, blob.data.clone())
        })
        .collect();
    let total: usize = inline.values().map(bytes::Bytes::len).sum();
    assert!(total <= 64 * 1024, "{total} bytes inline");
    let stdout = Digest::from_proto(F, result.stdout_digest.as_ref().unwrap()).unwrap();
    let dir = &result.output_directories[0];
    let tree = Digest::from_proto(F, dir.tree_digest.as_ref().unwrap()).unwrap();
    for digest in [file("out/small"), file("out/first"), stdout, tree] {
        assert!(inline.contains_key(&digest), "{digest} inline");
    }
    assert_eq!(&inline[&stdout][..], b"printed\n");
    for digest in [file("out/second"), file("out/big")] {
        assert!(!inline.contains_key(&digest), "{digest} not inline");
    }
    // What went inline was not uploaded; the rest was.
    let cas = coordinator.cas().await;
    let missing = cas
        .find_missing(&[
            file("out/small"),
            file("out/second"),
            file("out/big"),
            stdout,
        ])
        .await
        .unwrap();
    assert_eq!(missing, vec![file("out/small"), stdout]);
}

#[tokio::test]
async fn directories_and_files_the_lease_carries_are_used_and_what_they_lack_is_fetched() {
    let coordinator = FakeCoordinator::start().await;
    // Only two files and the `kept` directory are in the CAS; the root, `sub` and `top.txt`
    // come with the lease, beside a message the tree does not name, and a wrong copy of
    // `kept/deep.txt` (which is fetched instead).
    let inputs = input_dir(&[
        ("top.txt", "top", false),
        ("sub/inner.txt", "inner", false),
        ("kept/deep.txt", "deep", false),
    ]);
    let tree = tessera_cas::tree::build_tree(inputs.path(), F).unwrap();
    let encoded: std::collections::HashMap<Digest, bytes::Bytes> =
        tree.directories.iter().cloned().collect();
    let root_dir = Directory::decode(encoded[&tree.root].clone()).unwrap();
    let child = |name: &str| {
        let node = root_dir
            .directories
            .iter()
            .find(|d| d.name == name)
            .unwrap();
        Digest::from_proto(F, node.digest.as_ref().unwrap()).unwrap()
    };
    let top = F.digest_of(b"top");
    let deep = F.digest_of(b"deep");
    let mut blobs: Vec<(Digest, bytes::Bytes)> = tree
        .files
        .iter()
        .filter(|(digest, _)| *digest != top)
        .map(|(digest, path)| (*digest, bytes::Bytes::from(std::fs::read(path).unwrap())))
        .collect();
    blobs.push((child("kept"), encoded[&child("kept")].clone()));
    let cas = coordinator.cas().await;
    cas.upload(&blobs, false).await.unwrap();
    assert_eq!(
        cas.find_missing(&[tree.root, child("sub"), top])
            .await
            .unwrap()
            .len(),
        3,
        "what is carried is not in the CAS"
    );

    let mut coordinator = coordinator;
    let _agent = TestAgent::start(&coordinator.endpoint, |_| {});
    let mut link = coordinator.link().await;
    let mut l = lease(
        "carried",
        tree.root,
        &["sh", "-c", "cat top.txt sub/inner.txt kept/deep.txt"],
    );
    l.input_directories = vec![
        bytes::Bytes::from_static(b"not a directory anyone names"),
        encoded[&tree.root].clone(),
        encoded[&child("sub")].clone(),
    ];
    let carried = |digest: Digest, data: &'static [u8]| {
        tessera_cas::client::blob_request(&digest, bytes::Bytes::from_static(data))
    };
    l.input_files = vec![carried(top, b"top"), carried(deep, b"DEEP")];
    link.lease(l).await;
    let answer = link.result().await;
    assert_eq!(
        answer.outcome(),
        LeaseOutcome::Completed,
        "{}",
        answer.message
    );
    let result = answer.result.unwrap();
    assert_eq!(result.exit_code, 0);
    let stdout = coordinator.read(result.stdout_digest.as_ref()).await;
    assert_eq!(&stdout[..], b"topinnerdeep");
}

#[tokio::test]
async fn inputs_missing_from_the_cas_are_a_failed_precondition_naming_them() {
    let mut coordinator = FakeCoordinator::start().await;
    let gone = F.digest_of(b"never uploaded");
    let root = coordinator
        .upload_message(&Directory {
            files: vec![FileNode {
                name: "gone".into(),
                digest: Some(gone.to_proto()),
                is_executable: false,
                node_properties: None,
            }],
            ..Directory::default()
        })
        .await;
    let _agent = TestAgent::start(&coordinator.endpoint, |_| {});
    let mut link = coordinator.link().await;
    link.lease(lease("m", root, &["true"])).await;
    let answer = link.result().await;
    assert!(answer.result.is_none());
    assert_eq!(answer.outcome(), LeaseOutcome::MissingInputs);
    assert!(
        answer.message.contains(&gone.hash_hex()),
        "{}",
        answer.message
    );
    // The agent names the blobs; the coordinator turns them into `PreconditionFailure`
    // subjects (see `tessera_cas::resource::missing_subject`).
    assert_eq!(answer.missing.len(), 1);
    let missing = Digest::from_proto(F, &answer.missing[0]).unwrap();
    assert_eq!(
        missing_subject(&missing),
        format!("blobs/{}/{}", gone.hash_hex(), gone.size_bytes)
    );

    // A missing directory is named just the same.
    let missing_dir = F.digest_of(b"no such directory");
    link.lease(lease("m2", missing_dir, &["true"])).await;
    let answer = link.result().await;
    assert_eq!(answer.outcome(), LeaseOutcome::MissingInputs);
    assert!(answer.message.contains(&missing_dir.hash_hex()));
}

#[tokio::test]
async fn malformed_actions_are_invalid_arguments() {
    let mut coordinator = FakeCoordinator::start().await;
    let escaping = coordinator
        .upload_message(&Directory {
            symlinks: vec![SymlinkNode {
                name: "up".into(),
                target: "../etc".into(),
                node_properties: None,
            }],
            ..Directory::default()
        })
        .await;
    let empty = coordinator.upload_message(&Directory::default()).await;
    let _agent = TestAgent::start(&coordinator.endpoint, |_| {});
    let mut link = coordinator.link().await;

    let mut cases = vec![
        (lease("tree", escaping, &["true"]), "escapes the input root"),
        (
            lease("argv0", empty, &["no-such-tool"]),
            "command not found",
        ),
        (lease("noargs", empty, &[]), "no arguments"),
    ];
    let mut bad_wd = lease("wd", empty, &["true"]);
    command(&mut bad_wd).working_directory = "../out".into();
    cases.push((bad_wd, "working directory"));
    let mut bad_output = lease("out", empty, &["true"]);
    command(&mut bad_output).output_paths = vec!["/etc/passwd".into()];
    cases.push((bad_output, "is absolute"));
    let mut bad_platform = lease("platform", empty, &["true"]);
    crate::harness::set_platform(&mut bad_platform, &[("network", "maybe")]);
    cases.push((bad_platform, "network"));

    for (l, expected) in cases {
        let id = l.lease_id.clone();
        link.lease(l).await;
        let answer = link.result().await;
        assert_eq!(answer.lease_id, id);
        assert_eq!(
            answer.outcome(),
            LeaseOutcome::InvalidAction,
            "{id}: {}",
            answer.message
        );
        assert!(
            answer.message.contains(expected),
            "{id}: {}",
            answer.message
        );
    }
}

#[tokio::test]
async fn timeout_reports_deadline_exceeded_with_the_output_so_far() {
    let mut coordinator = FakeCoordinator::start().await;
    let empty = coordinator.upload_message(&Directory::default()).await;
    let _agent = TestAgent::start(&coordinator.endpoint, |_| {});
    let mut link = coordinator.link().await;
    let mut l = lease("slow", empty, &["sh", "-c", "echo started; sleep 30"]);
    l.timeout = Some(Duration::from_millis(300).try_into().unwrap());
    command(&mut l).output_paths = vec!["never".into()];
    link.lease(l).await;
    let answer = tokio::time::timeout(Duration::from_secs(5), link.result())
        .await
        .expect("the timeout was not enforced");
    assert_eq!(answer.outcome(), LeaseOutcome::TimedOut);
    assert!(answer.message.contains("300ms"), "{}", answer.message);
    let result = answer.result.unwrap();
    assert_eq!(
        &coordinator.read(result.stdout_digest.as_ref()).await[..],
        b"started\n"
    );
}

#[tokio::test]
async fn cancel_lease_stops_the_command() {
    let mut coordinator = FakeCoordinator::start().await;
    let empty = coordinator.upload_message(&Directory::default()).await;
    let _agent = TestAgent::start(&coordinator.endpoint, |_| {});
    let mut link = coordinator.link().await;
    link.lease(lease("c", empty, &["sleep", "30"])).await;
    link.wait_stage("c", LeaseStage::Executing).await;
    link.send(CoordinatorKind::Cancel(CancelLease {
        lease_id: "c".into(),
    }))
    .await;
    let answer = tokio::time::timeout(Duration::from_secs(5), link.result())
        .await
        .expect("cancel was not prompt");
    assert_eq!(answer.outcome(), LeaseOutcome::Cancelled);
    assert!(answer.result.is_none());
}

#[tokio::test]
async fn lease_directories_are_removed_or_kept_when_asked() {
    let mut coordinator = FakeCoordinator::start().await;
    let inputs = input_dir(&[("f", "data", false)]);
    let root = coordinator.upload_dir(inputs.path()).await;
    let agent = TestAgent::start(&coordinator.endpoint, |c| c.keep_failed = true);
    let mut link = coordinator.link().await;

    link.lease(lease("ok", root, &["true"])).await;
    assert_eq!(link.result().await.result.unwrap().exit_code, 0);
    link.lease(lease("bad", root, &["sh", "-c", "echo why >&2; exit 1"]))
        .await;
    assert_eq!(link.result().await.result.unwrap().exit_code, 1);

    let exec_base = agent.work_dir.path().join("x");
    let kept = agent.work_dir.path().join("kept/bad-1");
    let until = tokio::time::Instant::now() + PATIENCE;
    while std::fs::read_dir(&exec_base).unwrap().count() > 0 || !kept.exists() {
        assert!(
            tokio::time::Instant::now() < until,
            "lease dirs not cleaned up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        std::fs::read_to_string(kept.join("stderr")).unwrap(),
        "why\n"
    );
    assert!(kept.join("root/f").exists());
}

#[tokio::test]
async fn the_local_cache_outlives_the_agent_and_serves_the_next_lease() {
    let mut first = FakeCoordinator::start().await;
    // Above the batch limit: downloaded through ByteStream.
    let inputs = input_dir(&[("big", &"x".repeat(3 * 1024 * 1024), false)]);
    let root = first.upload_dir(inputs.path()).await;
    let agent = TestAgent::start(&first.endpoint, |_| {});
    let mut link = first.link().await;
    link.lease(lease("first", root, &["test", "-s", "big"]))
        .await;
    assert_eq!(link.result().await.result.unwrap().exit_code, 0);
    let work_dir = agent.stop().await;

    // A CAS that has never seen the inputs: only the agent's cache can provide them.
    let mut second = FakeCoordinator::start().await;
    let _agent = TestAgent::start_in(&second.endpoint, work_dir, |_| {});
    let mut link = second.link().await;
    link.lease(lease("second", root, &["test", "-s", "big"]))
        .await;
    let answer = link.result().await;
    assert_eq!(
        answer.outcome(),
        LeaseOutcome::Completed,
        "{}",
        answer.message
    );
    assert_eq!(answer.result.unwrap().exit_code, 0);
}

/// Runs `script` with `sh -c` as a lease on `link` and returns what it printed, checking it
/// exited 0.
async fn printed(
    coordinator: &FakeCoordinator,
    link: &mut crate::harness::AgentLink,
    id: &str,
    root: Digest,
    script: &str,
) -> String {
    link.lease(lease(id, root, &["sh", "-c", script])).await;
    let answer = link.result().await;
    let result = answer.result.expect(&answer.message);
    let stdout = coordinator.read(result.stdout_digest.as_ref()).await;
    let stderr = coordinator.read(result.stderr_digest.as_ref()).await;
    assert_eq!(
        result.exit_code,
        0,
        "{id}: {}",
        String::from_utf8_lossy(&stderr)
    );
    String::from_utf8_lossy(&stdout).into_owned()
}

#[tokio::test]
async fn a_finished_leases_directory_is_reused_and_shows_nothing_of_it() {
    let available =
        crate::harness::namespaces_available() && tessera_agent::sandbox::pid_namespaces();
    if !available {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "PID namespaces are needed for directory reuse"
        );
        return;
    }
    let mut coordinator = FakeCoordinator::start().await;
    let first = input_dir(&[("shared/f", "same", false), ("a.txt", "a", false)]);
    let second = input_dir(&[("shared/f", "same", false), ("b.txt", "b", false)]);
    let first = coordinator.upload_dir(first.path()).await;
    let second = coordinator.upload_dir(second.path()).await;
    // What a command leaves: outputs, a file in its /tmp, a changed mode, and a daemon
    // outside its process group that keeps writing (it dies with the command's namespace).
    let messy = "pwd; mkdir -p out/deep && echo o > out/deep/o && echo t > /tmp/left && \
                 chmod 700 shared && \
                 setsid sh -c 'while :; do echo x > late; sleep 0.01; done' \
                 > /dev/null 2>&1 < /dev/null & sleep 0.1";
    let look = "pwd; find . | sort; stat -c %a shared; test ! -e /tmp/left && echo clean";

    let agent = TestAgent::start(&coordinator.endpoint, |c| c.slots = 1);
    let mut link = coordinator.link().await;
    let before = printed(&coordinator, &mut link, "messy", first, messy).await;
    // Give a surviving daemon time to write again after the next layout.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = printed(&coordinator, &mut link, "look", second, look).await;
    let (pwd, listing) = after.split_once('\n').unwrap();
    assert_eq!(before.trim(), pwd, "the second lease got another directory");
    assert_eq!(
        listing, ".\n./b.txt\n./shared\n./shared/f\n755\nclean\n",
        "what the first lease left shows"
    );
    // The first lease's output directories (out, out/deep) wait, emptied, as spares; the
    // next lease that wants directories is given them instead of new ones.
    let spare_dir = agent.work_dir.path().join("spare");
    let spares = || std::fs::read_dir(&spare_dir).unwrap().count();
    assert_eq!(spares(), 2);
    let mut made = lease(
        "made",
        first,
        &[
            "sh",
            "-c",
            "pwd; stat -c %a o1 o1/o2; ls -A o1/o2; echo r > o1/o2/file",
        ],
    );
    crate::harness::command(&mut made).output_paths = vec!["o1/o2/file".into()];
    link.lease(made).await;
    let result = link.result().await.result.unwrap();
    assert_eq!(result.exit_code, 0);
    assert_eq!(result.output_files.len(), 1);
    let stdout = coordinator.read(result.stdout_digest.as_ref()).await;
    // The same directory, the output's parents made of the spares (empty, a new one's mode).
    let umask = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .map(|m| u32::from_str_radix(m.trim(), 8).unwrap())
        .unwrap();
    let mode = format!("{:o}", 0o777 & !umask);
    assert_eq!(
        String::from_utf8_lossy(&stdout),
        format!("{}\n{mode}\n{mode}\n", before.trim())
    );
    assert_eq!(spares(), 0);
    printed(&coordinator, &mut link, "more", second, "true").await;
    assert_eq!(spares(), 2, "o1 and o1/o2 went back");

    // A command stopped at its timeout may have been SIGKILLed through its stand-in, which
    // its namespace follows only a moment later: its directory is never reused.
    let mut slow = lease("slow", second, &["sh", "-c", "pwd; sleep 30"]);
    slow.timeout = Some(Duration::from_millis(300).try_into().unwrap());
    link.lease(slow).await;
    let answer = link.result().await;
    assert_eq!(answer.outcome(), LeaseOutcome::TimedOut);
    let stdout = answer.result.unwrap().stdout_digest;
    let stopped = String::from_utf8_lossy(&coordinator.read(stdout.as_ref()).await).into_owned();
    let next = printed(&coordinator, &mut link, "next", second, "pwd").await;
    assert_ne!(stopped, next, "a timed-out lease's directory was reused");
    // Nor after a signal's exit code: it may be the stand-in's own death.
    link.lease(lease("killed", second, &["sh", "-c", "pwd; kill -9 $$"]))
        .await;
    let result = link.result().await.result.unwrap();
    assert_eq!(result.exit_code, 137);
    let killed = String::from_utf8_lossy(&coordinator.read(result.stdout_digest.as_ref()).await)
        .into_owned();
    let after_kill = printed(&coordinator, &mut link, "after-kill", second, "pwd").await;
    assert_ne!(killed, after_kill, "a killed lease's directory was reused");
    drop(link);
    drop(agent);

    // Off: each lease gets a directory of its own.
    let _agent = TestAgent::start(&coordinator.endpoint, |c| {
        c.slots = 1;
        c.recycle_dirs = false;
    });
    let mut link = coordinator.link().await;
    let one = printed(&coordinator, &mut link, "one", first, "pwd").await;
    let two = printed(&coordinator, &mut link, "two", second, "pwd").await;
    assert_ne!(one, two);
}
