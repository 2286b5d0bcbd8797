//! Kills tied to progress instead of the clock (`--kill-after-messages N`).
//!
//! A message is *settled* once it was answered `250` or given up on. Kill `k`
//! (1-based) is due once `k * N` messages are settled and the previous victim
//! is ready again. So that the clients cannot finish (or run far ahead) before
//! a due kill was carried out, they take sequence numbers only below a *gate*:
//! while kill `k` is pending the gate is `k * N + 2C` (`C`: the connections).
//! When the threshold is reached every connection can still have a message in
//! flight, and has room for one more while the chaos task picks its victim,
//! so a prompt kill never finds the clients waiting. The chaos task raises the
//! gate to the next kill's value just before it sends the signal, and to
//! `--messages` after the last kill or when it stops killing, so a gate never
//! outlives the chaos task.
//!
//! If the clients did reach the gate (the previous victim took longer to
//! recover than the load took to get there), the gate is raised first and the
//! kill waits until `C` more messages are settled, so that load is flowing
//! again when the signal is sent.
//!
//! Everything here is pure arithmetic; the waiting lives in `client.rs` and
//! `nodes.rs`.

/// The progress schedule of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacing {
    /// Messages to send.
    pub messages: u64,
    /// Kills requested.
    pub kills: u32,
    /// Settled messages between two kills (`--kill-after-messages`).
    pub every: u64,
    /// Concurrent connections.
    pub connections: u64,
}

impl Pacing {
    /// Checks that all `kills` fit into `messages` with load before, between
    /// and after them; the error names the flags to change.
    pub fn new(messages: u64, kills: u32, every: u64, connections: u64) -> Result<Self, String> {
        if every == 0 {
            return Err("--kill-after-messages must be at least 1".into());
        }
        // Per connection: two messages of room at the gate, one while a kill
        // waits for the load to flow again, and one still to send after it.
        let min_every = connections.saturating_mul(4);
        if every < min_every {
            return Err(format!(
                "--kill-after-messages {every} is less than 4 x --connections ({min_every}): \
                 between two kills each connection needs room for two messages past the \
                 threshold, one while the load resumes and one after the kill"
            ));
        }
        // The last kill comes after kills * N settled messages; N more must
        // follow it so that the clients are still sending while the victim
        // is down and recovering.
        let needed = u64::from(kills)
            .checked_add(1)
            .and_then(|k| k.checked_mul(every));
        match needed {
            Some(needed) if needed <= messages => {}
            _ => {
                return Err(format!(
                    "--kills {kills} --kill-after-messages {every} needs at least \
                     (kills + 1) * N = {} --messages (so that load still flows after \
                     the last kill), got {messages}",
                    needed.map_or_else(|| "too many".to_string(), |n| n.to_string())
                ));
            }
        }
        Ok(Pacing {
            messages,
            kills,
            every,
            connections,
        })
    }

    /// Settled messages after which kill `k` (0-based) is due.
    pub fn threshold(&self, k: u32) -> u64 {
        (u64::from(k) + 1).saturating_mul(self.every)
    }

    /// Sequence numbers the clients may take past a kill's threshold before it happened.
    pub fn room(&self) -> u64 {
        self.connections.saturating_mul(2)
    }

    /// The gate while kill `k` (0-based) is the next one to happen: clients
    /// take only sequence numbers below it. Once every kill is done (or the
    /// chaos task stops), the gate is `messages`.
    pub fn gate(&self, k: u32) -> u64 {
        if k >= self.kills {
            self.messages
        } else {
            self.threshold(k)
                .saturating_add(self.room())
                .min(self.messages)
        }
    }

    /// When kill `k` (0-based) is due with `settled` messages settled and
    /// `issued` sequence numbers taken: if the clients had reached the gate,
    /// the number of settled messages to wait for after the gate was raised
    /// to `gate(k + 1)`, so that the kill hits a flowing load.
    pub fn warm_up_target(&self, k: u32, settled: u64, issued: u64) -> Option<u64> {
        if issued >= self.gate(k) {
            Some(
                settled
                    .saturating_add(self.connections)
                    .min(self.gate(k + 1)),
            )
        } else {
            None
        }
    }
}

/// What a client may do next, given the next free sequence number, the gate
/// and the number of messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Take this sequence number.
    Seq(u64),
    /// Wait for the gate to rise above the next sequence number.
    Wait,
    /// Every sequence number was taken.
    Done,
}

pub fn take(next: u64, gate: u64, messages: u64) -> Take {
    if next >= messages {
        Take::Done
    } else if next >= gate {
        Take::Wait
    } else {
        Take::Seq(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_flags() {
        assert!(Pacing::new(2000, 3, 500, 10).is_ok());
        assert!(Pacing::new(600, 3, 150, 10).is_ok());
        assert!(Pacing::new(2000, 0, 500, 10).is_ok());
        let e = Pacing::new(2000, 3, 0, 10).unwrap_err();
        assert!(e.contains("at least 1"), "{e}");
        assert!(Pacing::new(2000, 3, 40, 10).is_ok());
        let e = Pacing::new(2000, 3, 39, 10).unwrap_err();
        assert!(e.contains("--connections"), "{e}");
        // 4 * 501 > 2000: no load would be left after the last kill.
        let e = Pacing::new(2000, 3, 501, 10).unwrap_err();
        assert!(e.contains("2004") && e.contains("--messages"), "{e}");
        let e = Pacing::new(10_000_000, u32::MAX, u64::MAX / 2, 1).unwrap_err();
        assert!(e.contains("too many"), "{e}");
    }

    #[test]
    fn thresholds_and_gates() {
        let p = Pacing::new(2000, 3, 500, 10).unwrap();
        assert_eq!(
            (0..3).map(|k| p.threshold(k)).collect::<Vec<_>>(),
            [500, 1000, 1500]
        );
        assert_eq!(
            (0..5).map(|k| p.gate(k)).collect::<Vec<_>>(),
            [520, 1020, 1520, 2000, 2000]
        );
        // No kills: no gate.
        assert_eq!(Pacing::new(50, 0, 50, 1).unwrap().gate(0), 50);
        let p = Pacing::new(80, 1, 40, 10).unwrap();
        assert_eq!(p.gate(0), 60);
        assert_eq!(p.gate(1), 80);
        // The gate never exceeds the messages.
        let p = Pacing {
            messages: 45,
            kills: 1,
            every: 30,
            connections: 10,
        };
        assert_eq!(p.gate(0), 45);
    }

    #[test]
    fn warm_up_only_when_the_clients_reached_the_gate() {
        let p = Pacing::new(2000, 3, 500, 10).unwrap();
        // Flowing, every connection busy at the threshold: nothing to wait for.
        assert_eq!(p.warm_up_target(0, 500, 510), None);
        assert_eq!(p.warm_up_target(0, 508, 519), None);
        // Held at the gate: wait for one message per connection.
        assert_eq!(p.warm_up_target(0, 512, 520), Some(522));
        assert_eq!(p.warm_up_target(2, 1520, 1520), Some(1530));
        // Never beyond the next gate (it would not be reachable).
        let p = Pacing {
            messages: 65,
            kills: 1,
            every: 30,
            connections: 10,
        };
        assert_eq!(p.warm_up_target(0, 58, 60), Some(65));
    }

    #[test]
    fn take_respects_gate_and_end() {
        assert_eq!(take(0, 10, 100), Take::Seq(0));
        assert_eq!(take(9, 10, 100), Take::Seq(9));
        assert_eq!(take(10, 10, 100), Take::Wait);
        assert_eq!(take(100, 100, 100), Take::Done);
        assert_eq!(take(100, 10, 100), Take::Done);
        assert_eq!(take(0, 0, 0), Take::Done);
    }

    /// One kill of the model: settled and in flight when the signal was
    /// sent, and whether the clients had reached the gate before it.
    #[derive(Debug)]
    struct ModelKill {
        settled: u64,
        in_flight: u64,
        warmed_up: bool,
    }

    /// A step-by-step model of C connections and the chaos task, using the
    /// functions above the way the real code does. `latency` steps per
    /// message, the victim needs `recovery` steps to be ready.
    fn simulate(p: &Pacing, connections: usize, latency: u32, recovery: u32) -> Vec<ModelKill> {
        enum Chaos {
            WaitDue(u32),
            WarmUp(u32, u64),
            Recovering(u32, u32),
            Finished,
        }
        let mut next = 0u64;
        let mut settled = 0u64;
        let mut gate = p.gate(0);
        // Per connection: steps left on its message, if it has one.
        let mut busy: Vec<Option<u32>> = vec![None; connections];
        let mut chaos = if p.kills == 0 {
            Chaos::Finished
        } else {
            Chaos::WaitDue(0)
        };
        let mut kills = Vec::new();
        // Bounded: every message needs `latency` steps, every kill `recovery`.
        let limit = (p.messages as u32 + 1) * (latency + 1) + (p.kills + 1) * (recovery + 2) + 100;
        for _ in 0..limit {
            for slot in busy.iter_mut() {
                if let Some(left) = slot {
                    *left -= 1;
                    if *left == 0 {
                        settled += 1;
                        *slot = None;
                    }
                }
                if slot.is_none()
                    && let Take::Seq(_) = take(next, gate, p.messages)
                {
                    next += 1;
                    *slot = Some(latency);
                }
            }
            chaos = match chaos {
                Chaos::WaitDue(k) if settled >= p.threshold(k) => {
                    let warm = p.warm_up_target(k, settled, next);
                    gate = p.gate(k + 1);
                    match warm {
                        Some(target) => Chaos::WarmUp(k, target),
                        None => {
                            kills.push(ModelKill {
                                settled,
                                in_flight: next - settled,
                                warmed_up: false,
                            });
                            Chaos::Recovering(k, recovery)
                        }
                    }
                }
                Chaos::WarmUp(k, target) if settled >= target => {
                    kills.push(ModelKill {
                        settled,
                        in_flight: next - settled,
                        warmed_up: true,
                    });
                    Chaos::Recovering(k, recovery)
                }
                Chaos::Recovering(k, 0) if k + 1 < p.kills => Chaos::WaitDue(k + 1),
                Chaos::Recovering(_, 0) => Chaos::Finished,
                Chaos::Recovering(k, left) => Chaos::Recovering(k, left - 1),
                other => other,
            };
            if settled == p.messages && matches!(chaos, Chaos::Finished) {
                return kills;
            }
        }
        panic!(
            "the model did not finish in {limit} steps: {} settled, {} kills",
            settled,
            kills.len()
        );
    }

    #[test]
    fn every_kill_happens_under_load_fast_or_slow() {
        let p = Pacing::new(600, 3, 150, 10).unwrap();
        // Fast clients and a slow recovery (they wait at the gate), then slow
        // clients and an instant recovery, then everything in between.
        for (latency, recovery) in [(1, 5000), (1, 0), (200, 0), (3, 40), (7, 7)] {
            let kills = simulate(&p, 10, latency, recovery);
            assert_eq!(kills.len(), 3, "latency {latency} recovery {recovery}");
            if recovery == 0 {
                // A prompt kill never finds the clients at the gate.
                assert!(kills.iter().all(|k| !k.warmed_up), "{kills:?}");
            }
            for (
                k,
                &ModelKill {
                    settled, in_flight, ..
                },
            ) in kills.iter().enumerate()
            {
                assert!(
                    settled >= p.threshold(k as u32),
                    "kill {k} too early: {settled} settled"
                );
                assert!(
                    settled < p.threshold(k as u32 + 1),
                    "kill {k} too late: {settled} settled"
                );
                assert!(
                    in_flight > 0,
                    "kill {k}: nothing in flight ({latency}/{recovery})"
                );
            }
        }
        // The slow victim held the fast clients at the gate before kills 2 and 3.
        let kills = simulate(&p, 10, 1, 5000);
        assert!(!kills[0].warmed_up && kills[1].warmed_up && kills[2].warmed_up);
        // One connection, the smallest interval and the fewest messages allowed.
        let p = Pacing::new(16, 3, 4, 1).unwrap();
        let kills = simulate(&p, 1, 2, 30);
        assert_eq!(kills.len(), 3);
        assert!(kills.iter().all(|k| k.in_flight == 1), "{kills:?}");
    }
}
