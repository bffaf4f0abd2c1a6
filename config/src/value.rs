//! Parsers for the values settings are written in, the same for the file, the environment and
//! the flags: anything with `FromStr`, durations ("30s", humantime), booleans, comma lists.
//!
//! Each returns a [`BadValue`], which the caller ties to its source. [`parse_duration`] is also
//! the clap `value_parser` of every duration flag.

use std::fmt::Display;
use std::str::FromStr;
use std::time::Duration;

use crate::{BadValue, ConfigError};

/// How a duration should be written, appended to every duration error.
pub const DURATION_HINT: &str = "write durations like \"30s\", \"5m\", \"250ms\"";

/// Parses `text` with its `FromStr`, keeping the parser's message as the reason.
pub fn parse<T>(text: &str) -> Result<T, BadValue>
where
    T: FromStr,
    T::Err: Display,
{
    text.parse().map_err(|e| BadValue::new(text, e))
}

/// Parses a duration such as "30s", "10m" or "250ms".
pub fn parse_duration(text: &str) -> Result<Duration, BadValue> {
    humantime::parse_duration(text)
        .map_err(|e| BadValue::new(text, format!("{e} ({DURATION_HINT})")))
}

/// Parses a duration written under file key `key`.
pub fn file_duration(key: &str, text: &str) -> Result<Duration, ConfigError> {
    parse_duration(text).map_err(|bad| bad.for_key(key))
}

/// Parses a boolean: `1`/`true`/`yes`/`on` or `0`/`false`/`no`/`off`.
pub fn parse_bool(text: &str) -> Result<bool, BadValue> {
    match text {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(BadValue::new(text, "expected true or false")),
    }
}

/// Splits a comma list (`"a, b,,c"`) into its trimmed, non-empty items.
pub fn parse_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_say_how_to_write_them() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        let err = parse_duration("soon").unwrap_err();
        assert_eq!(err.value(), "soon");
        assert!(err.to_string().contains("\"30s\""), "{err}");
    }

    #[test]
    fn values_keep_the_parser_message() {
        assert_eq!(parse::<u32>("7"), Ok(7));
        let err = parse::<u32>("lots").unwrap_err();
        assert_eq!(err.reason(), "invalid digit found in string");
        assert_eq!(parse_bool("on"), Ok(true));
        assert_eq!(parse_bool("0"), Ok(false));
        assert!(parse_bool("maybe").is_err());
        assert_eq!(parse_list(" a, b,,c ,"), ["a", "b", "c"]);
    }
}
