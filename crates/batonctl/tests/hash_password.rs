//! `batonctl hash-password` prints an argon2id PHC string for the password on stdin.

use std::io::Write;
use std::process::{Command, Stdio};

#[test]
fn hash_password_prints_argon2id() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_batonctl"))
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hunter2\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).unwrap();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
}
