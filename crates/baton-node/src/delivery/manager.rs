//! The DeliveryManager: starts one DomainDelivery per owned domain with due work, and
//! acknowledges ownership epochs once nothing they forbid is in flight here.

use super::DeliveryContext;
use super::domain::{DomainDelivery, DomainMsg};
use crate::supervisor::spawn_task;
use baton_cluster::Writer;
use baton_queue::types::Request;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub struct DeliveryManager;

pub enum ManagerMsg {
    /// The queue changed: look at the dirty domains.
    Changed,
    /// Ownership changed, or the periodic look: start actors for owned domains with
    /// work; with `poke`, also wake the running ones.
    Review { poke: bool },
}

pub struct ManagerState {
    ctx: Arc<DeliveryContext>,
    domains: HashMap<String, ActorRef<DomainMsg>>,
    by_cell: HashMap<ractor::ActorId, String>,
}

impl ManagerState {
    async fn ensure(
        &mut self,
        myself: &ActorRef<ManagerMsg>,
        domain: String,
        poke: bool,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(actor) = self.domains.get(&domain) {
            if poke {
                let _ = actor.cast(DomainMsg::Poke);
            }
            return Ok(());
        }
        if !self.ctx.owns(&domain) || self.ctx.reader.shared.with(|i| i.queued(&domain)) == 0 {
            return Ok(());
        }
        let (actor, _) = Actor::spawn_linked(
            None,
            DomainDelivery,
            (self.ctx.clone(), domain.clone()),
            myself.get_cell(),
        )
        .await?;
        self.by_cell.insert(actor.get_id(), domain.clone());
        self.domains.insert(domain, actor);
        Ok(())
    }
}

impl Actor for DeliveryManager {
    type Msg = ManagerMsg;
    type State = ManagerState;
    type Arguments = (Arc<DeliveryContext>, Writer);

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (ctx, writer): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        // Watch the queue: every apply bumps `changed`.
        let mut changed = ctx.reader.shared.changed.subscribe();
        let me = myself.clone();
        tokio::spawn(async move {
            loop {
                if me.cast(ManagerMsg::Changed).is_err() {
                    return;
                }
                if changed.changed().await.is_err() {
                    return;
                }
            }
        });
        // Ownership changes move domains here or away.
        let mut ownership = ctx.ownership.clone();
        let me = myself.clone();
        tokio::spawn(async move {
            while ownership.changed().await.is_ok() {
                if me.cast(ManagerMsg::Review { poke: true }).is_err() {
                    return;
                }
            }
        });
        // And a periodic look, for what no event announces (the lease starting).
        let me = myself.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if me.cast(ManagerMsg::Review { poke: false }).is_err() {
                    return;
                }
            }
        });
        // Linked, so it ends with this actor.
        spawn_task(myself.get_cell(), acknowledge_epochs(ctx.clone(), writer))
            .await
            .map_err(|e| format!("starting the epoch acknowledgements: {e:#}"))?;
        Ok(ManagerState {
            ctx,
            domains: HashMap::new(),
            by_cell: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (domains, poke) = match msg {
            ManagerMsg::Changed => (state.ctx.reader.shared.with(|i| i.take_dirty()), true),
            ManagerMsg::Review { poke } => (state.ctx.reader.shared.with(|i| i.domains()), poke),
        };
        for domain in domains {
            state.ensure(&myself, domain, poke).await?;
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failure): (ActorCell, Option<String>) = match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell, None),
            SupervisionEvent::ActorFailed(cell, e) => (cell, Some(e.to_string())),
            _ => return Ok(()),
        };
        let Some(domain) = state.by_cell.remove(&cell.get_id()) else {
            // The epoch acknowledgements stopped: this actor cannot do its job without
            // them, so it fails and its component is restarted.
            return Err(format!(
                "epoch acknowledgements ended: {}",
                failure.unwrap_or_else(|| "stopped".into())
            )
            .into());
        };
        state.domains.remove(&domain);
        if let Some(e) = failure {
            // Started again by the next periodic look (within a second), not at once:
            // a domain whose actor keeps failing does not spin.
            metrics::counter!(crate::metrics::DOMAIN_CRASHES).increment(1);
            tracing::error!(%domain, error = %e, "domain delivery crashed; restarting");
            return Ok(());
        }
        // Work may have arrived while it was stopping.
        state.ensure(&myself, domain, true).await
    }
}

/// Acknowledges each new ownership epoch once nothing it forbids is in flight here;
/// runs until its actor stops.
async fn acknowledge_epochs(ctx: Arc<DeliveryContext>, writer: Writer) -> anyhow::Result<()> {
    let me = ctx.me;
    let mut ownership = ctx.ownership.clone();
    let mut in_flight = ctx.in_flight.changes();
    loop {
        let view = ownership.borrow_and_update().clone();
        if !view.awaits_ack(me) {
            ownership.changed().await?;
            continue;
        }
        // Seen before the check, so a message leaving flight after it wakes us.
        in_flight.borrow_and_update();
        if ctx.clean_for(&view) {
            let ack = Request::AssignAck {
                node: me,
                epoch: view.epoch,
            };
            if let Err(e) = writer.write_applied(ack).await {
                tracing::warn!(epoch = view.epoch, error = %e, "could not acknowledge an ownership epoch");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // Applied (or failed): look again at the newest view.
            continue;
        }
        // Awaited, but something in flight forbids it: a message leaving flight, or a
        // new view, may allow it. (The in-flight count changes twice per message sent:
        // it is watched only while an acknowledgement waits.)
        tokio::select! {
            changed = ownership.changed() => changed?,
            changed = in_flight.changed() => changed?,
        }
    }
}
