//! DKIM signing end to end: a real batond signs at enqueue with keys made by `openssl`
//! (RSA PKCS#8 and PKCS#1, Ed25519), relays to a baton-sink through the MX in a dnsmasq
//! zone that also publishes the public keys, and dkimpy (tests/python/dkim_verify.py)
//! verifies the delivered bytes, looking the keys up in that zone. Also: a key swap by
//! SIGHUP, keys restricted to tenants, `require_dkim_alignment = "reject"`, and the keys
//! check-config refuses.

use base64::Engine;
use baton_tests::*;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// Runs `openssl` with `args`, which must succeed.
fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl (apt-get install openssl, or run .ci/run)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A private key in `dir/name.pem` of `kind`: `rsa2048` (PKCS#8), `rsa2048-pkcs1`,
/// `rsa1024`, `ed25519`; with the `p=` value of its DNS record.
fn make_key(dir: &Path, name: &str, kind: &str) -> (PathBuf, String) {
    let path = dir.join(format!("{name}.pem"));
    let p = path.to_str().expect("utf-8 path");
    match kind {
        "rsa2048" => openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            p,
        ]),
        "rsa2048-pkcs1" => openssl(&["genrsa", "-traditional", "-out", p, "2048"]),
        "rsa1024" => openssl(&["genrsa", "-out", p, "1024"]),
        "ed25519" => openssl(&["genpkey", "-algorithm", "ed25519", "-out", p]),
        other => panic!("no key kind {other}"),
    };
    let spki = openssl(&["pkey", "-in", p, "-pubout", "-outform", "DER"]);
    // RFC 8463: an Ed25519 record holds the bare 32-byte key, RSA the whole SPKI.
    let public = if kind == "ed25519" {
        spki[spki.len() - 32..].to_vec()
    } else {
        spki
    };
    let b64 = base64::engine::general_purpose::STANDARD.encode(public);
    (path, b64)
}

/// The TXT record of a key, split in strings of at most 250 bytes.
fn key_record(zone: Zone, name: &str, k: &str, p: &str) -> Zone {
    let text = format!("v=DKIM1; k={k}; p={p}");
    let strings: Vec<String> = text
        .as_bytes()
        .chunks(250)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    zone.txt_strings(name, &strings)
}

/// dkimpy's verdict on each signature of `message`.
fn verify(message: &str, dns: SocketAddr) -> Vec<Value> {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("message.eml");
    std::fs::write(&file, message).expect("write message");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/dkim_verify.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(&file)
        .arg(dns.to_string())
        .output()
        .expect("python3 (run .ci/run to install dkimpy, dnspython and pynacl)");
    assert!(
        out.status.success(),
        "dkim_verify.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect()
}

/// `(d, s, ok)` of each signature.
fn verdicts(results: &[Value]) -> Vec<(String, String, bool)> {
    let mut v: Vec<_> = results
        .iter()
        .map(|r| {
            (
                r["d"].as_str().unwrap_or("").to_string(),
                r["s"].as_str().unwrap_or("").to_string(),
                r["ok"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    v.sort();
    v
}

fn message(from: &str, to: &str, subject: &str) -> String {
    format!(
        "From: Sender <{from}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n\
         Date: Mon, 30 Nov 2026 12:00:00 +0000\r\nMessage-ID: <{subject}@test>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
         List-Unsubscribe: <https://u.src.test/u/1>\r\n\
         List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\r\n\
         Hello,\r\n\r\n.leading dot and trailing space \r\nbye\r\n"
    )
}

/// The sink's message with `subject`.
fn delivered(sink: &Sink, subject: &str) -> SinkMessage {
    wait_until(&format!("{subject} at the sink"), WAIT, || {
        sink.messages()
            .into_iter()
            .find(|m| m.header("Subject").as_deref() == Some(subject))
    })
}

fn session(node: &Node, user: &str, password: &str) -> Smtp {
    let mut c = node.smtp();
    c.hello();
    let plain = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
    c.cmd(&format!("AUTH PLAIN {plain}"), "235");
    c
}

#[test]
fn signatures_verify_with_dkimpy_and_follow_keys_tenants_and_reloads() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (rsa, rsa_p) = make_key(keys.path(), "rsa1", "rsa2048");
    let (ed, ed_p) = make_key(keys.path(), "ed1", "ed25519");
    let (pkcs1, pkcs1_p) = make_key(keys.path(), "pk1", "rsa2048-pkcs1");
    let (rsa2, rsa2_p) = make_key(keys.path(), "rsa2", "rsa2048");
    let (alice_key, alice_p) = make_key(keys.path(), "alice", "ed25519");

    let sink_addr: SocketAddr = "127.0.0.41:2525".parse().expect("addr");
    let sink = Sink::start(sink_addr);
    let mut zone = Zone::new()
        .mx("dst.test", 10, "mx.dst.test")
        .a("mx.dst.test", "127.0.0.41");
    zone = key_record(zone, "rsa1._domainkey.src.test", "rsa", &rsa_p);
    zone = key_record(zone, "ed1._domainkey.src.test", "ed25519", &ed_p);
    zone = key_record(zone, "pk1._domainkey.pkcs1.test", "rsa", &pkcs1_p);
    zone = key_record(zone, "rsa2._domainkey.src.test", "rsa", &rsa2_p);
    zone = key_record(zone, "a1._domainkey.alice.test", "ed25519", &alice_p);
    let dns = Dns::start(&zone);

    let dkim = |selector: &str, key: &Path| {
        format!(
            "[[dkim]]\ndomain = \"src.test\"\nselector = \"{selector}\"\nkey_file = \"{}\"\n",
            key.display()
        )
    };
    let fixed = format!(
        "[[dkim]]\ndomain = \"src.test\"\nselector = \"ed1\"\nkey_file = \"{}\"\nalgorithm = \"ed25519-sha256\"\n\
         [[dkim]]\ndomain = \"pkcs1.test\"\nselector = \"pk1\"\nkey_file = \"{}\"\n\
         [[dkim]]\ndomain = \"alice.test\"\nselector = \"a1\"\nkey_file = \"{}\"\nalgorithm = \"ed25519-sha256\"\ntenants = [\"alice\"]\n\
         [[smtp.user]]\nname = \"alice\"\npassword_hash = \"{}\"\nallowed_from = [\"alice.test\"]\n\
         [[smtp.user]]\nname = \"bob\"\npassword_hash = \"{}\"\n",
        ed.display(),
        pkcs1.display(),
        alice_key.display(),
        password_hash("pw-alice"),
        password_hash("pw-bob"),
    );
    let node = Node::start(NodeOptions {
        dns: Some(dns.addr),
        mx_port: 2525,
        // With bounce handling on, X-Baton-Ref is added before signing: covered too.
        tail: format!(
            "{}{fixed}[bounces]\ndomain = \"bounces.relay.test\"\n",
            dkim("rsa1", &rsa)
        ),
        ..Default::default()
    });

    wait_until("the bounce key", WAIT, || {
        node.log().contains("bounce token key made").then_some(())
    });

    // RSA (PKCS#8) and Ed25519 for one domain: two signatures, both verify; From is
    // oversigned and the one-click unsubscribe fields are covered.
    let mut c = node.smtp();
    c.hello();
    let reply = c.send_mail(
        "news@src.test",
        &["one@dst.test"],
        &message("news@src.test", "one@dst.test", "dual"),
    );
    assert!(reply.starts_with("250 "), "{reply}");
    let m = delivered(&sink, "dual");
    assert!(m.header("X-Baton-Ref").is_some(), "{}", m.data);
    let results = verify(&m.data, dns.addr);
    assert_eq!(
        verdicts(&results),
        vec![
            ("src.test".into(), "ed1".into(), true),
            ("src.test".into(), "rsa1".into(), true),
        ],
        "{results:?}"
    );
    for r in &results {
        let h: Vec<&str> = r["h"]
            .as_array()
            .expect("h")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert!(h.iter().filter(|x| **x == "from").count() >= 2, "{h:?}");
        assert!(h.contains(&"list-unsubscribe-post"), "{h:?}");
        assert!(!h.contains(&"received"), "{h:?}");
        assert!(h.contains(&"x-baton-ref"), "{h:?}");
    }
    // The algorithms are the ones configured.
    let mut algs: Vec<&str> = results.iter().filter_map(|r| r["a"].as_str()).collect();
    algs.sort();
    assert_eq!(algs, ["ed25519-sha256", "rsa-sha256"]);

    // A subdomain's mail is signed by the parent's keys; PKCS#1 keys sign; a domain
    // without a key is sent unsigned.
    for (from, subject) in [
        ("a@mail.src.test", "subdomain"),
        ("a@pkcs1.test", "pkcs1"),
        ("a@other.test", "nokey"),
    ] {
        let reply = c.send_mail(
            from,
            &["two@dst.test"],
            &message(from, "two@dst.test", subject),
        );
        assert!(reply.starts_with("250 "), "{subject}: {reply}");
    }
    let results = verify(&delivered(&sink, "subdomain").data, dns.addr);
    assert_eq!(
        verdicts(&results),
        vec![
            ("src.test".into(), "ed1".into(), true),
            ("src.test".into(), "rsa1".into(), true),
        ]
    );
    let results = verify(&delivered(&sink, "pkcs1").data, dns.addr);
    assert_eq!(
        verdicts(&results),
        vec![("pkcs1.test".into(), "pk1".into(), true)]
    );
    let nokey = delivered(&sink, "nokey");
    assert_eq!(nokey.header("DKIM-Signature"), None, "{}", nokey.data);

    // A key restricted to tenant alice: alice's mail is signed; bob (who may send as any
    // domain) sending as alice.test is not signed with alice's key.
    let mut a = session(&node, "alice", "pw-alice");
    let reply = a.send_mail(
        "a@alice.test",
        &["three@dst.test"],
        &message("a@alice.test", "three@dst.test", "alice"),
    );
    assert!(reply.starts_with("250 "), "{reply}");
    let mut b = session(&node, "bob", "pw-bob");
    let reply = b.send_mail(
        "b@alice.test",
        &["three@dst.test"],
        &message("b@alice.test", "three@dst.test", "bob-as-alice"),
    );
    assert!(reply.starts_with("250 "), "{reply}");
    let results = verify(&delivered(&sink, "alice").data, dns.addr);
    assert_eq!(
        verdicts(&results),
        vec![("alice.test".into(), "a1".into(), true)]
    );
    let bob = delivered(&sink, "bob-as-alice");
    assert_eq!(bob.header("DKIM-Signature"), None, "{}", bob.data);

    // Key rotation: a new selector and key in the file, SIGHUP, and the next message is
    // signed by the new one (and still by the Ed25519 key).
    let config = std::fs::read_to_string(&node.config_path).expect("config");
    let rotated = config.replace(&dkim("rsa1", &rsa), &dkim("rsa2", &rsa2));
    assert_ne!(config, rotated);
    std::fs::write(&node.config_path, rotated).expect("write config");
    let reloads = node.log().matches("DKIM keys reloaded").count();
    hup(&node);
    wait_until("the DKIM reload", WAIT, || {
        (node.log().matches("DKIM keys reloaded").count() > reloads).then_some(())
    });
    let reply = c.send_mail(
        "news@src.test",
        &["one@dst.test"],
        &message("news@src.test", "one@dst.test", "rotated"),
    );
    assert!(reply.starts_with("250 "), "{reply}");
    let results = verify(&delivered(&sink, "rotated").data, dns.addr);
    assert_eq!(
        verdicts(&results),
        vec![
            ("src.test".into(), "ed1".into(), true),
            ("src.test".into(), "rsa2".into(), true),
        ]
    );

    // A reload with a key that does not load keeps the keys in use.
    let config = std::fs::read_to_string(&node.config_path).expect("config");
    std::fs::write(
        &node.config_path,
        config.replace(&rsa2.display().to_string(), "/nonexistent/key.pem"),
    )
    .expect("write config");
    hup(&node);
    wait_until("the refused reload", WAIT, || {
        node.log().contains("config not reloaded").then_some(())
    });
    let reply = c.send_mail(
        "news@src.test",
        &["one@dst.test"],
        &message("news@src.test", "one@dst.test", "kept"),
    );
    assert!(reply.starts_with("250 "), "{reply}");
    let results = verify(&delivered(&sink, "kept").data, dns.addr);
    assert!(
        verdicts(&results).contains(&("src.test".into(), "rsa2".into(), true)),
        "{results:?}"
    );
}

#[test]
fn reject_refuses_what_no_key_signs() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (rsa, _) = make_key(keys.path(), "rsa1", "rsa2048");
    let sink = Sink::start("127.0.0.42:2525".parse().expect("addr"));
    let node = Node::start(NodeOptions {
        smarthost: Some(sink.addr),
        tail: format!(
            "[[dkim]]\ndomain = \"src.test\"\nselector = \"rsa1\"\nkey_file = \"{}\"\n\
             [signing]\nrequire_dkim_alignment = \"reject\"\n",
            rsa.display()
        ),
        ..Default::default()
    });
    let mut c = node.smtp();
    c.hello();
    let reply = c.send_mail(
        "a@other.test",
        &["x@dst.test"],
        &message("a@other.test", "x@dst.test", "refused"),
    );
    assert!(
        reply.starts_with("550 5.7.1 ") && reply.contains("other.test"),
        "{reply}"
    );
    // The envelope is not what counts: a From: outside the key's domain is refused.
    let reply = c.send_mail(
        "a@src.test",
        &["x@dst.test"],
        &message("a@other.test", "x@dst.test", "refused-header"),
    );
    assert!(reply.starts_with("550 5.7.1 "), "{reply}");
    let reply = c.send_mail(
        "a@src.test",
        &["x@dst.test"],
        &message("a@src.test", "x@dst.test", "signed"),
    );
    assert!(reply.starts_with("250 "), "{reply}");
    let m = delivered(&sink, "signed");
    assert!(m.header("DKIM-Signature").is_some(), "{}", m.data);
    assert!(node.metric("baton_dkim_unsigned_total") >= 2.0);
    assert_eq!(sink.messages().len(), 1);
}

#[test]
fn check_config_refuses_short_and_mismatched_keys() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (short, _) = make_key(keys.path(), "short", "rsa1024");
    let (ed, _) = make_key(keys.path(), "ed", "ed25519");
    let (rsa, _) = make_key(keys.path(), "rsa", "rsa2048-pkcs1");
    let config = keys.path().join("baton.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\ndata_dir = \"{}\"\n\
             [[dkim]]\ndomain = \"a.test\"\nselector = \"s1\"\nkey_file = \"{}\"\n\
             [[dkim]]\ndomain = \"b.test\"\nselector = \"s1\"\nkey_file = \"{}\"\nalgorithm = \"rsa-sha256\"\n\
             [[dkim]]\ndomain = \"c.test\"\nselector = \"s1\"\nkey_file = \"{}\"\nalgorithm = \"ed25519-sha256\"\n\
             [[dkim]]\ndomain = \"d.test\"\nselector = \"s1\"\nkey_file = \"{}\"\nheaders = [\"Subject\"]\n\
             [signing]\nrequire_dkim_alignment = \"sometimes\"\n",
            keys.path().join("data").display(),
            short.display(),
            ed.display(),
            rsa.display(),
            rsa.display(),
        ),
    )
    .expect("write config");
    let out = Command::new(bin("batond"))
        .arg("check-config")
        .arg(&config)
        .output()
        .expect("batond");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(2), "{text}");
    for expected in [
        "dkim[0].key_file",
        "under 2048 bits",
        "dkim[1].key_file",
        "is an Ed25519 key",
        "dkim[2].key_file",
        "is an RSA key",
        "dkim[3].headers",
        "signing.require_dkim_alignment",
    ] {
        assert!(text.contains(expected), "{expected:?} not in:\n{text}");
    }
}

/// Sends SIGHUP to the node.
fn hup(node: &Node) {
    let pid = node.proc.as_ref().expect("running").pid();
    let status = Command::new("kill")
        .arg("-HUP")
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success());
}
