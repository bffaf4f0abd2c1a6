//! The REAPI content store as clients see it: Capabilities, CAS, ByteStream and ActionCache
//! doing what they promise, through our own client and through raw tonic clients.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tessera_cas::client::CasClient;
use tessera_cas::digest::{Digest, DigestFunction};
use tessera_cas::store::codec;
use tessera_coordinator::CoordinatorConfig;
use tessera_proto::bytestream::byte_stream_client::ByteStreamClient;
use tessera_proto::bytestream::{QueryWriteStatusRequest, ReadRequest, WriteRequest};
use tessera_proto::reapi::action_cache_client::ActionCacheClient;
use tessera_proto::reapi::capabilities_client::CapabilitiesClient;
use tessera_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use tessera_proto::reapi::{
    ActionResult, BatchReadBlobsRequest, Directory, DirectoryNode, FileNode,
    GetActionResultRequest, GetCapabilitiesRequest, GetTreeRequest, OutputFile,
    UpdateActionResultRequest, compressor, digest_function,
};
use tessera_tests::{TestServer, blob_file, noise, poll_until};
use tonic::Code;
use tonic::transport::Channel;

const ZSTD: i32 = compressor::Value::Zstd as i32;
/// Bazel's ByteStream write chunk.
const BAZEL_CHUNK: usize = 16 * 1024;

/// `len` bytes that compress well, different for each `seed`.
fn text(len: usize, seed: u64) -> Bytes {
    let line = format!("line of a build log, seed {seed}, with some repetition\n");
    line.bytes().cycle().take(len).collect::<Vec<u8>>().into()
}

fn read_name(digest: &Digest, compressed: bool) -> String {
    let function = match digest.function {
        DigestFunction::Sha256 => String::new(),
        other => format!("{}/", other.name()),
    };
    let kind = if compressed {
        "compressed-blobs/zstd"
    } else {
        "blobs"
    };
    format!(
        "{kind}/{function}{}/{}",
        digest.hash_hex(),
        digest.size_bytes
    )
}

fn upload_name(id: &str, digest: &Digest, compressed: bool) -> String {
    format!("uploads/{id}/{}", read_name(digest, compressed))
}

/// ByteStream Read of `name` from `offset` with `limit`, all messages concatenated.
async fn read_range(channel: &Channel, name: &str, offset: i64, limit: i64) -> Vec<u8> {
    let mut stream = ByteStreamClient::new(channel.clone())
        .read(ReadRequest {
            resource_name: name.to_owned(),
            read_offset: offset,
            read_limit: limit,
        })
        .await
        .unwrap_or_else(|s| panic!("read {name} at {offset}+{limit}: {s:?}"))
        .into_inner();
    let mut out = Vec::new();
    while let Some(message) = stream.message().await.unwrap() {
        out.extend_from_slice(&message.data);
    }
    out
}

async fn query_write_status(channel: &Channel, name: &str) -> (i64, bool) {
    let response = ByteStreamClient::new(channel.clone())
        .query_write_status(QueryWriteStatusRequest {
            resource_name: name.to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    (response.committed_size, response.complete)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_advertise_what_the_server_speaks() {
    let server = TestServer::start().await;
    let caps = CapabilitiesClient::new(server.channel().await)
        .get_capabilities(GetCapabilitiesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let version = |v: Option<tessera_proto::build::bazel::semver::SemVer>| {
        let v = v.expect("version set");
        (v.major, v.minor)
    };
    assert_eq!(version(caps.low_api_version), (2, 0));
    assert_eq!(version(caps.high_api_version), (2, 3));
    let cache = caps.cache_capabilities.expect("cache capabilities");
    for function in [
        digest_function::Value::Sha256,
        digest_function::Value::Blake3,
    ] {
        assert!(
            cache.digest_functions.contains(&(function as i32)),
            "{function:?}"
        );
    }
    assert!(cache.supported_compressors.contains(&ZSTD));
    assert!(cache.supported_batch_update_compressors.contains(&ZSTD));
    assert_eq!(
        cache.max_batch_total_size_bytes,
        i64::try_from(CoordinatorConfig::default().max_batch_total_size_bytes).unwrap()
    );
    assert!(cache.max_batch_total_size_bytes > 0);
    assert!(
        cache
            .action_cache_update_capabilities
            .expect("AC capabilities")
            .update_enabled
    );
    let exec = caps.execution_capabilities.expect("execution capabilities");
    assert_eq!(exec.digest_function, digest_function::Value::Sha256 as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_report_the_configured_batch_limit() {
    let server = TestServer::start_with(|c| c.max_batch_total_size_bytes = 123_456).await;
    let caps = CapabilitiesClient::new(server.channel().await)
        .get_capabilities(GetCapabilitiesRequest {
            instance_name: "any/instance".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        caps.cache_capabilities.unwrap().max_batch_total_size_bytes,
        123_456
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_round_trip_with_both_functions_through_batch_and_bytestream() {
    let server = TestServer::start().await;
    let mut seed = 0;
    for function in DigestFunction::ALL {
        let client = server.client(function).await;
        for compress in [false, true] {
            seed += 1;
            let small = text(300, seed);
            let medium = text(200 * 1024, seed);
            let big_text = text(3 * 1024 * 1024 + 17, seed);
            let big_noise = noise(3 * 1024 * 1024 + 5, seed);
            let d = |b: &Bytes| function.digest_of(b);

            // Batch: small blobs (zstd entries when compressing).
            client
                .batch_update(
                    vec![(d(&small), small.clone()), (d(&medium), medium.clone())],
                    compress,
                )
                .await
                .unwrap();
            // ByteStream: multi-MiB blobs (compressed-blobs/zstd when compressing).
            for big in [&big_text, &big_noise] {
                let committed = client.write(&d(big), big.clone(), compress).await.unwrap();
                let expected = if compress {
                    codec::compress(big).len() as i64
                } else {
                    d(big).size_i64()
                };
                assert_eq!(committed, expected, "{function} compress={compress}");
            }
            let all = [&small, &medium, &big_text, &big_noise];
            let digests: Vec<Digest> = all.iter().map(|b| d(b)).collect();
            assert!(client.find_missing(&digests).await.unwrap().is_empty());

            // Read back both ways, whichever way they went up.
            for blob in all {
                for compressed in [false, true] {
                    let got = client.read(&d(blob), compressed).await.unwrap();
                    assert_eq!(&got, blob, "{function} read compressed={compressed}");
                }
            }
            for compressed in [false, true] {
                let got = client
                    .batch_read(&[d(&small), d(&medium)], compressed)
                    .await
                    .unwrap();
                assert_eq!(got[&d(&small)], small);
                assert_eq!(got[&d(&medium)], medium);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_empty_blob_exists_without_upload() {
    let server = TestServer::start().await;
    for function in DigestFunction::ALL {
        let client = server.client(function).await;
        let empty = function.empty_digest();
        assert!(client.find_missing(&[empty]).await.unwrap().is_empty());
        for compressed in [false, true] {
            assert!(client.read(&empty, compressed).await.unwrap().is_empty());
            let batch = client.batch_read(&[empty], compressed).await.unwrap();
            assert!(batch[&empty].is_empty());
        }
        // Uploading it anyway is harmless.
        assert_eq!(client.write(&empty, Bytes::new(), false).await.unwrap(), 0);
        client
            .batch_update(vec![(empty, Bytes::new())], false)
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytestream_read_honours_offset_and_limit() {
    let server = TestServer::start().await;
    let client = server.client(DigestFunction::Sha256).await;
    let channel = server.channel().await;
    // One blob kept raw at rest, one kept zstd-compressed; both span several read chunks.
    for blob in [noise(700 * 1024 + 3, 7), text(700 * 1024 + 3, 7)] {
        let digest = DigestFunction::Sha256.digest_of(&blob);
        client
            .upload(&[(digest, blob.clone())], false)
            .await
            .unwrap();
        let size = blob.len();
        let name = read_name(&digest, false);
        let cases: [(usize, usize); 11] = [
            (0, 0),
            (0, 10),
            (5, 10),
            (0, size),
            (0, size + 100),
            (300_000, 0),
            (300_000, 100_000),
            (262_143, 2),
            (262_144, 1),
            (size - 5, 100),
            (size, 0),
        ];
        for (offset, limit) in cases {
            let got = read_range(&channel, &name, offset as i64, limit as i64).await;
            let end = if limit == 0 {
                size
            } else {
                (offset + limit).min(size)
            };
            assert_eq!(
                got.len(),
                end - offset,
                "offset {offset} limit {limit} length"
            );
            assert!(got == blob[offset..end], "offset {offset} limit {limit}");
        }
        // The whole blob compressed on the wire, from an offset.
        let compressed = read_range(&channel, &read_name(&digest, true), 1000, 0).await;
        let plain = codec::decompress(&compressed, digest.size_bytes).unwrap();
        assert!(plain == blob[1000..]);
    }
}

/// A blob above the client's threshold for parallel ranged Reads, not a multiple of a part.
const LARGE: usize = tessera_cas::client::PARTS_MIN as usize + 3 * 1024 * 1024 + 17;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_blob_read_in_parallel_parts_reassembles_and_verifies() {
    let server = TestServer::start().await;
    for function in DigestFunction::ALL {
        let client = server.client(function).await;
        let blob = noise(LARGE, 11);
        let digest = function.digest_of(&blob);
        client.write(&digest, blob.clone(), false).await.unwrap();
        // The default parts, and small ones so that many are in flight and the last is short.
        let whole = client.read(&digest, false).await.unwrap();
        assert!(whole == blob, "{function}: default parts");
        let small = client
            .read_in_parts(&digest, 1024 * 1024 + 7)
            .await
            .unwrap();
        assert!(small == blob, "{function}: 1 MiB + 7 parts");
        // Power-of-two parts: BLAKE3 hashes each on its own and combines 20 part hashes.
        let aligned = client.read_in_parts(&digest, 1024 * 1024).await.unwrap();
        assert!(aligned == blob, "{function}: 1 MiB parts");
    }
}

/// Transfers take the client's links in turn: with a second server's link added, every other
/// Write lands there, and a blob read in parts needs its parts from both (each server holds
/// the blob, so the parts verify as one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_take_the_links_in_turn() {
    let first = TestServer::start().await;
    let second = TestServer::start().await;
    let function = DigestFunction::Blake3;
    let extra = tessera_net::client::link(second.channel().await, &Default::default());
    let client = first.client(function).await.with_transfer_links([extra]);
    let blobs: Vec<_> = (0..4)
        .map(|i| noise(64 * 1024 + i, 20 + i as u64))
        .collect();
    for blob in &blobs {
        let digest = function.digest_of(blob);
        client.write(&digest, blob.clone(), false).await.unwrap();
    }
    let (on_first, on_second) = (first.client(function).await, second.client(function).await);
    for (i, blob) in blobs.iter().enumerate() {
        let digest = function.digest_of(blob);
        let (holder, other) = if i % 2 == 0 {
            (&on_first, &on_second)
        } else {
            (&on_second, &on_first)
        };
        assert_eq!(
            holder.find_missing(&[digest]).await.unwrap(),
            vec![],
            "blob {i}"
        );
        assert_eq!(
            other.find_missing(&[digest]).await.unwrap(),
            vec![digest],
            "blob {i}"
        );
    }
    // A large blob on both servers reads in parts over both links; on one server only, the
    // parts sent to the other fail, so the read does too.
    let large = noise(LARGE, 21);
    let digest = function.digest_of(&large);
    on_first.write(&digest, large.clone(), false).await.unwrap();
    assert!(client.read(&digest, false).await.is_err());
    on_second
        .write(&digest, large.clone(), false)
        .await
        .unwrap();
    assert!(client.read(&digest, false).await.unwrap() == large);
}

/// The server says when it served a range from that range alone: for a blob it has hashed
/// (every blob uploaded since start), not for a whole read, which it verifies as it streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranged_reads_of_a_hashed_blob_are_marked_part_only() {
    let server = TestServer::start().await;
    let client = server.client(DigestFunction::Sha256).await;
    let blob = noise(3 * 1024 * 1024 + 5, 12);
    let digest = DigestFunction::Sha256.digest_of(&blob);
    client.write(&digest, blob.clone(), false).await.unwrap();
    let name = read_name(&digest, false);
    let channel = server.channel().await;
    for (offset, limit, part_only) in [(0, 0, false), (0, 1000, true), (1_000_000, 0, true)] {
        let response = ByteStreamClient::new(channel.clone())
            .read(ReadRequest {
                resource_name: name.clone(),
                read_offset: offset,
                read_limit: limit,
            })
            .await
            .unwrap();
        assert_eq!(
            response
                .metadata()
                .contains_key(tessera_cas::client::PART_ONLY_HEADER),
            part_only,
            "offset {offset} limit {limit}"
        );
        let mut stream = response.into_inner();
        let mut got = Vec::new();
        while let Some(message) = stream.message().await.unwrap() {
            got.extend_from_slice(&message.data);
        }
        let start = offset as usize;
        let end = if limit == 0 {
            blob.len()
        } else {
            start + limit as usize
        };
        assert!(got == blob[start..end], "offset {offset} limit {limit}");
    }
}

/// A large blob kept compressed at rest cannot be served in parts cheaply: the client reads
/// it whole instead, and still gets every byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_blob_kept_compressed_is_read_whole() {
    let server = TestServer::start().await;
    let client = server.client(DigestFunction::Blake3).await;
    let blob = text(LARGE, 13);
    let digest = DigestFunction::Blake3.digest_of(&blob);
    client.write(&digest, blob.clone(), false).await.unwrap();
    let file = blob_file(&server.dir.path().join("data"), &digest).expect("blob file");
    assert_eq!(file.extension().and_then(|e| e.to_str()), Some("zst"));
    assert!(client.read(&digest, false).await.unwrap() == blob);
}

/// Regression for parallel downloads, whose parts the server does not hash: a blob damaged
/// at rest after it was hashed is still caught by the client, and the whole read it falls
/// back to makes the server find the damage and drop the blob, so it is reported missing
/// (and uploaded again) instead of served forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_part_is_detected_and_the_blob_dropped() {
    let server = TestServer::start().await;
    let client = server.client(DigestFunction::Blake3).await;
    let blob = noise(LARGE, 14);
    let digest = DigestFunction::Blake3.digest_of(&blob);
    client.write(&digest, blob.clone(), false).await.unwrap();
    let file = blob_file(&server.dir.path().join("data"), &digest).expect("blob file");
    // Flip bytes in the third part, keeping the length.
    let mut damaged = std::fs::read(&file).unwrap();
    let at = 2 * tessera_cas::client::READ_PART + 12_345;
    for byte in &mut damaged[at..at + 8] {
        *byte ^= 0xff;
    }
    std::fs::write(&file, &damaged).unwrap();

    let error = client
        .read(&digest, false)
        .await
        .expect_err("damaged blob must not be returned");
    match error {
        tessera_cas::client::ClientError::Rpc { status, .. } => {
            assert_eq!(status.code(), Code::DataLoss, "{status:?}");
        }
        other => panic!("expected DATA_LOSS from the whole read, got {other:?}"),
    }
    assert_eq!(client.find_missing(&[digest]).await.unwrap(), vec![digest]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_read_answers_in_zstd_when_the_client_accepts_it() {
    let server = TestServer::start().await;
    let client = server.client(DigestFunction::Sha256).await;
    let compressible = text(100 * 1024, 8);
    let tiny = Bytes::from_static(b"tiny");
    let incompressible = noise(50 * 1024, 8);
    let blobs: Vec<(Digest, Bytes)> = [&compressible, &tiny, &incompressible]
        .into_iter()
        .map(|b| (DigestFunction::Sha256.digest_of(b), b.clone()))
        .collect();
    client.upload(&blobs, false).await.unwrap();

    let mut cas = ContentAddressableStorageClient::new(server.channel().await);
    for (accept, expect_zstd) in [(vec![ZSTD], [true, false, false]), (vec![], [false; 3])] {
        let response = cas
            .batch_read_blobs(BatchReadBlobsRequest {
                digests: blobs.iter().map(|(d, _)| d.to_proto()).collect(),
                acceptable_compressors: accept,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        for ((digest, blob), (entry, zstd)) in
            blobs.iter().zip(response.responses.iter().zip(expect_zstd))
        {
            assert_eq!(entry.status.as_ref().unwrap().code, Code::Ok as i32);
            assert_eq!(entry.compressor == ZSTD, zstd, "{digest}");
            let data = if zstd {
                assert!(entry.data.len() < blob.len());
                Bytes::from(codec::decompress(&entry.data, digest.size_bytes).unwrap())
            } else {
                entry.data.clone()
            };
            assert_eq!(&data, blob);
        }
    }
    // Our client decodes and verifies whatever comes back.
    let got = client
        .batch_read(&blobs.iter().map(|(d, _)| *d).collect::<Vec<_>>(), true)
        .await
        .unwrap();
    for (digest, blob) in &blobs {
        assert_eq!(&got[digest], blob);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_missing_blobs_answers_15000_digests_in_one_call() {
    let server = TestServer::start().await;
    let client = server.client(DigestFunction::Blake3).await;
    let blobs: Vec<Bytes> = (0..15_000)
        .map(|i| Bytes::from(format!("blob number {i}")))
        .collect();
    let digests: Vec<Digest> = blobs
        .iter()
        .map(|b| DigestFunction::Blake3.digest_of(b))
        .collect();
    let present: Vec<(Digest, Bytes)> = (0..15_000)
        .step_by(150)
        .map(|i| (digests[i], blobs[i].clone()))
        .collect();
    client.upload(&present, false).await.unwrap();

    let mut cas = ContentAddressableStorageClient::new(server.channel().await);
    let response = cas
        .find_missing_blobs(tessera_proto::reapi::FindMissingBlobsRequest {
            instance_name: String::new(),
            blob_digests: digests.iter().map(Digest::to_proto).collect(),
            digest_function: DigestFunction::Blake3.to_proto(),
        })
        .await
        .unwrap()
        .into_inner();
    let missing: HashSet<String> = response
        .missing_blob_digests
        .into_iter()
        .map(|d| d.hash)
        .collect();
    assert_eq!(missing.len(), 15_000 - present.len());
    for (i, digest) in digests.iter().enumerate() {
        assert_eq!(missing.contains(&digest.hash_hex()), i % 150 != 0, "{i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bazel_style_16_kib_chunk_writes() {
    let server = TestServer::start().await;
    let client = server.client(DigestFunction::Sha256).await;
    for (blob, compress) in [
        (noise(1024 * 1024 + 123, 9), false),
        (text(1024 * 1024 + 123, 9), false),
        (text(2 * 1024 * 1024 + 7, 10), true),
    ] {
        let digest = DigestFunction::Sha256.digest_of(&blob);
        let committed = client
            .write_chunked(&digest, blob.clone(), compress, BAZEL_CHUNK)
            .await
            .unwrap();
        if !compress {
            assert_eq!(committed, digest.size_i64());
        }
        assert_eq!(client.read(&digest, false).await.unwrap(), blob);
    }
}

fn chunk_message(name: &str, blob: &Bytes, index: usize) -> WriteRequest {
    let start = index * BAZEL_CHUNK;
    let end = (start + BAZEL_CHUNK).min(blob.len());
    WriteRequest {
        resource_name: if index == 0 {
            name.to_owned()
        } else {
            String::new()
        },
        write_offset: start as i64,
        finish_write: end == blob.len(),
        data: blob.slice(start..end),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_upload_resumes_from_the_committed_offset() {
    let server = TestServer::start().await;
    let channel = server.channel().await;
    // The server's HTTP/2 stream window is 16 MiB: a client can only have sent 20 MiB once the
    // server has taken in several MiB, so those bytes have surely arrived when the call breaks.
    let blob = noise(24 * 1024 * 1024 + 100, 11);
    let chunks = blob.len().div_ceil(BAZEL_CHUNK);
    let sent_chunks = 20 * 1024 * 1024 / BAZEL_CHUNK;
    let digest = DigestFunction::Sha256.digest_of(&blob);
    let name = upload_name("3f1c1a3e-resume", &digest, false);

    // Send most of the chunks, then drop the call as a client whose connection breaks would.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<WriteRequest>(1);
    let requests = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let mut bytestream = ByteStreamClient::new(channel.clone());
    let call = tokio::spawn(async move { bytestream.write(requests).await });
    for index in 0..sent_chunks {
        tx.send(chunk_message(&name, &blob, index)).await.unwrap();
    }
    call.abort();
    let _ = call.await;
    drop(tx);

    // The server parks the upload once it sees the stream break. Polled: nothing announces
    // that, QueryWriteStatus is the only window on it.
    let committed = poll_until(
        "QueryWriteStatus report of the bytes of the broken upload",
        Duration::from_secs(10),
        async || {
            let (committed, complete) = query_write_status(&channel, &name).await;
            assert!(!complete);
            (committed > 0).then_some(committed as usize)
        },
    )
    .await;
    assert_eq!(committed % BAZEL_CHUNK, 0, "whole messages are committed");
    assert!(committed <= sent_chunks * BAZEL_CHUNK);
    assert!(
        ContentAddressableStorageClient::new(channel.clone())
            .find_missing_blobs(tessera_proto::reapi::FindMissingBlobsRequest {
                blob_digests: vec![digest.to_proto()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .missing_blob_digests
            .len()
            == 1,
        "a half upload is not a blob"
    );

    // Resume from there; the first message names the resource again.
    let rest: Vec<WriteRequest> = (committed / BAZEL_CHUNK..chunks)
        .map(|index| {
            let mut message = chunk_message(&name, &blob, index);
            message.resource_name = name.clone();
            message
        })
        .collect();
    let response = ByteStreamClient::new(channel.clone())
        .write(futures::stream::iter(rest))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.committed_size, digest.size_i64());
    assert_eq!(
        query_write_status(&channel, &name).await,
        (digest.size_i64(), true)
    );
    let client = server.client(DigestFunction::Sha256).await;
    assert_eq!(client.read(&digest, false).await.unwrap(), blob);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_half_upload_resumes_exactly_where_it_stopped() {
    let server = TestServer::start().await;
    let channel = server.channel().await;
    let blob = text(10 * BAZEL_CHUNK + 1, 12);
    let chunks = blob.len().div_ceil(BAZEL_CHUNK);
    let digest = DigestFunction::Sha256.digest_of(&blob);
    let name = upload_name("half", &digest, false);
    let first: Vec<WriteRequest> = (0..5).map(|i| chunk_message(&name, &blob, i)).collect();
    let status = ByteStreamClient::new(channel.clone())
        .write(futures::stream::iter(first))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(
        query_write_status(&channel, &name).await,
        (5 * BAZEL_CHUNK as i64, false)
    );
    let rest: Vec<WriteRequest> = (5..chunks)
        .map(|i| {
            let mut m = chunk_message(&name, &blob, i);
            m.resource_name = name.clone();
            m
        })
        .collect();
    let response = ByteStreamClient::new(channel.clone())
        .write(futures::stream::iter(rest))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.committed_size, digest.size_i64());
    let client = server.client(DigestFunction::Sha256).await;
    assert_eq!(client.read(&digest, false).await.unwrap(), blob);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writing_an_existing_blob_answers_at_once() {
    let server = TestServer::start().await;
    let channel = server.channel().await;
    let client = server.client(DigestFunction::Blake3).await;
    let blob = text(5 * BAZEL_CHUNK, 13);
    let digest = DigestFunction::Blake3.digest_of(&blob);
    client
        .upload(&[(digest, blob.clone())], false)
        .await
        .unwrap();

    for (compressed, expected) in [(false, digest.size_i64()), (true, -1)] {
        // Only the first message is sent and the stream stays open: the answer must not wait
        // for the rest.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<WriteRequest>(1);
        let requests = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let payload = if compressed {
            Bytes::from(codec::compress(&blob))
        } else {
            blob.clone()
        };
        tx.send(WriteRequest {
            resource_name: upload_name(&format!("again-{compressed}"), &digest, compressed),
            write_offset: 0,
            finish_write: false,
            data: payload.slice(..BAZEL_CHUNK.min(payload.len() - 1)),
        })
        .await
        .unwrap();
        let response = tokio::time::timeout(
            Duration::from_secs(10),
            ByteStreamClient::new(channel.clone()).write(requests),
        )
        .await
        .expect("answered without waiting for the rest of the stream")
        .unwrap()
        .into_inner();
        assert_eq!(response.committed_size, expected, "compressed={compressed}");
        drop(tx);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_of_the_same_blob_all_succeed() {
    let server = TestServer::start().await;
    let blob = noise(2 * 1024 * 1024 + 1, 14);
    let digest = DigestFunction::Sha256.digest_of(&blob);
    let client = server.client(DigestFunction::Sha256).await;
    let writers: Vec<_> = (0..6)
        .map(|i| {
            let client = client.clone();
            let blob = blob.clone();
            tokio::spawn(async move {
                let compress = i % 2 == 1;
                let committed = client
                    .write_chunked(&digest, blob, compress, 64 * 1024)
                    .await
                    .unwrap_or_else(|e| panic!("writer {i}: {e}"));
                (compress, committed)
            })
        })
        .collect();
    for writer in writers {
        let (compress, committed) = writer.await.unwrap();
        if compress {
            assert!(committed == -1 || committed > 0, "{committed}");
        } else {
            assert_eq!(committed, digest.size_i64());
        }
    }
    assert_eq!(client.read(&digest, false).await.unwrap(), blob);
    assert!(
        server
            .dir
            .path()
            .join("data/cas/tmp")
            .read_dir()
            .unwrap()
            .next()
            .is_none(),
        "no temporary files left"
    );
}

/// A tree of 1 root, 4 children and 3 grandchildren each (17 distinct directories), where one
/// grandchild is also linked from the root: (root digest, every directory blob).
fn tree() -> (Digest, Vec<(Digest, Bytes)>) {
    let sha = |b: &[u8]| DigestFunction::Sha256.digest_of(b);
    let encode = |d: &Directory| {
        let bytes = Bytes::from(d.encode_to_vec());
        (sha(&bytes), bytes)
    };
    let file = Bytes::from_static(b"a file");
    let mut blobs = vec![(sha(&file), file.clone())];
    let mut children = Vec::new();
    let mut shared = None;
    for c in 0..4 {
        let mut grandchildren = Vec::new();
        for g in 0..3 {
            let leaf = Directory {
                files: vec![FileNode {
                    name: format!("file-{c}-{g}"),
                    digest: Some(sha(&file).to_proto()),
                    ..Default::default()
                }],
                ..Default::default()
            };
            let (digest, bytes) = encode(&leaf);
            shared.get_or_insert(digest);
            blobs.push((digest, bytes));
            grandchildren.push(DirectoryNode {
                name: format!("g{g}"),
                digest: Some(digest.to_proto()),
            });
        }
        let child = Directory {
            directories: grandchildren,
            ..Default::default()
        };
        let (digest, bytes) = encode(&child);
        blobs.push((digest, bytes));
        children.push(DirectoryNode {
            name: format!("c{c}"),
            digest: Some(digest.to_proto()),
        });
    }
    children.push(DirectoryNode {
        name: "z-link-to-a-leaf".to_owned(),
        digest: shared.map(|d| d.to_proto()),
    });
    let root = Directory {
        directories: children,
        ..Default::default()
    };
    let (root_digest, bytes) = encode(&root);
    blobs.push((root_digest, bytes));
    (root_digest, blobs)
}

/// What an agent uses to fetch an input tree in one round trip: every directory, each under
/// the digest it was uploaded as, or only its top; a missing root is an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_gets_a_whole_tree_with_each_directory_under_its_digest() {
    let server = TestServer::start().await;
    let client = server.client(DigestFunction::Sha256).await;
    let (root, blobs) = tree();
    client.upload(&blobs, false).await.unwrap();
    let got = client.get_tree(&root, 100).await.unwrap();
    assert_eq!(got[0].0, root, "the root comes first");
    let uploaded: std::collections::HashMap<Digest, Bytes> =
        blobs.iter().skip(1).cloned().collect();
    let distinct: HashSet<Digest> = got.iter().map(|(d, _)| *d).collect();
    assert_eq!(distinct.len(), uploaded.len());
    for (digest, bytes) in &got {
        assert_eq!(uploaded.get(digest), Some(bytes), "{digest} as uploaded");
    }
    // The top of it only: the root and its children, breadth first.
    let top = client.get_tree(&root, 6).await.unwrap();
    assert_eq!(top.len(), 6);
    assert_eq!(top[0].0, root);
    for (digest, bytes) in &top {
        assert_eq!(uploaded.get(digest), Some(bytes));
    }
    let missing = DigestFunction::Sha256.digest_of(b"not uploaded");
    assert!(client.get_tree(&missing, 100).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_tree_pages_through_every_directory_exactly_once() {
    let server = TestServer::start().await;
    let client = server.client(DigestFunction::Sha256).await;
    let (root, blobs) = tree();
    client.upload(&blobs, false).await.unwrap();
    let directories: HashSet<Digest> = blobs.iter().skip(1).map(|(d, _)| *d).collect();
    assert_eq!(directories.len(), 17);
    let digest_of = |d: &Directory| DigestFunction::Sha256.digest_of(&d.encode_to_vec());

    let mut cas = ContentAddressableStorageClient::new(server.channel().await);
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let mut stream = cas
            .get_tree(GetTreeRequest {
                root_digest: Some(root.to_proto()),
                page_size: 3,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let page = stream.message().await.unwrap().expect("one page");
        assert!(
            stream.message().await.unwrap().is_none(),
            "one page per call"
        );
        assert!(page.directories.len() <= 3);
        if pages == 0 {
            assert_eq!(
                digest_of(&page.directories[0]),
                root,
                "the root comes first"
            );
        }
        pages += 1;
        seen.extend(page.directories.iter().map(digest_of));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        assert!(pages < 100, "paging does not end");
    }
    assert_eq!(pages, 6);
    assert_eq!(seen.len(), 17, "each directory once");
    assert_eq!(seen.iter().copied().collect::<HashSet<_>>(), directories);

    // Without a page size: everything in one answer.
    let mut stream = cas
        .get_tree(GetTreeRequest {
            root_digest: Some(root.to_proto()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let all = stream.message().await.unwrap().unwrap();
    assert!(stream.message().await.unwrap().is_none());
    assert!(all.next_page_token.is_empty());
    let digests: Vec<Digest> = all.directories.iter().map(digest_of).collect();
    assert_eq!(digests.len(), 17);
    assert_eq!(digests.into_iter().collect::<HashSet<_>>(), directories);
}

/// Uploads `stdout` and the output files, and returns a result pointing at them.
async fn uploaded_result(client: &CasClient, outputs: &[(&str, &'static [u8])]) -> ActionResult {
    let function = client.function();
    let stdout = Bytes::from_static(b"compiling...\nok\n");
    let mut blobs = vec![(function.digest_of(&stdout), stdout.clone())];
    let mut result = ActionResult {
        stdout_digest: Some(function.digest_of(&stdout).to_proto()),
        ..Default::default()
    };
    for (path, data) in outputs {
        let digest = function.digest_of(data);
        blobs.push((digest, Bytes::from_static(data)));
        result.output_files.push(OutputFile {
            path: (*path).to_owned(),
            digest: Some(digest.to_proto()),
            ..Default::default()
        });
    }
    client.upload(&blobs, false).await.unwrap();
    result
}

async fn update(
    ac: &ActionCacheClient<Channel>,
    instance: &str,
    action: &Digest,
    result: &ActionResult,
) -> ActionResult {
    ac.clone()
        .update_action_result(UpdateActionResultRequest {
            instance_name: instance.to_owned(),
            action_digest: Some(action.to_proto()),
            action_result: Some(result.clone()),
            digest_function: action.function.to_proto(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

async fn get(
    ac: &ActionCacheClient<Channel>,
    instance: &str,
    action: &Digest,
) -> Result<ActionResult, tonic::Status> {
    ac.clone()
        .get_action_result(GetActionResultRequest {
            instance_name: instance.to_owned(),
            action_digest: Some(action.to_proto()),
            digest_function: action.function.to_proto(),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn action_cache_update_then_get_with_both_functions() {
    let server = TestServer::start().await;
    let ac = ActionCacheClient::new(server.channel().await);
    for function in DigestFunction::ALL {
        let client = server.client(function).await;
        let result = uploaded_result(&client, &[("out/lib.a", b"archive")]).await;
        let action = function.digest_of(b"an action");
        assert_eq!(update(&ac, "", &action, &result).await, result);
        assert_eq!(get(&ac, "", &action).await.unwrap(), result);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn action_cache_entries_are_per_instance() {
    let server = TestServer::start().await;
    let ac = ActionCacheClient::new(server.channel().await);
    let client = server.client(DigestFunction::Sha256).await;
    let action = DigestFunction::Sha256.digest_of(b"the same action digest");
    let in_a = uploaded_result(&client, &[("out", b"built for a")]).await;
    update(&ac, "a", &action, &in_a).await;
    assert_eq!(
        get(&ac, "b", &action).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        get(&ac, "", &action).await.unwrap_err().code(),
        Code::NotFound
    );
    let in_b = uploaded_result(&client, &[("out", b"built for b")]).await;
    update(&ac, "b", &action, &in_b).await;
    assert_eq!(get(&ac, "a", &action).await.unwrap(), in_a);
    assert_eq!(get(&ac, "b", &action).await.unwrap(), in_b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn action_cache_inlines_what_is_asked() {
    let server = TestServer::start().await;
    let ac = ActionCacheClient::new(server.channel().await);
    let client = server.client(DigestFunction::Sha256).await;
    let result =
        uploaded_result(&client, &[("out/a", b"content a"), ("out/b", b"content b")]).await;
    let action = DigestFunction::Sha256.digest_of(b"inlined action");
    update(&ac, "", &action, &result).await;
    let got = ac
        .clone()
        .get_action_result(GetActionResultRequest {
            action_digest: Some(action.to_proto()),
            inline_stdout: true,
            inline_output_files: vec!["out/a".to_owned()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.stdout_raw, Bytes::from_static(b"compiling...\nok\n"));
    assert!(got.stderr_raw.is_empty());
    assert_eq!(
        got.output_files[0].contents,
        Bytes::from_static(b"content a")
    );
    assert!(got.output_files[1].contents.is_empty(), "not asked for");
    assert_eq!(got.output_files[0].digest, result.output_files[0].digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn action_cache_entry_whose_output_vanished_is_not_found() {
    let server = TestServer::start().await;
    let ac = ActionCacheClient::new(server.channel().await);
    let client = server.client(DigestFunction::Sha256).await;
    // Over 16 KiB, so it is a file (smaller blobs live in the metadata store).
    let content: &'static [u8] = Vec::leak(noise(20_000, 11).to_vec());
    let result = uploaded_result(&client, &[("out/gone", content)]).await;
    let action = DigestFunction::Sha256.digest_of(b"action with a lost output");
    update(&ac, "", &action, &result).await;
    assert!(get(&ac, "", &action).await.is_ok());

    let output = DigestFunction::Sha256.digest_of(content);
    let file = blob_file(&server.dir.path().join("data"), &output).expect("output file");
    std::fs::remove_file(file).unwrap();
    let status = get(&ac, "", &action).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_actions_are_not_cached() {
    let server = TestServer::start().await;
    let ac = ActionCacheClient::new(server.channel().await);
    let client = server.client(DigestFunction::Sha256).await;
    let mut result = uploaded_result(&client, &[]).await;
    result.exit_code = 1;
    let action = DigestFunction::Sha256.digest_of(b"a failing action");
    assert_eq!(update(&ac, "", &action, &result).await.exit_code, 1);
    let status = get(&ac, "", &action).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn action_results_survive_a_clean_restart() {
    let mut first = TestServer::start().await;
    let action = DigestFunction::Sha256.digest_of(b"durable action");
    let result = {
        let client = first.client(DigestFunction::Sha256).await;
        let result = uploaded_result(&client, &[("out/durable", b"kept")]).await;
        update(
            &ActionCacheClient::new(first.channel().await),
            "ci",
            &action,
            &result,
        )
        .await;
        result
    };
    first.stop().await;

    let data_dir = first.dir.path().join("data");
    let second = TestServer::start_with(|c| c.data_dir = data_dir).await;
    let ac = ActionCacheClient::new(second.channel().await);
    assert_eq!(get(&ac, "ci", &action).await.unwrap(), result);
    let client = second.client(DigestFunction::Sha256).await;
    let output = DigestFunction::Sha256.digest_of(b"kept");
    assert_eq!(
        client.read(&output, false).await.unwrap(),
        Bytes::from_static(b"kept")
    );
}

/// Reads whose clients stop reading hold no thread of the server's blocking pool. Here the
/// pool has four threads, and six Reads of a 64 MiB blob file, each on its own connection,
/// are left unread once their streams' flow-control windows (tonic's client default, about
/// 2 MiB) are full. Another
/// client's download of the same blob (its parts read from disk on that pool, its hashing on
/// it too) still completes: the stalled Reads each hold only the chunk read ahead.
#[test]
fn reads_whose_clients_stop_reading_hold_no_blocking_thread() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let server = TestServer::start().await;
        let client = server.client(DigestFunction::Sha256).await;
        let data = noise(64 << 20, 17);
        let digest = DigestFunction::Sha256.digest_of(&data);
        client.write(&digest, data.clone(), false).await.unwrap();
        let mut stalled = Vec::new();
        for _ in 0..6 {
            let stream = ByteStreamClient::new(server.channel().await)
                .read(ReadRequest {
                    resource_name: format!("blobs/{}/{}", digest.hash_hex(), digest.size_bytes),
                    read_offset: 0,
                    read_limit: 0,
                })
                .await
                .expect("the Read starts")
                .into_inner();
            stalled.push(stream);
        }
        // Long enough for each Read to fill its window and, had it a thread, block it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let reader = server.client(DigestFunction::Sha256).await;
        let read = tokio::time::timeout(Duration::from_secs(30), reader.read(&digest, false))
            .await
            .expect("a download beside stalled Reads finishes")
            .expect("the download succeeds");
        assert!(read == data, "the blob reads back whole");
        drop(stalled);
    });
}
