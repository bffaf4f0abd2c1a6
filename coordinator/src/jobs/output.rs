//! A test's output in events: capped at the job's `output_limit`, its head and its tail kept
//! and the cut said, while the whole output goes to the CAS for `tessera logs` (so a test that
//! prints megabytes neither floods every client nor loses its log).
//!
//! Retention: the whole log is a CAS blob like any other, kept until LRU eviction needs its
//! space; the event naming it is kept while the coordinator keeps the job (see
//! `registry.rs`).

use tessera_cas::digest::{Digest, DigestFunction};
use tessera_cas::store::BlobStore;

/// Bytes of output kept in an event when the job does not say.
pub(super) const DEFAULT_LIMIT: usize = 64 * 1024;
/// The smallest limit honoured: enough for a head, a tail and the note between them.
const MIN_LIMIT: usize = 1024;

/// The output limit a job asked for.
pub(super) fn limit(requested: u32) -> usize {
    match usize::try_from(requested) {
        Ok(0) | Err(_) => DEFAULT_LIMIT,
        Ok(n) => n.max(MIN_LIMIT),
    }
}

/// `output` as an event carries it, and the digest of the whole of it when it was cut (stored
/// in `store`; `None` as well when storing failed, in which case the note says so).
pub(super) fn capped(
    output: String,
    limit: usize,
    function: DigestFunction,
    store: &dyn BlobStore,
    test: &str,
) -> (String, Option<Digest>) {
    if output.len() <= limit {
        return (output, None);
    }
    let digest = function.digest_of(output.as_bytes());
    let stored = match store.write(&digest, output.as_bytes()) {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(%error, "failed to keep a test's whole output");
            false
        }
    };
    let where_ = if stored {
        format!("`tessera logs JOB '{test}'` shows all of it")
    } else {
        "the whole output could not be kept".to_owned()
    };
    (cut(&output, limit, &where_), stored.then_some(digest))
}

/// The first quarter and the last three quarters of `limit` bytes of `text`, at character
/// boundaries, with a line between them saying how much was cut and where the rest is.
pub(super) fn cut(text: &str, limit: usize, where_: &str) -> String {
    if text.len() <= limit {
        return text.to_owned();
    }
    let mut head_end = limit / 4;
    while !text.is_char_boundary(head_end) {
        head_end -= 1;
    }
    let mut tail_start = text.len() - (limit - limit / 4);
    while !text.is_char_boundary(tail_start) {
        tail_start += 1;
    }
    let cut = tail_start - head_end;
    format!(
        "{}\n[... {cut} bytes cut; {where_} ...]\n{}",
        &text[..head_end],
        &text[tail_start..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_cas::store::MemoryStore;

    #[test]
    fn short_output_is_kept_whole_and_not_stored() {
        let store = MemoryStore::new();
        let (text, digest) = capped("ok\n".into(), 1024, DigestFunction::Blake3, &store, "t");
        assert_eq!((text.as_str(), digest), ("ok\n", None));
    }

    #[test]
    fn long_output_keeps_head_and_tail_and_the_whole_goes_to_the_cas() {
        let store = MemoryStore::new();
        let output: String = (0..2000).map(|i| format!("line {i}\n")).collect();
        let (text, digest) = capped(
            output.clone(),
            2048,
            DigestFunction::Blake3,
            &store,
            "suite t",
        );
        assert!(text.starts_with("line 0\n"), "{text}");
        assert!(text.ends_with("line 1999\n"), "{text}");
        assert!(text.len() < 2048 + 200, "{}", text.len());
        assert!(
            text.contains("bytes cut; `tessera logs JOB 'suite t'`"),
            "{text}"
        );
        let digest = digest.expect("stored");
        assert_eq!(store.read(&digest).unwrap().unwrap(), output.as_bytes());
    }

    #[test]
    fn cuts_respect_character_boundaries() {
        let text = "é".repeat(2000);
        let cut = cut(&text, 1001, "x");
        assert!(cut.starts_with('é') && cut.ends_with('é'));
        assert_eq!(limit(0), DEFAULT_LIMIT);
        assert_eq!(limit(10), MIN_LIMIT);
        assert_eq!(limit(4096), 4096);
    }
}
