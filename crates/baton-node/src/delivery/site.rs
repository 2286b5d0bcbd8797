//! Sites: the throttle of each destination site, held by the site's owner node.
//!
//! A domain belongs to the site of its MX hosts (`baton_reputation::site::site_name`),
//! committed to the log by the node that resolved them (`Request::SetSite`), and
//! delivery ownership follows the site, so one node holds each site's throttle and its
//! limits hold cluster-wide.
//!
//! On the owner, a site has a [`SiteGate`], which its domains' actors and workers ask
//! for a connection and for each message's token, and a [`SiteActor`], the reputation
//! actor: it is told every classified reply and delivery of the site, runs the throttle
//! (`baton_reputation::site::Site`), sets the gate, and commits every transition
//! (`Request::SiteUpdate`, with its event), so a new owner continues from the same
//! rate, connections and suspension instead of starting at full speed.

use super::DeliveryContext;
use crate::config::ShapingConfig;
use crate::metrics as m;
use baton_cluster::Writer;
use baton_queue::clock::now_ms;
use baton_queue::types::{EventKind, Request, SiteEvent};
use baton_reputation::classify::Verdict;
use baton_reputation::pace::Pace;
use baton_reputation::site::{Mode, Shaping, Site, SiteState, Transition};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// How often a site's actor looks at the clock (suspensions ending, quiet intervals).
const TICK: Duration = Duration::from_millis(250);
/// A probe that ended without an answer about the site may be retried after this.
const PROBE_RETRY: Duration = Duration::from_secs(5);

/// The shaping settings, as configured.
#[derive(Clone)]
pub struct SiteSetup {
    pub config: ShapingConfig,
    /// `delivery.max_connections_per_domain` and `max_messages_per_connection`, the
    /// old names of `shaping.connections` and `messages_per_connection`.
    pub legacy_connections: usize,
    pub legacy_per_connection: usize,
}

impl SiteSetup {
    /// `(name, mx_suffix)` of each `[[shaping.site]]`, in order.
    pub fn named(&self) -> Vec<(String, Vec<String>)> {
        self.config
            .site
            .iter()
            .map(|s| (s.name.clone(), s.mx_suffix.clone()))
            .collect()
    }

    fn site_config(&self, site: &str) -> Option<&crate::config::SiteConfig> {
        self.config.site.iter().find(|s| s.name == site)
    }

    pub fn shaping(&self, site: &str) -> Shaping {
        self.config
            .shaping(self.site_config(site), self.legacy_connections)
    }

    pub fn per_connection(&self, site: &str) -> usize {
        self.config
            .messages_per_connection(self.site_config(site), self.legacy_per_connection)
            .max(1) as usize
    }
}

/// What the domains of a site obey: set by the site's actor, read by its domains.
pub struct SiteGate {
    pub name: String,
    /// Messages per connection.
    pub per_connection: usize,
    inner: Mutex<Gate>,
    actor: Mutex<Option<ActorRef<SiteMsg>>>,
    /// Messages accepted since the actor last looked (it counts them on its tick:
    /// no actor message per delivery).
    delivered: AtomicU32,
}

struct Gate {
    rate: Option<f64>,
    connections: u32,
    mode: Mode,
    pace: Pace,
    /// Connections open now (held by workers).
    open: u32,
    /// While probing: the probe's token is out (until this time, unix ms).
    probe_until: u64,
    /// The actor stopped (the site moved away): nothing more goes.
    closed: bool,
    /// Refusals about the site told to the actor and not yet decided: no token goes
    /// out meanwhile, so parallel workers do not keep knocking on a site that just
    /// said stop.
    undecided: u32,
}

/// One of a site's connections, held by a worker; dropping it frees the slot.
pub struct ConnectionPermit(Arc<SiteGate>);

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut g = self.0.lock();
        g.open = g.open.saturating_sub(1);
    }
}

/// Why no message may go now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Wait {
    /// Ask again after this.
    For(Duration),
    /// Not before the suspension ends, or never here (the gate closed): stop.
    Stop,
}

impl SiteGate {
    fn lock(&self) -> MutexGuard<'_, Gate> {
        // Every update is whole under the lock.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, site: &Site) {
        let mut g = self.lock();
        let s = &site.state;
        if g.mode != s.mode {
            g.probe_until = 0;
        }
        g.mode = s.mode;
        if g.rate != site.rate() {
            g.pace = Pace::empty(now_ms());
        }
        g.rate = site.rate();
        g.connections = site.connections();
    }

    /// Connections allowed now.
    pub fn connections(&self) -> u32 {
        let g = self.lock();
        if g.closed { 0 } else { g.connections }
    }

    /// When a suspension ends (unix ms), while the site is suspended.
    pub fn suspended_until(&self) -> Option<u64> {
        match self.lock().mode {
            Mode::Suspended { until_ms } => Some(until_ms),
            _ => None,
        }
    }

    /// A connection slot, if the site allows one more.
    pub fn open_connection(self: &Arc<Self>) -> Option<ConnectionPermit> {
        let mut g = self.lock();
        if g.closed || g.open >= g.connections {
            return None;
        }
        g.open += 1;
        Some(ConnectionPermit(self.clone()))
    }

    /// Whether more connections are open than allowed (a worker then closes its own).
    pub fn over_connections(&self) -> bool {
        let g = self.lock();
        g.closed || g.open > g.connections
    }

    /// One message's token at `now`, or how long to wait.
    pub fn take(&self, now: u64) -> Result<(), Wait> {
        let mut g = self.lock();
        if g.closed {
            return Err(Wait::Stop);
        }
        if g.undecided > 0 {
            return Err(Wait::For(Duration::from_millis(20)));
        }
        match g.mode {
            Mode::Suspended { .. } => Err(Wait::Stop),
            Mode::Probing if g.probe_until > now => Err(Wait::For(Duration::from_millis(
                (g.probe_until - now).min(1000),
            ))),
            Mode::Probing => {
                // One message, until its answer (or PROBE_RETRY) comes.
                g.probe_until = now + 3_600_000;
                Ok(())
            }
            _ => {
                let rate = g.rate;
                g.pace.take(now, rate).map_err(Wait::For)
            }
        }
    }

    /// A token taken for a message that then was not sent (none was due).
    pub fn untake(&self, now: u64) {
        let mut g = self.lock();
        if g.mode == Mode::Probing {
            g.probe_until = now;
        } else {
            g.pace.give_back();
        }
    }

    /// The site's actor, to tell it what the site said; false if there is none.
    pub fn tell(&self, msg: SiteMsg) -> bool {
        let actor = self.actor.lock().unwrap_or_else(|p| p.into_inner()).clone();
        actor.is_some_and(|a| a.cast(msg).is_ok())
    }

    /// A refusal about the site: no token goes out until the actor has decided on it.
    pub fn refused(&self, verdict: Verdict) {
        self.lock().undecided += 1;
        if !self.tell(SiteMsg::Refused(Box::new(verdict))) {
            self.decided();
        }
    }

    fn decided(&self) {
        let mut g = self.lock();
        g.undecided = g.undecided.saturating_sub(1);
    }

    /// The site accepted a message: counted for the actor's next tick, or told at once
    /// while probing (it ends the probe).
    pub fn delivered(&self) {
        if self.probing() {
            self.tell(SiteMsg::Delivered);
        } else {
            self.delivered.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether the site is probing (one message at a time, until one settles it).
    pub fn probing(&self) -> bool {
        self.lock().mode == Mode::Probing
    }

    /// A probe's attempt ended without settling the site: another may go later.
    fn probe_over(&self, now: u64) {
        let mut g = self.lock();
        if g.mode == Mode::Probing {
            g.probe_until = now + PROBE_RETRY.as_millis() as u64;
        }
    }

    fn close(&self) {
        self.lock().closed = true;
    }
}

/// The gates of the sites this node delivers, by name.
#[derive(Default)]
pub struct SiteRegistry {
    gates: Mutex<HashMap<String, Arc<SiteGate>>>,
}

impl SiteRegistry {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<SiteGate>>> {
        self.gates.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The gate of `site`, starting its actor from the replicated state if there is
    /// none yet.
    pub async fn gate(ctx: &Arc<DeliveryContext>, site: &str) -> Arc<SiteGate> {
        if let Some(g) = ctx.sites.lock().get(site) {
            return g.clone();
        }
        let shaping = ctx.setup.shaping(site);
        let replicated = ctx.reader.shared.with(|i| i.site_state(site).cloned());
        let throttle = match replicated {
            Some(state) => Site::resume_state(shaping, state),
            None => Site::new(shaping),
        };
        let gate = Arc::new(SiteGate {
            name: site.to_string(),
            per_connection: ctx.setup.per_connection(site),
            inner: Mutex::new(Gate {
                rate: None,
                connections: 0,
                mode: Mode::Normal,
                // Nothing saved up: a new owner continues at the committed rate, with
                // no burst of tokens earned while the site was elsewhere.
                pace: Pace::empty(now_ms()),
                open: 0,
                probe_until: 0,
                closed: false,
                undecided: 0,
            }),
            actor: Mutex::new(None),
            delivered: AtomicU32::new(0),
        });
        gate.set(&throttle);
        {
            let mut gates = ctx.sites.lock();
            if let Some(g) = gates.get(site) {
                return g.clone(); // another domain of the site was first
            }
            gates.insert(site.to_string(), gate.clone());
        }
        publish(site, &throttle);
        let args = SiteArgs {
            ctx: ctx.clone(),
            gate: gate.clone(),
            site: throttle,
        };
        match Actor::spawn(None, SiteActor, args).await {
            Ok((actor, _)) => {
                *gate.actor.lock().unwrap_or_else(|p| p.into_inner()) = Some(actor);
            }
            Err(e) => {
                tracing::error!(site = %site, error = %e, "could not start the site's reputation actor");
            }
        }
        gate
    }

    fn remove(&self, site: &str, gate: &Arc<SiteGate>) {
        let mut gates = self.lock();
        if gates.get(site).is_some_and(|g| Arc::ptr_eq(g, gate)) {
            gates.remove(site);
        }
    }
}

/// What the site's actor is told.
pub enum SiteMsg {
    /// A classified reply from one of the site's hosts.
    Reply(Box<Verdict>),
    /// A refusal about the site ([`SiteGate::refused`]): the gate waits for it.
    Refused(Box<Verdict>),
    /// The site accepted a message.
    Delivered,
    /// A probe's attempt ended without an answer about the site.
    ProbeOver,
    /// The clock.
    Tick,
}

/// The reputation actor of one site.
pub struct SiteActor;

pub struct SiteArgs {
    ctx: Arc<DeliveryContext>,
    gate: Arc<SiteGate>,
    site: Site,
}

pub struct SiteActorState {
    ctx: Arc<DeliveryContext>,
    gate: Arc<SiteGate>,
    site: Site,
    /// Replies of rules with a trigger: when each matched lately, by rule.
    seen: HashMap<String, VecDeque<u64>>,
    writer: Writer,
    /// The last operator resume acted on (a log index).
    resumed_at: u64,
}

impl Actor for SiteActor {
    type Msg = SiteMsg;
    type State = SiteActorState;
    type Arguments = SiteArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SiteMsg>,
        args: SiteArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_interval(TICK, || SiteMsg::Tick);
        let resumed_at = args
            .ctx
            .reader
            .shared
            .with(|i| i.site_resumed_at(&args.gate.name));
        Ok(SiteActorState {
            resumed_at,
            writer: args.ctx.writer.clone(),
            ctx: args.ctx,
            gate: args.gate,
            site: args.site,
            seen: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SiteMsg>,
        msg: SiteMsg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let now = now_ms();
        let (transition, verdict) = match msg {
            SiteMsg::Reply(verdict) => (state.signal(&verdict, now), Some(verdict)),
            SiteMsg::Refused(verdict) => {
                let t = state.signal(&verdict, now);
                if t.is_some() {
                    state.gate.set(&state.site);
                }
                // Decided (the gate shows it) before the commit's round trip.
                state.gate.decided();
                (t, Some(verdict))
            }
            SiteMsg::Delivered => (state.site.delivered(now), None),
            SiteMsg::ProbeOver => {
                state.gate.probe_over(now);
                return Ok(());
            }
            SiteMsg::Tick => {
                if !state.still_mine() {
                    state.gate.close();
                    state.ctx.sites.remove(&state.gate.name, &state.gate);
                    myself.stop(None);
                    return Ok(());
                }
                let resumed_at = state
                    .ctx
                    .reader
                    .shared
                    .with(|i| i.site_resumed_at(&state.gate.name));
                if resumed_at > state.resumed_at {
                    // An operator resumed the site (the event is already logged).
                    state.resumed_at = resumed_at;
                    state.site.resume(now);
                    state.gate.set(&state.site);
                    publish(&state.gate.name, &state.site);
                    return Ok(());
                }
                for _ in 0..state.gate.delivered.swap(0, Ordering::Relaxed) {
                    state.site.delivered(now);
                }
                (state.site.tick(now), None)
            }
        };
        if let Some(t) = transition {
            state.gate.set(&state.site);
            state.commit(now, t, verdict.as_deref()).await;
        }
        Ok(())
    }
}

impl SiteActorState {
    /// Whether this node still delivers the site.
    fn still_mine(&self) -> bool {
        self.ctx.owns_key(&self.gate.name)
    }

    /// The throttle's answer to `verdict`, once its rule's trigger (if any) is reached.
    fn signal(&mut self, verdict: &Verdict, now: u64) -> Option<Transition> {
        if !self.triggered(verdict, now) {
            return None;
        }
        self.site
            .signal(now, verdict.category, verdict.factor, verdict.suspend)
    }

    /// Whether `verdict` acts now: at once, or its rule's count was reached within
    /// its window.
    fn triggered(&mut self, verdict: &Verdict, now: u64) -> bool {
        let Some(trigger) = &verdict.trigger else {
            return true;
        };
        let seen = self.seen.entry(verdict.rule.clone()).or_default();
        let window = trigger.within.as_millis() as u64;
        seen.push_back(now);
        while seen
            .front()
            .is_some_and(|t| now.saturating_sub(*t) > window)
        {
            seen.pop_front();
        }
        if seen.len() >= trigger.count as usize {
            seen.clear();
            return true;
        }
        false
    }

    /// Commits the site's new state with the event of `t`.
    async fn commit(&mut self, now: u64, t: Transition, verdict: Option<&Verdict>) {
        let site = self.gate.name.clone();
        publish(&site, &self.site);
        let (kind, detail) = describe(&t, &self.site.state);
        let (rule, reply) = verdict.map_or_else(
            || (String::new(), String::new()),
            |v| (v.rule.clone(), v.reply.clone()),
        );
        tracing::info!(site = %crate::logfmt::Safe(&site), event = kind.as_str(), detail = %detail, rule = %crate::logfmt::Safe(&rule), reply = %crate::logfmt::Safe(&reply), "site");
        let request = Request::SiteUpdate {
            site: site.clone(),
            by: self.ctx.me,
            state: self.site.state.clone(),
            event: Some(SiteEvent {
                kind,
                rule,
                reply,
                detail,
                time_ms: now,
            }),
        };
        match self.writer.write(request).await {
            Ok(r) if r.changed => {}
            Ok(_) => {
                tracing::info!(site = %crate::logfmt::Safe(&site), "site state not committed: the site moved to another node")
            }
            Err(e) => {
                tracing::warn!(site = %crate::logfmt::Safe(&site), error = %e, "site state not committed")
            }
        }
    }
}

/// The event kind of a transition, and its numbers in words.
fn describe(t: &Transition, s: &SiteState) -> (EventKind, String) {
    let rate = |r: Option<f64>| match r {
        Some(r) => format!("rate {}", per_minute(r)),
        None => "rate unlimited".to_string(),
    };
    match t {
        Transition::Throttled {
            rate: r,
            connections,
        } => (
            EventKind::Throttled,
            format!("{}, {connections} connections", rate(*r)),
        ),
        Transition::Relaxed {
            rate: r,
            connections,
            normal,
        } => (
            EventKind::ThrottleRelaxed,
            format!(
                "{}, {connections} connections{}",
                rate(*r),
                if *normal { " (normal)" } else { "" }
            ),
        ),
        Transition::Suspended { until_ms } => (
            EventKind::SiteSuspended,
            format!(
                "suspended for {}s ({} in 24 h)",
                until_ms.saturating_sub(s.last_change_ms).div_ceil(1000),
                s.suspensions_ms.len()
            ),
        ),
        Transition::Probe => (EventKind::SiteProbe, "one probe message".to_string()),
        Transition::Resumed { rate: r } => (EventKind::SiteResumed, rate(*r)),
    }
}

/// A rate in messages per minute, for people.
pub fn per_minute(rate: f64) -> String {
    let m = rate * 60.0;
    if m >= 10.0 {
        format!("{m:.0}/min")
    } else {
        format!("{m:.2}/min")
    }
}

/// The site's numbers as metrics.
fn publish(site: &str, s: &Site) {
    let mode = match s.state.mode {
        Mode::Normal => 0.0,
        Mode::Throttled => 1.0,
        Mode::Suspended { .. } => 2.0,
        Mode::Probing => 3.0,
    };
    let labels = [("site", site.to_string())];
    metrics::gauge!(m::SITE_STATE, &labels).set(mode);
    metrics::gauge!(m::SITE_CONNECTIONS, &labels).set(f64::from(s.connections()));
    metrics::gauge!(m::SITE_RATE, &labels).set(s.rate().map_or(-1.0, |r| r * 60.0));
}
