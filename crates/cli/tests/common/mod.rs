//! Helpers shared by the CLI tests: the built binary, and a check that a command fails cleanly.

#![allow(dead_code)]

use std::process::Command;

/// The `frugal` binary under test.
pub fn frugal() -> Command {
    Command::new(env!("CARGO_BIN_EXE_frugal"))
}

/// Runs `frugal ARGS`, which must fail without a panic, with every needle in its stderr.
pub fn fails(args: &[&str], needles: &[&str]) {
    let r = frugal().args(args).output().unwrap();
    let e = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success(), "succeeded: {args:?}");
    assert!(!e.contains("panicked"), "{e}");
    for n in needles {
        assert!(e.contains(n), "'{n}' not in {e}");
    }
}

/// Runs `frugal ARGS`, which must succeed, and parses its stdout as JSON.
pub fn json_of(args: &[&str]) -> serde_json::Value {
    let r = frugal().args(args).output().unwrap();
    assert!(
        r.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    serde_json::from_slice(&r.stdout).unwrap()
}
