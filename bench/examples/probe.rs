// TEMPORARY investigation probe; not part of the deliverable.
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::RngCore;
use tessera_cas::client::CasClient;
use tessera_cas::digest::DigestFunction;
use tessera_coordinator::{Coordinator, CoordinatorConfig};
use tessera_proto::bytestream::byte_stream_client::ByteStreamClient;
use tessera_proto::bytestream::{ReadRequest, WriteRequest};
use tonic::transport::{Channel, Endpoint};

fn rnd(n: usize) -> Bytes {
    let mut v = vec![0u8; n];
    rand::rng().fill_bytes(&mut v);
    Bytes::from(v)
}

async fn channel(ep: &str, mode: &str) -> Channel {
    let e = Endpoint::from_shared(ep.to_owned())
        .unwrap()
        .tcp_nodelay(true);
    let e = match mode {
        "default" => e,
        "big" => e
            .initial_connection_window_size(32 * 1024 * 1024)
            .initial_stream_window_size(16 * 1024 * 1024),
        "adaptive" => e.http2_adaptive_window(true),
        "bigbuf" => e
            .initial_connection_window_size(32 * 1024 * 1024)
            .initial_stream_window_size(16 * 1024 * 1024)
            .buffer_size(1024),
        _ => panic!(),
    };
    e.connect().await.unwrap()
}

async fn raw_read(
    bs: &mut ByteStreamClient<Channel>,
    name: String,
) -> (Duration, Duration, usize, usize) {
    let t = Instant::now();
    let mut s = bs
        .read(ReadRequest {
            resource_name: name,
            read_offset: 0,
            read_limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut first = None;
    let mut n = 0;
    let mut msgs = 0;
    while let Some(m) = s.message().await.unwrap() {
        if first.is_none() {
            first = Some(t.elapsed());
        }
        n += m.data.len();
        msgs += 1;
        if std::env::var("TRACE").is_ok() {
            eprint!(
                " {}:{:.2}ms",
                m.data.len() >> 10,
                t.elapsed().as_secs_f64() * 1e3
            );
        }
    }
    (first.unwrap_or_default(), t.elapsed(), n, msgs)
}

async fn raw_write(
    bs: &mut ByteStreamClient<Channel>,
    name: String,
    data: Bytes,
    chunk: usize,
) -> Duration {
    let total = data.len();
    let msgs: Vec<WriteRequest> = (0..total)
        .step_by(chunk)
        .map(|s| {
            let e = (s + chunk).min(total);
            WriteRequest {
                resource_name: if s == 0 { name.clone() } else { String::new() },
                write_offset: s as i64,
                finish_write: e == total,
                data: data.slice(s..e),
            }
        })
        .collect();
    let t = Instant::now();
    bs.write(futures::stream::iter(msgs)).await.unwrap();
    if std::env::var("TRACE").is_ok() {
        eprintln!("client write {:.2}ms", t.elapsed().as_secs_f64() * 1e3);
    }
    t.elapsed()
}

fn main() {
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = CoordinatorConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        data_dir: dir.path().join("data"),
        ..CoordinatorConfig::default()
    };
    let coord = server_rt.block_on(Coordinator::start(&config)).unwrap();
    let ep = format!("http://{}", coord.local_addr());
    let size: usize = std::env::args()
        .nth(1)
        .map_or(1 << 20, |s| s.parse().unwrap());
    let count: usize = std::env::args().nth(2).map_or(32, |s| s.parse().unwrap());
    client_rt.block_on(async move {
        let f = if std::env::var("BLAKE3").is_ok() {
            DigestFunction::Blake3
        } else {
            DigestFunction::Sha256
        };
        let client = CasClient::connect(&ep, "", f).await.unwrap();
        // upload blobs with CasClient
        let mut digests = vec![];
        let mut up = Duration::ZERO;
        for _ in 0..count {
            let d = rnd(size);
            let dg = f.digest_of(&d);
            let t = Instant::now();
            client.write(&dg, d, false).await.unwrap();
            up += t.elapsed();
            digests.push(dg);
        }
        println!(
            "CasClient.write {size}x{count}: {:.0} MB/s",
            (size * count) as f64 / 1e6 / up.as_secs_f64()
        );
        if std::env::var("ONLY_UPLOAD").is_ok() {
            return;
        }
        let mut down = Duration::ZERO;
        for dg in &digests {
            let t = Instant::now();
            client.read(dg, false).await.unwrap();
            down += t.elapsed();
        }
        println!(
            "CasClient.read: {:.0} MB/s",
            (size * count) as f64 / 1e6 / down.as_secs_f64()
        );
        for mode in std::env::var("MODES")
            .unwrap_or("default,big,adaptive,bigbuf".into())
            .split(',')
        {
            let mut bs = ByteStreamClient::new(channel(&ep, mode).await)
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20);
            let mut tot = Duration::ZERO;
            let mut firsts = vec![];
            let mut msgs = 0;
            for dg in &digests {
                let name = format!("blobs/{}/{}", dg.hash_hex(), dg.size_bytes);
                let (first, all, n, m) = raw_read(&mut bs, name).await;
                assert_eq!(n, size);
                tot += all;
                if std::env::var("TRACE").is_ok() {
                    eprintln!(" total {:.2}ms", all.as_secs_f64() * 1e3);
                }
                firsts.push(first.as_secs_f64() * 1e3);
                msgs = m;
            }
            firsts.sort_by(f64::total_cmp);
            println!(
                "raw read [{mode}]: {:.0} MB/s, first msg p50 {:.2} ms, {} msgs/blob",
                (size * count) as f64 / 1e6 / tot.as_secs_f64(),
                firsts[firsts.len() / 2],
                msgs
            );
            for chunk in [16 << 10, 64 << 10, 256 << 10, 1 << 20] {
                let mut tot = Duration::ZERO;
                for _ in 0..count {
                    let d = rnd(size);
                    let dg = f.digest_of(&d);
                    let name = format!(
                        "uploads/{}/blobs/{}/{}",
                        uuid_like(),
                        dg.hash_hex(),
                        dg.size_bytes
                    );
                    tot += raw_write(&mut bs, name, d, chunk).await;
                }
                println!(
                    "raw write [{mode}] chunk {} KiB: {:.0} MB/s",
                    chunk >> 10,
                    (size * count) as f64 / 1e6 / tot.as_secs_f64()
                );
            }
        }
    });
    server_rt.block_on(coord.shutdown()).unwrap();
}

fn uuid_like() -> String {
    format!("{:032x}", rand::rng().next_u64() as u128 * 7 + 1)
}
