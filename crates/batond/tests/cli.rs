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
fn check_config_lists_every_mistake_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "").unwrap();
    let path = dir.path().join("mistakes.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[node]
id = "one"                          # a type error
data_dir = "{data_dir}"             # a file, not a directory

[cluster]
listen = "0.0.0.0:7301"             # off loopback, no peer TLS, not insecure
advertise = "10.0.0.1:7301"
bootstrap = true
join = ["${{BATON_NOT_SET_IN_TESTS}}:7301"]   # an unset environment variable

[smtp]
hostname = "relay.example.test"
max_mesage_size = 1000              # an unknown key
max_recipients = 0                  # a bad value

[[smtp.listener]]
address = "0.0.0.0:2525"
relay_networks = ["0.0.0.0/0"]      # an open relay

[[smtp.listener]]
address = "127.0.0.1:2525"          # the same port as 0.0.0.0:2525
"#,
            data_dir = file.display()
        ),
    )
    .unwrap();
    let out = batond().arg("check-config").arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for (key, says) in [
        ("node.id", "(line 3)"),
        ("node.data_dir", "not a directory"),
        ("cluster.listen", "cluster.insecure"),
        (
            "config",
            "line 10: environment variable BATON_NOT_SET_IN_TESTS is not set",
        ),
        ("smtp.max_mesage_size", "(line 14)"),
        ("smtp.max_recipients", "at least 1"),
        ("smtp.listener[0].relay_networks[0]", "open relay"),
        ("smtp.listener[1].address", "0.0.0.0:2525"),
    ] {
        assert!(
            err.lines()
                .any(|l| l.trim_start().starts_with(&format!("{key}: ")) && l.contains(says)),
            "{key} ({says}) not in:\n{err}"
        );
    }
    assert_eq!(
        err.lines().count(),
        9,
        "a heading and one line each:\n{err}"
    );
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

#[test]
fn dev_with_a_file_for_data_dir_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, "").unwrap();
    let out = batond()
        .arg("--dev")
        .arg("--data-dir")
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("node.data_dir") && err.contains("not a directory"),
        "{err}"
    );
}
