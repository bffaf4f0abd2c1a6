//! Compiles the `.proto` files under `protos/` with protox (pure Rust, no system `protoc`).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("protos");
    let files = [
        "build/bazel/remote/execution/v2/remote_execution.proto",
        "build/bazel/semver/semver.proto",
        "google/bytestream/bytestream.proto",
        "google/longrunning/operations.proto",
        "google/rpc/status.proto",
        "google/rpc/error_details.proto",
        "tessera/v1/agent.proto",
        "tessera/v1/auth.proto",
        "tessera/v1/backup.proto",
        "tessera/v1/jobs.proto",
        "tessera/v1/quarantine.proto",
        "tessera/v1/state.proto",
        "tessera/v1/webhooks.proto",
    ];
    for file in &files {
        println!("cargo:rerun-if-changed=protos/{file}");
    }
    let fds = protox::compile(files, [&root])?;
    tonic_prost_build::configure()
        // Blob payloads are `bytes::Bytes`, so they move through the server without copies.
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}
