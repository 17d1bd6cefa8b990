//! Model workers: each model runs on its own OS thread behind a bounded queue, so inference never
//! blocks the async runtime and a full queue is answered at once with a 429.
//!
//! - `ChatWorker` generates one request at a time (the runtime's threads already use every core)
//!   and streams text pieces back as they are produced; several KV caches are kept between
//!   requests (`PrefixCaches`) so a prompt prefix shared with an earlier request (a system prompt,
//!   few-shot examples, the turns of a conversation) is not computed again, even when requests
//!   with different prefixes interleave.
//! - `BatchWorker` serves encoders and classifiers with dynamic batching: it takes every request
//!   waiting in its queue (up to `max_batch` texts) and runs them through the model together.

use crate::error::ApiError;
use frugal_models::chat::{ChatModel, GenerateOptions, Generation};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// One generation request.
pub struct ChatJob {
    pub prompt_ids: Vec<u32>,
    pub opts: GenerateOptions,
    pub events: mpsc::UnboundedSender<ChatEvent>,
    /// Generation stops here, keeping what was produced (finish reason `length`).
    pub deadline: Instant,
    pub enqueued: Instant,
}

/// What a generation sends back: text as it comes, then the result.
pub enum ChatEvent {
    Text(String),
    Done(Result<ChatDone, String>),
}

/// A finished generation and how long it waited in the queue.
pub struct ChatDone {
    pub generation: Generation,
    pub queue_secs: f64,
    /// True when the deadline cut it short.
    pub timed_out: bool,
}

/// The sending side of a chat model's queue; the model itself is shared for tokenising.
#[derive(Clone)]
pub struct ChatWorker {
    pub model: Arc<ChatModel>,
    tx: mpsc::Sender<ChatJob>,
    pub queue: usize,
}

impl ChatWorker {
    /// Starts the worker thread with a queue of `queue` waiting requests and `slots` KV caches.
    pub fn spawn(name: &str, model: Arc<ChatModel>, queue: usize, slots: usize) -> ChatWorker {
        let (tx, mut rx) = mpsc::channel::<ChatJob>(queue.max(1));
        let m = model.clone();
        std::thread::Builder::new()
            .name(format!("chat-{name}"))
            .spawn(move || {
                let mut caches = PrefixCaches::new(slots);
                while let Some(job) = rx.blocking_recv() {
                    let cache = caches.pick(&m, &job.prompt_ids);
                    run_chat(&m, cache, job);
                }
            })
            .expect("spawning a thread");
        ChatWorker { model, tx, queue }
    }

    /// Queues a job; a full queue is a 429.
    pub fn submit(&self, name: &str, job: ChatJob) -> Result<(), ApiError> {
        enqueue(&self.tx, name, self.queue, job)
    }

    /// Requests waiting (not counting the one running).
    pub fn waiting(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

/// Puts a job in a model's queue without waiting: a full queue is a 429.
fn enqueue<T>(tx: &mpsc::Sender<T>, name: &str, queue: usize, job: T) -> Result<(), ApiError> {
    tx.try_send(job).map_err(|e| match e {
        mpsc::error::TrySendError::Full(_) => ApiError::busy(name, queue),
        mpsc::error::TrySendError::Closed(_) => ApiError::internal("the model's worker stopped"),
    })
}

/// KV caches kept between requests, each holding the tokens last run in it. A request takes
/// the cache sharing the longest prefix with its prompt when it only extends it (the next turn
/// of a conversation); otherwise that shared prefix is copied into a free slot, or over the
/// least recently used cache, so the other caches keep their prefixes for the requests that
/// share them (two conversations with different system prompts that interleave, a few-shot
/// prompt asked many questions). Caches are made on first use: unused slots cost no memory.
/// With 0 slots nothing is reused (every prompt computed in full: the baseline to measure the
/// reuse against).
pub struct PrefixCaches {
    slots: usize,
    caches: Vec<(frugal_models::chat::KvCache, u64)>,
    clock: u64,
}

impl PrefixCaches {
    pub fn new(slots: usize) -> PrefixCaches {
        PrefixCaches {
            slots,
            caches: vec![],
            clock: 0,
        }
    }

    /// The cache for a request with this prompt.
    pub fn pick(
        &mut self,
        model: &ChatModel,
        prompt: &[u32],
    ) -> &mut frugal_models::chat::KvCache {
        self.clock += 1;
        if self.slots == 0 {
            if self.caches.is_empty() {
                self.caches.push((model.new_cache(), 0));
            }
            self.caches[0].0.truncate(0);
            return &mut self.caches[0].0;
        }
        let best = (0..self.caches.len())
            .map(|i| (self.caches[i].0.common_prefix(prompt), self.caches[i].1, i))
            .max_by_key(|&(common, used, _)| (common, used));
        let i = match best {
            // The prompt extends everything the cache holds: use it as it is.
            Some((common, _, i)) if common > 0 && common == self.caches[i].0.len() => i,
            _ => {
                let (common, from) = best.map_or((0, None), |(c, _, i)| (c, Some(i)));
                let target = if self.caches.len() < self.slots {
                    self.caches.push((model.new_cache(), 0));
                    self.caches.len() - 1
                } else {
                    (0..self.caches.len())
                        .min_by_key(|&i| self.caches[i].1)
                        .expect("at least one cache")
                };
                match from {
                    Some(f) if f != target && common > 0 => {
                        self.caches[target].0 = self.caches[f].0.prefix_copy(common);
                    }
                    _ => {}
                }
                target
            }
        };
        self.caches[i].1 = self.clock;
        &mut self.caches[i].0
    }
}

fn run_chat(model: &ChatModel, cache: &mut frugal_models::chat::KvCache, job: ChatJob) {
    let queue_secs = job.enqueued.elapsed().as_secs_f64();
    if job.events.is_closed() {
        return; // the client went away while it waited
    }
    let mut timed_out = false;
    if Instant::now() >= job.deadline {
        let _ = job
            .events
            .send(ChatEvent::Done(Err("timed out in the queue".into())));
        return;
    }
    let events = job.events.clone();
    let deadline = job.deadline;
    let r = model.generate(&job.prompt_ids, &job.opts, cache, &mut |piece| {
        if Instant::now() >= deadline {
            timed_out = true;
            return false;
        }
        events.send(ChatEvent::Text(piece.to_string())).is_ok()
    });
    let done = r
        .map(|mut generation| {
            if timed_out {
                generation.finish_reason = frugal_models::chat::FinishReason::Length;
            }
            ChatDone {
                generation,
                queue_secs,
                timed_out,
            }
        })
        .map_err(|e| e.to_string());
    let _ = job.events.send(ChatEvent::Done(done));
}

/// A model that maps texts to one vector each (embeddings, or label probabilities), and the
/// number of tokens it read for each.
pub type BatchFn = Box<dyn FnMut(&[&str]) -> Result<Vec<(Vec<f32>, usize)>, String> + Send>;

/// One request's texts.
pub struct BatchJob {
    pub texts: Vec<String>,
    pub reply: oneshot::Sender<Result<BatchOut, String>>,
    pub deadline: Instant,
}

/// A request's rows, its share of the batch's compute time, and the batch it rode in.
pub struct BatchOut {
    pub rows: Vec<(Vec<f32>, usize)>,
    pub compute_secs: f64,
    pub batch_texts: usize,
}

/// The sending side of an encoder's or classifier's queue.
#[derive(Clone)]
pub struct BatchWorker {
    tx: mpsc::Sender<BatchJob>,
    pub queue: usize,
    pub max_batch: usize,
}

impl BatchWorker {
    /// Starts the worker. `max_batch` texts at most run together (1: no batching across
    /// requests); it waits up to `wait` for more requests to fill a batch.
    pub fn spawn(
        name: &str,
        mut f: BatchFn,
        queue: usize,
        max_batch: usize,
        wait: Duration,
    ) -> BatchWorker {
        let (tx, mut rx) = mpsc::channel::<BatchJob>(queue.max(1));
        std::thread::Builder::new()
            .name(format!("batch-{name}"))
            .spawn(move || {
                while let Some(first) = rx.blocking_recv() {
                    let mut jobs = vec![first];
                    let mut n = jobs[0].texts.len();
                    let until = Instant::now() + wait;
                    while n < max_batch {
                        match rx.try_recv() {
                            Ok(j) => {
                                n += j.texts.len();
                                jobs.push(j);
                            }
                            Err(mpsc::error::TryRecvError::Empty) if Instant::now() < until => {
                                std::thread::sleep(Duration::from_micros(200));
                            }
                            Err(_) => break,
                        }
                    }
                    run_batch(&mut f, jobs);
                }
            })
            .expect("spawning a thread");
        BatchWorker {
            tx,
            queue,
            max_batch,
        }
    }

    /// Queues a job; a full queue is a 429.
    pub fn submit(&self, name: &str, job: BatchJob) -> Result<(), ApiError> {
        enqueue(&self.tx, name, self.queue, job)
    }

    /// Requests waiting.
    pub fn waiting(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

fn run_batch(f: &mut BatchFn, jobs: Vec<BatchJob>) {
    let now = Instant::now();
    let (live, late): (Vec<BatchJob>, Vec<BatchJob>) = jobs
        .into_iter()
        .filter(|j| !j.reply.is_closed())
        .partition(|j| now < j.deadline);
    for j in late {
        let _ = j.reply.send(Err("timed out in the queue".into()));
    }
    if live.is_empty() {
        return;
    }
    let texts: Vec<&str> = live
        .iter()
        .flat_map(|j| j.texts.iter().map(String::as_str))
        .collect();
    let n = texts.len();
    let t0 = Instant::now();
    let result = f(&texts);
    let secs = t0.elapsed().as_secs_f64();
    match result {
        Ok(mut rest) => {
            for j in live {
                let tail = rest.split_off(j.texts.len().min(rest.len()));
                let mine = std::mem::replace(&mut rest, tail);
                let share = secs * mine.len() as f64 / n.max(1) as f64;
                let _ = j.reply.send(Ok(BatchOut {
                    rows: mine,
                    compute_secs: share,
                    batch_texts: n,
                }));
            }
        }
        Err(e) => {
            for j in live {
                let _ = j.reply.send(Err(e.clone()));
            }
        }
    }
}
