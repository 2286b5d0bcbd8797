//! The command line itself; its use against a cluster is in tests/admin.rs.

use std::process::Command;

fn batonctl() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_batonctl"));
    c.env_remove("BATON_TOKEN").env_remove("BATON_SERVER");
    c
}

#[test]
fn help_lists_the_contract_commands() {
    let out = batonctl().arg("--help").output().expect("run batonctl");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in [
        "status",
        "queue",
        "message",
        "domain",
        "suppression",
        "node",
        "events",
        "hash-password",
    ] {
        assert!(text.contains(cmd), "{cmd} missing from:\n{text}");
    }
}

#[test]
fn usage_errors_exit_2() {
    let out = batonctl()
        .args(["node", "add", "not-a-number", "x:1"])
        .output()
        .expect("run batonctl");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn bad_enum_values_are_usage_errors_listing_the_valid_ones() {
    for (args, valid) in [
        (
            &["messages", "--state", "bogus"][..],
            "queued, deferred, held",
        ),
        (
            &["events", "--kind", "bogus"],
            "received, delivered, deferred",
        ),
    ] {
        // Refused before any server is asked (none listens at this address).
        let out = batonctl()
            .args(["--server", "http://127.0.0.1:9"])
            .args(args)
            .output()
            .expect("run batonctl");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("invalid value 'bogus'"), "{stderr}");
        assert!(stderr.contains(valid), "{stderr}");
    }
}
