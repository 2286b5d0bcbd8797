//! One config for every node, as a StatefulSet's pods share it: `cluster.bootstrap` and
//! `cluster.join` listing every node (its own address included). The first node forms
//! the cluster only after the seeds said none exists; the others join it; and a first
//! node that lost its data joins the cluster the others hold instead of forming a second.

use baton_tests::*;
use std::net::SocketAddr;
use std::time::Duration;

fn options(id: u64, raft: &[SocketAddr], sink: SocketAddr) -> NodeOptions {
    NodeOptions {
        id,
        // Only the first node may form the cluster; all share the seed list.
        bootstrap: id == 1,
        join: raft.to_vec(),
        raft: Some(raft[id as usize - 1]),
        smarthost: Some(sink),
        ..Default::default()
    }
}

#[test]
fn first_node_forms_once_and_rejoins_after_losing_its_data() {
    let sink_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let sink = Sink::start(sink_addr);
    let raft: Vec<SocketAddr> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()).parse().expect("addr"))
        .collect();

    // All three at once, like a Parallel StatefulSet's first install.
    let started = std::time::Instant::now();
    let mut nodes: Vec<Node> = (1..=3)
        .map(|id| Node::start_unready(options(id, &raft, sink_addr)))
        .collect();
    for n in &mut nodes {
        n.wait_ready();
    }
    let formed = wait_until("one cluster of three", Duration::from_secs(30), || {
        let views: Vec<_> = nodes.iter().map(members).collect();
        (views
            .iter()
            .all(|v| v.0 != 0 && v.0 == views[0].0 && v.1 == [1, 2, 3]))
        .then_some(views)
    });
    eprintln!("formed in {:?}: {formed:?}", started.elapsed());
    assert!(
        nodes[0].log().contains("seeds: forming one"),
        "{}",
        nodes[0].log()
    );
    for n in &nodes[1..] {
        assert!(!n.log().contains("seeds: forming one"), "{}", n.log());
    }

    let mut client = nodes[1].smtp();
    client.hello();
    let id = queue_id(&client.send_mail("a@example.com", &["b@example.net"], "before\r\n"));
    sink.wait_for(1, Duration::from_secs(20));

    // Node 1 loses its volume: with the others holding the cluster it must join them.
    nodes[0].kill();
    std::fs::remove_dir_all(&nodes[0].data_dir).expect("wipe the data dir");
    let restarted = std::time::Instant::now();
    nodes[0].restart();
    let log = nodes[0].log();
    assert!(
        log.contains("a cluster exists among the seeds: joining it"),
        "{log}"
    );
    assert_eq!(
        log.matches("seeds: forming one").count(),
        1,
        "formed a second cluster:\n{log}"
    );
    wait_until(
        "node 1 back in the same cluster",
        Duration::from_secs(30),
        || {
            let views: Vec<_> = nodes.iter().map(members).collect();
            (views
                .iter()
                .all(|v| v.0 != 0 && v.0 == views[0].0 && v.1 == [1, 2, 3]))
            .then_some(())
        },
    );
    eprintln!("rejoined in {:?}", restarted.elapsed());
    // Its state came back from the others: it knows the message delivered before.
    let delivered = events(&nodes[0], "delivered");
    assert!(
        delivered.iter().any(|e| e["message_id"] == id.as_str()),
        "{delivered:?}"
    );

    // And it relays: mail sent through it reaches the sink.
    let mut client = nodes[0].smtp();
    client.hello();
    client.send_mail("a@example.com", &["c@example.net"], "after\r\n");
    sink.wait_for(2, Duration::from_secs(20));
}
