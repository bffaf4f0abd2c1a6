//! Malformed requests, one test per case: each gets the right gRPC status with a message that
//! names the problem, and changes nothing (no blob, not even a partial one, becomes visible;
//! the server keeps serving).

use bytes::Bytes;
use prost::Message;
use tessera_cas::digest::{Digest, DigestFunction};
use tessera_proto::bytestream::byte_stream_client::ByteStreamClient;
use tessera_proto::bytestream::{QueryWriteStatusRequest, ReadRequest, WriteRequest};
use tessera_proto::reapi::action_cache_client::ActionCacheClient;
use tessera_proto::reapi::capabilities_client::CapabilitiesClient;
use tessera_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use tessera_proto::reapi::{
    self, ActionResult, BatchReadBlobsRequest, BatchUpdateBlobsRequest, Directory, DirectoryNode,
    FindMissingBlobsRequest, GetActionResultRequest, GetCapabilitiesRequest, GetTreeRequest,
    OutputFile, UpdateActionResultRequest, batch_update_blobs_request, compressor,
};
use tessera_proto::rpc;
use tessera_tests::{TestServer, noise};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// `DigestFunction.Value` MD5: valid REAPI, not implemented by Tessera.
const MD5: i32 = 3;
/// `Compressor.Value` DEFLATE: valid REAPI, not spoken by Tessera.
const DEFLATE: i32 = 2;
const ZSTD: i32 = compressor::Value::Zstd as i32;
const IDENTITY: i32 = compressor::Value::Identity as i32;
const SHA256: i32 = 1;

/// Raw tonic clients, so requests can be as wrong as a buggy client makes them.
struct Raw {
    cas: ContentAddressableStorageClient<Channel>,
    bytestream: ByteStreamClient<Channel>,
    ac: ActionCacheClient<Channel>,
    caps: CapabilitiesClient<Channel>,
}

impl Raw {
    async fn connect(server: &TestServer) -> Raw {
        let channel = server.channel().await;
        Raw {
            cas: ContentAddressableStorageClient::new(channel.clone()),
            bytestream: ByteStreamClient::new(channel.clone()),
            ac: ActionCacheClient::new(channel.clone()),
            caps: CapabilitiesClient::new(channel),
        }
    }

    /// Whether FindMissingBlobs reports `digest` missing.
    async fn missing(&self, digest: &Digest) -> bool {
        let response = self
            .cas
            .clone()
            .find_missing_blobs(FindMissingBlobsRequest {
                instance_name: String::new(),
                blob_digests: vec![digest.to_proto()],
                digest_function: digest.function.to_proto(),
            })
            .await
            .expect("FindMissingBlobs")
            .into_inner();
        !response.missing_blob_digests.is_empty()
    }

    /// Asserts that `digest` is neither reported present nor readable in any part.
    async fn assert_absent(&self, digest: &Digest) {
        assert!(self.missing(digest).await, "{digest} must be missing");
        let (data, outcome) = self.read(&read_name(digest), 0, 0).await;
        assert!(data.is_empty(), "no partial bytes of {digest} are readable");
        assert_eq!(
            outcome.unwrap_err().code(),
            Code::NotFound,
            "read of {digest}"
        );
    }

    /// One BatchUpdateBlobs call with SHA-256; the per-entry statuses.
    async fn batch_update(
        &self,
        entries: Vec<(reapi::Digest, Bytes, i32)>,
    ) -> Result<Vec<rpc::Status>, Status> {
        let requests = entries
            .into_iter()
            .map(
                |(digest, data, compressor)| batch_update_blobs_request::Request {
                    digest: Some(digest),
                    data,
                    compressor,
                },
            )
            .collect();
        let response = self
            .cas
            .clone()
            .batch_update_blobs(BatchUpdateBlobsRequest {
                instance_name: String::new(),
                requests,
                digest_function: SHA256,
            })
            .await?
            .into_inner();
        Ok(response
            .responses
            .into_iter()
            .map(|r| r.status.expect("every entry has a status"))
            .collect())
    }

    /// A ByteStream Write of exactly these messages.
    async fn write(&self, messages: Vec<WriteRequest>) -> Result<i64, Status> {
        let response = self
            .bytestream
            .clone()
            .write(futures::stream::iter(messages))
            .await?;
        Ok(response.into_inner().committed_size)
    }

    /// A ByteStream Read: the bytes received, then how the call ended.
    async fn read(&self, name: &str, offset: i64, limit: i64) -> (Vec<u8>, Result<(), Status>) {
        let started = self
            .bytestream
            .clone()
            .read(ReadRequest {
                resource_name: name.to_owned(),
                read_offset: offset,
                read_limit: limit,
            })
            .await;
        let mut stream = match started {
            Ok(response) => response.into_inner(),
            Err(status) => return (Vec::new(), Err(status)),
        };
        let mut data = Vec::new();
        loop {
            match stream.message().await {
                Ok(Some(message)) => data.extend_from_slice(&message.data),
                Ok(None) => return (data, Ok(())),
                Err(status) => return (data, Err(status)),
            }
        }
    }

    /// Bytes committed for an upload, per QueryWriteStatus.
    async fn committed(&self, name: &str) -> i64 {
        self.bytestream
            .clone()
            .query_write_status(QueryWriteStatusRequest {
                resource_name: name.to_owned(),
            })
            .await
            .expect("QueryWriteStatus")
            .into_inner()
            .committed_size
    }

    /// Uploads `data` in one batch and checks it worked: the server is still healthy.
    async fn assert_healthy(&self, data: &'static [u8]) {
        let digest = sha(data);
        let statuses = self
            .batch_update(vec![(
                digest.to_proto(),
                Bytes::from_static(data),
                IDENTITY,
            )])
            .await
            .expect("a good batch after a bad request");
        assert_eq!(statuses[0].code, Code::Ok as i32, "{:?}", statuses[0]);
        let (read, outcome) = self.read(&read_name(&digest), 0, 0).await;
        outcome.expect("a good read after a bad request");
        assert_eq!(read, data);
    }
}

fn sha(data: &[u8]) -> Digest {
    DigestFunction::Sha256.digest_of(data)
}

fn proto(hash: &str, size_bytes: i64) -> reapi::Digest {
    reapi::Digest {
        hash: hash.to_owned(),
        size_bytes,
    }
}

fn read_name(digest: &Digest) -> String {
    format!("blobs/{}/{}", digest.hash_hex(), digest.size_bytes)
}

fn upload_name(id: &str, digest: &Digest) -> String {
    format!(
        "uploads/{id}/blobs/{}/{}",
        digest.hash_hex(),
        digest.size_bytes
    )
}

fn message(name: &str, offset: i64, data: &[u8], finish_write: bool) -> WriteRequest {
    WriteRequest {
        resource_name: name.to_owned(),
        write_offset: offset,
        finish_write,
        data: Bytes::copy_from_slice(data),
    }
}

/// Asserts the call failed with `code` and a message containing every one of `needles`.
#[track_caller]
fn expect_error<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, needles: &[&str]) {
    let status = result.expect_err("the call must fail");
    assert_eq!(status.code(), code, "{status:?}");
    for needle in needles {
        assert!(
            status.message().contains(needle),
            "message \"{}\" should name {needle:?}",
            status.message()
        );
    }
}

/// Asserts a per-entry status has `code` and names every one of `needles`.
#[track_caller]
fn expect_entry(status: &rpc::Status, code: Code, needles: &[&str]) {
    assert_eq!(Code::from(status.code), code, "{status:?}");
    for needle in needles {
        assert!(
            status.message.contains(needle),
            "message \"{}\" should name {needle:?}",
            status.message
        );
    }
}

/// Checks that a malformed hash is refused by FindMissingBlobs and by a batch entry, with the
/// hash in the message, while a good entry of the same batch is stored.
async fn malformed_digest_is_refused(bad: reapi::Digest, needles: &[&str]) {
    let server = TestServer::start().await;
    let raw = Raw::connect(&server).await;
    expect_error(
        raw.cas
            .clone()
            .find_missing_blobs(FindMissingBlobsRequest {
                instance_name: String::new(),
                blob_digests: vec![sha(b"fine").to_proto(), bad.clone()],
                digest_function: SHA256,
            })
            .await,
        Code::InvalidArgument,
        &[&["blob_digests[1]"], needles].concat(),
    );
    let good = sha(b"good");
    let statuses = raw
        .batch_update(vec![
            (bad, Bytes::from_static(b"data"), IDENTITY),
            (good.to_proto(), Bytes::from_static(b"good"), IDENTITY),
        ])
        .await
        .unwrap();
    expect_entry(
        &statuses[0],
        Code::InvalidArgument,
        &[&["requests[0].digest"], needles].concat(),
    );
    expect_entry(&statuses[1], Code::Ok, &[]);
    assert!(!raw.missing(&good).await);
    raw.assert_healthy(b"after a malformed digest").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uppercase_hash_is_invalid_argument() {
    let hash = sha(b"data").hash_hex().to_uppercase();
    malformed_digest_is_refused(proto(&hash, 4), &[&hash, "lowercase"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_hash_is_invalid_argument() {
    let hash = &sha(b"data").hash_hex()[..40];
    malformed_digest_is_refused(proto(hash, 4), &[hash, "64"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_hex_hash_is_invalid_argument() {
    let hash = "z".repeat(64);
    malformed_digest_is_refused(proto(&hash, 4), &[&hash, "hexadecimal"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_size_is_invalid_argument() {
    let hash = sha(b"data").hash_hex();
    malformed_digest_is_refused(proto(&hash, -4), &["-4", "size"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_digest_in_a_batch_entry_is_invalid_argument() {
    let server = TestServer::start().await;
    let raw = Raw::connect(&server).await;
    let response = raw
        .cas
        .clone()
        .batch_update_blobs(BatchUpdateBlobsRequest {
            instance_name: String::new(),
            requests: vec![batch_update_blobs_request::Request {
                digest: None,
                data: Bytes::from_static(b"x"),
                compressor: IDENTITY,
            }],
            digest_function: SHA256,
        })
        .await
        .unwrap()
        .into_inner();
    let status = response.responses[0].status.as_ref().unwrap();
    expect_entry(
        status,
        Code::InvalidArgument,
        &["requests[0]", "missing digest"],
    );
    assert!(raw.missing(&sha(b"x")).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_digest_function_is_invalid_argument_everywhere() {
    let server = TestServer::start().await;
    let raw = Raw::connect(&server).await;
    let d = sha(b"md5 is not spoken");
    let needles = ["digest function", "3"];
    expect_error(
        raw.cas
            .clone()
            .find_missing_blobs(FindMissingBlobsRequest {
                instance_name: String::new(),
                blob_digests: vec![d.to_proto()],
                digest_function: MD5,
            })
            .await,
        Code::InvalidArgument,
        &needles,
    );
    expect_error(
        raw.cas
            .clone()
            .batch_update_blobs(BatchUpdateBlobsRequest {
                instance_name: String::new(),
                requests: vec![batch_update_blobs_request::Request {
                    digest: Some(d.to_proto()),
                    data: Bytes::from_static(b"md5 is not spoken"),
                    compressor: IDENTITY,
                }],
                digest_function: MD5,
            })
            .await,
        Code::InvalidArgument,
        &needles,
    );
    expect_error(
        raw.cas
            .clone()
            .batch_read_blobs(BatchReadBlobsRequest {
                instance_name: String::new(),
                digests: vec![d.to_proto()],
                acceptable_compressors: Vec::new(),
                digest_function: MD5,
            })
            .await,
        Code::InvalidArgument,
        &needles,
    );
    expect_error(
        raw.cas
            .clone()
            .get_tree(GetTreeRequest {
                root_digest: Some(d.to_proto()),
                digest_function: MD5,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        &needles,
    );
    expect_error(
        raw.ac
            .clone()
            .get_action_result(GetActionResultRequest {
                action_digest: Some(d.to_proto()),
                digest_function: MD5,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        &needles,
    );
    expect_error(
        raw.ac
            .clone()
            .update_action_result(UpdateActionResultRequest {
                action_digest: Some(d.to_proto()),
                action_result: Some(ActionResult::default()),
                digest_function: MD5,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        &needles,
    );
    assert!(raw.missing(&d).await);
}

/// Checks that `instance` is refused by every service, with the name in the message.
async fn bad_instance_is_refused(instance: &str) {
    let server = TestServer::start().await;
    let raw = Raw::connect(&server).await;
    let data = Bytes::from_static(b"instance");
    let d = sha(&data);
    let needles = ["instance name", instance];
    expect_error(
        raw.caps
            .clone()
            .get_capabilities(GetCapabilitiesRequest {
                instance_name: instance.to_owned(),
            })
            .await,
        Code::InvalidArgument,
        &needles,
    );
    expect_error(
        raw.cas
            .clone()
            .find_missing_blobs(FindMissingBlobsRequest {
                instance_name: instance.to_owned(),
                blob_digests: vec![d.to_proto()],
                digest_function: SHA256,
            })
            .await,
        Code::InvalidArgument,
        &needles,
    );
    expect_error(
        raw.cas
            .clone()
            .batch_update_blobs(BatchUpdateBlobsRequest {
                instance_name: instance.to_owned(),
                requests: vec![batch_update_blobs_request::Request {
                    digest: Some(d.to_proto()),
                    data: data.clone(),
                    compressor: IDENTITY,
                }],
                digest_function: SHA256,
            })
            .await,
        Code::InvalidArgument,
        &needles,
    );
    expect_error(
        raw.ac
            .clone()
            .get_action_result(GetActionResultRequest {
                instance_name: instance.to_owned(),
                action_digest: Some(d.to_proto()),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        &needles,
    );
    expect_error(
        raw.ac
            .clone()
            .update_action_result(UpdateActionResultRequest {
                instance_name: instance.to_owned(),
                action_digest: Some(d.to_proto()),
                action_result: Some(ActionResult::default()),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        &needles,
    );
    raw.assert_absent(&d).await;
    raw.assert_healthy(b"after a bad instance name").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_name_with_a_reserved_segment_is_invalid_argument() {
    bad_instance_is_refused("a/blobs/b").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_name_with_dot_dot_is_invalid_argument() {
    bad_instance_is_refused("a/../b").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytestream_instance_name_with_dot_dot_is_invalid_argument() {
    let server = TestServer::start().await;
    let raw = Raw::connect(&server).await;
    let d = sha(b"dots");
    let (_, outcome) = raw.read(&format!("../{}", read_name(&d)), 0, 0).await;
    expect_error(outcome, Code::InvalidArgument, &["instance name", ".."]);
    let name = format!("a/../{}", upload_name("u1", &d));
    expect_error(
        raw.write(vec![message(&name, 0, b"dots", true)]).await,
        Code::InvalidArgument,
        &["instance name", "a/.."],
    );
    raw.assert_absent(&d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_update_hash_mismatch_fails_only_that_entry() {
    let server = TestServer::start().await;
    let raw = Raw::connect(&server).await;
    let claimed = sha(b"what the digest says");
    let good = sha(b"an honest entry");
    let statuses = raw
        .batch_update(vec![
            (
                claimed.to_proto(),
                // Same length, other bytes.
                Bytes::from_static(b"what the digest SAYS"),
                IDENTITY,
            ),
            (
                good.to_proto(),
                Bytes::from_static(b"an honest entry"),
                IDENTITY,
            ),
        ])
        .await
        .unwrap();
    expect_entry(
        &statuses[0],
        Code::InvalidArgument,
        &["hash mismatch", &claimed.hash_hex()],
    );
    expect_entry(&statuses[1], Code::Ok, &[]);
    raw.assert_absent(&claimed).await;
    assert!(!raw.missing(&good).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_update_size_mismatch_fails_only_that_entry() {
    let server = TestServer::start().await;
    let raw = Raw::connect(&server).await;
    let data = Bytes::from_static(b"twelve bytes");
    let real = sha(&data);
    let claimed = proto(&real.hash_hex(), 13);
    let good = sha(b"fine");
    let statuses = raw
        .batch_update(vec![
            (claimed, data, IDENTITY),
            (good.to_proto(), Bytes::from_static(b"fine"), IDENTITY),
        ])
        .await
        .unwrap();
    expect_entry(
        &statuses[0],
        Code::InvalidArgument,
        &["size mismatch", &real.hash_hex(), "12 bytes"],
    );
    expect_entry(&statuses[1], Code::Ok, &[]);
    raw.assert_absent(&real).await;
    let lying = Digest {
        size_bytes: 13,
        ..real
    };
    raw.assert_absent(&lying).await;
    assert!(!raw.missing(&good).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_update_over_the_limit_is_refused_whole() {
    let server = TestServer::start_with(|c| c.max_batch_total_size_bytes = 1000).await;
    let raw = Raw::connect(&server).await;
    let small = Bytes::from_static(b"small enough alone");
    let big = noise(990, 1);
    let statuses = raw
        .batch_update(vec![
            (sha(&small).to_proto(), small.clone(), IDENTITY),
            (sha(&big).to_proto(), big.clone(), IDENTITY),
        ])
        .await;
    expect_error(
        statuses,
        Code::InvalidArgument,
        &["1008 bytes", "limit of 1000 bytes", "ByteStream"],
    );
    raw.assert_absent(&sha(&small)).await;
    raw.assert_absent(&sha(&big)).await;
    raw.assert_healthy(b"a batch under the limit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_read_over_the_limit_is_refused_whole() {
    let server = TestServer::start_with(|c| c.max_batch_total_size_bytes = 1000).await;
    let raw = Raw::connect(&server).await;
    let blob = noise(600, 2);
    let d = sha(&blob);
    let statuses = raw
        .batch_update(vec![(d.to_proto(), blob, IDENTITY)])
        .await
        .unwrap();
    expect_entry(&statuses[0], Code::Ok, &[]);
    expect_error(
        raw.cas
            .clone()
            .batch_read_blobs(BatchReadBlobsRequest {
                instance_name: String::new(),
                digests: vec![d.to_proto(), d.to_proto()],
                acceptable_compressors: Vec::new(),
                digest_function: SHA256,
            })
            .await,
        Code::InvalidArgument,
        &["1200 bytes", "limit of 1000 bytes"],
    );
    raw.assert_healthy(b"a read under the limit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_read_of_a_missing_blob_is_not_found_for_that_entry() {
    let server = TestServer::start().await;
    let raw = Raw::connect(&server).await;
    let present = Bytes::from_static(b"present");
    raw.batch_update(vec![(sha(&present).to_proto(), present.clone(), IDENTITY)])
        .await
        .unwrap();
    let absent = sha(b"never uploaded");
    let response = raw
        .cas
        .clone()
        .batch_read_blobs(BatchReadBlobsRequest {
            instance_name: String::new(),
            digests: vec![absent.to_proto(), sha(&present).to_proto()],
            acceptable_compressors: Vec::new(),
            digest_function: SHA256,
        })
        .await
        .unwrap()
        .into_inner();
    let first = &response.responses[0];
    expect_entry(
        first.status.as_ref().unwrap(),
        Code::NotFound,
        &[&absent.hash_hex()],
    );
    assert!(first.data.is_empty());
    let second = &response.responses[1];
    expect_entry(second.status.as_ref().unwrap(), Code::Ok, &[]);
    assert_eq!(second.data, present);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_update_with_invalid_zstd_fails_only_that_entry() {
    let server = TestServer::start().await;
    let raw = Raw::connect(&server).await;
    let d = sha(b"meant to be compressed");
    let good = sha(b"fine");
    let statuses = raw
        .batch_update(vec![
            (d.to_proto(), Bytes::from_static(b"not zstd at all"), ZSTD),
            (good.to_proto(), Bytes::from_static(b"fine"), IDENTITY),
        ])
        .await
        .unwrap();
    expect_entry(
        &statuses[0],
        Code::InvalidArgument,
        &["zstd", &d.hash_hex()],
    );
    expect_entry(&statuses[1], Code::Ok, &[]);
    raw.assert_absent(&d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_update_with_zstd_that_decodes_past_the_size_is_refused() {
    let server = TestServer::start().await;
    let raw = Raw::connect(&server).await;
    let data = vec![7u8; 100_000];
    let claimed = Digest {
        size_bytes: 1000,
        ..sha(&data)
    };
    let compressed = tessera_cas::store::codec::compress(&data);
    let statuses = raw
        .batch_update(vec![(claimed.to_proto(), compressed.into(), ZSTD)])
        .await
        .unwrap();
    expect_entry(
        &statuses[0],
        Code::InvalidArgument,
        &["more than 1000 bytes", &claimed.hash_hex()],
    );
    raw.assert_absent(&claimed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_update_with_unsupported_compressor_fails_only_that_entry() {
    let server = TestServer::start().await;
    let raw = Raw::connect(&server).await;
    let d = sha(b"deflated, supposedly");
    let good = sha(b"fine");
    let statuses = raw
        .batch_update(vec![
            (
                d.to_proto(),
                Bytes::from_static(b"deflated, supposedly"),
                DEFLATE,
            ),
            (good.to_proto(), Bytes::from_static(b"fine"), IDENTITY),
        ])
        .await
        .unwrap();
    expect_entry(
        &statuses[0],
        Code::InvalidArgument,
        &["unsupported compressor 2"],
    );
    expect_entry(&statuses[1], Code::Ok, &[]);
    raw.assert_absent(&d).await;
}

/// Checks that a Write whose first resource name is `name` is refused with `needles` in the
/// message, and that nothing was stored under `digest`.
async fn write_name_is_refused(name: &str, needles: &[&str]) {
    let server = TestServer::start().await;
    let raw = Raw::connect(&server).await;
    expect_error(
        raw.write(vec![message(name, 0, b"payload", true)]).await,
        Code::InvalidArgument,
        needles,
    );
    raw.assert_absent(&sha(b"payload")).await;
    raw.assert_healthy(b"after a bad resource name").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_without_uploads_segment_is_invalid_argument() {
    write_name_is_refused(&read_name(&sha(b"payload")), &["uploads", "blobs"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_without_any_known_segment_is_invalid_argument() {
    write_name_is_refused("some/thing/else", &["some/thing/else", "uploads"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_with_bad_upload_id_is_invalid_argument() {
    let d = sha(b"payload");
    write_name_is_refused(
        &upload_name("not+a+uuid!", &d),
        &["upload id", "not+a+uuid!"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_to_compressed_blobs_identity_is_invalid_argument() {
    let d = sha(b"payload");
    let name = format!(
        "uploads/u1/compressed-blobs/identity/{}/{}",
        d.hash_hex(),
        d.size_bytes
    );
    write_name_is_refused(&name, &["compressor", "identity"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_with_unknown_compressor_is_invalid_argument() {
    let d = sha(b"payload");
    let name = format!(
        "uploads/u1/compressed-blobs/lz4/{}/{}",
        d.hash_hex(),
        d.size_bytes
    );
    write_name_is_refused(&name, &["compressor", "lz4"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_without_size_is_invalid_argument() {
    let d = sha(b"payload");
    let name = format!("uploads/u1/blobs/{}", d.hash_hex());
    write_name_is_refused(&name, &["size"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_with_non_numeric_size_is_invalid_argument() {
    let d = sha(b"payload");
    let name = format!("uploads/u1/blobs/{}/7bytes", d.hash_hex());
    write_name_is_refused(&name, &["size", "7bytes"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_of_data_not_matching_the_hash_fails_at_commit() {
    let server = TestServer::start().await;
    let raw = Raw::connect(&server).await;
    let d = sha(b"the real content");
    let name = upload_name("u1", &d);
    expect_error(
        raw.write(vec![
            message(&name, 0, b"the fake", false),
            message("", 8, b" content", true),
        ])
        .await,
        Code::InvalidArgument,
        &["hash mismatch", &d.hash_hex()],
    );
    raw.assert_absent(&d).await;
    assert_eq!(raw.committed(&name).await, 0, "nothing kept for resumption");
    // The same upload done right still works.
    let committed = raw
        .write(vec![message(&name, 0, b"the real content", true)])
        .await
        .unwrap();
    assert_eq!(committed, 16);
    assert!(!raw.missing(&d).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_write_of_invalid_zstd_is_invalid_argument() {
    let server = TestServer::start().await;
    let raw = Raw::connect(&server).await;
    let d = sha(b"compressed content");
    let name = format!(
        "uploads/u1/compressed-blobs/zstd/{}/{}",
        d.hash_hex(),
        d.size_bytes
    );
    expect_error(
        raw.write(vec![message(&name, 0, b"this is no zstd frame", true)])
            .await,
        Code::InvalidArgument,
        &["zstd"],
    );
    raw.assert_absent(&d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_of_more_data_than_the_size_is_invalid_argument() {
    let server = TestServer::start().await;
    let raw = Raw::connect(&server).await;
    let d = sha(b"short");
    let name = upload_name("u1", &d);
    expect_error(
        raw.write(vec![
            message(&name, 0, b"short", false),
            message("", 5, b" and then some", true),
        ])
        .await,
        Code::InvalidArgument,
        &["overflows", "19 bytes", &d.hash_hex()],
    );
    raw.assert_absent(&d).await;
    raw.assert_healthy(b"after an overflow").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_with_an_offset_gap_is_invalid_argument() {
    let server = TestServer::start().await;
    let raw = Raw::connect(&server).await;
    let data = b"0123456789abcdef";
    let d = sha(data);
    let name = upload_name("u1", &d);
    expect_error(
        raw.write(vec![
            message(&name, 0, &data[..4], false),
            message("", 10, &data[10..], true),
        ])
        .await,
        Code::InvalidArgument,
        &["write_offset 10", "4 bytes committed"],
    );
    raw.assert_absent(&d).await;
    // A first message that does not start at 0 (nothing to resume) is refused the same way.
    let other = upload_name("u2", &d);
    expect_error(
        raw.write(vec![message(&other, 3, &data[3..], true)]).await,
        Code::InvalidArgument,
        &["write_offset 3", "0 bytes committed"],
    );
    raw.assert_absent(&d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_changing_its_resource_name_midway_is_invalid_argument() {
    let server = TestServer::start().await;
    let raw = Raw::connect(&server).await;
    let data = b"two names, one stream";
    let d = sha(data);
    let other = sha(b"something else entirely");
    expect_error(
        raw.write(vec![
            message(&upload_name("u1", &d), 0, &data[..4], false),
            message(&upload_name("u1", &other), 4, &data[4..], true),
        ])
        .await,
        Code::InvalidArgument,
        &["different resource name", &other.hash_hex()],
    );
    raw.assert_absent(&d).await;
    raw.assert_absent(&other).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_stream_ending_without_finish_write_is_invalid_argument() {
    let server = TestServer::start().await;
    let raw = Raw::connect(&server).await;
    let data = b"an upload that stops halfway";
    let d = sha(data);
    let name = upload_name("u1", &d);
    expect_error(
        raw.write(vec![message(&name, 0, &data[..10], false)]).await,
        Code::InvalidArgument,
        &["finish_write", &d.hash_hex()],
    );
    raw.assert_absent(&d).await;
    assert_eq!(raw.committed(&name).await, 10, "kept for resumption");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_write_stream_is_invalid_argument() {
    let server = TestServer::start().await;
    let raw = Raw::connect(&server).await;
    expect_error(
        raw.write(Vec::new()).await,
        Code::InvalidArgument,
        &["empty"],
    );
    raw.assert_healthy(b"after an empty write").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_with_negative_offset_is_out_of_range() {
    let server = TestServer::start().await;
    let raw = Raw::connect(&server).await;
    raw.assert_healthy(b"ten bytes!").await;
    let (data, outcome) = raw.read(&read_name(&sha(b"ten bytes!")), -1, 0).await;
    assert!(data.is_empty());
    expect_error(outcome, Code::OutOfRange, &["read_offset -1", "10 bytes"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_past_the_end_is_out_of_range() {
    let server = TestServer::start().await;
    let raw = Raw::connect(&server).await;
    raw.assert_healthy(b"ten bytes!").await;
    let (data, outcome) = raw.read(&read_name(&sha(b"ten bytes!")), 11, 0).await;
    assert!(data.is_empty());
    expect_error(outcome, Code::OutOfRange, &["read_offset 11", "10 bytes"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_with_negative_limit_is_invalid_argument() {
    let server = TestServer::start().await;
    let raw = Raw::connect(&server).await;
    raw.assert_healthy(b"ten bytes!").await;
    let (data, outcome) = raw.read(&read_name(&sha(b"ten bytes!")), 0, -5).await;
    assert!(data.is_empty());
    expect_error(outcome, Code::InvalidArgument, &["read_limit -5"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_with_a_limit_on_compressed_blobs_is_invalid_argument() {
    let server = TestServer::start().await;
    let raw = Raw::connect(&server).await;
    raw.assert_healthy(b"ten bytes!").await;
    let d = sha(b"ten bytes!");
    let name = format!("compressed-blobs/zstd/{}/{}", d.hash_hex(), d.size_bytes);
    let (data, outcome) = raw.read(&name, 0, 4).await;
    assert!(data.is_empty());
    expect_error(
        outcome,
        Code::InvalidArgument,
        &["read_limit", "compressed-blobs", "4"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_of_a_missing_blob_is_not_found() {
    let server = TestServer::start().await;
    let raw = Raw::connect(&server).await;
    let d = sha(b"never uploaded");
    let (data, outcome) = raw.read(&read_name(&d), 0, 0).await;
    assert!(data.is_empty());
    expect_error(outcome, Code::NotFound, &[&d.hash_hex()]);
    let compressed = format!("compressed-blobs/zstd/{}/{}", d.hash_hex(), d.size_bytes);
    let (_, outcome) = raw.read(&compressed, 0, 0).await;
    expect_error(outcome, Code::NotFound, &[&d.hash_hex()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_with_a_malformed_resource_name_is_invalid_argument() {
    let server = TestServer::start().await;
    let raw = Raw::connect(&server).await;
    let d = sha(b"x");
    for (name, needle) in [
        (format!("blobs/{}", d.hash_hex()), "size"),
        (format!("blobs/{}/-1", d.hash_hex()), "-1"),
        (format!("blobs/{}/1", &d.hash_hex()[..10]), "invalid hash"),
        ("nothing/here".to_owned(), "nothing/here"),
        (
            format!("blobs/{}/99999999999999999999", d.hash_hex()),
            "too large",
        ),
        (
            format!("compressed-blobs/brotli/{}/1", d.hash_hex()),
            "brotli",
        ),
    ] {
        let (_, outcome) = raw.read(&name, 0, 0).await;
        expect_error(outcome, Code::InvalidArgument, &[needle]);
    }
}

fn directory(name: &str) -> (Digest, Bytes) {
    let dir = Directory {
        directories: vec![DirectoryNode {
            name: name.to_owned(),
            digest: Some(sha(b"").to_proto()),
        }],
        ..Default::default()
    };
    let bytes = Bytes::from(dir.encode_to_vec());
    (sha(&bytes), bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_tree_of_a_missing_root_is_not_found() {
    let server = TestServer::start().await;
    let raw = Raw::connect(&server).await;
    let (root, _) = directory("never uploaded");
    expect_error(
        raw.cas
            .clone()
            .get_tree(GetTreeRequest {
                root_digest: Some(root.to_proto()),
                ..Default::default()
            })
            .await,
        Code::NotFound,
        &[&root.hash_hex()],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_tree_with_a_bad_page_token_is_invalid_argument() {
    let server = TestServer::start().await;
    let raw = Raw::connect(&server).await;
    let (root, bytes) = directory("sub");
    raw.batch_update(vec![(root.to_proto(), bytes, IDENTITY)])
        .await
        .unwrap();
    for token in ["not-a-token", "99"] {
        expect_error(
            raw.cas
                .clone()
                .get_tree(GetTreeRequest {
                    root_digest: Some(root.to_proto()),
                    page_size: 1,
                    page_token: token.to_owned(),
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
            &["page_token", token],
        );
    }
    expect_error(
        raw.cas
            .clone()
            .get_tree(GetTreeRequest {
                root_digest: Some(root.to_proto()),
                page_size: -1,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        &["page_size -1"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_tree_of_a_blob_that_is_no_directory_is_invalid_argument() {
    let server = TestServer::start().await;
    let raw = Raw::connect(&server).await;
    let junk = Bytes::from_static(&[0xff, 0xff, 0xff]);
    let d = sha(&junk);
    raw.batch_update(vec![(d.to_proto(), junk, IDENTITY)])
        .await
        .unwrap();
    expect_error(
        raw.cas
            .clone()
            .get_tree(GetTreeRequest {
                root_digest: Some(d.to_proto()),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        &["Directory", &d.hash_hex()],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_action_result_for_an_unknown_action_is_not_found() {
    let server = TestServer::start().await;
    let raw = Raw::connect(&server).await;
    let action = sha(b"an action nobody ran");
    expect_error(
        raw.ac
            .clone()
            .get_action_result(GetActionResultRequest {
                instance_name: "ci".to_owned(),
                action_digest: Some(action.to_proto()),
                ..Default::default()
            })
            .await,
        Code::NotFound,
        &[&action.hash_hex(), "ci"],
    );
}

fn result_with_output(path: &str, digest: &Digest) -> ActionResult {
    ActionResult {
        output_files: vec![OutputFile {
            path: path.to_owned(),
            digest: Some(digest.to_proto()),
            ..Default::default()
        }],
        ..Default::default()
    }
}

async fn update(raw: &Raw, action: &Digest, result: Option<ActionResult>) -> Result<(), Status> {
    raw.ac
        .clone()
        .update_action_result(UpdateActionResultRequest {
            action_digest: Some(action.to_proto()),
            action_result: result,
            ..Default::default()
        })
        .await
        .map(drop)
}

async fn assert_not_cached(raw: &Raw, action: &Digest) {
    let got = raw
        .ac
        .clone()
        .get_action_result(GetActionResultRequest {
            action_digest: Some(action.to_proto()),
            ..Default::default()
        })
        .await;
    assert_eq!(got.unwrap_err().code(), Code::NotFound, "{action} cached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_action_result_with_missing_outputs_is_failed_precondition() {
    let server = TestServer::start().await;
    let raw = Raw::connect(&server).await;
    let present = Bytes::from_static(b"uploaded output");
    raw.batch_update(vec![(sha(&present).to_proto(), present.clone(), IDENTITY)])
        .await
        .unwrap();
    let absent = sha(b"output never uploaded");
    let stderr = sha(b"stderr never uploaded");
    let mut result = result_with_output("out/missing", &absent);
    result.output_files.push(OutputFile {
        path: "out/present".to_owned(),
        digest: Some(sha(&present).to_proto()),
        ..Default::default()
    });
    result.stderr_digest = Some(stderr.to_proto());
    let action = sha(b"action with missing outputs");
    let status = update(&raw, &action, Some(result)).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains(&absent.hash_hex()), "{status:?}");

    let details = rpc::Status::decode(status.details()).expect("google.rpc.Status details");
    assert_eq!(details.code, Code::FailedPrecondition as i32);
    let any = details
        .details
        .iter()
        .find(|a| a.type_url == "type.googleapis.com/google.rpc.PreconditionFailure")
        .expect("a PreconditionFailure detail");
    let failure = rpc::PreconditionFailure::decode(any.value.as_slice()).unwrap();
    let mut subjects: Vec<(&str, &str)> = failure
        .violations
        .iter()
        .map(|v| (v.r#type.as_str(), v.subject.as_str()))
        .collect();
    subjects.sort_unstable();
    let mut expected = [
        format!("blobs/{}/{}", absent.hash_hex(), absent.size_bytes),
        format!("blobs/{}/{}", stderr.hash_hex(), stderr.size_bytes),
    ];
    expected.sort_unstable();
    let expected: Vec<(&str, &str)> = expected.iter().map(|s| ("MISSING", s.as_str())).collect();
    assert_eq!(subjects, expected);
    assert_not_cached(&raw, &action).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_action_result_without_a_result_is_invalid_argument() {
    let server = TestServer::start().await;
    let raw = Raw::connect(&server).await;
    let action = sha(b"action without result");
    expect_error(
        update(&raw, &action, None).await,
        Code::InvalidArgument,
        &["action_result"],
    );
    assert_not_cached(&raw, &action).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_action_result_with_escaping_output_paths_is_invalid_argument() {
    let server = TestServer::start().await;
    let raw = Raw::connect(&server).await;
    let out = Bytes::from_static(b"output");
    raw.batch_update(vec![(sha(&out).to_proto(), out.clone(), IDENTITY)])
        .await
        .unwrap();
    let action = sha(b"action with bad paths");
    for (path, needle) in [
        ("/etc/passwd", "absolute"),
        ("out/../../escape", ".."),
        ("out//double", "empty"),
        ("", "empty path"),
    ] {
        expect_error(
            update(&raw, &action, Some(result_with_output(path, &sha(&out)))).await,
            Code::InvalidArgument,
            &[path, needle],
        );
        assert_not_cached(&raw, &action).await;
    }
    let mut bad_dir = ActionResult::default();
    bad_dir.output_directories.push(reapi::OutputDirectory {
        path: "../up".to_owned(),
        tree_digest: Some(sha(&out).to_proto()),
        ..Default::default()
    });
    expect_error(
        update(&raw, &action, Some(bad_dir)).await,
        Code::InvalidArgument,
        &["../up"],
    );
    assert_not_cached(&raw, &action).await;
}

/// The total size of the files under `dir`.
fn bytes_under(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.metadata().map_or(0, |m| m.len()))
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytestream_write_beyond_the_store_budget_is_resource_exhausted() {
    let server = TestServer::start_with(|c| c.max_cas_bytes = Some(64 * 1024)).await;
    let raw = Raw::connect(&server).await;
    for (id, len) in [("buffered", 100 * 1024), ("streamed", 400 * 1024)] {
        let big = noise(len, 3);
        let d = sha(&big);
        let name = upload_name(id, &d);
        let messages = big
            .chunks(16 * 1024)
            .enumerate()
            .map(|(i, piece)| {
                let offset = i * 16 * 1024;
                message(
                    if i == 0 { &name } else { "" },
                    offset as i64,
                    piece,
                    offset + piece.len() == len,
                )
            })
            .collect();
        expect_error(
            raw.write(messages).await,
            Code::ResourceExhausted,
            &["no room", &d.hash_hex(), "65536"],
        );
        raw.assert_absent(&d).await;
        assert_eq!(raw.committed(&name).await, 0);
    }
    assert_eq!(
        bytes_under(&server.dir.path().join("data/cas/tmp")),
        0,
        "no temporary file left behind"
    );
    raw.assert_healthy(b"small blobs still fit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_update_beyond_the_store_budget_is_resource_exhausted_for_that_entry() {
    let server = TestServer::start_with(|c| c.max_cas_bytes = Some(64 * 1024)).await;
    let raw = Raw::connect(&server).await;
    let big = noise(80 * 1024, 4);
    let small = Bytes::from_static(b"a small blob fits");
    let statuses = raw
        .batch_update(vec![
            (sha(&big).to_proto(), big.clone(), IDENTITY),
            (sha(&small).to_proto(), small.clone(), IDENTITY),
        ])
        .await
        .unwrap();
    expect_entry(
        &statuses[0],
        Code::ResourceExhausted,
        &["no room", &sha(&big).hash_hex()],
    );
    expect_entry(&statuses[1], Code::Ok, &[]);
    raw.assert_absent(&sha(&big)).await;
    assert!(!raw.missing(&sha(&small)).await);
    assert_eq!(bytes_under(&server.dir.path().join("data/cas/tmp")), 0);
}

/// Uploads `blob`, overwrites its file with same-length garbage, and checks that a ByteStream
/// Read ends in DATA_LOSS, that the blob is then missing, and that uploading it again repairs it.
async fn corrupt_blob_is_data_loss(blob: Bytes) {
    let server = TestServer::start().await;
    let raw = Raw::connect(&server).await;
    let d = sha(&blob);
    let name = upload_name("u1", &d);
    let committed = raw
        .write(vec![message(&name, 0, &blob, true)])
        .await
        .unwrap();
    assert_eq!(committed, d.size_i64());
    let file = tessera_tests::blob_file(&server.dir.path().join("data"), &d).expect("blob file");
    let stored = std::fs::metadata(&file).unwrap().len();
    let garbage = noise(usize::try_from(stored).unwrap(), 6);
    std::fs::write(&file, &garbage).unwrap();
    if file.extension().is_some_and(|e| e == "zst") {
        // A blob kept compressed that was stored a moment ago is also in the coordinator's
        // memory, with the bytes that were checked on the way in: read from there, right.
        let (data, outcome) = raw.read(&read_name(&d), 0, 0).await;
        outcome.unwrap();
        assert_eq!(data, blob, "served from memory, not from the damaged file");
        // Others stored since push it out (64 MiB, first in first out); then the file is read.
        for n in 0..4u8 {
            let filler: Bytes = format!("filler {n} ").repeat(2 * 1024 * 1024).into_bytes()
                [..16 * 1024 * 1024]
                .to_vec()
                .into();
            let f = sha(&filler);
            let name = upload_name(&format!("filler-{n}"), &f);
            let chunks = filler.chunks(1024 * 1024).collect::<Vec<_>>();
            let last = chunks.len() - 1;
            let messages = chunks
                .iter()
                .enumerate()
                .map(|(i, chunk)| message(&name, (i * 1024 * 1024) as i64, chunk, i == last))
                .collect();
            raw.write(messages).await.unwrap();
        }
    }

    let (data, outcome) = raw.read(&read_name(&d), 0, 0).await;
    expect_error(outcome, Code::DataLoss, &["corrupt", &d.hash_hex()]);
    assert!(data.len() <= blob.len());
    assert!(
        raw.missing(&d).await,
        "a corrupt blob is treated as missing"
    );
    assert!(!file.exists(), "the corrupt file is removed");

    // The client repairs it by uploading again.
    raw.write(vec![message(&upload_name("u2", &d), 0, &blob, true)])
        .await
        .unwrap();
    let (data, outcome) = raw.read(&read_name(&d), 0, 0).await;
    outcome.unwrap();
    assert_eq!(data, blob);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_blob_on_disk_ends_the_read_in_data_loss_and_is_then_missing() {
    // Incompressible: kept raw at rest, and larger than one read chunk.
    corrupt_blob_is_data_loss(noise(600 * 1024, 5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_compressed_blob_on_disk_ends_the_read_in_data_loss() {
    // Compressible: kept as zstd at rest, so the garbage fails to decode.
    let blob: Vec<u8> = b"compressible "
        .iter()
        .copied()
        .cycle()
        .take(64 * 1024)
        .collect();
    corrupt_blob_is_data_loss(blob.into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_blob_in_a_batch_read_is_not_found_and_then_missing() {
    let server = TestServer::start().await;
    let raw = Raw::connect(&server).await;
    // Over 16 KiB, so it is a file (smaller blobs live in the metadata store).
    let blob = noise(20_000, 7);
    let d = sha(&blob);
    raw.batch_update(vec![(d.to_proto(), blob.clone(), IDENTITY)])
        .await
        .unwrap();
    let file = tessera_tests::blob_file(&server.dir.path().join("data"), &d).expect("blob file");
    std::fs::write(&file, noise(blob.len(), 8)).unwrap();
    let response = raw
        .cas
        .clone()
        .batch_read_blobs(BatchReadBlobsRequest {
            digests: vec![d.to_proto()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let entry = &response.responses[0];
    expect_entry(
        entry.status.as_ref().unwrap(),
        Code::NotFound,
        &[&d.hash_hex()],
    );
    assert!(entry.data.is_empty(), "no wrong bytes are served");
    raw.assert_absent(&d).await;
}

/// Pins a bug: the byte total of a BatchReadBlobs request is summed without overflow checks, so
/// sizes near `i64::MAX` panic the handler (debug) or wrap below the limit (release).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_read_whose_sizes_overflow_the_total_is_invalid_argument() {
    let server = TestServer::start().await;
    let raw = Raw::connect(&server).await;
    let hash = sha(b"huge").hash_hex();
    expect_error(
        raw.cas
            .clone()
            .batch_read_blobs(BatchReadBlobsRequest {
                digests: vec![
                    proto(&hash, i64::MAX),
                    proto(&hash, i64::MAX),
                    proto(&hash, 5),
                ],
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        &["exceeds the limit"],
    );
    raw.assert_healthy(b"after an overflowing batch").await;
}

/// A zstd entry is as large as the blob it decodes to: counting only its compressed bytes
/// would let a few KiB of zstd expand to gigabytes in the server's memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_update_counts_uncompressed_sizes_toward_the_limit() {
    let server = TestServer::start_with(|c| c.max_batch_total_size_bytes = 64 * 1024).await;
    let raw = Raw::connect(&server).await;
    let zeros = vec![0u8; 1024 * 1024];
    let d = sha(&zeros);
    let compressed = tessera_cas::store::codec::compress(&zeros);
    assert!(compressed.len() < 1024);
    expect_error(
        raw.batch_update(vec![(d.to_proto(), compressed.into(), ZSTD)])
            .await,
        Code::InvalidArgument,
        &["1048576 bytes", "limit of 65536 bytes"],
    );
    raw.assert_absent(&d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_at_the_wrong_offset_is_refused_and_the_upload_kept() {
    let server = TestServer::start().await;
    let raw = Raw::connect(&server).await;
    let data = b"0123456789abcdefghij";
    let d = sha(data);
    let name = upload_name("u1", &d);
    expect_error(
        raw.write(vec![message(&name, 0, &data[..10], false)]).await,
        Code::InvalidArgument,
        &["finish_write"],
    );
    assert_eq!(raw.committed(&name).await, 10);
    expect_error(
        raw.write(vec![message(&name, 6, &data[6..], true)]).await,
        Code::InvalidArgument,
        &["write_offset 6", "10 bytes committed"],
    );
    raw.assert_absent(&d).await;
    assert_eq!(raw.committed(&name).await, 10, "still resumable");
    let committed = raw
        .write(vec![message(&name, 10, &data[10..], true)])
        .await
        .unwrap();
    assert_eq!(committed, 20);
    assert!(!raw.missing(&d).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_write_status_with_a_malformed_name_is_invalid_argument() {
    let server = TestServer::start().await;
    let raw = Raw::connect(&server).await;
    let d = sha(b"x");
    for (name, needle) in [
        (read_name(&d), "uploads"),
        (format!("uploads/u1/blobs/{}/x", d.hash_hex()), "size"),
        (
            format!("uploads/u1/blobs/{}/1", d.hash_hex().to_uppercase()),
            "hash",
        ),
    ] {
        expect_error(
            raw.bytestream
                .clone()
                .query_write_status(QueryWriteStatusRequest {
                    resource_name: name,
                })
                .await,
            Code::InvalidArgument,
            &[needle],
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_action_result_with_a_malformed_digest_is_invalid_argument() {
    let server = TestServer::start().await;
    let raw = Raw::connect(&server).await;
    let action = sha(b"action with a bad output digest");
    let bad_output = ActionResult {
        output_files: vec![OutputFile {
            path: "out/file".to_owned(),
            digest: Some(proto("NOT-A-HASH", 3)),
            ..Default::default()
        }],
        ..Default::default()
    };
    expect_error(
        update(&raw, &action, Some(bad_output)).await,
        Code::InvalidArgument,
        &["out/file", "NOT-A-HASH"],
    );
    let bad_stdout = ActionResult {
        stdout_digest: Some(proto(&sha(b"x").hash_hex(), -1)),
        ..Default::default()
    };
    expect_error(
        update(&raw, &action, Some(bad_stdout)).await,
        Code::InvalidArgument,
        &["stdout_digest", "-1"],
    );
    assert_not_cached(&raw, &action).await;
    expect_error(
        raw.ac
            .clone()
            .update_action_result(UpdateActionResultRequest {
                action_digest: Some(proto("abc", 1)),
                action_result: Some(ActionResult::default()),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        &["abc"],
    );
    expect_error(
        raw.ac
            .clone()
            .get_action_result(GetActionResultRequest::default())
            .await,
        Code::InvalidArgument,
        &["missing digest"],
    );
}

fn compressed_upload_name(id: &str, digest: &Digest) -> String {
    format!(
        "uploads/{id}/compressed-blobs/zstd/{}/{}",
        digest.hash_hex(),
        digest.size_bytes
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_write_decoding_past_the_size_is_invalid_argument() {
    let server = TestServer::start().await;
    let raw = Raw::connect(&server).await;
    let data = vec![b'a'; 50_000];
    let claimed = Digest {
        size_bytes: 1_000,
        ..sha(&data)
    };
    let compressed = tessera_cas::store::codec::compress(&data);
    expect_error(
        raw.write(vec![message(
            &compressed_upload_name("u1", &claimed),
            0,
            &compressed,
            true,
        )])
        .await,
        Code::InvalidArgument,
        &["more than 1000 bytes"],
    );
    raw.assert_absent(&claimed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_write_ending_mid_frame_is_invalid_argument() {
    let server = TestServer::start().await;
    let raw = Raw::connect(&server).await;
    let data = noise(100_000, 9);
    let d = sha(&data);
    let compressed = tessera_cas::store::codec::compress(&data);
    let cut = &compressed[..compressed.len() / 2];
    expect_error(
        raw.write(vec![message(
            &compressed_upload_name("u1", &d),
            0,
            cut,
            true,
        )])
        .await,
        Code::InvalidArgument,
        &["zstd", "frame"],
    );
    raw.assert_absent(&d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_when_recent_blobs_fill_the_budget_is_resource_exhausted() {
    let server = TestServer::start_with(|c| c.max_cas_bytes = Some(64 * 1024)).await;
    let raw = Raw::connect(&server).await;
    let first = noise(40 * 1024, 10);
    let second = noise(40 * 1024, 11);
    let name = upload_name("u1", &sha(&first));
    raw.write(vec![message(&name, 0, &first, true)])
        .await
        .unwrap();
    // Each fits the budget alone, but the first was used too recently to be evicted.
    let d = sha(&second);
    expect_error(
        raw.write(vec![message(&upload_name("u2", &d), 0, &second, true)])
            .await,
        Code::ResourceExhausted,
        &["no room", &d.hash_hex(), "40960 bytes pinned or too recent"],
    );
    raw.assert_absent(&d).await;
    assert!(!raw.missing(&sha(&first)).await, "the recent blob is kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_message_beyond_the_message_limit_is_not_an_internal_error() {
    let server = TestServer::start().await;
    let raw = Raw::connect(&server).await;
    let data = vec![0u8; 65 * 1024 * 1024];
    let d = sha(&data);
    let status = raw
        .write(vec![WriteRequest {
            resource_name: upload_name("u1", &d),
            write_offset: 0,
            finish_write: true,
            data: data.into(),
        }])
        .await
        .unwrap_err();
    // A client error, not a server fault a client would report or retry as one.
    assert_ne!(status.code(), Code::Internal, "{status:?}");
    assert_ne!(status.code(), Code::Unknown, "{status:?}");
    assert!(status.message().contains("too large"), "{status:?}");
    raw.assert_absent(&d).await;
    raw.assert_healthy(b"after an oversized message").await;
}

/// ByteStream `method` called with `frames` as the request body, byte for byte as given (as a
/// client with its own encoder might frame them); the call's outcome.
async fn call_with_frames(
    server: &TestServer,
    method: &str,
    frames: Vec<Vec<u8>>,
) -> Result<(), Status> {
    call_sending(server, method, frames, Sending::AtOnce).await
}

/// How a request's body sends its frames.
#[derive(Clone, Copy)]
enum Sending {
    /// All at once, then the body ends.
    AtOnce,
    /// All at once, then nothing more while the body stays open: a client frozen or gone
    /// with its connection still up.
    ThenStall,
    /// One every so often, then the body ends.
    Paced(std::time::Duration),
}

/// [`call_with_frames`], the request's body sending `frames` as `sending` says.
async fn call_sending(
    server: &TestServer,
    method: &str,
    frames: Vec<Vec<u8>>,
    sending: Sending,
) -> Result<(), Status> {
    use futures::StreamExt as _;
    let mut channel = server.channel().await;
    let frames = futures::stream::iter(frames.into_iter().map(|frame| {
        Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(frame)))
    }));
    let body = http_body_util::StreamBody::new(match sending {
        Sending::AtOnce => frames.boxed(),
        Sending::ThenStall => frames.chain(futures::stream::pending()).boxed(),
        Sending::Paced(every) => frames
            .then(move |frame| async move {
                tokio::time::sleep(every).await;
                frame
            })
            .boxed(),
    });
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri(format!("/google.bytestream.ByteStream/{method}"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(tonic::body::Body::new(body))
        .unwrap();
    std::future::poll_fn(|cx| tower_service::Service::poll_ready(&mut channel, cx))
        .await
        .unwrap();
    let response = tower_service::Service::call(&mut channel, request)
        .await
        .expect("the server answers");
    let (parts, body) = response.into_parts();
    if let Some(status) = Status::from_header_map(&parts.headers) {
        return if status.code() == Code::Ok {
            Ok(())
        } else {
            Err(status)
        };
    }
    let mut messages = tessera_proto::wire::BodyMessages::new(body, 1 << 20);
    while messages.next_message().await?.is_some() {}
    messages.finish().await
}

/// A Write whose client stops sending, its stream and connection still open (a client frozen
/// or cut off mid-upload), is ended after the server's idle timeout with DEADLINE_EXCEEDED
/// naming the offset to resume from, and parked: QueryWriteStatus reports that offset and a
/// Write from it completes the blob. Large uploads (a writer thread each) and small ones; a
/// Write that never sends its first message is ended too. A client still sending, however
/// slowly, is not cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_client_stops_sending_is_ended_and_can_be_resumed() {
    let idle = std::time::Duration::from_secs(1);
    let server = TestServer::start_with(|config| config.upload_idle_timeout = idle).await;
    let raw = Raw::connect(&server).await;
    // Without the timeout a stalled call would wait for ever: fail in time instead.
    async fn within<T>(call: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(std::time::Duration::from_secs(20), call)
            .await
            .expect("the server answered within 20 s")
    }
    for (id, size) in [("large", 6usize << 20), ("small", 64 << 10)] {
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8 ^ (size as u8)).collect();
        let d = sha(&data);
        let half = size / 2;
        let first = framed(&message(&upload_name(id, &d), 0, &data[..half], false));
        let started = std::time::Instant::now();
        let frames = vec![first];
        let status = within(call_sending(&server, "Write", frames, Sending::ThenStall))
            .await
            .unwrap_err();
        let waited = started.elapsed();
        assert_eq!(status.code(), Code::DeadlineExceeded, "{id}: {status:?}");
        assert!(
            status.message().contains("no data for")
                && status
                    .message()
                    .contains(&format!("resume it from offset {half}")),
            "{id}: {status:?}"
        );
        assert!(waited >= idle, "{id}: ended after {waited:?}");
        raw.assert_absent(&d).await;
        let queried = raw
            .bytestream
            .clone()
            .query_write_status(QueryWriteStatusRequest {
                resource_name: upload_name(id, &d),
            })
            .await
            .expect("QueryWriteStatus of the parked upload")
            .into_inner();
        assert_eq!(queried.committed_size, half as i64, "{id}");
        assert!(!queried.complete, "{id}");
        let rest = framed(&message(
            &upload_name(id, &d),
            half as i64,
            &data[half..],
            true,
        ));
        within(call_with_frames(&server, "Write", vec![rest]))
            .await
            .expect("the upload resumes from the parked offset");
        let (read, outcome) = raw.read(&read_name(&d), 0, 0).await;
        outcome.expect("the resumed blob reads back");
        assert!(read == data, "{id}: the resumed blob reads back whole");
    }
    let status = within(call_sending(
        &server,
        "Write",
        Vec::new(),
        Sending::ThenStall,
    ))
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("no message for this Write"),
        "{status:?}"
    );
    // A client on a slow link: a first message, then a second that takes twice the idle
    // timeout to arrive, in pieces a tenth of it apart. It is still sending: not cut off.
    let data = vec![7u8; 64 << 10];
    let d = sha(&data);
    let second = framed(&message("", 1000, &data[1000..], true));
    let mut pieces = vec![framed(&message(
        &upload_name("slow", &d),
        0,
        &data[..1000],
        false,
    ))];
    pieces.extend(second.chunks(second.len().div_ceil(20)).map(<[u8]>::to_vec));
    within(call_sending(
        &server,
        "Write",
        pieces,
        Sending::Paced(idle / 10),
    ))
    .await
    .expect("a message that keeps arriving is not cut off");
    let (read, outcome) = raw.read(&read_name(&d), 0, 0).await;
    outcome.expect("the slowly sent blob reads back");
    assert!(read == data, "the slowly sent blob reads back whole");
    raw.assert_healthy(b"after writes that stalled").await;
}

/// `message` as a client sends it: its gRPC prefix, then its encoding.
fn framed(message: &impl Message) -> Vec<u8> {
    tessera_proto::wire::framed(message).to_vec()
}

/// `message` behind a gRPC prefix with compressed-flag `flag` and length `len`.
fn grpc_frame(flag: u8, len: usize, message: &[u8]) -> Vec<u8> {
    let mut frame = vec![flag];
    frame.extend_from_slice(&u32::try_from(len).unwrap().to_be_bytes());
    frame.extend_from_slice(message);
    frame
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_messages_malformed_on_the_wire_are_refused_by_name_and_store_nothing() {
    let server = TestServer::start().await;
    let raw = Raw::connect(&server).await;
    let data = b"framed by hand, not by tonic";
    let d = sha(data);
    let good = message(&upload_name("w1", &d), 0, data, true).encode_to_vec();
    let cases: [(&str, Vec<Vec<u8>>, Code, &str); 4] = [
        (
            "compressed without an encoding",
            vec![grpc_frame(1, good.len(), &good)],
            Code::Internal,
            "compressed",
        ),
        (
            "data longer than its message",
            vec![grpc_frame(0, good.len() - 1, &good[..good.len() - 1])],
            Code::InvalidArgument,
            "WriteRequest.data claims",
        ),
        (
            "stream ends inside a message",
            vec![grpc_frame(0, good.len(), &good[..good.len() / 2])],
            Code::InvalidArgument,
            "ended inside a gRPC message",
        ),
        (
            "a group field",
            vec![grpc_frame(0, 1, &[0x23])],
            Code::InvalidArgument,
            "groups",
        ),
    ];
    for (case, frames, code, needle) in cases {
        let status = call_with_frames(&server, "Write", frames)
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{case}: {status:?}");
        assert!(status.message().contains(needle), "{case}: {status:?}");
        raw.assert_absent(&d).await;
    }
    // Fields in an order prost never writes (data first), an unknown field, and the message
    // cut into 3-byte frames: decoded as any protobuf decoder would, and stored.
    let mut reordered = Vec::new();
    prost::encoding::bytes::encode(10, &Bytes::from_static(data), &mut reordered);
    prost::encoding::uint64::encode(99, &7, &mut reordered);
    prost::encoding::string::encode(1, &upload_name("w2", &d), &mut reordered);
    prost::encoding::bool::encode(3, &true, &mut reordered);
    let frames = grpc_frame(0, reordered.len(), &reordered)
        .chunks(3)
        .map(<[u8]>::to_vec)
        .collect();
    call_with_frames(&server, "Write", frames)
        .await
        .expect("a reordered message is a valid message");
    let (read, outcome) = raw.read(&read_name(&d), 0, 0).await;
    outcome.expect("the blob written by hand reads back");
    assert_eq!(read, data.to_vec());

    let status = call_with_frames(&server, "Read", vec![grpc_frame(0, 2, &[0x0a, 9])])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("malformed ReadRequest"),
        "{status:?}"
    );
    raw.assert_healthy(b"after requests framed by hand").await;
}
