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

#[test]
fn kill_after_messages_replaces_the_clock() {
    let out = chaos()
        .args(["--kill-after-messages", "500", "--kill-every", "2s"])
        .output()
        .expect("run baton-chaos");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot be used with"), "{err}");
}

#[test]
fn kill_after_messages_must_leave_load_after_the_last_kill() {
    // 4 * 600 > 2000: refused before anything starts.
    let out = chaos()
        .args([
            "--messages",
            "2000",
            "--kills",
            "3",
            "--kill-after-messages",
            "600",
        ])
        .output()
        .expect("run baton-chaos");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("2400") && err.contains("--messages"), "{err}");
    // Fewer than 4 messages per connection between kills: refused too.
    let out = chaos()
        .args(["--connections", "10", "--kill-after-messages", "39"])
        .output()
        .expect("run baton-chaos");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--connections"), "{err}");
}
