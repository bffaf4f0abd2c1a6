//! The ceilings a transfer is judged against, measured on this machine in the same run: how
//! fast one core hashes with a digest function, and how fast the same bytes cross a plain
//! loopback TCP connection. A server that streams and verifies a blob can go no faster than
//! the slower of the two. Also, for context only, how fast the same bytes go into new files on
//! the store's filesystem (buffered, not synced, as the store writes them).
//!
//! For execution, how long a bare process spawn takes here: a trivial action can go no faster
//! than that, whatever the scheduler does.
//!
//! Each probe is taken several times and the best kept, so a limit is what the machine can do,
//! not what it happened to do once; that only ever makes a target harder to meet.

use std::hint::black_box;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::Digest as _;
use tessera_cas::digest::DigestFunction;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Handle;

use crate::cpu;
use crate::error::BenchError;

/// Times each probe is taken; the best counts.
const PROBE_RUNS: usize = 3;
/// Bytes per read on the receiving end of the TCP probe, and per write in the disk probe.
const IO_BUFFER: usize = 1024 * 1024;

/// Megabytes (10^6 bytes) per second.
pub(crate) fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64().max(1e-9)
}

/// Single-threaded hash rate of `function` over `data`, in MB/s, using the same crates the
/// store uses (`sha2`, `blake3`) without their multi-threaded modes.
pub(crate) async fn hash_rate(function: DigestFunction, data: Bytes) -> Result<f64, BenchError> {
    let rate = tokio::task::spawn_blocking(move || {
        (0..PROBE_RUNS)
            .map(|_| {
                let start = Instant::now();
                match function {
                    DigestFunction::Sha256 => {
                        black_box(sha2::Sha256::digest(black_box(&data[..])));
                    }
                    DigestFunction::Blake3 => {
                        black_box(blake3::hash(black_box(&data[..])));
                    }
                }
                mb_per_s(data.len() as u64, start.elapsed())
            })
            .fold(0.0, f64::max)
    })
    .await?;
    Ok(rate)
}

/// Rate, in MB/s, at which `count` copies of `chunk` cross one loopback TCP connection: a
/// tokio writer on the caller's runtime, a reader on `server` (the coordinator's runtime, where
/// a gRPC upload would land). Timed from the first write until the reader has every byte.
pub(crate) async fn tcp_rate(
    server: &Handle,
    chunk: Bytes,
    count: usize,
) -> Result<f64, BenchError> {
    let mut best: f64 = 0.0;
    for _ in 0..PROBE_RUNS {
        best = best.max(tcp_once(server, chunk.clone(), count).await?);
    }
    Ok(best)
}

async fn tcp_once(server: &Handle, chunk: Bytes, count: usize) -> Result<f64, BenchError> {
    let io = |what: &'static str| move |source| BenchError::Io { what, source };
    let total = chunk.len() as u64 * count as u64;
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(io("bind a loopback port"))?;
    let addr = listener.local_addr().map_err(io("bind a loopback port"))?;
    listener
        .set_nonblocking(true)
        .map_err(io("bind a loopback port"))?;
    let reader = server.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let (mut socket, _) = listener.accept().await?;
        let mut buf = vec![0u8; IO_BUFFER];
        let mut received = 0u64;
        while received < total {
            let n = socket.read(&mut buf).await?;
            if n == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
            }
            received += n as u64;
        }
        Ok::<_, std::io::Error>(Instant::now())
    });
    let mut socket = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(io("connect over loopback"))?;
    socket
        .set_nodelay(true)
        .map_err(io("connect over loopback"))?;
    let start = Instant::now();
    for _ in 0..count {
        socket
            .write_all(&chunk)
            .await
            .map_err(io("write to the loopback socket"))?;
    }
    let end = reader.await?.map_err(io("read from the loopback socket"))?;
    Ok(mb_per_s(total, end - start))
}

/// Where [`plain_verified_rate`]'s receiving end keeps what it received.
#[derive(Debug, Clone)]
pub(crate) enum Keep {
    /// In one new buffer per blob (as a download to memory must; the client's own buffer,
    /// with its huge-page advice), copied there from 1 MiB reads.
    Memory,
    /// In a new file per blob in this directory, written as it arrives in 1 MiB pieces (as
    /// the store keeps an upload); deleted afterwards.
    Files(PathBuf),
}

/// Rate, in MB/s, of a plain verified transfer of `count` copies of `chunk`: one loopback TCP
/// connection between two threads, the receiving end hashing every byte with `function` on
/// one core and keeping it as `keep` says. A reference for what the transfer does with no
/// framing, no gRPC and no second core for hashing; context, not part of a target. Blocking.
pub(crate) fn plain_verified_rate(
    function: DigestFunction,
    chunk: Bytes,
    count: usize,
    keep: Keep,
) -> Result<f64, BenchError> {
    let mut best: f64 = 0.0;
    for _ in 0..PROBE_RUNS {
        best = best.max(plain_verified_once(function, chunk.clone(), count, &keep)?);
    }
    Ok(best)
}

fn plain_verified_once(
    function: DigestFunction,
    chunk: Bytes,
    count: usize,
    keep: &Keep,
) -> Result<f64, BenchError> {
    use std::io::Read as _;
    let io = |what: &'static str| move |source| BenchError::Io { what, source };
    let size = chunk.len();
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(io("bind a loopback port"))?;
    let addr = listener.local_addr().map_err(io("bind a loopback port"))?;
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut socket, _) = listener.accept()?;
        socket.set_nodelay(true)?;
        for _ in 0..count {
            socket.write_all(&chunk)?;
        }
        Ok(())
    });
    let mut socket = std::net::TcpStream::connect(addr).map_err(io("connect over loopback"))?;
    if let Keep::Files(dir) = keep {
        std::fs::create_dir_all(dir).map_err(io("create the plain transfer directory"))?;
    }
    let start = Instant::now();
    let mut scratch = vec![0u8; IO_BUFFER];
    let mut kept = Vec::new();
    for blob in 0..count {
        let mut hasher = function.hasher();
        let mut sink = match keep {
            Keep::Memory => Sink::Memory(tessera_cas::client::download_buffer(size)),
            Keep::Files(dir) => Sink::File(
                std::fs::File::create(dir.join(format!("plain-{blob}")))
                    .map_err(io("create a plain transfer file"))?,
            ),
        };
        let mut received = 0;
        while received < size {
            let room = (size - received).min(IO_BUFFER);
            let n = socket
                .read(&mut scratch[..room])
                .map_err(io("read from the loopback socket"))?;
            if n == 0 {
                return Err(BenchError::Unexpected(
                    "the plain transfer ended early".into(),
                ));
            }
            let piece = &scratch[..n];
            hasher.update(piece);
            match &mut sink {
                Sink::Memory(buf) => buf.extend_from_slice(piece),
                Sink::File(file) => file
                    .write_all(piece)
                    .map_err(io("write a plain transfer file"))?,
            }
            received += n;
        }
        black_box(hasher.finish_digest());
        if let Sink::Memory(buf) = sink {
            kept.push(buf);
        }
    }
    let elapsed = start.elapsed();
    sender
        .join()
        .map_err(|_| BenchError::Unexpected("the plain transfer's sender panicked".into()))?
        .map_err(io("write to the loopback socket"))?;
    drop(kept);
    if let Keep::Files(dir) = keep {
        for blob in 0..count {
            let _ = std::fs::remove_file(dir.join(format!("plain-{blob}")));
        }
    }
    Ok(mb_per_s(size as u64 * count as u64, elapsed))
}

/// Where one blob of [`plain_verified_once`] goes.
enum Sink {
    Memory(bytes::BytesMut),
    File(std::fs::File),
}

/// Rate, in MB/s, at which `count` copies of `chunk` are written to new files in `dir` in
/// 1 MiB writes, not synced: what the disk store does with an upload, minus hashing. The files
/// are deleted afterwards.
pub(crate) async fn disk_write_rate(
    dir: PathBuf,
    chunk: Bytes,
    count: usize,
) -> Result<f64, BenchError> {
    tokio::task::spawn_blocking(move || {
        let io = |what: &'static str| move |source| BenchError::Io { what, source };
        std::fs::create_dir_all(&dir).map_err(io("create the disk probe directory"))?;
        let mut best: f64 = 0.0;
        let mut written = Vec::new();
        for run in 0..PROBE_RUNS {
            let start = Instant::now();
            for i in 0..count {
                let path = dir.join(format!("probe-{run}-{i}"));
                let mut file =
                    std::fs::File::create(&path).map_err(io("create a disk probe file"))?;
                for piece in chunk.chunks(IO_BUFFER) {
                    file.write_all(piece)
                        .map_err(io("write a disk probe file"))?;
                }
                written.push(path);
            }
            best = best.max(mb_per_s(chunk.len() as u64 * count as u64, start.elapsed()));
        }
        for path in written {
            let _ = std::fs::remove_file(path);
        }
        Ok(best)
    })
    .await?
}

/// A bare process spawn, as [`spawn_cost`] measured it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SpawnCost {
    /// Spawns timed.
    pub spawns: usize,
    /// Wall time per spawn and wait, ms (best of the probe runs).
    pub ms: f64,
    /// CPU per spawn, this process and the reaped child together, ms.
    pub cpu_ms: f64,
}

/// Spawns `program` `count` times, one at a time, waiting for each: the cost of a process on
/// this machine with nothing else around it (no sandbox, no pipes).
pub(crate) async fn spawn_cost(
    program: &'static str,
    count: usize,
) -> Result<SpawnCost, BenchError> {
    tokio::task::spawn_blocking(move || {
        let mut best = f64::INFINITY;
        let mut cpu_ms = f64::INFINITY;
        for _ in 0..PROBE_RUNS {
            let cpu_before = cpu::process("self")?;
            let start = Instant::now();
            for _ in 0..count {
                let status = std::process::Command::new(program)
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status()
                    .map_err(|source| BenchError::Io {
                        what: "spawn the spawn probe",
                        source,
                    })?;
                if !status.success() {
                    return Err(BenchError::Unexpected(format!("{program} exited {status}")));
                }
            }
            let elapsed = start.elapsed();
            let spent = cpu::process("self")? - cpu_before;
            let per = |d: Duration| d.as_secs_f64() * 1e3 / count.max(1) as f64;
            if per(elapsed) < best {
                best = per(elapsed);
                cpu_ms = per(spent.own + spent.children);
            }
        }
        Ok(SpawnCost {
            spawns: count,
            ms: best,
            cpu_ms,
        })
    })
    .await?
}
