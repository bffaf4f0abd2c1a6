//! The coordinator as a process: it serves, stops cleanly on SIGTERM and SIGINT, keeps its
//! data across restarts, and refuses a second process on the same data directory.

use std::time::Duration;

use bytes::Bytes;
use nix::sys::signal::Signal;
use tessera_cas::client::CasClient;
use tessera_cas::digest::DigestFunction;
use tessera_tests::ServerProcess;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly_and_data_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let blob = Bytes::from_static(b"survives a restart");
    let digest = DigestFunction::Blake3.digest_of(&blob);

    let mut first = ServerProcess::start(&data, &[]);
    let client = CasClient::connect(&first.endpoint(), "", DigestFunction::Blake3)
        .await
        .unwrap();
    client
        .upload(&[(digest, blob.clone())], false)
        .await
        .unwrap();
    let status = first
        .signal_and_wait(Signal::SIGTERM, Duration::from_secs(15))
        .expect("exits after SIGTERM");
    assert!(status.success(), "clean exit after SIGTERM, got {status}");

    let mut second = ServerProcess::start(&data, &[]);
    let client = CasClient::connect(&second.endpoint(), "", DigestFunction::Blake3)
        .await
        .unwrap();
    assert_eq!(client.read(&digest, false).await.unwrap(), blob);
    let status = second
        .signal_and_wait(Signal::SIGINT, Duration::from_secs(15))
        .expect("exits after SIGINT");
    assert!(status.success(), "clean exit after SIGINT, got {status}");

    // Regression: the handlers are installed before the coordinator listens, so a signal
    // the moment it does still stops it cleanly (it used to die of the signal's default
    // action when the task waiting for it had not run yet).
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        let mut third = ServerProcess::start(&data, &[]);
        let status = third
            .signal_and_wait(signal, Duration::from_secs(15))
            .expect("exits after the signal");
        assert!(status.success(), "clean exit after {signal}, got {status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_coordinator_on_the_same_data_dir_fails_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _first = ServerProcess::start(&data, &[]);
    let output = std::process::Command::new(tessera_tests::tessera_bin())
        .args(["coordinator", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3), "infrastructure exit code");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("another coordinator"), "{stderr}");
}

#[test]
fn unknown_config_keys_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "listen_addr = \"127.0.0.1:1\"\n").unwrap();
    let output = std::process::Command::new(tessera_tests::tessera_bin())
        .arg("coordinator")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("listen_addr"), "{stderr}");
}
