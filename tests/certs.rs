//! Throw-away certificates for tests and benchmarks, made with the `openssl` command (the
//! same one the README's "Deploying on a network" section uses): CAs, server certificates
//! naming the hosts clients dial, and client certificates for mutual TLS.
//!
//! Owns: the files under one temporary directory, named `NAME.pem` (certificate) and
//! `NAME.key` (its key). Not owned here: what trusts or presents them (the tests do that with
//! `--tls-*` flags or [`tessera_net::client::ClientAuth`]).

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;

use tempfile::TempDir;

use crate::in_ci;

/// A throw-away PKI: a directory of CAs and the certificates they signed (deleted on drop).
pub struct Pki {
    dir: TempDir,
}

impl Pki {
    /// An empty PKI; `None` (the caller skips) only when `openssl` is missing outside CI.
    pub fn new() -> Option<Pki> {
        if Command::new("openssl").arg("version").output().is_err() {
            assert!(
                !in_ci(),
                "openssl is required in CI (Debian: apt-get install openssl)"
            );
            eprintln!("SKIP: openssl is not installed");
            return None;
        }
        Some(Pki {
            dir: tempfile::tempdir().expect("temp dir for certificates"),
        })
    }

    /// The usual set: CA `ca`, a server certificate `server` signed by it for `localhost`,
    /// `127.0.0.1` and `extra_hosts`, and a client certificate `client` (for mutual TLS).
    pub fn standard(extra_hosts: &[&str]) -> Option<Pki> {
        let pki = Pki::new()?;
        pki.ca("ca");
        let mut hosts = vec!["localhost", "127.0.0.1"];
        hosts.extend_from_slice(extra_hosts);
        pki.server("server", "ca", &hosts);
        pki.client("client", "ca", "agent");
        Some(pki)
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// `DIR/NAME.pem`: the certificate `name`.
    pub fn cert(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.pem"))
    }

    /// `DIR/NAME.key`: the private key of certificate `name`.
    pub fn key(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.key"))
    }

    /// Creates a self-signed CA `name` (P-256, valid two days).
    pub fn ca(&self, name: &str) {
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN=Tessera test CA {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ]);
    }

    /// Creates server certificate `name` signed by CA `ca`, naming each of `hosts` (DNS names
    /// and IP addresses) in its subjectAltName.
    pub fn server(&self, name: &str, ca: &str, hosts: &[&str]) {
        let names: Vec<String> = hosts
            .iter()
            .map(|h| {
                if h.parse::<IpAddr>().is_ok() {
                    format!("IP:{h}")
                } else {
                    format!("DNS:{h}")
                }
            })
            .collect();
        let extensions = format!(
            "subjectAltName={}\nextendedKeyUsage=serverAuth\n",
            names.join(",")
        );
        self.leaf(
            name,
            ca,
            hosts.first().copied().unwrap_or(name),
            &extensions,
        );
    }

    /// Creates client certificate `name` with common name `cn`, signed by CA `ca`.
    pub fn client(&self, name: &str, ca: &str, cn: &str) {
        self.leaf(name, ca, cn, "extendedKeyUsage=clientAuth\n");
    }

    /// The serial number of certificate `name` as openssl prints it (hex).
    pub fn serial(&self, name: &str) -> String {
        let out = self.openssl(&["x509", "-noout", "-serial", "-in", &format!("{name}.pem")]);
        out.trim()
            .strip_prefix("serial=")
            .unwrap_or_else(|| panic!("openssl x509 -serial printed {out:?}"))
            .to_owned()
    }

    fn leaf(&self, name: &str, ca: &str, cn: &str, extensions: &str) {
        std::fs::write(self.dir.path().join(format!("{name}.ext")), extensions)
            .expect("write the extensions file");
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            // A random serial each time, so a re-issued certificate is told apart.
            "-set_serial",
            &format!("0x{:016x}", rand_serial()),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.pem"),
        ]);
    }

    /// Runs `openssl ARGS` in the directory; panics with its stderr if it fails. Returns stdout.
    fn openssl(&self, args: &[&str]) -> String {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A serial number unlikely to repeat: the clock's nanoseconds mixed with a counter.
fn rand_serial() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mixed = (nanos
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9))
    .wrapping_mul(0x2545_F491_4F6C_DD1D);
    // Positive and non-zero, as X.509 wants.
    (mixed >> 2) | 1
}
