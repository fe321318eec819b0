//! One pipeline's apply worker: the apply loop with its retries, its
//! dead-letter queue and the operator's commands to it.

use callosum_api::{ConnectorError, ErrorClass, ErrorKind, Fence};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use super::{connect_pipeline_sink, now_micros};
use crate::apply::{self, AppliedBatch, ApplyObserver, ApplyOptions, ApplyStop, OnPermanentError};
use crate::config::{OnError, PipelineConfig, StoreConfig};
use crate::dead_letter::{
    self, DeadLetterCommand, DeadLetterQueue, DiscardSelection, QueueSize, ReplayReport,
};
use crate::http::{AgentStatus, PipelineState};
use crate::log::{ChangeLog, DeadLetter, DeadLetters, Pending, PipelineFilter};
use crate::metrics::PipelineMetrics;
use crate::retry::RetryPolicy;

pub(super) struct ApplyWorker {
    pub pipeline: PipelineConfig,
    pub from: StoreConfig,
    pub to: StoreConfig,
    pub log: ChangeLog,
    pub dead_letters: DeadLetters,
    pub commands: mpsc::Receiver<DeadLetterCommand>,
    pub metrics: PipelineMetrics,
    pub status: Arc<AgentStatus>,
    /// The epoch every checkpoint write carries.
    pub fence: Fence,
    /// With `[lease]`: a fenced write (another agent took over) makes the
    /// agent step down; without, it halts the pipeline.
    pub steps_down: bool,
}

struct PipelineObserver<'a> {
    name: &'a str,
    metrics: &'a PipelineMetrics,
    status: &'a AgentStatus,
}

impl PipelineObserver<'_> {
    fn queue_size(&self, size: QueueSize) {
        self.metrics.dead_letter_events.set(size.events as i64);
        self.status.set_dead_letters(self.name, size.transactions);
    }
}

impl ApplyObserver for PipelineObserver<'_> {
    fn applied(&mut self, batch: &AppliedBatch) {
        let now = now_micros();
        for (_, txn) in batch.transactions {
            self.metrics
                .record_applied_transaction(txn.events, txn.commit_time_micros, now);
        }
        self.metrics
            .apply_batch_duration
            .observe(batch.duration.as_secs_f64());
        self.status
            .set_applied_position(self.name, &batch.checkpoint.to_string());
    }

    fn pending(&mut self, pending: &Pending) {
        let lag = pending
            .oldest_commit_micros
            .map_or(0.0, |oldest| (now_micros() - oldest).max(0) as f64 / 1e6);
        self.metrics.lag_seconds.set(lag);
        self.metrics.log_pending_events.set(pending.events as i64);
        self.status.set_pending(self.name, pending.events, lag);
    }

    fn dead_lettered(&mut self, entry: &DeadLetter, cause: Option<ErrorKind>, queue: QueueSize) {
        if let Some(kind) = cause {
            self.metrics.record_error(kind);
        }
        self.queue_size(queue);
        self.status
            .set_applied_position(self.name, &entry.position.to_string());
    }
}

/// Why the worker is not applying, for commands that arrive meanwhile.
enum Idle<'a> {
    Retrying(&'a ConnectorError),
    Halted(&'a ConnectorError),
}

impl ApplyWorker {
    fn observer(&self) -> PipelineObserver<'_> {
        PipelineObserver {
            name: &self.pipeline.name,
            metrics: &self.metrics,
            status: &self.status,
        }
    }

    pub(super) async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut queue = match DeadLetterQueue::open(self.dead_letters.clone()) {
            Ok(queue) => queue,
            Err(err) => {
                let err = ConnectorError::from(err);
                self.halt(&err, &mut shutdown, None).await;
                return;
            }
        };
        self.observer().queue_size(queue.size());
        let mut retry = RetryPolicy::default();
        let mut reconciled = false;
        loop {
            if crate::shutdown::is_requested(&shutdown) {
                self.stopped();
                return;
            }
            let err = match self
                .apply_once(&mut shutdown, &mut retry, &mut queue, &mut reconciled)
                .await
            {
                Ok(ApplyStop::Shutdown) => {
                    self.stopped();
                    return;
                }
                Ok(ApplyStop::Command(command)) => {
                    self.handle(command, &mut queue, &shutdown).await;
                    continue;
                }
                Err(err) => err,
            };
            self.metrics.record_error(err.kind);
            if err.kind == ErrorKind::Fenced && self.steps_down {
                super::lease_worker::step_down(&err.to_string());
            }
            if err.class() == ErrorClass::Transient {
                let delay = retry.next_delay();
                self.metrics.retries.inc();
                warn!(error = %err, attempt = retry.attempts(), delay_ms = delay.as_millis() as u64, "apply failed, retrying");
                self.status.set_state(
                    &self.pipeline.name,
                    PipelineState::Retrying,
                    Some(&err.to_string()),
                );
                let until = tokio::time::Instant::now() + delay;
                self.idle(Idle::Retrying(&err), &mut queue, &mut shutdown, Some(until))
                    .await;
            } else {
                self.halt(&err, &mut shutdown, Some(&mut queue)).await;
                return;
            }
        }
    }

    fn stopped(&self) {
        self.status
            .set_state(&self.pipeline.name, PipelineState::Stopped, None);
    }

    /// Stops the pipeline for good (until the agent restarts), answering
    /// the operator's commands until shutdown.
    async fn halt(
        &mut self,
        err: &ConnectorError,
        shutdown: &mut watch::Receiver<bool>,
        queue: Option<&mut DeadLetterQueue>,
    ) {
        error!(error = %err, on_error = self.pipeline.on_error.as_str(), "pipeline halted");
        self.status.set_state(
            &self.pipeline.name,
            PipelineState::Halted,
            Some(&err.to_string()),
        );
        match queue {
            Some(queue) => self.idle(Idle::Halted(err), queue, shutdown, None).await,
            None => {
                // the queue cannot be read: every command fails
                loop {
                    tokio::select! {
                        _ = crate::shutdown::requested(shutdown) => return,
                        Some(command) = self.commands.recv() => refuse(command, &format!(
                            "pipeline `{}` is halted: {err}", self.pipeline.name
                        )),
                    }
                }
            }
        }
    }

    /// Waits until `until` (forever when `None`) or shutdown, answering
    /// commands: discarding needs only the queue; replaying needs a
    /// pipeline that applies.
    async fn idle(
        &mut self,
        why: Idle<'_>,
        queue: &mut DeadLetterQueue,
        shutdown: &mut watch::Receiver<bool>,
        until: Option<tokio::time::Instant>,
    ) {
        let sleep = async {
            match until {
                Some(until) => tokio::time::sleep_until(until).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(sleep);
        loop {
            let command = tokio::select! {
                _ = crate::shutdown::requested(shutdown) => return,
                _ = &mut sleep => return,
                Some(command) = self.commands.recv() => command,
            };
            match command {
                DeadLetterCommand::Discard { .. } => self.handle(command, queue, shutdown).await,
                DeadLetterCommand::Replay { reply, .. } => {
                    let refusal = match why {
                        Idle::Retrying(err) => format!(
                            "pipeline `{}` is retrying after an error; replay once it streams again: {err}",
                            self.pipeline.name
                        ),
                        Idle::Halted(err) => format!(
                            "pipeline `{}` is halted; fix the cause and restart the agent, then replay: {err}",
                            self.pipeline.name
                        ),
                    };
                    let _ = reply.send(Err(refusal));
                }
            }
        }
    }

    async fn handle(
        &mut self,
        command: DeadLetterCommand,
        queue: &mut DeadLetterQueue,
        shutdown: &watch::Receiver<bool>,
    ) {
        match command {
            DeadLetterCommand::Replay { through, reply } => {
                info!(through = ?through, "replaying dead letters");
                let result = self.replay(queue, through, shutdown).await;
                if let Err(err) = &result {
                    if err.kind == ErrorKind::Fenced && self.steps_down {
                        super::lease_worker::step_down(&err.to_string());
                    }
                }
                if let Err(err) = queue.reload() {
                    warn!(error = %err, "failed to reread the dead-letter queue");
                }
                self.observer().queue_size(queue.size());
                let _ = reply.send(result.map_err(|err| err.to_string()));
            }
            DeadLetterCommand::Discard { which, reply } => {
                let result =
                    match connect_pipeline_sink(&self.pipeline, &self.from, &self.to, self.fence)
                        .await
                    {
                        Ok(mut sink) => queue.discard(&mut sink, which).await,
                        Err(err) => Err(err),
                    };
                if let Ok(report) = &result {
                    match which {
                        DiscardSelection::All => {
                            info!(discarded = report.discarded.len(), "dead letters discarded")
                        }
                        DiscardSelection::One(id) => info!(
                            dead_letter = id,
                            discarded = !report.discarded.is_empty(),
                            "dead letter discarded"
                        ),
                    }
                }
                self.observer().queue_size(queue.size());
                let _ = reply.send(result.map_err(|err| err.to_string()));
            }
        }
    }

    /// Replays through a sink of its own, whose checkpoint row is the
    /// replay's ([`dead_letter::replay_checkpoint_name`]).
    async fn replay(
        &self,
        queue: &DeadLetterQueue,
        through: Option<u64>,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<ReplayReport, ConnectorError> {
        let mut replay_pipeline = self.pipeline.clone();
        replay_pipeline.name = dead_letter::replay_checkpoint_name(&self.pipeline.name);
        let mut sink =
            connect_pipeline_sink(&replay_pipeline, &self.from, &self.to, self.fence).await?;
        dead_letter::replay(
            &mut sink,
            queue.stored(),
            through,
            self.pipeline.max_batch_events as u64,
            shutdown,
        )
        .await
    }

    async fn apply_once(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
        retry: &mut RetryPolicy,
        queue: &mut DeadLetterQueue,
        reconciled: &mut bool,
    ) -> Result<ApplyStop, ConnectorError> {
        let mut sink =
            connect_pipeline_sink(&self.pipeline, &self.from, &self.to, self.fence).await?;
        if !*reconciled {
            // the target holds the durable copy of the queue: before
            // anything is applied, the queue (and the rows it holds back)
            // is what the target says
            let done = dead_letter::target::reconcile(&mut sink, queue.stored()).await?;
            if done.changed_queue() {
                queue.reload()?;
            }
            self.observer().queue_size(queue.size());
            *reconciled = true;
        }
        let mut reader = self.log.reader(&self.pipeline.from, &self.pipeline.name)?;
        // the store's log holds every pipeline's tables, and what Callosum
        // applied into the store from this pipeline's own target
        reader.set_filter(PipelineFilter {
            tables: self
                .pipeline
                .source_tables(&self.from)
                .into_iter()
                .collect(),
            skip_origin: Some(self.pipeline.to.clone()),
        });
        retry.reset();
        self.status
            .set_state(&self.pipeline.name, PipelineState::Streaming, None);
        info!("applying");
        let on_error = match self.pipeline.on_error {
            OnError::DeadLetter => OnPermanentError::DeadLetter,
            OnError::Halt => OnPermanentError::Halt,
        };
        let mut observer = PipelineObserver {
            name: &self.pipeline.name,
            metrics: &self.metrics,
            status: &self.status,
        };
        apply::apply(
            &mut sink,
            &mut reader,
            ApplyOptions {
                max_batch_events: self.pipeline.max_batch_events as u64,
                on_error,
            },
            queue,
            &mut observer,
            shutdown,
            &mut self.commands,
        )
        .await
    }
}

/// Answers `command` with `why` it cannot be done.
pub(super) fn refuse(command: DeadLetterCommand, why: &str) {
    match command {
        DeadLetterCommand::Replay { reply, .. } => {
            let _ = reply.send(Err(why.to_owned()));
        }
        DeadLetterCommand::Discard { reply, .. } => {
            let _ = reply.send(Err(why.to_owned()));
        }
    }
}
