//! `batond check-config`: exit 0 for a valid file, 2 naming every bad key.

use std::process::Command;

fn batond() -> Command {
    Command::new(env!("CARGO_BIN_EXE_batond"))
}

#[test]
fn check_config_accepts_a_valid_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.toml");
    std::fs::write(
        &path,
        "[node]\nid = 3\ndata_dir = \"/tmp/x\"\n[[smtp.listener]]\naddress = \"127.0.0.1:2525\"\n",
    )
    .unwrap();
    let out = batond().arg("check-config").arg(&path).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_config_names_every_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[node]\nid = 0\n[[smtp.listener]]\naddress = \"127.0.0.1:2525\"\nmode = \"submission\"\n[delivery]\nsmarthost = \"nohostport\"\n",
    )
    .unwrap();
    let out = batond().arg("check-config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in ["node.id", "smtp.listener[0].mode", "delivery.smarthost"] {
        assert!(err.contains(key), "{key} not named in: {err}");
    }
}

#[test]
fn unknown_key_and_missing_file_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo.toml");
    std::fs::write(&path, "[smtp]\nhostnme = \"x\"\n").unwrap();
    let out = batond().arg("--config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("smtp.hostnme"));
    let out = batond()
        .arg("--config")
        .arg(dir.path().join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn check_config_stops_at_a_syntax_error_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    std::fs::write(&path, "[node]\nid = 1\n[smtp\nhostname = 5\n").unwrap();
    let out = batond().arg("check-config").arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("line 3") && err.contains("nothing after it"),
        "{err}"
    );
}
