//! Active/standby (`[lease]`): the I/O around [`crate::lease`]. A standby
//! tries to take the lease; once it holds it, a renewal task keeps it, the
//! targets are fenced with the new epoch and the PostgreSQL slots taken
//! over, and only then do the pipelines' workers start (and read their
//! checkpoints). A lost lease, or a fenced checkpoint write, makes the
//! agent exit at once with [`EXIT_STEPPED_DOWN`]: every worker stops with
//! the process, and the service manager restarts it as a standby.

use std::collections::{BTreeMap, BTreeSet};
use std::task::Poll;
use std::time::Duration;

use callosum_api::{
    Acquired, ConnectorError, ErrorClass, ErrorKind, Fence, LeaseHolder, LeaseStore,
};
use callosum_mysql::{MySqlLease, MySqlLeaseConfig};
use callosum_postgres::{PgLease, PgLeaseConfig};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{error, info, warn};

use super::{sink_config, sleep_or_stop, source_config, store_password, Pipelines, SourceConfig};
use crate::config::{Config, LeaseConfig, StoreConfig};
use crate::dead_letter::DeadLetterCommand;
use crate::http::{LeaseRole, LeaseStatus, PipelineState};
use crate::lease::{HeldLease, LeaseTiming, Loss, Renewal};
use crate::retry::RetryPolicy;

/// Exit status of an agent that lost its lease or found its targets fenced
/// by another agent (`EX_TEMPFAIL`): restart it (systemd
/// `Restart=on-failure`) and it comes back as a standby.
pub const EXIT_STEPPED_DOWN: i32 = 75;

/// Stops this agent at once: every worker ends with the process, an open
/// target transaction is rolled back by its server, nothing unflushed in
/// the change log was acknowledged. Exiting (instead of stopping workers
/// one by one) leaves no worker that could still commit.
pub(super) fn step_down(reason: &str) -> ! {
    error!(reason = %reason, exit_status = EXIT_STEPPED_DOWN, "lease lost: another agent is active; stepping down");
    std::process::exit(EXIT_STEPPED_DOWN)
}

/// The lease store, whatever its engine.
enum AnyLease {
    Postgres(PgLease),
    Mysql(MySqlLease),
}

macro_rules! on_lease {
    ($lease:expr, $inner:ident => $call:expr) => {
        match $lease {
            AnyLease::Postgres($inner) => $call,
            AnyLease::Mysql($inner) => $call,
        }
    };
}

impl LeaseStore for AnyLease {
    async fn try_acquire(
        &mut self,
        holder: &str,
        duration: Duration,
    ) -> Result<Option<Acquired>, ConnectorError> {
        on_lease!(self, lease => lease.try_acquire(holder, duration).await)
    }
    async fn renew(&mut self, epoch: i64, duration: Duration) -> Result<bool, ConnectorError> {
        on_lease!(self, lease => lease.renew(epoch, duration).await)
    }
    async fn release(&mut self, epoch: i64) -> Result<(), ConnectorError> {
        on_lease!(self, lease => lease.release(epoch).await)
    }
    async fn holder(&mut self) -> Result<Option<LeaseHolder>, ConnectorError> {
        on_lease!(self, lease => lease.holder().await)
    }
}

fn lease_store(config: &Config, lease: &LeaseConfig) -> Result<AnyLease, ConnectorError> {
    let store = &config.stores[&lease.store];
    let password = store_password(store)?;
    Ok(match store {
        StoreConfig::Postgres(pg) => AnyLease::Postgres(PgLease::new(PgLeaseConfig {
            store: lease.store.clone(),
            url: pg.url.clone(),
            password,
            name: lease.name.clone(),
            tls: pg.tls.clone(),
        })),
        StoreConfig::Mysql(mysql) => AnyLease::Mysql(MySqlLease::new(MySqlLeaseConfig {
            store: lease.store.clone(),
            url: mysql.url.clone(),
            password,
            name: lease.name.clone(),
            tls: mysql.tls.clone(),
        })),
    })
}

/// Waits as a standby until the lease is taken, then fences, starts the
/// pipelines and keeps the lease until shutdown, when it is released.
pub(super) async fn run(lease: LeaseConfig, mut pipelines: Pipelines) {
    let timing = LeaseTiming {
        duration: lease.duration.0,
    };
    let holder = lease.holder_name();
    let status = pipelines.status.clone();
    let metrics = pipelines.metrics.clone();
    let mut shutdown = pipelines.shutdown.clone();
    let names: Vec<String> = pipelines
        .config
        .pipelines
        .iter()
        .map(|p| p.name.clone())
        .collect();
    let halt_all = |err: &ConnectorError| {
        for name in &names {
            status.set_state(name, PipelineState::Halted, Some(&err.to_string()));
        }
    };
    let active = metrics.lease_active.with_label_values(&[holder.as_str()]);
    let epoch_gauge = metrics.lease_epoch.clone();
    active.set(0);
    status.set_lease(LeaseStatus {
        holder: holder.clone(),
        epoch: None,
        role: LeaseRole::Standby,
        active_holder: None,
    });
    let mut store = match lease_store(&pipelines.config, &lease) {
        Ok(store) => store,
        Err(err) => {
            error!(error = %err, "cannot use the lease store");
            halt_all(&err);
            return;
        }
    };
    info!(holder = %holder, name = %lease.name, duration_ms = timing.duration.as_millis() as u64, "standby: waiting for the lease");
    let held = loop {
        if crate::shutdown::is_requested(&shutdown) {
            return;
        }
        let sent = Instant::now();
        match store.try_acquire(&holder, timing.duration).await {
            Ok(Some(acquired)) => {
                break HeldLease::acquired(acquired.epoch, timing, sent.into_std());
            }
            Ok(None) => match store.holder().await {
                Ok(Some(other)) => status.set_lease(LeaseStatus {
                    holder: holder.clone(),
                    epoch: Some(other.epoch),
                    role: LeaseRole::Standby,
                    active_holder: Some(other.holder),
                }),
                Ok(None) => {}
                Err(err) => warn!(error = %err, "cannot read the lease"),
            },
            Err(err) => {
                metrics.record_error("lease", err.kind);
                warn!(error = %err, "cannot reach the lease store; staying standby");
                if err.class() == ErrorClass::Permanent {
                    for name in &names {
                        status.set_error(name, &err.to_string());
                    }
                }
            }
        }
        let active_holder = status.lease().and_then(|l| l.active_holder);
        if refuse_commands_for(
            timing.retry_every(),
            &mut pipelines.commands,
            active_holder.as_deref(),
            &mut shutdown,
        )
        .await
        {
            return;
        }
    };
    let epoch = held.epoch;
    info!(epoch, "lease taken: fencing the targets, then applying");
    epoch_gauge.set(epoch);
    status.set_lease(LeaseStatus {
        holder: holder.clone(),
        epoch: Some(epoch),
        role: LeaseRole::Active,
        active_holder: Some(holder.clone()),
    });
    for name in &names {
        status.set_state(name, PipelineState::Starting, None);
    }
    let (stop_renewing, renewing_stopped) = oneshot::channel();
    let renewer = tokio::spawn(keep(store, held, timing, renewing_stopped));

    let fence = Fence {
        epoch,
        // a paused former leader's open transaction ends after this long
        // idle, so that the fence below does not wait for it to wake up
        idle_transaction_timeout: Some(timing.duration),
    };
    let mut retry = RetryPolicy::default();
    loop {
        match take_over(&pipelines.config, fence).await {
            Ok(()) => break,
            Err(err) if err.kind == ErrorKind::Fenced => step_down(&format!(
                "{err} (right after taking the lease with epoch {epoch}: was the lease row deleted, or do agents use different [lease] stores?)"
            )),
            Err(err) if err.is_transient() => {
                metrics.record_error("lease", err.kind);
                let delay = retry.next_delay();
                warn!(error = %err, delay_ms = delay.as_millis() as u64, "cannot fence the targets yet, retrying");
                for name in &names {
                    status.set_state(name, PipelineState::Retrying, Some(&err.to_string()));
                }
                if sleep_or_stop(delay, &mut shutdown).await {
                    release(stop_renewing, renewer, epoch).await;
                    return;
                }
            }
            Err(err) => {
                metrics.record_error("lease", err.kind);
                error!(error = %err, "cannot fence the targets; pipelines halted");
                halt_all(&err);
                crate::shutdown::requested(&mut shutdown).await;
                release(stop_renewing, renewer, epoch).await;
                return;
            }
        }
    }
    active.set(1);
    let mut workers = JoinSet::new();
    if let Err(err) = pipelines.spawn(fence, true, &mut workers) {
        let err = ConnectorError::new(ErrorKind::Config, format!("{err:#}"));
        error!(error = %err, "cannot start the pipelines");
        halt_all(&err);
    }
    crate::shutdown::requested(&mut shutdown).await;
    while let Some(result) = workers.join_next().await {
        if let Err(err) = result {
            if err.is_panic() {
                std::panic::resume_unwind(err.into_panic());
            }
        }
    }
    active.set(0);
    release(stop_renewing, renewer, epoch).await;
}

/// Waits `delay` (or until shutdown: `true`) as a standby, refusing the
/// operator's dead-letter commands: only the active agent applies.
async fn refuse_commands_for(
    delay: Duration,
    commands: &mut BTreeMap<String, mpsc::Receiver<DeadLetterCommand>>,
    active_holder: Option<&str>,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let why = format!(
        "this agent is a standby and applies nothing; send the command to the active agent{}",
        active_holder.map_or(String::new(), |h| format!(" ({h})"))
    );
    let sleep = tokio::time::sleep(delay);
    tokio::pin!(sleep);
    loop {
        let next = std::future::poll_fn(|cx| {
            for receiver in commands.values_mut() {
                if let Poll::Ready(Some(command)) = receiver.poll_recv(cx) {
                    return Poll::Ready(command);
                }
            }
            Poll::Pending
        });
        tokio::select! {
            _ = crate::shutdown::requested(shutdown) => return true,
            _ = &mut sleep => return false,
            command = next => super::apply_worker::refuse(command, &why),
        }
    }
}

/// Fences every pipeline's checkpoint rows (and its replay's) with
/// `fence`'s epoch, then ends the walsenders still holding the PostgreSQL
/// slots of the captured stores. After this, a former leader can commit
/// nothing, and this agent's workers may read the checkpoints.
async fn take_over(config: &Config, fence: Fence) -> Result<(), ConnectorError> {
    for pipeline in &config.pipelines {
        let mut sink = sink_config(
            pipeline,
            &config.stores[&pipeline.from],
            &config.stores[&pipeline.to],
        )?
        .with_fence(fence)
        .connect()
        .await?;
        sink.fence(&[
            pipeline.name.clone(),
            crate::dead_letter::replay_checkpoint_name(&pipeline.name),
        ])
        .await?;
        info!(pipeline = %pipeline.name, epoch = fence.epoch, "target fenced");
    }
    let sources: BTreeSet<&String> = config.pipelines.iter().map(|p| &p.from).collect();
    for store in sources {
        if let SourceConfig::Postgres(source) =
            source_config(store, &config.stores[store], Vec::new())?
        {
            callosum_postgres::take_over_slot(&source).await?;
        }
    }
    Ok(())
}

/// Renews the lease every third of its duration until `stop`; steps down
/// (exits) the moment it is lost. Returns the store for the release.
async fn keep(
    mut store: AnyLease,
    mut held: HeldLease,
    timing: LeaseTiming,
    mut stop: oneshot::Receiver<()>,
) -> AnyLease {
    let mut sent = Instant::from_std(held.valid_until()) - timing.duration;
    loop {
        let due = Instant::from_std(held.next_renewal(sent.into_std()));
        let deadline = Instant::from_std(held.valid_until());
        tokio::select! {
            _ = &mut stop => return store,
            _ = tokio::time::sleep_until(due.min(deadline)) => {}
        }
        // a process paused past its lease wakes up here: stop before
        // sending anything
        if let Err(loss) = held.check(std::time::Instant::now()) {
            lost(loss, held.epoch);
        }
        sent = Instant::now();
        let outcome = tokio::select! {
            _ = &mut stop => return store,
            result = tokio::time::timeout_at(deadline, store.renew(held.epoch, timing.duration)) => match result {
                Ok(Ok(true)) => Renewal::Renewed,
                Ok(Ok(false)) => Renewal::Refused,
                Ok(Err(err)) => {
                    warn!(error = %err, "cannot renew the lease; retrying until it ends");
                    Renewal::Failed
                }
                Err(_) => Renewal::Failed,
            },
        };
        if let Err(loss) = held.renewal(outcome, sent.into_std(), std::time::Instant::now()) {
            lost(loss, held.epoch);
        }
        if outcome == Renewal::Failed {
            // retry soon, not a whole period later
            sent = Instant::now() - timing.renew_every() + Duration::from_millis(500);
        }
    }
}

fn lost(loss: Loss, epoch: i64) -> ! {
    step_down(&match loss {
        Loss::TakenOver => format!("the lease store says another agent took the lease (ours was epoch {epoch})"),
        Loss::Expired => format!("no renewal of lease epoch {epoch} succeeded before it would end (lease store unreachable, or this process was paused)"),
    })
}

/// Stops renewing and releases the lease, so that a standby takes over at
/// once instead of after the expiry.
async fn release(
    stop_renewing: oneshot::Sender<()>,
    renewer: tokio::task::JoinHandle<AnyLease>,
    epoch: i64,
) {
    let _ = stop_renewing.send(());
    match renewer.await {
        Ok(mut store) => match store.release(epoch).await {
            Ok(()) => info!(epoch, "lease released"),
            Err(err) => {
                warn!(error = %err, "cannot release the lease: a standby takes over when it expires")
            }
        },
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        Err(_) => {}
    }
}
