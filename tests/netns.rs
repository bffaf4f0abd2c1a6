//! Network namespaces for tests that need a second host: a namespace joined to this one by a
//! veth pair, each end with its own address, so a process inside reaches the host only
//! through the link (which a test can cut). Needs root and iproute2.
//!
//! Owns: creating and removing the namespace and its link. Not owned here: what runs inside
//! (the tests start it with [`Netns::command`]).

use std::process::{Command, Stdio};

/// A network namespace with a veth link to the host, removed on drop.
pub struct Netns {
    /// The namespace's name (`ip netns exec NAME ...`).
    pub name: String,
    /// The host end's interface.
    pub host_if: String,
    /// The host end's address: what a process inside dials to reach the host.
    pub host_ip: String,
    /// The namespace end's address.
    pub peer_ip: String,
}

impl Netns {
    /// Creates namespace number `index` (0..=255, distinct among the tests that run at the
    /// same time) on `10.231.INDEX.0/24`; `None` (with the failing step on stderr) when this
    /// is not root or iproute2 is missing.
    pub fn create(index: u8) -> Option<Netns> {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("network namespaces need root");
            return None;
        }
        let id = std::process::id() % 10_000;
        let ns = Netns {
            name: format!("tsr{id}n{index}"),
            host_if: format!("tsr{id}h{index}"),
            host_ip: format!("10.231.{index}.1"),
            peer_ip: format!("10.231.{index}.2"),
        };
        let peer_if = format!("tsr{id}a{index}");
        let host_cidr = format!("{}/24", ns.host_ip);
        let peer_cidr = format!("{}/24", ns.peer_ip);
        let steps: [&[&str]; 8] = [
            &["netns", "add", &ns.name],
            &[
                "link",
                "add",
                &ns.host_if,
                "type",
                "veth",
                "peer",
                "name",
                &peer_if,
            ],
            &["link", "set", &peer_if, "netns", &ns.name],
            &["addr", "add", &host_cidr, "dev", &ns.host_if],
            &["link", "set", &ns.host_if, "up"],
            &["-n", &ns.name, "addr", "add", &peer_cidr, "dev", &peer_if],
            &["-n", &ns.name, "link", "set", &peer_if, "up"],
            &["-n", &ns.name, "link", "set", "lo", "up"],
        ];
        for step in steps {
            let ok = Command::new("ip")
                .args(step)
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                eprintln!("`ip {}` failed", step.join(" "));
                return None;
            }
        }
        Some(ns)
    }

    /// `ip netns exec NAME PROGRAM`: a command that runs `program` inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// Takes the host end of the link down: nothing inside reaches the host any more.
    pub fn cut(&self) {
        let status = Command::new("ip")
            .args(["link", "set", &self.host_if, "down"])
            .status()
            .expect("run ip");
        assert!(status.success(), "ip link set {} down", self.host_if);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .stderr(Stdio::null())
            .status();
    }
}
