//! What Execute checks before it accepts an action: the Action and Command exist and decode,
//! the input tree is valid and every blob in it is in the CAS, output paths are sane, and the
//! timeout is within the server's limit. Missing blobs are collected, not reported one at a
//! time, so the client can upload them all and retry once.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tessera_cas::client::blob_request;
use tessera_cas::digest::{Digest, DigestError, DigestFunction};
use tessera_cas::store::{BlobStore, StoreError};
use tessera_cas::validate::{TreeError, TreeLimits, validate_directory};
use tessera_proto::reapi::{Action, Command, Directory, batch_update_blobs_request};
use thiserror::Error;

use super::platform::Platform;

/// Limits applied at Execute time.
#[derive(Debug, Clone)]
pub struct ExecLimits {
    /// Timeout for actions that name none.
    pub default_timeout: Duration,
    /// Longest timeout accepted (REAPI: longer is rejected, not clamped).
    pub max_timeout: Duration,
    /// Tree bounds.
    pub tree: TreeLimits,
    /// Input roots found complete and valid a moment ago.
    pub verified: VerifiedRoots,
    /// Bytes that operations not yet finished hold for their leases to carry.
    pub carried: CarriedBudget,
}

/// How long an input root found complete stays trusted without another walk. A job runs many
/// batches on one (often large) prepared root; walking 10,000 files costs ~60 ms per Execute.
/// The CAS keeps recently used blobs from eviction far longer than this.
const VERIFIED_FOR: std::time::Duration = std::time::Duration::from_secs(30);
/// Most roots remembered.
const VERIFIED_MAX: usize = 4096;
/// Most Directory messages, and most bytes of them, that an input tree read at Execute may
/// have for its leases to carry them (see [`ResolvedAction::directories`]). Bazel's actions
/// have a few to a few dozen; an agent fetches a larger tree itself.
const CARRIED_DIRECTORIES: usize = 256;
const CARRIED_DIRECTORY_BYTES: usize = 256 * 1024;
/// Most bytes of input files read with the tree for its leases to carry, and the largest
/// file among them: a build's sources and small tools, which an agent new to them would
/// fetch in a BatchReadBlobs of its own.
const CARRIED_FILE_BYTES: usize = 256 * 1024;
const CARRIED_FILE_MAX: u64 = 64 * 1024;
const CARRIED_FILES: usize = 1024;

/// Input roots recently found complete and valid (shared by every clone).
#[derive(Debug, Clone, Default)]
pub struct VerifiedRoots(
    std::sync::Arc<std::sync::Mutex<std::collections::HashMap<Digest, std::time::Instant>>>,
);

impl VerifiedRoots {
    fn fresh(&self, root: &Digest) -> bool {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(root).is_some_and(|at| at.elapsed() < VERIFIED_FOR)
    }

    fn record(&self, root: Digest) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= VERIFIED_MAX {
            map.retain(|_, at| at.elapsed() < VERIFIED_FOR);
            if map.len() >= VERIFIED_MAX {
                map.clear();
            }
        }
        map.insert(root, std::time::Instant::now());
    }
}

/// Most bytes of Directory messages and files that all unfinished operations hold for their
/// leases to carry: a deep queue holds no more than this in memory; past it, a new operation
/// carries none and its agent fetches its tree and files as before.
const CARRIED_TOTAL: usize = 64 * 1024 * 1024;

/// What unfinished operations hold for their leases to carry, across the coordinator (shared
/// by every clone).
#[derive(Debug, Clone, Default)]
pub struct CarriedBudget(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl CarriedBudget {
    /// `directories` and `files` to carry, counted against the budget until the returned
    /// value is dropped; none at all if they do not fit.
    pub fn take(&self, directories: Vec<Bytes>, files: Vec<(Digest, Bytes)>) -> Carried {
        use std::sync::atomic::Ordering;
        let bytes: usize = directories.iter().map(Bytes::len).sum::<usize>()
            + files.iter().map(|(_, data)| data.len()).sum::<usize>();
        if directories.is_empty() && files.is_empty() {
            return Carried::default();
        }
        let fits = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes)
                    .filter(|total| *total <= CARRIED_TOTAL)
            })
            .is_ok();
        if !fits {
            return Carried::default();
        }
        Carried {
            directories,
            // In the form each lease sends them, made once.
            files: files
                .into_iter()
                .map(|(digest, data)| blob_request(&digest, data))
                .collect(),
            held: Some((self.clone(), bytes)),
        }
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Blobs an operation's leases carry (see [`CarriedBudget`]); given back to the budget when
/// dropped.
#[derive(Debug, Default)]
pub struct Carried {
    directories: Vec<Bytes>,
    files: Vec<batch_update_blobs_request::Request>,
    held: Option<(CarriedBudget, usize)>,
}

impl Carried {
    /// The input tree's Directory messages.
    pub fn directories(&self) -> &[Bytes] {
        &self.directories
    }

    /// Small input files, each with its digest, as `Lease.input_files` carries them.
    pub fn files(&self) -> &[batch_update_blobs_request::Request] {
        &self.files
    }
}

impl Drop for Carried {
    fn drop(&mut self) {
        if let Some((budget, bytes)) = self.held.take() {
            budget
                .0
                .fetch_sub(bytes, std::sync::atomic::Ordering::AcqRel);
        }
    }
}

/// An action ready to queue.
#[derive(Debug, Clone)]
pub struct ResolvedAction {
    /// The Action message.
    pub action: Action,
    /// Its Command.
    pub command: Command,
    /// The platform it needs: the Action's, else the Command's (REAPI 2.2).
    pub platform: Platform,
    /// Its execution timeout.
    pub timeout: Duration,
    /// Every Directory message of its input tree, as stored, when the tree was read here
    /// (not when it was found complete a moment ago) and is small (see
    /// [`CARRIED_DIRECTORIES`]): its leases carry them so the agent need not fetch them.
    pub directories: Vec<Bytes>,
    /// Small files of that tree, read with it (see [`CARRIED_FILE_BYTES`]), for the same.
    pub files: Vec<(Digest, Bytes)>,
}

/// Why an action was refused.
#[derive(Debug, Error)]
pub enum InputError {
    /// A digest in the Action is malformed.
    #[error("{what}: {source}")]
    Digest {
        /// Which field.
        what: &'static str,
        /// What is wrong.
        #[source]
        source: DigestError,
    },
    /// Blobs the action needs are not in the CAS.
    #[error("{} blob(s) needed by the action are missing from the CAS, first {}", .0.len(), .0[0])]
    Missing(Vec<Digest>),
    /// A blob does not decode as the message it should be.
    #[error("{what} {digest} does not decode as a {what} message")]
    Undecodable {
        /// Which message.
        what: &'static str,
        /// The blob.
        digest: Digest,
    },
    /// The Command or Action breaks a rule.
    #[error("invalid {0}")]
    Invalid(String),
    /// The input tree breaks a rule.
    #[error("invalid input tree: {0}")]
    Tree(#[from] TreeError),
    /// The timeout is beyond the server's maximum.
    #[error("action timeout {asked:?} exceeds the server maximum {max:?}")]
    TimeoutTooLong {
        /// What the action asked for.
        asked: Duration,
        /// The limit.
        max: Duration,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn read_message<M: Message + Default>(
    store: &dyn BlobStore,
    what: &'static str,
    digest: Digest,
) -> Result<M, InputError> {
    let Some(bytes) = store.read(&digest)? else {
        return Err(InputError::Missing(vec![digest]));
    };
    M::decode(bytes).map_err(|_| InputError::Undecodable { what, digest })
}

fn check_output_path(kind: &str, path: &str) -> Result<(), InputError> {
    if path.starts_with('/')
        || path.contains('\0')
        || path.split('/').any(|s| s == "..")
        || (!path.is_empty() && path.split('/').any(str::is_empty))
    {
        return Err(InputError::Invalid(format!(
            "command: {kind} \"{path}\" must be a relative path without empty or \"..\" segments"
        )));
    }
    Ok(())
}

/// Fetches and checks everything the action needs.
#[expect(
    deprecated,
    reason = "v2.0 clients still send output_files, output_directories and Command.platform"
)]
pub fn resolve(
    store: &dyn BlobStore,
    function: DigestFunction,
    action_digest: Digest,
    limits: &ExecLimits,
) -> Result<ResolvedAction, InputError> {
    let action: Action = read_message(store, "Action", action_digest)?;
    let command_digest =
        Digest::from_proto_opt(function, action.command_digest.as_ref()).map_err(|source| {
            InputError::Digest {
                what: "action.command_digest",
                source,
            }
        })?;
    let root_digest =
        Digest::from_proto_opt(function, action.input_root_digest.as_ref()).map_err(|source| {
            InputError::Digest {
                what: "action.input_root_digest",
                source,
            }
        })?;
    let mut missing = Vec::new();
    let command: Option<Command> = match read_message(store, "Command", command_digest) {
        Ok(command) => Some(command),
        Err(InputError::Missing(m)) => {
            missing.extend(m);
            None
        }
        Err(other) => return Err(other),
    };
    let mut directories = Vec::new();
    let mut files = Vec::new();
    if !limits.verified.fresh(&root_digest) {
        let walked = missing_inputs(store, function, root_digest, &limits.tree)?;
        if walked.missing.is_empty() {
            limits.verified.record(root_digest);
        }
        missing.extend(walked.missing);
        directories = walked.directories;
        files = walked.small_files;
    }
    if !missing.is_empty() {
        return Err(InputError::Missing(missing));
    }
    let command = command.unwrap_or_default();
    if command.arguments.is_empty() {
        return Err(InputError::Invalid("command: no arguments".to_owned()));
    }
    for path in command
        .output_paths
        .iter()
        .chain(&command.output_files)
        .chain(&command.output_directories)
    {
        check_output_path("output path", path)?;
    }
    check_output_path("working_directory", &command.working_directory)?;
    let timeout = match &action.timeout {
        Some(t) if t.seconds < 0 || t.nanos < 0 => {
            return Err(InputError::Invalid(format!(
                "action: negative timeout {t:?}"
            )));
        }
        Some(t) if t.seconds > 0 || t.nanos > 0 => {
            Duration::new(t.seconds.unsigned_abs(), t.nanos.unsigned_abs())
        }
        _ => limits.default_timeout,
    };
    if timeout > limits.max_timeout {
        return Err(InputError::TimeoutTooLong {
            asked: timeout,
            max: limits.max_timeout,
        });
    }
    let properties = match &action.platform {
        Some(p) if !p.properties.is_empty() => p.properties.clone(),
        _ => command
            .platform
            .clone()
            .map(|p| p.properties)
            .unwrap_or_default(),
    };
    let platform = Platform::new(properties.into_iter().map(|p| (p.name, p.value)));
    Ok(ResolvedAction {
        action,
        command,
        platform,
        timeout,
        directories,
        files,
    })
}

/// What walking an input tree found.
struct Walked {
    /// Every blob it references that the CAS lacks.
    missing: Vec<Digest>,
    /// Every Directory message read, once each, if they are few and small enough to carry
    /// (see [`CARRIED_DIRECTORIES`]); none otherwise.
    directories: Vec<Bytes>,
    /// The smallest files, read (see [`CARRIED_FILE_BYTES`]), when the directories are
    /// carried and nothing is missing.
    small_files: Vec<(Digest, Bytes)>,
}

/// Walks the input tree: every blob it references that the CAS lacks (directory messages
/// included), and the directory messages read. Each directory present is validated.
fn missing_inputs(
    store: &dyn BlobStore,
    function: DigestFunction,
    root: Digest,
    limits: &TreeLimits,
) -> Result<Walked, InputError> {
    let mut missing = Vec::new();
    let mut directories = Vec::new();
    let mut directory_bytes = 0usize;
    let mut carriable = true;
    let mut files = Vec::new();
    let mut seen = HashSet::from([root]);
    let mut queue = VecDeque::from([(root, String::new(), 0usize)]);
    let mut entries = 0usize;
    while let Some((digest, path, depth)) = queue.pop_front() {
        if depth > limits.max_depth {
            return Err(TreeError::TooDeep {
                path,
                max: limits.max_depth,
            }
            .into());
        }
        let Some(bytes) = store.read(&digest)? else {
            missing.push(digest);
            continue;
        };
        let dir = Directory::decode(bytes.clone()).map_err(|_| InputError::Undecodable {
            what: "Directory",
            digest,
        })?;
        if carriable {
            directory_bytes += bytes.len();
            directories.push(bytes);
            if directories.len() > CARRIED_DIRECTORIES || directory_bytes > CARRIED_DIRECTORY_BYTES
            {
                carriable = false;
                directories = Vec::new();
            }
        }
        validate_directory(&dir, function, &path)?;
        entries += dir.files.len() + dir.directories.len() + dir.symlinks.len();
        if entries > limits.max_entries {
            return Err(TreeError::TooManyEntries {
                max: limits.max_entries,
            }
            .into());
        }
        for file in &dir.files {
            // validate_directory has checked that every digest parses.
            if let Ok(d) = Digest::from_proto_opt(function, file.digest.as_ref()) {
                files.push(d);
            }
        }
        for child in &dir.directories {
            if let Ok(d) = Digest::from_proto_opt(function, child.digest.as_ref())
                && seen.insert(d)
            {
                let child_path = if path.is_empty() {
                    child.name.clone()
                } else {
                    format!("{path}/{}", child.name)
                };
                queue.push_back((d, child_path, depth + 1));
            }
        }
    }
    files.sort_unstable();
    files.dedup();
    missing.extend(store.find_missing_checked(&files));
    let small_files = if carriable && missing.is_empty() {
        read_small_files(store, &files)
    } else {
        Vec::new()
    };
    Ok(Walked {
        missing,
        directories,
        small_files,
    })
}

/// The smallest of `files` (none empty, none over [`CARRIED_FILE_MAX`]), read until
/// [`CARRIED_FILE_BYTES`] would be passed. One that cannot be read is left to the agent.
fn read_small_files(store: &dyn BlobStore, files: &[Digest]) -> Vec<(Digest, Bytes)> {
    let mut small: Vec<&Digest> = files
        .iter()
        .filter(|d| d.size_bytes > 0 && d.size_bytes <= CARRIED_FILE_MAX)
        .collect();
    small.sort_by_key(|d| d.size_bytes);
    let mut read = Vec::new();
    let mut bytes = 0usize;
    for digest in small.into_iter().take(CARRIED_FILES) {
        let size = usize::try_from(digest.size_bytes).unwrap_or(usize::MAX);
        if bytes.saturating_add(size) > CARRIED_FILE_BYTES {
            break;
        }
        if let Ok(Some(data)) = store.read(digest) {
            bytes += data.len();
            read.push((*digest, data));
        }
    }
    read
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carried_blobs_count_until_dropped_and_none_are_held_past_the_budget() {
        let budget = CarriedBudget::default();
        let blob = |n: usize| Bytes::from(vec![0u8; n]);
        let first = budget.take(
            vec![blob(10)],
            vec![(DigestFunction::Sha256.digest_of(&[0; 20]), blob(20))],
        );
        assert_eq!((first.directories().len(), first.files().len()), (1, 1));
        assert_eq!(budget.held(), 30);
        let big = budget.take(vec![blob(CARRIED_TOTAL)], Vec::new());
        assert!(
            big.directories().is_empty(),
            "past the budget nothing is carried"
        );
        assert_eq!(budget.held(), 30);
        drop(big);
        assert_eq!(budget.held(), 30);
        let rest = budget.take(vec![blob(CARRIED_TOTAL - 30)], Vec::new());
        assert_eq!(rest.directories().len(), 1, "exactly up to the budget");
        drop(first);
        drop(rest);
        assert_eq!(budget.held(), 0);
        assert!(budget.take(Vec::new(), Vec::new()).files().is_empty());
    }
}
