//! The command line refuses what it must (and, being an integration test, makes cargo
//! build the binary for the workspace's chaos test).

use std::process::Command;

fn chaos() -> Command {
    Command::new(env!("CARGO_BIN_EXE_baton-chaos"))
}

#[test]
fn refuses_targets_off_loopback() {
    let out = chaos()
        .args(["--target", "192.0.2.1:25"])
        .output()
        .expect("run baton-chaos");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("loopback"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn help_names_the_report() {
    let out = chaos().arg("--help").output().expect("run baton-chaos");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("lost"));
}
