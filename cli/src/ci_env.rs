//! Job labels read from the CI system's environment: being written (see `labels`).

use std::collections::BTreeMap;

/// The labels the CI system's environment gives a job (`ci`, `branch`, `commit`,
/// `pipeline`, `pipeline_url`); empty outside CI.
pub fn labels(env: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let _ = env;
    BTreeMap::new()
}
