//! A tiny library whose tests cover what a test runner must tell apart: fast and slow passes, a
//! failure with output, an ignored test, a test whose name is a prefix of another's, and a flaky
//! test that fails on its first run and passes on the next.
//!
//! The flaky test keeps its state in the directory named by `TESSERA_EXAMPLE_STATE_DIR`: the
//! first run of it in a fresh directory fails, every later run passes. Without the variable it
//! passes.

use std::path::PathBuf;

/// Adds two numbers.
pub fn add(a: u64, b: u64) -> u64 {
    a + b
}

/// Adds many numbers.
pub fn add_many(xs: &[u64]) -> u64 {
    xs.iter().sum()
}

/// Returns false the first time it is called for `name` in the state directory, true afterwards
/// (and true when there is no state directory).
pub fn seen_before(name: &str) -> bool {
    let Some(dir) = std::env::var_os("TESSERA_EXAMPLE_STATE_DIR") else {
        return true;
    };
    let marker = PathBuf::from(dir).join(format!("rust-{name}"));
    if marker.exists() {
        return true;
    }
    std::fs::write(&marker, b"ran once\n").expect("write flaky marker");
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn add_small() {
        println!("adding 2 and 2");
        assert_eq!(add(2, 2), 4);
    }

    // Its name starts with another test's name: runners must select tests exactly.
    #[test]
    fn add_small_many() {
        assert_eq!(add_many(&[1, 2, 3]), 6);
    }

    #[test]
    fn slow_sum() {
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(add_many(&[10, 20]), 30);
    }

    #[test]
    fn wrong_answer() {
        println!("about to compare");
        assert_eq!(add(2, 2), 5, "two and two");
    }

    #[test]
    #[ignore = "shows how runners report ignored tests"]
    fn ignored_test() {}

    #[test]
    fn flaky_once() {
        assert!(seen_before("flaky_once"), "first run fails on purpose");
    }
}
