//! The supervisor with probe components: order, restarts, giving up.

use super::*;
use crate::components::Task;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A component that records its starts and drains in `log`, and whose work panics in
/// its first `crashes` runs.
struct Probe {
    name: &'static str,
    log: Arc<Mutex<Vec<String>>>,
    runs: Arc<AtomicUsize>,
    crashes: usize,
    fail_start: bool,
    task: Task,
}

impl Component for Probe {
    fn name(&self) -> &'static str {
        self.name
    }

    fn start(&self, supervisor: ActorCell) -> BoxFuture<'_, anyhow::Result<Option<ActorCell>>> {
        Box::pin(async move {
            self.log
                .lock()
                .unwrap()
                .push(format!("start {}", self.name));
            if self.fail_start {
                anyhow::bail!("cannot bind");
            }
            if self.name == "panics" {
                panic!("a bug in a start");
            }
            let run = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
            let crashes = self.crashes;
            self.task
                .start(supervisor, move |mut stop| async move {
                    if run <= crashes {
                        panic!("probe crash {run}");
                    }
                    let _ = stop.wait_for(|s| *s).await;
                    Ok(())
                })
                .await
        })
    }

    fn drain(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.log
                .lock()
                .unwrap()
                .push(format!("drain {}", self.name));
            self.task.stop(Duration::from_secs(1)).await;
        })
    }
}

struct Probes {
    log: Arc<Mutex<Vec<String>>>,
    runs: Vec<Arc<AtomicUsize>>,
}

fn probes(specs: &[(&'static str, usize, bool)]) -> (Vec<Arc<dyn Component>>, Probes) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut runs = Vec::new();
    let components = specs
        .iter()
        .map(|&(name, crashes, fail_start)| {
            let r = Arc::new(AtomicUsize::new(0));
            runs.push(r.clone());
            Arc::new(Probe {
                name,
                log: log.clone(),
                runs: r,
                crashes,
                fail_start,
                task: Task::default(),
            }) as Arc<dyn Component>
        })
        .collect();
    (components, Probes { log, runs })
}

async fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    for _ in 0..500 {
        if ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(start_paused = true)]
async fn components_start_in_order_and_drain_in_reverse() {
    let (components, p) = probes(&[("a", 0, false), ("b", 0, false), ("c", 0, false)]);
    let (_stop_tx, mut stop) = watch::channel(false);
    let statuses = Statuses::default();
    let node = Node::start(components, statuses.clone(), &mut stop)
        .await
        .expect("start");
    assert!(statuses.list().iter().all(|(_, s)| *s == Status::Running));
    node.drain().await;
    assert_eq!(
        *p.log.lock().unwrap(),
        [
            "start a", "start b", "start c", "drain c", "drain b", "drain a"
        ]
    );
    assert!(statuses.list().iter().all(|(_, s)| *s == Status::Stopped));
}

#[tokio::test(start_paused = true)]
async fn a_crashed_component_is_restarted_and_the_others_are_left_alone() {
    let (components, p) = probes(&[("steady", 0, false), ("flaky", 2, false)]);
    let (_stop_tx, mut stop) = watch::channel(false);
    let statuses = Statuses::default();
    let node = Node::start(components, statuses.clone(), &mut stop)
        .await
        .expect("start");
    // Two crashes, two restarts: the third run stays up.
    let flaky = p.runs[1].clone();
    wait_for("the third run of flaky", || {
        flaky.load(Ordering::SeqCst) == 3
    })
    .await;
    wait_for("flaky running", || statuses.list()[1].1 == Status::Running).await;
    assert_eq!(
        p.runs[0].load(Ordering::SeqCst),
        1,
        "steady was not restarted"
    );
    assert_eq!(statuses.list()[0].1, Status::Running);
    node.drain().await;
    let log = p.log.lock().unwrap().clone();
    assert_eq!(log.iter().filter(|l| *l == "start flaky").count(), 3);
    assert_eq!(log.last().map(String::as_str), Some("drain steady"));
}

#[tokio::test(start_paused = true)]
async fn a_component_that_keeps_crashing_stops_the_node() {
    let (components, p) = probes(&[("doomed", usize::MAX, false)]);
    let (_stop_tx, mut stop) = watch::channel(false);
    let mut node = Node::start(components, Statuses::default(), &mut stop)
        .await
        .expect("start");
    let reason = tokio::time::timeout(CRASH_WINDOW, node.failed())
        .await
        .expect("the node gives up within the crash window");
    assert!(reason.contains("doomed"), "{reason}");
    assert!(reason.contains("probe crash"), "{reason}");
    assert_eq!(p.runs[0].load(Ordering::SeqCst), MAX_CRASHES + 1);
    node.drain().await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_start_drains_what_started_and_names_the_component() {
    let (components, p) = probes(&[("a", 0, false), ("b", 0, true), ("c", 0, false)]);
    let (_stop_tx, mut stop) = watch::channel(false);
    let Err(e) = Node::start(components, Statuses::default(), &mut stop).await else {
        panic!("b cannot start");
    };
    assert_eq!(e.to_string(), "starting b: cannot bind");
    assert_eq!(*p.log.lock().unwrap(), ["start a", "start b", "drain a"]);
}

#[tokio::test(start_paused = true)]
async fn a_start_that_panics_is_an_error_not_a_dead_supervisor() {
    let (components, p) = probes(&[("a", 0, false), ("panics", 0, false)]);
    let (_stop_tx, mut stop) = watch::channel(false);
    let Err(e) = Node::start(components, Statuses::default(), &mut stop).await else {
        panic!("the second start panics");
    };
    assert!(
        e.to_string()
            .starts_with("starting panics: its start panicked"),
        "{e}"
    );
    // The first component was drained: the supervisor lived to say so.
    assert_eq!(
        *p.log.lock().unwrap(),
        ["start a", "start panics", "drain a"]
    );
}
