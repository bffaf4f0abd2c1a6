//! Platform requirements and agent properties, and whether one satisfies the other.
//!
//! A requirement is a sorted list of `name=value` pairs. An agent satisfies it when, for every
//! pair, it has a property of that name with the same value, or, for numeric keys such as
//! `cores` and `memory`, a value at least as large. Execution-only keys (`limit.*`,
//! `exec-root`, `avoid-agent`) say how to run the work, not where, and are never matched.

use std::collections::BTreeSet;

/// Keys compared as "at least" when both sides are numbers.
pub const NUMERIC_KEYS: &[&str] = &["cores", "cpus", "memory", "memory_mb", "mem_mb", "disk_gb"];

/// Keys that tell the agent how to run the action (`limit.nofile`, `limit.memory`, ...,
/// and `exec-root`, the fixed path where a job's steps see their input root) rather than
/// where: never matched against agent properties.
pub fn is_execution_only(key: &str) -> bool {
    key.starts_with("limit.") || key == EXEC_ROOT_PROPERTY || key == AVOID_AGENT_PROPERTY
}

/// Platform property naming an agent that should not run the action when another agent can
/// (a job's retry of a failed test goes to another agent where possible).
pub const AVOID_AGENT_PROPERTY: &str = "avoid-agent";

/// Platform property naming the absolute path at which the agent shows the action its input
/// root (DESIGN.md §5: a job's prepare step and batches see it at the same path everywhere).
pub const EXEC_ROOT_PROPERTY: &str = "exec-root";

/// Platform property saying whether an action gets the host's network (`on`) or a private
/// network namespace with only loopback (`off`, the default), as agents read it.
pub const NETWORK_PROPERTY: &str = "network";

/// A platform requirement (or an agent's properties): sorted, deduplicated pairs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Platform(Vec<(String, String)>);

impl Platform {
    /// From name/value pairs in any order.
    pub fn new(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        let set: BTreeSet<(String, String)> = pairs.into_iter().collect();
        Platform(set.into_iter().collect())
    }

    /// The pairs, sorted.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }

    /// The distinct keys.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_str())
    }

    /// Whether the work asks to avoid agent `agent` (see
    /// [`AVOID_AGENT_PROPERTY`]).
    pub fn avoids(&self, agent: &str) -> bool {
        self.0
            .iter()
            .any(|(key, value)| key == AVOID_AGENT_PROPERTY && value == agent)
    }

    /// Whether an agent with `properties` may run work that needs `self`.
    pub fn satisfied_by(&self, properties: &Platform) -> bool {
        self.0
            .iter()
            .filter(|(key, _)| !is_execution_only(key))
            .all(|(key, wanted)| {
                properties
                    .0
                    .iter()
                    .filter(|(k, _)| k == key)
                    .any(|(_, have)| value_satisfies(key, wanted, have))
            })
    }
}

fn value_satisfies(key: &str, wanted: &str, have: &str) -> bool {
    if wanted == have {
        return true;
    }
    if NUMERIC_KEYS.contains(&key)
        && let (Ok(w), Ok(h)) = (wanted.parse::<f64>(), have.parse::<f64>())
    {
        return h >= w;
    }
    false
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(any)");
        }
        let parts: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Platform {
        Platform::new(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        )
    }

    #[test]
    fn exact_keys_must_match() {
        let agent = p(&[("OSFamily", "linux"), ("pool", "gpu")]);
        assert!(p(&[]).satisfied_by(&agent));
        assert!(p(&[("OSFamily", "linux")]).satisfied_by(&agent));
        assert!(!p(&[("OSFamily", "windows")]).satisfied_by(&agent));
        assert!(!p(&[("arch", "x86_64")]).satisfied_by(&agent));
    }

    #[test]
    fn numeric_keys_are_at_least() {
        let agent = p(&[("cores", "8"), ("memory", "16384"), ("pool", "8")]);
        assert!(p(&[("cores", "4")]).satisfied_by(&agent));
        assert!(p(&[("cores", "8")]).satisfied_by(&agent));
        assert!(!p(&[("cores", "16")]).satisfied_by(&agent));
        assert!(p(&[("memory", "2048"), ("cores", "2")]).satisfied_by(&agent));
        // Not a numeric key: exact only.
        assert!(!p(&[("pool", "4")]).satisfied_by(&agent));
    }

    #[test]
    fn execution_only_limits_are_not_matched() {
        let agent = p(&[("OSFamily", "linux")]);
        assert!(p(&[("limit.nofile", "1024"), ("OSFamily", "linux")]).satisfied_by(&agent));
    }

    #[test]
    fn pairs_are_sorted_and_deduplicated() {
        let a = p(&[("b", "1"), ("a", "2"), ("b", "1")]);
        assert_eq!(a.pairs().len(), 2);
        assert_eq!(a, p(&[("a", "2"), ("b", "1")]));
        assert_eq!(a.to_string(), "a=2,b=1");
    }
}
