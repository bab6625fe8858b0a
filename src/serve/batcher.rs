//! Dynamic batching: requests queue up, and one worker takes what is queued (plus what arrives
//! within `max_wait`, none by default, or until a token budget is full) and scores it in one
//! round on a blocking thread.
//!
//! Why: a model call on 32 sentences costs far less than 32 calls on one (the GEMMs get rows
//! to work with), so under load concurrent requests share calls: those that arrive while a
//! round runs form the next one. A fixed wait adds its length to every lone request and, in
//! the load test (docs/benchmarks.md, "Serving"), bought no throughput, so it is 0 unless set.
//! Inside a round, [`Bundle::logits`] sorts the sequences by length and packs them into calls
//! of at most `max_batch_tokens` padded tokens, as training buckets by length.
//! Rounds run one at a time: the model already uses every core, two rounds would only
//! contend. Admission (how many requests may wait) is bounded by the caller, not here.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::error::ServeError;
use super::metrics::Metrics;
use crate::stages::bundle::Bundle;

/// How rounds are formed.
#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    /// Tokens (unpadded) a round collects before it runs without waiting longer.
    pub max_batch_tokens: usize,
    /// How long the first request of a round waits for others.
    pub max_wait: Duration,
}

struct Job {
    sequences: Vec<Vec<u32>>,
    reply: oneshot::Sender<Result<Vec<Vec<f32>>, String>>,
}

/// The queue's sending side; the worker stops when every `Batcher` is dropped.
#[derive(Clone)]
pub struct Batcher {
    queue: mpsc::UnboundedSender<Job>,
}

impl Batcher {
    /// Starts the worker on the current tokio runtime.
    pub fn start(bundle: Arc<Bundle>, config: BatchConfig, metrics: Arc<Metrics>) -> Self {
        let (queue, jobs) = mpsc::unbounded_channel();
        tokio::spawn(work(jobs, bundle, config, metrics));
        Self { queue }
    }

    /// Logits of `sequences`, in order, once a round has scored them.
    pub async fn submit(&self, sequences: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>, ServeError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Job { sequences, reply })
            .map_err(|_| ServeError::ShuttingDown)?;
        answer
            .await
            .map_err(|_| ServeError::ShuttingDown)?
            .map_err(|message| ServeError::Inference { message })
    }
}

fn tokens(job: &Job) -> usize {
    job.sequences.iter().map(Vec::len).sum()
}

async fn work(
    mut jobs: mpsc::UnboundedReceiver<Job>,
    bundle: Arc<Bundle>,
    config: BatchConfig,
    metrics: Arc<Metrics>,
) {
    while let Some(first) = jobs.recv().await {
        let deadline = Instant::now() + config.max_wait;
        let mut collected = tokens(&first);
        let mut round = vec![first];
        while collected < config.max_batch_tokens {
            match tokio::time::timeout_at(deadline, jobs.recv()).await {
                Ok(Some(job)) => {
                    collected += tokens(&job);
                    round.push(job);
                }
                // The wait is over, or every sender is gone: run what there is.
                Ok(None) | Err(_) => break,
            }
        }
        // A request that timed out while queued has dropped its receiver: skip its work.
        round.retain(|job| !job.reply.is_closed());
        if round.is_empty() {
            continue;
        }
        let counts: Vec<usize> = round.iter().map(|job| job.sequences.len()).collect();
        let (sequences, replies): (Vec<Vec<Vec<u32>>>, Vec<_>) = round
            .into_iter()
            .map(|job| (job.sequences, job.reply))
            .unzip();
        let sequences: Vec<Vec<u32>> = sequences.into_iter().flatten().collect();
        metrics.record_batch(sequences.len());
        let model = Arc::clone(&bundle);
        let budget = config.max_batch_tokens;
        let scored = tokio::task::spawn_blocking(move || model.logits(&sequences, budget))
            .await
            .map_err(|error| error.to_string())
            .and_then(|result| result.map_err(|error| error.to_string()));
        match scored {
            Ok(mut rows) => {
                // Hand each request its rows, in the order they were queued.
                for (reply, count) in replies.into_iter().zip(counts) {
                    let rest = rows.split_off(count.min(rows.len()));
                    // A receiver gone since (its timeout fired) needs no answer.
                    let _ = reply.send(Ok(std::mem::replace(&mut rows, rest)));
                }
            }
            Err(message) => {
                tracing::error!("inference failed: {message}");
                for reply in replies {
                    let _ = reply.send(Err(message.clone()));
                }
            }
        }
    }
}
