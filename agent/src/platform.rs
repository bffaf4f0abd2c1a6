//! Platform properties, both ways: what this agent advertises in `Hello`, and how it reads the
//! platform of an action it runs.
//!
//! Advertised: `OSFamily` (`linux`), `ISA` and `arch` (`std::env::consts::ARCH`, e.g.
//! `x86_64`), `cores` (CPUs this process may use), `memory` (MiB: physical memory, or the
//! cgroup limit if lower), `sandbox` (`namespaces` or `none`) and `network`: `on` always, and
//! also `off` when namespaces work (an agent may list one key with several values: it satisfies
//! each), and for each toolchain found on the host (`tessera_runners::toolchain`): `tool=<name>`
//! and `toolchain.<name>=<version>+<fingerprint>`. Configured properties are added and
//! override detected ones of the same name.
//!
//! Read from an action's platform (the execution keys; all others are for matching only and
//! ignored here): `network` = `on` | `off` (default `off`: a private network namespace with
//! only loopback, when namespaces are available), resource limits `limit.nofile` (open
//! files), `limit.memory` (MiB of address space, RLIMIT_AS) and `limit.cpu` (CPU seconds), and
//! `exec-root`: the absolute path at which the command sees its input root (see `exec_root`).

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use tessera_proto::reapi::Platform;
use tessera_proto::reapi::platform::Property;
use tessera_runners::toolchain::{TOOL_KEY, Toolchain};
use thiserror::Error;

/// Default soft and hard limit on open files for actions (capped by the agent's own hard limit
/// unless the agent may raise it).
pub const DEFAULT_NOFILE: u64 = 65_536;

/// What the host offers, found once at startup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// CPUs this process may use.
    pub cores: usize,
    /// Memory in MiB (physical, or the cgroup limit if lower); `None` if unknown.
    pub memory_mib: Option<u64>,
    /// Whether actions can run in Linux namespaces.
    pub namespaces: bool,
    /// The toolchains found here, with their property values.
    pub toolchains: Vec<(Toolchain, String)>,
}

impl HostFacts {
    /// Detects cores, memory and toolchains (probing each toolchain at once, in its own
    /// thread: this blocks for as long as the slowest probe); `namespaces` comes from the
    /// sandbox probe.
    pub fn detect(namespaces: bool) -> Self {
        let toolchains = std::thread::scope(|scope| {
            let probes: Vec<_> = Toolchain::ALL
                .iter()
                .map(|&t| scope.spawn(move || t.probe().map(|value| (t, value))))
                .collect();
            probes
                .into_iter()
                .filter_map(|probe| probe.join().ok().flatten())
                .collect()
        });
        HostFacts {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_mib: memory_mib(),
            namespaces,
            toolchains,
        }
    }
}

/// The properties to advertise: detected ones, then `configured` (overriding by name), sorted
/// by name then value.
pub fn advertised(facts: &HostFacts, configured: &BTreeMap<String, String>) -> Vec<Property> {
    let mut detected: Vec<(String, String)> = vec![
        ("OSFamily".into(), std::env::consts::OS.into()),
        ("ISA".into(), std::env::consts::ARCH.into()),
        ("arch".into(), std::env::consts::ARCH.into()),
        ("cores".into(), facts.cores.to_string()),
        (
            "sandbox".into(),
            if facts.namespaces {
                "namespaces"
            } else {
                "none"
            }
            .into(),
        ),
        ("network".into(), "on".into()),
    ];
    if facts.namespaces {
        detected.push(("network".into(), "off".into()));
    }
    if let Some(mib) = facts.memory_mib {
        detected.push(("memory".into(), mib.to_string()));
    }
    for (toolchain, value) in &facts.toolchains {
        detected.push((TOOL_KEY.into(), toolchain.name().into()));
        detected.push((toolchain.key(), value.clone()));
    }
    let mut properties: Vec<Property> = detected
        .into_iter()
        .filter(|(name, _)| !configured.contains_key(name))
        .chain(configured.iter().map(|(k, v)| (k.clone(), v.clone())))
        .map(|(name, value)| Property { name, value })
        .collect();
    properties.sort_by(|a, b| (&a.name, &a.value).cmp(&(&b.name, &b.value)));
    properties
}

/// Why an action's platform cannot be honoured.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlatformError {
    /// An execution key has a value the agent does not understand.
    #[error("platform property {name}=\"{value}\": {reason}")]
    BadValue {
        /// The key.
        name: String,
        /// The value.
        value: String,
        /// What was expected.
        reason: &'static str,
    },
}

/// The platform key naming the fixed path where an action sees its input root; the same word
/// as the coordinator's `EXEC_ROOT_PROPERTY` (they meet only in the protocol).
pub const EXEC_ROOT_KEY: &str = "exec-root";

/// Resource limits for one action; `None` leaves the agent's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// RLIMIT_NOFILE (soft and hard).
    pub nofile: Option<u64>,
    /// RLIMIT_AS in bytes.
    pub address_space: Option<u64>,
    /// RLIMIT_CPU in seconds.
    pub cpu_seconds: Option<u64>,
}

/// How the agent must run one action, read from its platform.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecutionOptions {
    /// `network=on`: keep the host's network. Otherwise the action gets a private network
    /// namespace with only loopback (where namespaces are available).
    pub network: bool,
    /// Resource limits asked for.
    pub limits: Limits,
    /// `exec-root`: where the command sees its input root instead of the lease's own
    /// directory; checked by [`check_exec_root`].
    pub exec_root: Option<PathBuf>,
}

impl ExecutionOptions {
    /// Reads the execution keys of `platform`.
    pub fn from_platform(platform: Option<&Platform>) -> Result<Self, PlatformError> {
        let mut options = ExecutionOptions::default();
        let Some(platform) = platform else {
            return Ok(options);
        };
        for Property { name, value } in &platform.properties {
            let bad = |reason| PlatformError::BadValue {
                name: name.clone(),
                value: value.clone(),
                reason,
            };
            let number = || {
                value
                    .trim()
                    .parse::<u64>()
                    .map_err(|_| bad("expected a whole number"))
            };
            match name.as_str() {
                "network" => {
                    options.network = match value.as_str() {
                        "on" => true,
                        "off" => false,
                        _ => return Err(bad("expected on or off")),
                    }
                }
                "limit.nofile" => options.limits.nofile = Some(number()?),
                "limit.memory" => {
                    options.limits.address_space = Some(number()?.saturating_mul(1024 * 1024));
                }
                "limit.cpu" => options.limits.cpu_seconds = Some(number()?),
                EXEC_ROOT_KEY => {
                    check_exec_root(value).map_err(bad)?;
                    options.exec_root = Some(PathBuf::from(value));
                }
                _ => {}
            }
        }
        Ok(options)
    }
}

/// Checks an `exec-root` value: an absolute, normalized path (no `.`, `..`, empty or trailing
/// components) other than `/`. Says what is wrong otherwise.
pub fn check_exec_root(value: &str) -> Result<(), &'static str> {
    let path = Path::new(value);
    if !path.is_absolute() {
        return Err("expected an absolute path");
    }
    let mut normal = 0;
    for component in path.components() {
        match component {
            Component::RootDir => {}
            Component::Normal(_) => normal += 1,
            Component::CurDir | Component::ParentDir | Component::Prefix(_) => {
                return Err("expected a normalized path, without `.` or `..`");
            }
        }
    }
    if normal == 0 {
        return Err("expected a directory below /, not / itself");
    }
    // `components` hides `//`, `/./` and a trailing `/`: the text must be exactly the path.
    let rebuilt: PathBuf = path.components().collect();
    if rebuilt.as_os_str() != path.as_os_str() {
        return Err("expected a normalized path, without `//` or a trailing `/`");
    }
    if value.contains('\0') {
        return Err("the path contains a NUL byte");
    }
    Ok(())
}

/// Physical memory in MiB, or the cgroup v2 limit if lower.
fn memory_mib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let total_kib: u64 = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let mut mib = total_kib / 1024;
    let cgroup_limit = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|limit| limit.trim().parse::<u64>().ok());
    if let Some(bytes) = cgroup_limit {
        mib = mib.min(bytes / (1024 * 1024));
    }
    Some(mib)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platform(pairs: &[(&str, &str)]) -> Platform {
        Platform {
            properties: pairs
                .iter()
                .map(|(n, v)| Property {
                    name: (*n).into(),
                    value: (*v).into(),
                })
                .collect(),
        }
    }

    fn pairs(props: &[Property]) -> Vec<(&str, &str)> {
        props
            .iter()
            .map(|p| (p.name.as_str(), p.value.as_str()))
            .collect()
    }

    #[test]
    fn advertises_detected_and_configured_properties() {
        let facts = HostFacts {
            cores: 8,
            memory_mib: Some(16_000),
            namespaces: true,
            toolchains: vec![(Toolchain::Go, "1.19.8+0123456789ab".into())],
        };
        let configured: BTreeMap<String, String> =
            [("pool".into(), "big".into()), ("cores".into(), "4".into())].into();
        let props = advertised(&facts, &configured);
        let arch = std::env::consts::ARCH;
        assert_eq!(
            pairs(&props),
            [
                ("ISA", arch),
                ("OSFamily", "linux"),
                ("arch", arch),
                ("cores", "4"),
                ("memory", "16000"),
                ("network", "off"),
                ("network", "on"),
                ("pool", "big"),
                ("sandbox", "namespaces"),
                ("tool", "go"),
                ("toolchain.go", "1.19.8+0123456789ab"),
            ]
        );
        let without = HostFacts {
            namespaces: false,
            memory_mib: None,
            ..facts
        };
        let props = advertised(&without, &BTreeMap::new());
        assert!(pairs(&props).contains(&("sandbox", "none")));
        assert!(!pairs(&props).contains(&("network", "off")));
    }

    #[test]
    fn reads_execution_keys() {
        assert_eq!(
            ExecutionOptions::from_platform(None).unwrap(),
            ExecutionOptions::default()
        );
        let options = ExecutionOptions::from_platform(Some(&platform(&[
            ("OSFamily", "linux"),
            ("limit.cpu", "10"),
            ("limit.memory", "512"),
            ("limit.nofile", "1024"),
            ("network", "on"),
        ])))
        .unwrap();
        assert!(options.network);
        assert_eq!(
            options.limits,
            Limits {
                nofile: Some(1024),
                address_space: Some(512 * 1024 * 1024),
                cpu_seconds: Some(10),
            }
        );
        let err =
            ExecutionOptions::from_platform(Some(&platform(&[("network", "yes")]))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "platform property network=\"yes\": expected on or off"
        );
        assert!(ExecutionOptions::from_platform(Some(&platform(&[("limit.cpu", "-1")]))).is_err());
    }

    #[test]
    fn exec_roots_are_absolute_normalized_and_not_the_root() {
        for good in ["/tmp/tessera/repo", "/src", "/a b/c.d"] {
            assert_eq!(check_exec_root(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "/",
            "//",
            "relative/x",
            "./x",
            "/tmp/../etc",
            "/tmp/./x",
            "/tmp//x",
            "/tmp/x/",
            "/tmp/x/..",
            "/a\0b",
        ] {
            assert!(check_exec_root(bad).is_err(), "{bad:?} accepted");
        }
        let options =
            ExecutionOptions::from_platform(Some(&platform(&[("exec-root", "/tmp/t/repo")])))
                .unwrap();
        assert_eq!(options.exec_root, Some(PathBuf::from("/tmp/t/repo")));
        let err = ExecutionOptions::from_platform(Some(&platform(&[("exec-root", "/tmp/../x")])))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "platform property exec-root=\"/tmp/../x\": expected a normalized path, without `.` \
             or `..`"
        );
    }

    #[test]
    fn detects_something_plausible() {
        let facts = HostFacts::detect(false);
        assert!(facts.cores >= 1);
        assert!(facts.memory_mib.is_some_and(|m| m > 0));
    }
}
