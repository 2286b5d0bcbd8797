//! DomainDelivery: one destination domain's backlog, retry timer and workers.
//!
//! The actor takes due messages from the scheduling index into its backlog (each one
//! [`InFlight`], in the node's in-flight registry), starts workers for them (one connection each, up to the domain's
//! limit), and hands a job to a worker each time it asks ([`DomainMsg::Next`]). Workers
//! are actors linked to this one: when one ends, or fails, its slot is freed; a failed
//! worker's messages leave flight with it (their tokens are dropped) and are taken again.
//!
//! Before any of its mail is taken, the actor resolves the domain's site (its MX hosts)
//! and, when the site is not what ownership follows yet, proposes the move
//! (`Request::SetSite`) with none of the domain in flight and none taken until the
//! proposal is decided; the site's owner delivers it from then on. The site's gate
//! ([`SiteGate`]) gives the workers their connections and tokens.

use super::site::{SiteGate, SiteRegistry};
use super::worker::Worker;
use super::{DeliveryContext, InFlight};
use baton_queue::clock::now_ms;
use baton_queue::types::{HELD, Request};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

/// A domain's backlog is refilled from the index when it falls below this...
const WORK_LOW: usize = 200;
/// ...up to this many messages taken at once.
const WORK_MAX: usize = 1000;
/// A domain's site is resolved again after this (the resolver caches MX records for at
/// most 5 minutes too).
const SITE_RECHECK_MS: u64 = 5 * 60 * 1000;
/// After a failed resolution, the domain is delivered under its own name and resolved
/// again after this.
const SITE_RETRY_MS: u64 = 60 * 1000;

pub struct DomainDelivery;

pub enum DomainMsg {
    /// New or changed work; also the retry timer.
    Poke,
    /// A message left flight (its outcome is committed, or it was given back): it may be
    /// taken again.
    Finished(String),
    /// A worker asks for its next message (none: the worker ends).
    Next(RpcReplyPort<Option<InFlight>>),
    /// A worker's connection opened (true) or closed (false).
    Connection(bool),
    /// How many of this domain's connections are open.
    Live(RpcReplyPort<usize>),
    /// The domain's site as resolved (`None`: the lookup failed).
    SiteResolved(Option<String>),
    /// The proposed move was decided (true) or its proposal failed (false).
    MoveDecided(bool),
}

/// Where the domain stands with its site.
enum SiteStep {
    /// To be resolved.
    Unknown,
    /// Resolving; `deliver`: a site is known meanwhile.
    Resolving { deliver: bool },
    /// Moving to `site`, replacing the record at `base`; `proposed` while the proposal
    /// is out.
    Moving {
        site: String,
        base: u64,
        proposed: bool,
    },
    /// Known since `at` (unix ms).
    Checked { at: u64 },
}

pub struct DomainState {
    ctx: Arc<DeliveryContext>,
    domain: String,
    backlog: VecDeque<InFlight>,
    workers: usize,
    live: usize,
    timer_at: Option<u64>,
    site: SiteStep,
    gate: Option<Arc<SiteGate>>,
}

impl Actor for DomainDelivery {
    type Msg = DomainMsg;
    type State = DomainState;
    type Arguments = (Arc<DeliveryContext>, String);

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (ctx, domain): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let _ = myself.cast(DomainMsg::Poke);
        Ok(DomainState {
            ctx,
            domain,
            backlog: VecDeque::new(),
            workers: 0,
            live: 0,
            timer_at: None,
            site: SiteStep::Unknown,
            gate: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let look = match msg {
            DomainMsg::Poke => true,
            // Out of the registry already: only a chance to take more.
            DomainMsg::Finished(_) => false,
            DomainMsg::Next(port) => {
                let next = if state.ctx.allowed(&state.domain) {
                    state.backlog.pop_front()
                } else {
                    None
                };
                let _ = port.send(next);
                false
            }
            DomainMsg::Connection(up) => {
                if up {
                    state.live += 1;
                } else {
                    state.live = state.live.saturating_sub(1);
                }
                false
            }
            DomainMsg::Live(port) => {
                let _ = port.send(state.live);
                return Ok(());
            }
            DomainMsg::SiteResolved(site) => {
                state.resolved(site);
                true
            }
            DomainMsg::MoveDecided(decided) => {
                state.site = match std::mem::replace(&mut state.site, SiteStep::Unknown) {
                    SiteStep::Moving { site, base, .. } if !decided => {
                        // Proposed again (the same proposal: it applies at most once).
                        myself.send_after(Duration::from_secs(1), || DomainMsg::Poke);
                        SiteStep::Moving {
                            site,
                            base,
                            proposed: false,
                        }
                    }
                    _ => SiteStep::Checked { at: now_ms() },
                };
                true
            }
        };
        state.schedule(&myself, look).await?;
        state.stop_if_done(&myself);
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(..) => {}
            SupervisionEvent::ActorFailed(_, e) => {
                // Its connection closed with it (and said so, through its guard).
                metrics::counter!(crate::metrics::WORKER_CRASHES).increment(1);
                tracing::error!(domain = %state.domain, error = %e, "delivery worker crashed; its messages are taken again");
            }
            _ => return Ok(()),
        }
        state.workers = state.workers.saturating_sub(1);
        state.schedule(&myself, false).await?;
        state.stop_if_done(&myself);
        Ok(())
    }
}

impl DomainState {
    /// Takes due work, starts workers for it and arms the retry timer.
    async fn schedule(
        &mut self,
        myself: &ActorRef<DomainMsg>,
        look: bool,
    ) -> Result<(), ActorProcessingErr> {
        let now = now_ms();
        if !self.ctx.allowed(&self.domain) {
            // Draining, no lease, not (yet) ours, or moving: give back what waits in
            // the backlog.
            self.backlog.clear();
            self.arm_timer(myself, now + 1000);
            return Ok(());
        }
        if !self.site_ready(myself, now) {
            self.backlog.clear();
            return Ok(());
        }
        let key = self
            .ctx
            .reader
            .shared
            .with(|i| i.owner_key(&self.domain).to_string());
        let gate = match &self.gate {
            Some(g) if g.name == key && g.connections() > 0 => g.clone(),
            _ => {
                let g = SiteRegistry::gate(&self.ctx, &key).await;
                self.gate = Some(g.clone());
                g
            }
        };
        let connections = gate.connections() as usize;
        if connections == 0 {
            // Suspended: nothing is taken until the suspension ends in a probe.
            self.backlog.clear();
            let at = gate.suspended_until().unwrap_or(now + 1000);
            self.arm_timer(myself, at.clamp(now + 100, now + 1000));
            return Ok(());
        }
        // Refill when the backlog runs low, or when asked to look (new work, timer):
        // not on every finished message, which would rescan the in-flight set each time.
        if look || self.backlog.len() < WORK_LOW {
            let want = WORK_MAX.saturating_sub(self.backlog.len());
            let (taken, next) = self.ctx.take(&self.domain, now, want, myself);
            self.backlog.extend(taken);
            if let Some(at) = next {
                self.arm_timer(myself, at);
            }
        }
        let per_connection = gate.per_connection.clamp(1, 20);
        let wanted = self.backlog.len().div_ceil(per_connection).min(connections);
        while self.workers < wanted {
            let Some(permit) = gate.open_connection() else {
                // The site's other domains hold its connections: look again soon.
                self.arm_timer(myself, now + 500);
                break;
            };
            Actor::spawn_linked(
                None,
                Worker,
                (
                    self.ctx.clone(),
                    self.domain.clone(),
                    myself.clone(),
                    gate.clone(),
                    permit,
                ),
                myself.get_cell(),
            )
            .await?;
            self.workers += 1;
        }
        Ok(())
    }

    /// Whether the domain's site is settled enough to deliver; starts resolving it, or
    /// proposes its move, when due.
    fn site_ready(&mut self, myself: &ActorRef<DomainMsg>, now: u64) -> bool {
        if self.ctx.router.uses_smarthost() {
            // Every domain would be one site: the smarthost's. Domains stay their own
            // sites, spread over the nodes.
            return true;
        }
        match &mut self.site {
            SiteStep::Resolving { deliver } => *deliver,
            SiteStep::Checked { at } if now < at.saturating_add(SITE_RECHECK_MS) => true,
            SiteStep::Moving {
                site,
                base,
                proposed,
            } => {
                if !*proposed && self.ctx.in_flight.begin_move(&self.domain) {
                    *proposed = true;
                    let request = Request::SetSite {
                        domain: self.domain.clone(),
                        site: site.clone(),
                        base: *base,
                        by: self.ctx.me,
                        resolved_ms: now,
                    };
                    let (ctx, domain, me) = (self.ctx.clone(), self.domain.clone(), myself.clone());
                    tokio::spawn(async move {
                        let decided = match ctx.writer.write_applied(request).await {
                            Ok(r) => {
                                tracing::info!(%domain, applied = r.changed, "site move decided");
                                true
                            }
                            Err(e) => {
                                tracing::warn!(%domain, error = %e, "site move not decided yet");
                                false
                            }
                        };
                        if decided {
                            ctx.in_flight.end_move(&domain);
                        }
                        let _ = me.cast(DomainMsg::MoveDecided(decided));
                    });
                }
                false
            }
            _ => {
                let known = self
                    .ctx
                    .reader
                    .shared
                    .with(|i| i.site_of(&self.domain).map(|s| s.resolved_ms));
                if let Some(at) = known
                    && now < at.saturating_add(SITE_RECHECK_MS)
                {
                    self.site = SiteStep::Checked { at };
                    return true;
                }
                self.site = SiteStep::Resolving {
                    deliver: known.is_some(),
                };
                let (ctx, domain, me) = (self.ctx.clone(), self.domain.clone(), myself.clone());
                tokio::spawn(async move {
                    let site = match ctx.router.route(&domain).await {
                        Ok(targets) => {
                            let hosts: Vec<String> =
                                targets.iter().map(|t| t.host.clone()).collect();
                            Some(baton_reputation::site::site_name(
                                &hosts,
                                &ctx.setup.named(),
                            ))
                        }
                        Err(e) => {
                            tracing::info!(%domain, error = %e, "site not resolved; delivering under the domain's own name");
                            None
                        }
                    };
                    let _ = me.cast(DomainMsg::SiteResolved(site));
                });
                known.is_some()
            }
        }
    }

    /// The domain's site was resolved.
    fn resolved(&mut self, site: Option<String>) {
        let now = now_ms();
        let Some(site) = site else {
            self.site = SiteStep::Checked {
                at: now.saturating_sub(SITE_RECHECK_MS - SITE_RETRY_MS),
            };
            return;
        };
        let (key, base) = self.ctx.reader.shared.with(|i| {
            (
                i.owner_key(&self.domain).to_string(),
                i.site_of(&self.domain).map_or(0, |s| s.index),
            )
        });
        self.site = if site == key {
            SiteStep::Checked { at: now }
        } else {
            SiteStep::Moving {
                site,
                base,
                proposed: false,
            }
        };
    }

    /// Stops when nothing is in flight, no worker runs, and there is nothing more to do
    /// here (the domain moved away or its queue is empty).
    fn stop_if_done(&self, myself: &ActorRef<DomainMsg>) {
        if self.ctx.in_flight.count(&self.domain) == 0
            && self.workers == 0
            && !self.ctx.in_flight.moving(&self.domain)
            && !matches!(self.site, SiteStep::Resolving { .. })
            && (!self.ctx.owns(&self.domain)
                || self.ctx.reader.shared.with(|i| i.queued(&self.domain)) == 0)
        {
            myself.stop(None);
        }
    }

    fn arm_timer(&mut self, myself: &ActorRef<DomainMsg>, at: u64) {
        if at == HELD {
            // Never due: an operator's retry announces itself as a change.
            return;
        }
        let now = now_ms();
        if let Some(t) = self.timer_at
            && t > now
            && t <= at
        {
            return;
        }
        self.timer_at = Some(at);
        let wait = Duration::from_millis(at.saturating_sub(now).max(10));
        myself.send_after(wait, || DomainMsg::Poke);
    }
}
