//! A job's secrets (`tessera run --secret-env NAME`): values given to every step while only a
//! keyed hash of each enters the steps' Commands, and so their cache keys.
//!
//! | where | what it holds |
//! | --- | --- |
//! | the job's record (`registry.rs`), the journal, events, logs | names only ([`strip`]) |
//! | each step's Command (CAS, action cache keys) | `NAME=tessera-secret:<keyed hash of the value>` |
//! | the job in memory ([`JobSecrets::Held`]) and the scheduler's queued operation | the values |
//! | `Lease.secrets`, sent to the agent that runs a step | the values |
//!
//! The hash key ([`PlaceholderKey`]) is 32 random bytes kept in the metadata store, created at
//! first need: cache keys stay the same across restarts, and a placeholder read from the CAS
//! cannot be brute-forced without the key. The key changes a placeholder when, and only when,
//! the value changes.
//!
//! A job restored after a restart has lost its values ([`JobSecrets::Lost`]): its steps fail
//! with [`LOST_MESSAGE`] instead of running with placeholders.
//!
//! Not here: checking names and sizes at submit (`validate.rs`), putting the values in place
//! on the agent (`agent/src/pipeline.rs`).

use std::sync::Arc;

use tessera_cas::meta::{MetaError, MetadataStore};
use tessera_proto::reapi::command::EnvironmentVariable;
use tessera_proto::tessera::v1::{JobSpec, SecretEnv};
use tessera_runners::step::SECRET_PLACEHOLDER_PREFIX;
use tokio::sync::OnceCell;

/// Table holding the placeholder key.
const TABLE: &str = "secret_key";
/// The key's row.
const ROW: &[u8] = b"placeholder";

/// What a restored job's steps fail with.
pub const LOST_MESSAGE: &str =
    "secret values are not kept across coordinator restarts; run the job again";

/// The key of the keyed hash in secrets' placeholders, loaded (or created and flushed) at
/// first need and then kept.
#[derive(Clone)]
pub struct PlaceholderKey {
    meta: Arc<dyn MetadataStore>,
    key: Arc<OnceCell<[u8; 32]>>,
}

impl std::fmt::Debug for PlaceholderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlaceholderKey").finish_non_exhaustive()
    }
}

impl PlaceholderKey {
    /// The key kept in `meta` (not read until it is needed).
    pub fn new(meta: Arc<dyn MetadataStore>) -> Self {
        PlaceholderKey {
            meta,
            key: Arc::new(OnceCell::new()),
        }
    }

    /// The key: read from the metadata store, or created, written and flushed there.
    pub async fn get(&self) -> Result<[u8; 32], MetaError> {
        let key = self
            .key
            .get_or_try_init(|| async {
                let table = self.meta.table(TABLE)?;
                if let Some(stored) = table.get(ROW)?
                    && let Ok(key) = <[u8; 32]>::try_from(stored.as_slice())
                {
                    return Ok(key);
                }
                let key: [u8; 32] = rand::random();
                table.insert(ROW, &key)?;
                self.meta.flush_async().await?;
                tracing::info!("created the key of secrets' placeholders");
                Ok(key)
            })
            .await?;
        Ok(*key)
    }
}

/// The placeholder of `value` under `key`: what a step's Command holds instead of it.
pub fn placeholder(key: &[u8; 32], value: &str) -> String {
    let hash = blake3::keyed_hash(key, value.as_bytes());
    format!("{SECRET_PLACEHOLDER_PREFIX}{}", hash.to_hex())
}

/// One secret variable: its value and its placeholder. Its `Debug` shows the name only.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    /// The variable's name.
    pub name: String,
    /// The value (never stored, logged or shown).
    pub value: String,
    /// What the steps' Commands hold instead.
    pub placeholder: String,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// What a job knows of its secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobSecrets {
    /// The values, as submitted (none for most jobs).
    Held(Vec<Secret>),
    /// A job restored after a restart that had secrets: their names; the values are gone.
    Lost(Vec<String>),
}

impl Default for JobSecrets {
    fn default() -> Self {
        JobSecrets::Held(Vec::new())
    }
}

impl JobSecrets {
    /// The secrets of a just-submitted `spec` with placeholders under `key`.
    pub fn held(spec: &JobSpec, key: &[u8; 32]) -> Self {
        JobSecrets::Held(
            spec.secrets
                .iter()
                .map(|s| Secret {
                    name: s.name.clone(),
                    value: s.value.clone(),
                    placeholder: placeholder(key, &s.value),
                })
                .collect(),
        )
    }

    /// The secrets of a job restored from its (stripped) record.
    pub fn restored(spec: &JobSpec) -> Self {
        if spec.secrets.is_empty() {
            JobSecrets::default()
        } else {
            JobSecrets::Lost(spec.secrets.iter().map(|s| s.name.clone()).collect())
        }
    }

    /// The variables a step's Command gets (name and placeholder), or [`LOST_MESSAGE`].
    pub fn environment(&self) -> Result<Vec<EnvironmentVariable>, &'static str> {
        match self {
            JobSecrets::Held(secrets) => Ok(secrets
                .iter()
                .map(|s| EnvironmentVariable {
                    name: s.name.clone(),
                    value: s.placeholder.clone(),
                })
                .collect()),
            JobSecrets::Lost(_) => Err(LOST_MESSAGE),
        }
    }

    /// The values for `Lease.secrets` (none for a job whose values are lost).
    pub fn for_lease(&self) -> Vec<SecretEnv> {
        match self {
            JobSecrets::Held(secrets) => secrets
                .iter()
                .map(|s| SecretEnv {
                    name: s.name.clone(),
                    value: s.value.clone(),
                })
                .collect(),
            JobSecrets::Lost(_) => Vec::new(),
        }
    }
}

/// `spec` without its secrets' values (names kept, so a restart knows the job had them): what
/// may be stored or kept beside the job.
pub fn strip(spec: &JobSpec) -> JobSpec {
    let mut stripped = spec.clone();
    for secret in &mut stripped.secrets {
        secret.value.clear();
    }
    stripped
}

#[cfg(test)]
mod tests {
    use tessera_cas::meta::MemoryMetaStore;
    use tessera_runners::step::is_secret_placeholder;

    use super::*;

    fn spec_with(secrets: &[(&str, &str)]) -> JobSpec {
        JobSpec {
            secrets: secrets
                .iter()
                .map(|(name, value)| SecretEnv {
                    name: (*name).to_owned(),
                    value: (*value).to_owned(),
                })
                .collect(),
            ..JobSpec::default()
        }
    }

    #[test]
    fn placeholders_change_with_the_value_and_the_key_only() {
        let key = [7u8; 32];
        let a = placeholder(&key, "hunter2");
        assert!(is_secret_placeholder(&a), "{a}");
        assert!(!a.contains("hunter2"));
        assert_eq!(a, placeholder(&key, "hunter2"));
        assert_ne!(a, placeholder(&key, "hunter3"));
        assert_ne!(a, placeholder(&[8u8; 32], "hunter2"));
        // Not the plain hash: without the key it cannot be checked against guesses.
        assert!(!a.ends_with(blake3::hash(b"hunter2").to_hex().as_str()));
    }

    #[test]
    fn stripped_specs_keep_names_and_lose_values() {
        let spec = spec_with(&[("TOKEN", "s3cret"), ("OTHER", "x")]);
        let stripped = strip(&spec);
        assert_eq!(
            stripped
                .secrets
                .iter()
                .map(|s| (s.name.as_str(), s.value.as_str()))
                .collect::<Vec<_>>(),
            [("TOKEN", ""), ("OTHER", "")]
        );
        let bytes = prost::Message::encode_to_vec(&stripped);
        assert!(!bytes.windows(6).any(|w| w == b"s3cret"));
        assert_eq!(
            JobSecrets::restored(&stripped),
            JobSecrets::Lost(vec!["TOKEN".into(), "OTHER".into()])
        );
        assert_eq!(
            JobSecrets::restored(&JobSpec::default()),
            JobSecrets::default()
        );
    }

    #[test]
    fn held_secrets_give_placeholders_to_commands_and_values_to_leases() {
        let key = [1u8; 32];
        let secrets = JobSecrets::held(&spec_with(&[("TOKEN", "s3cret")]), &key);
        let env = secrets.environment().unwrap();
        assert_eq!(env[0].name, "TOKEN");
        assert_eq!(env[0].value, placeholder(&key, "s3cret"));
        assert_eq!(secrets.for_lease()[0].value, "s3cret");
        assert!(!format!("{secrets:?}").contains("s3cret"));
        let lost = JobSecrets::Lost(vec!["TOKEN".into()]);
        assert_eq!(lost.environment(), Err(LOST_MESSAGE));
        assert!(lost.for_lease().is_empty());
    }

    #[tokio::test]
    async fn the_key_is_created_once_and_kept() {
        let meta: Arc<dyn MetadataStore> = Arc::new(MemoryMetaStore::new());
        let first = PlaceholderKey::new(Arc::clone(&meta)).get().await.unwrap();
        // As after a restart: a new holder reads the same key.
        let again = PlaceholderKey::new(Arc::clone(&meta)).get().await.unwrap();
        assert_eq!(first, again);
        assert_ne!(first, [0u8; 32]);
    }
}
