//! Job labels (`JobSpec.labels`, `tessera run --label KEY=VALUE`): the rules every label
//! follows, checked by the client before it submits and by the coordinator when it accepts.

use std::collections::HashMap;

/// Most labels a job may have.
pub const MAX_LABELS: usize = 64;
/// Longest label key.
pub const MAX_LABEL_KEY: usize = 63;
/// Longest label value, in bytes.
pub const MAX_LABEL_VALUE: usize = 1024;
/// The label naming a job in history and notifications.
pub const NAME: &str = "name";

/// Why a label is refused; `None` when it is good. Keys: 1 to [`MAX_LABEL_KEY`] of a-z, 0-9,
/// `_`, `-`, `.`, starting with a letter; values: at most [`MAX_LABEL_VALUE`] bytes, no
/// control characters.
pub fn label_problem(key: &str, value: &str) -> Option<String> {
    let key_ok = key.len() <= MAX_LABEL_KEY
        && key.starts_with(|c: char| c.is_ascii_lowercase())
        && key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-.".contains(c));
    if !key_ok {
        return Some(format!(
            "label key \"{}\" must be 1 to {MAX_LABEL_KEY} of a-z, 0-9, `_`, `-`, `.`, \
             starting with a letter",
            key.escape_debug()
        ));
    }
    if value.len() > MAX_LABEL_VALUE {
        return Some(format!(
            "label \"{key}\" has a {}-byte value; at most {MAX_LABEL_VALUE}",
            value.len()
        ));
    }
    if value.chars().any(char::is_control) {
        return Some(format!("label \"{key}\" holds a control character"));
    }
    None
}

/// Checks a job's labels; sets `name` to `title` (cut to fit) when the client gave none.
pub(super) fn check(labels: &mut HashMap<String, String>, title: &str) -> Result<(), String> {
    if labels.len() > MAX_LABELS {
        return Err(format!(
            "{} labels; a job may have at most {MAX_LABELS}",
            labels.len()
        ));
    }
    let mut keys: Vec<&String> = labels.keys().collect();
    keys.sort();
    for key in keys {
        if let Some(problem) = label_problem(key, &labels[key]) {
            return Err(problem);
        }
    }
    if !labels.contains_key(NAME) {
        labels.insert(NAME.to_owned(), fit(title));
    }
    Ok(())
}

/// `text` without control characters, cut to [`MAX_LABEL_VALUE`] bytes on a character
/// boundary.
pub fn fit(text: &str) -> String {
    let mut value: String = text.trim().chars().filter(|c| !c.is_control()).collect();
    cut_to_fit(&mut value);
    value
}

/// Cuts `value` to at most [`MAX_LABEL_VALUE`] bytes, on a character boundary.
pub fn cut_to_fit(value: &mut String) {
    if value.len() > MAX_LABEL_VALUE {
        let mut cut = MAX_LABEL_VALUE;
        while !value.is_char_boundary(cut) {
            cut -= 1;
        }
        value.truncate(cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_follow_the_rules() {
        assert_eq!(label_problem("branch", "main"), None);
        assert_eq!(label_problem("pipeline_url", "https://x/y?z=1"), None);
        assert_eq!(label_problem("a.b-c_9", ""), None);
        for key in ["", "Branch", "9lives", "has space", "é", &"k".repeat(64)] {
            assert!(label_problem(key, "v").is_some(), "{key:?}");
        }
        assert!(label_problem("k", &"v".repeat(1025)).is_some());
        assert!(label_problem("k", "line\nbreak").is_some());
    }

    #[test]
    fn a_job_without_a_name_is_named_by_its_title() {
        let mut labels = HashMap::from([("team".to_owned(), "infra".to_owned())]);
        check(&mut labels, "tessera run -- cargo test").unwrap();
        assert_eq!(labels[NAME], "tessera run -- cargo test");
        let mut named = HashMap::from([(NAME.to_owned(), "nightly".to_owned())]);
        check(&mut named, "ignored").unwrap();
        assert_eq!(named[NAME], "nightly");
        let mut bad = HashMap::from([("Bad".to_owned(), "x".to_owned())]);
        assert!(check(&mut bad, "t").is_err());
        let mut many: HashMap<String, String> =
            (0..65).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(check(&mut many, "t").is_err());
        assert_eq!(fit(&"é".repeat(600)).len(), 1024);
    }
}
