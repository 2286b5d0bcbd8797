//! Unit tests of the configuration: parsing, every problem collected, the checks.

use super::*;

#[test]
fn dev_config_is_valid() {
    Config::dev(None).validate().unwrap();
}

#[test]
fn unknown_key_is_named() {
    let e = Config::parse("[smtp]\nhostname = \"x\"\nmax_mesage_size = 5\n").unwrap_err();
    assert_eq!(e.0[0].key, "smtp.max_mesage_size");
    assert!(e.0[0].reason.contains("max_mesage_size"), "{e}");
    let e = Config::parse("[[smtp.listener]]\naddress = \"127.0.0.1:25\"\nmode = \"bogus\"\n")
        .unwrap_err();
    assert_eq!(e.0[0].key, "smtp.listener[0].mode", "{e}");
}

#[test]
fn bad_values_are_all_reported() {
    let c = Config::parse(
        r#"
[node]
id = 0
[[smtp.listener]]
address = "127.0.0.1:2525"
mode = "implicit-tls"
tls_key = "/nonexistent.key"
[delivery]
retry_intervals = []
[admin]
listen = "0.0.0.0:7401"
tls_cert = "/nonexistent.crt"
[events]
retention_count = 0
webhook_url = "ftp://example.test/"
webhook_batch = 0
"#,
    )
    .unwrap();
    let e = c.validate().unwrap_err();
    let keys: Vec<_> = e.0.iter().map(|e| e.key.as_str()).collect();
    for k in [
        "node.id",
        "smtp.listener[0].tls_cert",
        "smtp.listener[0].tls_key",
        "delivery.retry_intervals",
        "admin.token",
        "admin.tls_cert",
        "admin.tls_key",
        "events.retention_count",
        "events.webhook_url",
        "events.webhook_batch",
    ] {
        assert!(keys.contains(&k), "{k} missing in {keys:?}");
    }
}

#[test]
fn durations_parse() {
    let c = Config::parse("[delivery]\nretry_intervals = [\"30s\", \"2m\"]\nmax_age = \"1h\"\n")
        .unwrap();
    assert_eq!(
        c.delivery.retry_intervals,
        vec![Duration::from_secs(30), Duration::from_secs(120)]
    );
    assert_eq!(c.delivery.max_age, Duration::from_secs(3600));
}

#[test]
fn byte_rates_parse() {
    assert_eq!(parse_byte_rate("1KiB/s"), Ok(1024));
    assert_eq!(parse_byte_rate("500B/s"), Ok(500));
    assert_eq!(parse_byte_rate("2 MiB/s"), Ok(2 * 1024 * 1024));
    assert_eq!(parse_byte_rate("0"), Ok(0));
    assert!(parse_byte_rate("fast").is_err());
    assert!(parse_byte_rate("1KiB").is_err());
    let c = Config::parse("[smtp]\ndata_min_rate = \"10kB/s\"\n").unwrap();
    assert_eq!(c.smtp.data_min_rate, 10_000);
}

#[test]
fn proxy_protocol_needs_trusted_peers() {
    let mut c = Config::dev(None);
    c.smtp.listeners[0].proxy_protocol = true;
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("smtp.listener[0].proxy_trusted"), "{e}");
    c.smtp.listeners[0].proxy_trusted = vec!["10.0.0.0/8".parse().unwrap()];
    c.validate().unwrap();
}

fn keys(e: &ConfigErrors) -> Vec<&str> {
    e.0.iter().map(|e| e.key.as_str()).collect()
}

/// A valid base (the dev config) with `extra` appended to it.
fn dev_with(extra: &str) -> String {
    format!("{DEV_CONFIG}\n{extra}")
}

#[test]
fn every_type_error_and_unknown_key_is_reported_with_its_line() {
    let text = "\
[node]
id = \"one\"
[smtp]
hostname = \"x\"
max_mesage_size = 5
max_recipients = -1
data_min_rate = \"fast\"
[[smtp.listener]]
address = \"127.0.0.1:25\"
mode = \"bogus\"
[delivery]
mx_port = 70000
retry_intervals = [\"1m\", \"soon\"]
colour = \"blue\"
";
    let e = Config::parse(text).unwrap_err();
    let expect = [
        ("node.id", 2),
        ("smtp.max_mesage_size", 5),
        ("smtp.max_recipients", 6),
        ("smtp.data_min_rate", 7),
        ("smtp.listener[0].mode", 10),
        ("delivery.mx_port", 12),
        ("delivery.retry_intervals[1]", 13),
        ("delivery.colour", 14),
    ];
    assert_eq!(e.0.len(), expect.len(), "{e}");
    for (key, line) in expect {
        let found = e.0.iter().find(|p| p.key == key);
        let found = found.unwrap_or_else(|| panic!("{key} missing in:\n{e}"));
        assert!(
            found.reason.ends_with(&format!("(line {line})")),
            "{key}: {}",
            found.reason
        );
    }
}

#[test]
fn a_syntax_error_is_one_error_with_its_line() {
    let e = Config::parse("[node]\nid = 1\n[smtp\nhostname = 5\n").unwrap_err();
    assert_eq!(keys(&e), ["config"], "{e}");
    assert!(e.0[0].reason.contains("line 3"), "{e}");
    assert!(e.0[0].reason.contains("nothing after it"), "{e}");
    assert!(!e.0[0].reason.contains('\n'), "one line: {e}");
}

#[test]
fn removed_elements_keep_their_indices_in_the_file() {
    // Each bad element is removed before the next try: the ones after it are still
    // named by their place in the file.
    let text = "\
[[smtp.listener]]
mode = \"relay\"
[[smtp.listener]]
address = \"127.0.0.1:2526\"
relay_networks = [\"nope\", \"10.0.0.0/8\", \"worse\"]
[[smtp.listener]]
address = \"127.0.0.1:2527\"
proxy_protocol = \"yes\"
[[smtp.listener]]
address = \"127.0.0.1:2528\"
proxy_protocol = true
[node]
data_dir = \"./baton-data\"
";
    let e = Config::check(text).unwrap_err();
    assert_eq!(
        keys(&e),
        [
            "smtp.listener[0].address",
            "smtp.listener[1].relay_networks[0]",
            "smtp.listener[1].relay_networks[2]",
            "smtp.listener[2].proxy_protocol",
            // From validate(), on the result without listener 0.
            "smtp.listener[3].proxy_trusted",
        ],
        "{e}"
    );
    assert!(e.0[0].reason.starts_with("is required (line 1)"), "{e}");
}

#[test]
fn a_bad_required_key_is_reported_once() {
    // The bad address is removed, then its listener as it lacks one: one error, and no
    // "at least one listener" for the listener removed.
    let e = Config::check(
        "[[smtp.listener]]\naddress = \"127.0.0.1\"\n[[smtp.user]]\nname = 7\npassword_hash = \"x\"\n\
         [node]\ndata_dir = \"./baton-data\"\n",
    )
    .unwrap_err();
    assert_eq!(
        keys(&e),
        ["smtp.listener[0].address", "smtp.user[0].name"],
        "{e}"
    );
}

#[test]
fn paths_translate_back_over_removals() {
    use parse::{Seg, display, split};
    let path = split("smtp.listener[3].relay_networks[0]");
    assert_eq!(
        path,
        [
            Seg::Key("smtp".into()),
            Seg::Key("listener".into()),
            Seg::Index(3),
            Seg::Key("relay_networks".into()),
            Seg::Index(0),
        ]
    );
    assert_eq!(display(&path), "smtp.listener[3].relay_networks[0]");
    assert_eq!(display(&split("config")), "config");
    assert_eq!(display(&[]), "config");
}

#[test]
fn check_adds_validate_problems_to_parse_errors() {
    let e = Config::check(&dev_with(
        "[events]\nretention_count = 0\nwebhook_batch = \"x\"\n",
    ))
    .unwrap_err();
    assert_eq!(
        keys(&e),
        ["events.webhook_batch", "events.retention_count"],
        "{e}"
    );
    Config::check(DEV_CONFIG).unwrap();
}

#[test]
fn listeners_on_one_port_collide_with_a_wildcard() {
    let mut c = Config::dev(None);
    let listener = |addr: &str| ListenerConfig {
        address: addr.parse().unwrap(),
        ..c.smtp.listeners[0].clone()
    };
    let more = vec![
        listener("127.0.0.1:2525"), // the same as [0]
        listener("0.0.0.0:2526"),
        listener("127.0.0.2:2526"), // under 0.0.0.0:2526
        listener("[::1]:2527"),
        listener("0.0.0.0:2527"), // IPv4 only: no overlap with [::1]
        listener("[::]:2528"),
        listener("10.1.2.3:2528"),  // [::] is dual-stack
        listener("127.0.0.1:7401"), // admin.listen
        listener("127.0.0.1:0"),
        listener("127.0.0.1:0"), // any free port: no collision
    ];
    c.smtp.listeners.extend(more);
    let e = c.validate().unwrap_err();
    assert_eq!(
        keys(&e),
        [
            "smtp.listener[1].address",
            "smtp.listener[3].address",
            "smtp.listener[7].address",
            "admin.listen",
        ],
        "{e}"
    );
    assert!(e.0[0].reason.contains("is smtp.listener[0].address"), "{e}");
    assert!(
        e.0[1].reason.contains("overlaps smtp.listener[2].address"),
        "{e}"
    );
    assert!(e.0[3].reason.contains("smtp.listener[8].address"), "{e}");
}

#[test]
fn relaying_for_everyone_is_refused() {
    let mut c = Config::dev(None);
    c.smtp.listeners[0].relay_networks = vec![
        "10.0.0.0/8".parse().unwrap(),
        "0.0.0.0/0".parse().unwrap(),
        "::/0".parse().unwrap(),
    ];
    let e = c.validate().unwrap_err();
    assert_eq!(
        keys(&e),
        [
            "smtp.listener[0].relay_networks[1]",
            "smtp.listener[0].relay_networks[2]"
        ],
        "{e}"
    );
    assert!(e.0[0].reason.contains("open relay"), "{e}");
}

#[test]
fn a_cluster_port_off_loopback_needs_insecure() {
    let mut c = Config::dev(None);
    c.cluster.listen = "0.0.0.0:7301".parse().unwrap();
    let e = c.validate().unwrap_err();
    assert_eq!(keys(&e), ["cluster.listen"], "{e}");
    assert!(e.0[0].reason.contains("cluster.insecure = true"), "{e}");
    c.cluster.insecure = true;
    c.validate().unwrap();
    let c = Config::parse("[cluster]\ninsecure = true\n").unwrap();
    assert!(c.cluster.insecure);
    assert!(
        c.cluster.listen.ip().is_loopback(),
        "the default listens on loopback"
    );
}

#[test]
fn data_dir_must_be_a_writable_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("file");
    std::fs::write(&file, "").unwrap();
    let mut c = Config::dev(None);
    for (dir, ok) in [
        (tmp.path().to_path_buf(), true),
        (tmp.path().join("new/deeper"), true),
        (PathBuf::from("relative-data"), true),
        (file.clone(), false),
        (file.join("below"), false),
        (PathBuf::new(), false),
    ] {
        c.node.data_dir = dir.clone();
        let r = c.validate();
        assert_eq!(r.is_ok(), ok, "{}: {r:?}", dir.display());
        if let Err(e) = r {
            assert_eq!(keys(&e), ["node.data_dir"], "{e}");
        }
    }
    assert!(
        !tmp.path().join("new").exists(),
        "the check creates nothing"
    );
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        1,
        "probe removed"
    );
}
