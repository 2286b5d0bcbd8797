//! SIGKILL during a run of 1,000 messages loses nothing that was answered 250.
//!
//! Deliveries are held back (the sink is down) while messages are accepted, so the kill
//! hits ingest and the queue, not a delivery in flight; the narrow delivery window
//! (remote 250, outcome not yet committed) is measured by the cluster chaos tool.

use baton_tests::*;
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const MESSAGES: usize = 1000;
const CLIENTS: usize = 8;

/// Sends messages numbered by `next` until the counter runs out or the server goes away;
/// records the numbers answered 250.
fn client(addr: SocketAddr, next: Arc<Mutex<usize>>, accepted: Arc<Mutex<HashSet<usize>>>) {
    let Ok(stream) = TcpStream::connect(addr) else {
        return;
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    let reply = |r: &mut BufReader<TcpStream>| -> Option<String> {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).ok()? == 0 {
                return None;
            }
            text.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return Some(text);
            }
        }
    };
    if reply(&mut r).is_none()
        || w.write_all(b"EHLO crash.test\r\n").is_err()
        || reply(&mut r).is_none()
    {
        return;
    }
    loop {
        let n = {
            let mut g = next.lock().unwrap();
            if *g >= MESSAGES {
                return;
            }
            *g += 1;
            *g
        };
        let msg = format!("MAIL FROM:<load@src.test>\r\nRCPT TO:<u{n}@dst.test>\r\nDATA\r\n");
        if w.write_all(msg.as_bytes()).is_err() {
            return;
        }
        for _ in 0..3 {
            match reply(&mut r) {
                Some(t) if t.starts_with('2') || t.starts_with('3') => {}
                _ => return,
            }
        }
        let line = "z".repeat(76) + "\r\n";
        let body = format!(
            "Subject: crash {n}\r\nX-Seq: {n}\r\n\r\n{}.\r\n",
            line.repeat(13)
        );
        if w.write_all(body.as_bytes()).is_err() {
            return;
        }
        match reply(&mut r) {
            Some(t) if t.starts_with("250") => {
                accepted.lock().unwrap().insert(n);
            }
            _ => return,
        }
    }
}

#[test]
fn sigkill_during_ingest_loses_nothing_and_duplicates_nothing() {
    let port = free_port();
    let sink_addr: SocketAddr = format!("127.0.0.20:{port}").parse().unwrap();
    let mut node = Node::start(NodeOptions {
        smarthost: Some(sink_addr),
        retry_intervals: "[\"1s\"]".into(),
        ..Default::default()
    });
    let next = Arc::new(Mutex::new(0usize));
    let accepted = Arc::new(Mutex::new(HashSet::new()));
    let mut threads = Vec::new();
    for _ in 0..CLIENTS {
        let (n, a, addr) = (next.clone(), accepted.clone(), node.smtp);
        threads.push(std::thread::spawn(move || client(addr, n, a)));
    }
    // Kill the node once a third of the messages are in (a count, not a time).
    wait_until("300 accepted", Duration::from_secs(60), || {
        (accepted.lock().unwrap().len() >= 300).then_some(())
    });
    node.kill();
    for t in threads {
        t.join().unwrap();
    }
    let before_restart = accepted.lock().unwrap().len();
    assert!(
        (300..MESSAGES).contains(&before_restart),
        "{before_restart}"
    );

    // Restart and send the rest.
    node.restart();
    let mut threads = Vec::new();
    for _ in 0..CLIENTS {
        let (n, a, addr) = (next.clone(), accepted.clone(), node.smtp);
        threads.push(std::thread::spawn(move || client(addr, n, a)));
    }
    for t in threads {
        t.join().unwrap();
    }
    let accepted = accepted.lock().unwrap().clone();

    // Now let deliveries happen.
    let sink = Sink::start(sink_addr);
    let got = wait_until(
        "every accepted message delivered",
        Duration::from_secs(120),
        || {
            let m = sink.messages();
            let seqs: HashSet<usize> = m
                .iter()
                .filter_map(|m| m.header("X-Seq").and_then(|s| s.parse().ok()))
                .collect();
            accepted.is_subset(&seqs).then_some(m)
        },
    );
    // Exactly once: count per sequence number.
    wait_until("queue to empty", Duration::from_secs(60), || {
        (node.metric("baton_queue_messages") == 0.0).then_some(())
    });
    let got = if sink.messages().len() > got.len() {
        sink.messages()
    } else {
        got
    };
    let mut counts: HashMap<usize, usize> = HashMap::new();
    for m in &got {
        let seq: usize = m.header("X-Seq").unwrap().parse().unwrap();
        *counts.entry(seq).or_default() += 1;
    }
    let dups: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).collect();
    assert!(dups.is_empty(), "duplicates: {dups:?}");
    // Messages not answered 250 (cut by the kill) may or may not have been stored.
    let extra = counts.keys().filter(|s| !accepted.contains(s)).count();
    assert!(
        extra <= CLIENTS,
        "at most one unanswered message per client: {extra}"
    );
    eprintln!(
        "accepted {} (before kill {before_restart}), delivered {}, unanswered-but-stored {extra}",
        accepted.len(),
        got.len()
    );
}
