//! Peer mutual TLS on the Raft port (`cluster.tls_cert`, `tls_key`, `tls_ca`): a cluster
//! forms and relays over it, with server names checked for IP addresses and DNS names
//! alike; clients without a certificate signed by the cluster's CA are refused at the
//! handshake and change nothing; and the config checks of the keys.

use baton_cluster::pb::raft_client::RaftClient;
use baton_cluster::pb::{CommitIndexRequest, JoinRequest, Payload};
use baton_cluster::{PeerTls, Peers};
use baton_queue::types::Request;
use baton_tests::*;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const WAIT: Duration = Duration::from_secs(20);
/// Bound on one gRPC call of the test's own clients.
const CALL: Duration = Duration::from_secs(10);

/// The `[cluster]` TOML for a node with a certificate of `ca` for `names`.
fn cluster_toml(ca: &TestCa, tag: &str, names: &[&str]) -> String {
    let (cert, key) = ca.issue(tag, names);
    format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"\ntls_ca = \"{}\"\n",
        cert.display(),
        key.display(),
        ca.ca_path().display()
    )
}

fn suppressed(node: &Node) -> Vec<String> {
    let l: Value = ctl_json(node, &["suppression", "list"]);
    l["entries"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["address"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// An error and its sources, for asserting on the transport's reason.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    parts.join(": ")
}

/// A forged write: put `address` on the suppression list.
fn forged_suppression(address: &str) -> Payload {
    let request = Request::Suppress {
        address: address.into(),
        reason: "forged".into(),
        now_ms: 0,
    };
    Payload {
        data: bincode::serialize(&request).expect("encode"),
    }
}

/// Forwards a write and asks to join as node 99 through `channel`: both must fail in the
/// transport, never reach the service. (Which transport error a client sees varies: with
/// TLS 1.3 its side of the handshake is done before the server checked its certificate,
/// so the server's alert may race the request; [`handshake`] shows the alert itself.)
async fn attack(channel: Channel) {
    let mut client = RaftClient::new(channel);
    let forward = tokio::time::timeout(CALL, client.forward(forged_suppression("victim@dst.test")))
        .await
        .expect("the forward ends");
    let join = tokio::time::timeout(
        CALL,
        client.join(JoinRequest {
            node_id: 99,
            addr: "127.0.0.1:9".into(),
        }),
    )
    .await
    .expect("the join ends");
    for r in [forward.map(|_| ()), join.map(|_| ())] {
        let status = r.expect_err("refused");
        // The status carries tonic's transport error: no answer of the service.
        let transport = std::error::Error::source(&status)
            .and_then(|e| e.downcast_ref::<tonic::transport::Error>())
            .is_some();
        assert!(transport, "{status:?}");
    }
}

/// A bare TLS connection to `addr` trusting `ca`, presenting `identity` if given, then
/// one read: the error that ends it, which must come. (With TLS 1.3 the server's alert
/// arrives after the client's side of the handshake, at the first read.)
async fn handshake(addr: SocketAddr, ca: &Path, identity: Option<(&Path, &Path)>) -> String {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::AsyncReadExt;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca).expect("CA"))
        .expect("root");
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_file(cert).expect("cert")],
                PrivateKeyDer::from_pem_file(key).expect("key"),
            )
            .expect("client auth"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let ended = tokio::time::timeout(CALL, async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let mut tls = connector
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await?;
        tls.read(&mut [0u8; 1]).await
    })
    .await
    .expect("in time");
    match ended {
        Ok(n) => panic!("the server let the connection through (read {n} bytes)"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_cluster_talks_mutual_tls_and_refuses_clients_without_its_certificate() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new(tmp.path(), "cluster");
    let other = TestCa::new(tmp.path(), "other");
    let sink_addr: SocketAddr = format!("127.0.0.40:{}", free_port()).parse().unwrap();
    let sink = Sink::start(sink_addr);

    // Node 1 is reached at an IP address (its certificate names only 127.0.0.1), nodes
    // 2 and 3 at a DNS name (theirs name only localhost).
    let node = |id: u64, join: Vec<SocketAddr>, names: &[&str], host: Option<&str>| {
        Node::start(NodeOptions {
            id,
            bootstrap: join.is_empty(),
            join,
            smarthost: Some(sink_addr),
            cluster: cluster_toml(&ca, &format!("node{id}"), names),
            advertise_host: host.map(String::from),
            ..Default::default()
        })
    };
    let n1 = node(1, vec![], &["127.0.0.1"], None);
    let n2 = node(2, vec![n1.raft], &["localhost"], Some("localhost"));
    let n3 = node(3, vec![n1.raft], &["localhost"], Some("localhost"));
    let nodes = [n1, n2, n3];
    wait_until("one leader", WAIT, || {
        leader_of(&nodes.iter().collect::<Vec<_>>())
    });
    // A message through each node: the followers forward theirs to the leader.
    for (i, n) in nodes.iter().enumerate() {
        send_numbered(n, i + 1);
    }
    sink.wait_for(3, WAIT);
    assert_eq!(members(&nodes[1]).1, [1, 2, 3]);

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let n1_raft = nodes[0].raft;
    let n2_port = nodes[1].raft.port();
    // With a certificate of the cluster's CA, our own client gets through, and checks
    // the server's name: node 1's certificate does not name localhost.
    let (cert, key) = ca.issue("client", &["localhost"]);
    let tls = PeerTls::load(&cert, &key, &ca.ca_path(), "localhost").expect("client TLS");
    let peers = Peers::new(Some(tls));
    rt.block_on(async {
        let mut c = peers.client(&n1_raft.to_string()).expect("client");
        let reply = tokio::time::timeout(CALL, c.forward(forged_suppression("ok@dst.test")))
            .await
            .expect("in time");
        assert!(reply.is_ok(), "{reply:?}");
        let mut c = peers
            .client(&format!("localhost:{n2_port}"))
            .expect("client");
        let reply = tokio::time::timeout(CALL, c.commit_index(CommitIndexRequest {}))
            .await
            .expect("in time");
        assert!(reply.is_ok(), "{reply:?}");
        let mut c = peers
            .client(&format!("localhost:{}", n1_raft.port()))
            .expect("client");
        let refused = tokio::time::timeout(CALL, c.commit_index(CommitIndexRequest {}))
            .await
            .expect("in time")
            .expect_err("node 1's certificate is not for localhost");
        let why = chain(&refused);
        assert!(why.contains("not valid for name"), "{why}");
    });
    wait_until("the suppression through TLS", WAIT, || {
        suppressed(&nodes[0])
            .contains(&"ok@dst.test".to_string())
            .then_some(())
    });

    // Clients the cluster's CA did not sign: no certificate, another CA's, no TLS.
    let (stranger_cert, stranger_key) = other.issue("stranger", &["localhost"]);
    let ca_cert = Certificate::from_pem(std::fs::read(ca.ca_path()).expect("CA"));
    let stranger = Identity::from_pem(
        std::fs::read(&stranger_cert).expect("cert"),
        std::fs::read(&stranger_key).expect("key"),
    );
    let https = Endpoint::from_shared(format!("https://{n1_raft}")).expect("uri");
    let no_cert = ClientTlsConfig::new().ca_certificate(ca_cert);
    let other_ca = no_cert.clone().identity(stranger);
    rt.block_on(async {
        // Refused at the handshake, with the alert saying why...
        let why = handshake(n1_raft, &ca.ca_path(), None).await;
        assert!(why.contains("CertificateRequired"), "no certificate: {why}");
        let stranger = Some((stranger_cert.as_path(), stranger_key.as_path()));
        let why = handshake(n1_raft, &ca.ca_path(), stranger).await;
        assert!(why.contains("UnknownCA"), "another CA: {why}");
        // ...so neither a write nor a join gets through.
        for tls in [no_cert, other_ca] {
            attack(https.clone().tls_config(tls).expect("tls").connect_lazy()).await;
        }
        let plain = Endpoint::from_shared(format!("http://{n1_raft}")).expect("uri");
        attack(plain.connect_lazy()).await;
    });
    // Nothing changed, and the server still serves (a failed handshake ends only its
    // own connection).
    assert_eq!(members(&nodes[0]).1, [1, 2, 3]);
    assert!(!suppressed(&nodes[0]).contains(&"victim@dst.test".to_string()));
    send_numbered(&nodes[0], 4);
    sink.wait_for(4, WAIT);
    eprintln!("took {:?}", started.elapsed());
}

#[test]
fn check_config_names_the_peer_tls_keys() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new(tmp.path(), "cluster");
    let (cert, _) = ca.issue("node", &["127.0.0.1"]);
    let check = |name: &str, cluster: &str| {
        let path = tmp.path().join(name);
        std::fs::write(
            &path,
            format!(
                "[node]\ndata_dir = \"{}\"\n[cluster]\n{cluster}\n\
                 [[smtp.listener]]\naddress = \"127.0.0.1:2525\"\n",
                tmp.path().join("data").display()
            ),
        )
        .expect("write config");
        let out = std::process::Command::new(bin("batond"))
            .arg("check-config")
            .arg(&path)
            .output()
            .expect("batond check-config");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let line = |err: &str, key: &str| {
        err.lines()
            .find(|l| l.trim_start().starts_with(&format!("{key}: ")))
            .map(String::from)
    };

    let (code, err) = check("half.toml", &format!("tls_cert = \"{}\"", cert.display()));
    assert_eq!(code, Some(2), "{err}");
    for key in ["cluster.tls_key", "cluster.tls_ca"] {
        let l = line(&err, key).unwrap_or_else(|| panic!("{key} not in:\n{err}"));
        assert!(l.contains("cluster.tls_cert is set"), "{l}");
    }

    let (code, err) = check("open.toml", "listen = \"0.0.0.0:7301\"");
    assert_eq!(code, Some(2), "{err}");
    let l = line(&err, "cluster.listen").unwrap_or_else(|| panic!("not in:\n{err}"));
    assert!(
        l.contains("cluster.tls_cert") && l.contains("cluster.insecure = true"),
        "{l}"
    );

    let (code, err) = check(
        "garbage.toml",
        &format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\ntls_ca = \"{}\"",
            cert.display(),
            ca.ca_path().display(),
            ca.ca_path().display()
        ),
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(line(&err, "cluster.tls_key").is_some(), "{err}");
}
