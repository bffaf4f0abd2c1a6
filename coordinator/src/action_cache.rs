//! The action cache: action digest → `ActionResult`, per instance name, durable in the
//! metadata store (table `ac`).
//!
//! Entries are separate per instance name; blobs are shared by all instances, because a blob
//! is named by its content and can be served to anyone who knows its digest. An entry is only
//! returned while every blob it points at (output files, output trees and the files in them,
//! stdout, stderr) is still in the CAS; reading or writing an entry marks those blobs used so
//! eviction takes them last. An update is acknowledged only after it is durable.

use std::sync::Arc;

use prost::Message;
use tessera_cas::digest::{Digest, DigestError, DigestFunction};
use tessera_cas::meta::{MetaError, MetadataStore, Table};
use tessera_cas::resource::{ResourceError, validate_instance_name};
use tessera_cas::store::{BlobStore, StoreError};
use tessera_proto::reapi::{ActionResult, Directory, Tree};
use thiserror::Error;

/// Name of the metadata table holding the entries.
pub const TABLE: &str = "ac";

/// Why an action cache call failed.
#[derive(Debug, Error)]
pub enum AcError {
    /// The instance name is malformed.
    #[error(transparent)]
    Instance(#[from] ResourceError),
    /// A digest in the request is malformed.
    #[error(transparent)]
    Digest(#[from] DigestError),
    /// The update carries no `action_result`.
    #[error("missing action_result")]
    MissingResult,
    /// The result is malformed (a bad path or digest in it).
    #[error("invalid action result: {0}")]
    InvalidResult(String),
    /// The result points at blobs the CAS does not have.
    #[error("action result refers to {} blob(s) missing from the CAS, first {}", .0.len(), .0[0])]
    MissingOutputs(Vec<Digest>),
    /// A stored entry does not decode: the store is damaged.
    #[error("stored action result for {0} does not decode")]
    Undecodable(Digest),
    /// The metadata store failed.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// The blob store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A lookup's blocking thread failed.
    #[error("action cache lookup failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The action cache over a metadata store and a blob store.
#[derive(Clone)]
pub struct ActionCache {
    meta: Arc<dyn MetadataStore>,
    table: Table,
    blobs: Arc<dyn BlobStore>,
}

impl std::fmt::Debug for ActionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActionCache").finish_non_exhaustive()
    }
}

/// The digest function of an entry's key (see [`key`]); `None` for a malformed key.
pub(crate) fn function_of_key(key: &[u8]) -> Option<DigestFunction> {
    let marker = key.len().checked_sub(41)?;
    match key.get(marker)? {
        1 => Some(DigestFunction::Sha256),
        9 => Some(DigestFunction::Blake3),
        _ => None,
    }
}

pub(crate) fn key(instance: &str, action: &Digest) -> Vec<u8> {
    let mut key = Vec::with_capacity(instance.len() + 42);
    key.extend_from_slice(instance.as_bytes());
    key.push(0);
    key.push(match action.function {
        DigestFunction::Sha256 => 1,
        DigestFunction::Blake3 => 9,
    });
    key.extend_from_slice(&action.hash);
    key.extend_from_slice(&action.size_bytes.to_be_bytes());
    key
}

/// Checks an output path: relative, `/`-separated, no empty, `.` or `..` segments.
fn check_path(kind: &str, path: &str, allow_empty: bool) -> Result<(), AcError> {
    if path.is_empty() {
        return if allow_empty {
            Ok(())
        } else {
            Err(AcError::InvalidResult(format!("{kind} has an empty path")))
        };
    }
    if path.starts_with('/') {
        return Err(AcError::InvalidResult(format!(
            "{kind} path \"{path}\" is absolute"
        )));
    }
    if path.contains('\0')
        || path
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(AcError::InvalidResult(format!(
            "{kind} path \"{path}\" has an empty, \".\" or \"..\" segment"
        )));
    }
    Ok(())
}

impl ActionCache {
    /// Opens the cache's table in `meta`.
    pub fn open(meta: Arc<dyn MetadataStore>, blobs: Arc<dyn BlobStore>) -> Result<Self, AcError> {
        let table = meta.table(TABLE)?;
        Ok(ActionCache { meta, table, blobs })
    }

    /// Looks `action` up in `instance` from the async runtime and gives the entry, if any, to
    /// `on_hit` on a blocking thread. A hit reads and checks the blobs the entry names
    /// ([`ActionCache::get`]) on that thread; a miss (every action of a cold build) is
    /// answered without one while the metadata store reads without waiting
    /// ([`ActionCache::lacks`]).
    pub async fn lookup<T: Send + 'static>(
        &self,
        instance: &str,
        action: Digest,
        on_hit: impl FnOnce(ActionResult) -> T + Send + 'static,
    ) -> Result<Option<T>, AcError> {
        if self.lacks(instance, &action)? == Some(true) {
            return Ok(None);
        }
        let cache = self.clone();
        let instance = instance.to_owned();
        tokio::task::spawn_blocking(move || Ok(cache.get(&instance, &action)?.map(on_hit))).await?
    }

    /// Whether `instance` has no entry for `action` at all, from one read of the metadata
    /// store made only while the store reads without waiting
    /// ([`MetadataStore::reads_quickly`]; `None` otherwise).
    fn lacks(&self, instance: &str, action: &Digest) -> Result<Option<bool>, AcError> {
        validate_instance_name(instance)?;
        if !self.meta.reads_quickly() {
            return Ok(None);
        }
        Ok(Some(self.table.get(&key(instance, action))?.is_none()))
    }

    /// The entry for `action` in `instance`, if present and every blob it needs is in the CAS.
    /// An entry with missing blobs is removed.
    pub fn get(&self, instance: &str, action: &Digest) -> Result<Option<ActionResult>, AcError> {
        validate_instance_name(instance)?;
        let key = key(instance, action);
        let Some(bytes) = self.table.get(&key)? else {
            return Ok(None);
        };
        let result =
            ActionResult::decode(bytes.as_slice()).map_err(|_| AcError::Undecodable(*action))?;
        let needed = match self.referenced_blobs(action.function, &result) {
            Ok(needed) => needed,
            Err(AcError::MissingOutputs(missing)) => {
                tracing::debug!(%action, first_missing = %missing[0], "action cache entry lost outputs");
                self.table.remove(&key)?;
                return Ok(None);
            }
            Err(other) => return Err(other),
        };
        let missing = self.blobs.find_missing_checked(&needed);
        if !missing.is_empty() {
            tracing::debug!(%action, first_missing = %missing[0], "action cache entry lost outputs");
            self.table.remove(&key)?;
            return Ok(None);
        }
        Ok(Some(result))
    }

    /// Stores `result` for `action` in `instance` once it is durable. Results of failed
    /// actions (non-zero exit code) are not cached (DESIGN.md §3): they are returned unchanged
    /// and not stored.
    pub async fn update(
        &self,
        instance: &str,
        action: &Digest,
        result: ActionResult,
    ) -> Result<ActionResult, AcError> {
        validate_instance_name(instance)?;
        let needed = self.referenced_blobs(action.function, &result)?;
        let missing = self.blobs.find_missing(&needed);
        if !missing.is_empty() {
            return Err(AcError::MissingOutputs(missing));
        }
        if result.exit_code != 0 {
            tracing::debug!(%action, exit_code = result.exit_code, "not caching a failed action");
            return Ok(result);
        }
        self.table
            .insert(&key(instance, action), &result.encode_to_vec())?;
        self.meta.flush_async().await?;
        Ok(result)
    }

    /// Stores the result of an action that ran on one of our agents, without waiting for it to
    /// become durable (the metadata store flushes on its own within a second; losing it in a
    /// crash only costs a re-run). Failed actions are not stored.
    pub fn record_executed(
        &self,
        instance: &str,
        action: &Digest,
        result: &ActionResult,
    ) -> Result<(), AcError> {
        if result.exit_code != 0 {
            return Ok(());
        }
        self.table
            .insert(&key(instance, action), &result.encode_to_vec())?;
        Ok(())
    }

    /// Validates the result's paths and digests and lists every blob it needs, including the
    /// files inside output trees (see [`referenced_blobs`]).
    fn referenced_blobs(
        &self,
        function: DigestFunction,
        result: &ActionResult,
    ) -> Result<Vec<Digest>, AcError> {
        referenced_blobs(self.blobs.as_ref(), function, result)
    }
}

/// Validates `result`'s paths and digests and lists every blob it needs, reading its output
/// trees from `blobs` for the files inside them. A tree blob that is missing or does not
/// decode is reported as missing.
#[expect(
    deprecated,
    reason = "v2.0 clients still send the pre-2.1 symlink fields"
)]
pub(crate) fn referenced_blobs(
    blobs: &dyn BlobStore,
    function: DigestFunction,
    result: &ActionResult,
) -> Result<Vec<Digest>, AcError> {
    let mut needed = Vec::new();
    let parse = |d: &tessera_proto::reapi::Digest| Digest::from_proto(function, d);
    for file in &result.output_files {
        check_path("output file", &file.path, false)?;
        needed.push(
            Digest::from_proto_opt(function, file.digest.as_ref()).map_err(|e| {
                AcError::InvalidResult(format!("output file \"{}\": {e}", file.path))
            })?,
        );
    }
    for link in result
        .output_symlinks
        .iter()
        .chain(&result.output_file_symlinks)
        .chain(&result.output_directory_symlinks)
    {
        check_path("output symlink", &link.path, false)?;
    }
    if let Some(d) = &result.stdout_digest {
        needed.push(parse(d).map_err(|e| AcError::InvalidResult(format!("stdout_digest: {e}")))?);
    }
    if let Some(d) = &result.stderr_digest {
        needed.push(parse(d).map_err(|e| AcError::InvalidResult(format!("stderr_digest: {e}")))?);
    }
    for dir in &result.output_directories {
        check_path("output directory", &dir.path, true)?;
        let tree_digest =
            Digest::from_proto_opt(function, dir.tree_digest.as_ref()).map_err(|e| {
                AcError::InvalidResult(format!(
                    "output directory \"{}\": tree_digest: {e}",
                    dir.path
                ))
            })?;
        needed.push(tree_digest);
        let Some(bytes) = blobs.read(&tree_digest)? else {
            return Err(AcError::MissingOutputs(vec![tree_digest]));
        };
        let Ok(tree) = Tree::decode(bytes) else {
            return Err(AcError::InvalidResult(format!(
                "output directory \"{}\": tree {tree_digest} is not a Tree message",
                dir.path
            )));
        };
        for directory in tree.root.iter().chain(&tree.children) {
            collect_files(function, directory, &mut needed).map_err(|e| {
                AcError::InvalidResult(format!("output directory \"{}\": {e}", dir.path))
            })?;
        }
    }
    Ok(needed)
}

fn collect_files(
    function: DigestFunction,
    directory: &Directory,
    out: &mut Vec<Digest>,
) -> Result<(), DigestError> {
    for file in &directory.files {
        out.push(Digest::from_proto_opt(function, file.digest.as_ref())?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_cas::meta::MemoryMetaStore;
    use tessera_cas::store::MemoryStore;
    use tessera_proto::reapi::OutputFile;

    fn cache() -> (ActionCache, MemoryStore) {
        let blobs = MemoryStore::new();
        let ac =
            ActionCache::open(Arc::new(MemoryMetaStore::new()), Arc::new(blobs.clone())).unwrap();
        (ac, blobs)
    }

    fn result_with_file(d: &Digest, path: &str) -> ActionResult {
        ActionResult {
            output_files: vec![OutputFile {
                path: path.to_owned(),
                digest: Some(d.to_proto()),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn entries_are_per_instance_and_need_their_outputs() {
        let (ac, blobs) = cache();
        let out = DigestFunction::Sha256.digest_of(b"output");
        let action = DigestFunction::Sha256.digest_of(b"action");
        assert_eq!(ac.lacks("ci", &action).unwrap(), Some(true));
        let err = ac
            .update("", &action, result_with_file(&out, "out/a"))
            .await
            .unwrap_err();
        assert!(matches!(err, AcError::MissingOutputs(ref m) if m == &vec![out]));

        blobs.write(&out, b"output").unwrap();
        ac.update("ci", &action, result_with_file(&out, "out/a"))
            .await
            .unwrap();
        assert!(ac.get("ci", &action).unwrap().is_some());
        assert_eq!(ac.lacks("ci", &action).unwrap(), Some(false));
        assert!(
            ac.get("", &action).unwrap().is_none(),
            "instances are separate"
        );
        assert_eq!(
            ac.lacks("", &action).unwrap(),
            Some(true),
            "instances are separate"
        );
        assert!(
            matches!(ac.lacks("a/../b", &action), Err(AcError::Instance(_))),
            "the instance name is checked as in get"
        );

        // The output vanishes: the entry is no longer returned, and then no longer there.
        blobs.corrupt_for_test(&out, bytes::Bytes::from_static(b"tampered"));
        assert_eq!(
            ac.lacks("ci", &action).unwrap(),
            Some(false),
            "lacks only says what get surely misses; get checks the outputs"
        );
        assert!(ac.get("ci", &action).unwrap().is_none());
        assert_eq!(ac.lacks("ci", &action).unwrap(), Some(true));
    }

    /// A metadata store that is recovering (it says reads may wait).
    struct Recovering(MemoryMetaStore);

    impl MetadataStore for Recovering {
        fn table(&self, name: &str) -> Result<tessera_cas::meta::Table, MetaError> {
            self.0.table(name)
        }
        fn apply_batch(&self, batch: tessera_cas::meta::Batch) -> Result<(), MetaError> {
            self.0.apply_batch(batch)
        }
        fn flush(&self) -> Result<(), MetaError> {
            self.0.flush()
        }
        fn flush_async(&self) -> futures::future::BoxFuture<'static, Result<(), MetaError>> {
            self.0.flush_async()
        }
        fn dump(&self, except: &[&str]) -> Result<Vec<tessera_cas::meta::TableDump>, MetaError> {
            self.0.dump(except)
        }
    }

    #[test]
    fn a_recovering_store_is_not_asked_on_the_runtime() {
        let ac = ActionCache::open(
            Arc::new(Recovering(MemoryMetaStore::new())),
            Arc::new(MemoryStore::new()),
        )
        .unwrap();
        let action = DigestFunction::Sha256.digest_of(b"action");
        assert_eq!(ac.lacks("", &action).unwrap(), None);
        assert!(ac.get("", &action).unwrap().is_none(), "get still answers");
    }

    #[tokio::test]
    async fn bad_paths_and_failed_actions() {
        let (ac, blobs) = cache();
        let out = DigestFunction::Sha256.digest_of(b"x");
        blobs.write(&out, b"x").unwrap();
        let action = DigestFunction::Sha256.digest_of(b"a");
        for bad in ["/abs", "a/../b", "a//b", ""] {
            let err = ac
                .update("", &action, result_with_file(&out, bad))
                .await
                .unwrap_err();
            assert!(matches!(err, AcError::InvalidResult(_)), "{bad}: {err}");
        }
        let mut failed = result_with_file(&out, "ok");
        failed.exit_code = 1;
        ac.update("", &action, failed).await.unwrap();
        assert!(
            ac.get("", &action).unwrap().is_none(),
            "failed results are not cached"
        );
    }
}
