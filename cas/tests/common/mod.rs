//! Helpers shared by the crash tests.

use std::io::{BufRead, BufReader};
use std::process::Child;
use std::sync::mpsc::{self, Receiver};
use std::thread::JoinHandle;

/// Complete lines the child prints, as they come; a line cut off by the kill is dropped (it
/// was never fully acknowledged).
pub(crate) fn read_lines(child: &mut Child) -> (Receiver<String>, JoinHandle<()>) {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut stdout = BufReader::new(stdout);
        let mut line = Vec::new();
        loop {
            line.clear();
            match stdout.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line.last() != Some(&b'\n') => return,
                Ok(_) => {
                    line.pop();
                    let _ = tx.send(String::from_utf8_lossy(&line).into_owned());
                }
            }
        }
    });
    (rx, reader)
}
