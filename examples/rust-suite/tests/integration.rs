//! Integration tests: a second test binary with a test name that also exists in the library.

use std::time::Duration;

#[test]
fn add_small() {
    assert_eq!(rust_suite::add(1, 1), 2);
}

#[test]
fn slow_integration() {
    std::thread::sleep(Duration::from_millis(250));
    eprintln!("slept");
    assert_eq!(rust_suite::add_many(&[]), 0);
}

#[test]
fn panics_with_message() {
    panic!("integration failure");
}
