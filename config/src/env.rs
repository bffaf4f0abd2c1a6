//! Which `TESSERA_*` environment variables a command reads, which are its typos, and which it
//! leaves to the other commands of the same binary.
//!
//! One environment often serves several commands (a shell that starts a coordinator and an
//! agent, a CI job that sets `TESSERA_COORDINATOR` for `tessera run`), so a variable is an
//! error only when it falls under the command's own prefix, is not one the command reads, and
//! is not claimed by another command. Everything else is left alone.

/// The environment variables of one command.
#[derive(Debug, Clone, Copy)]
pub struct EnvScope {
    /// Variables the command reads, listed in the unknown-variable error. They may lie outside
    /// `prefix` (the agent reads `TESSERA_COORDINATOR`, shared with the client commands).
    pub reads: &'static [&'static str],
    /// Under this prefix, a variable the command does not read is a mistake...
    pub prefix: &'static str,
    /// ...unless another command owns it: exact names, or prefixes written with a trailing `*`
    /// (`"TESSERA_AGENT_*"`).
    pub others: &'static [&'static str],
}

/// What a command does with one environment variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvUse {
    /// The command reads it.
    Read,
    /// It falls under the command's prefix but nobody reads it: an error.
    Unknown,
    /// Not the command's business.
    Ignore,
}

impl EnvScope {
    /// What the command does with variable `name`.
    pub fn classify(&self, name: &str) -> EnvUse {
        if self.reads.contains(&name) {
            EnvUse::Read
        } else if !name.starts_with(self.prefix) || self.others.iter().any(|o| owns(o, name)) {
            EnvUse::Ignore
        } else {
            EnvUse::Unknown
        }
    }
}

/// Whether pattern `other` (a name, or a prefix ending in `*`) covers `name`.
fn owns(other: &str, name: &str) -> bool {
    match other.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => other == name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCOPE: EnvScope = EnvScope {
        reads: &["TESSERA_LISTEN", "TESSERA_CONFIG"],
        prefix: "TESSERA_",
        others: &["TESSERA_COORDINATOR", "TESSERA_AGENT_*"],
    };

    #[test]
    fn only_unclaimed_names_under_the_prefix_are_unknown() {
        assert_eq!(SCOPE.classify("TESSERA_LISTEN"), EnvUse::Read);
        assert_eq!(SCOPE.classify("TESSERA_LISTN"), EnvUse::Unknown);
        assert_eq!(SCOPE.classify("TESSERA_COORDINATOR"), EnvUse::Ignore);
        assert_eq!(SCOPE.classify("TESSERA_AGENT_SLOTS"), EnvUse::Ignore);
        assert_eq!(SCOPE.classify("TESSERA_AGENT"), EnvUse::Unknown);
        assert_eq!(SCOPE.classify("PATH"), EnvUse::Ignore);
    }
}
