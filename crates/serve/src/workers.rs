//! Model workers: each model runs on its own OS thread behind a bounded queue, so inference never
//! blocks the async runtime and a full queue is answered at once with a 429.
//!
//! - `ChatWorker` runs a model's generations with continuous batching (requests join and leave
//!   between decode steps; each step decodes one token of every running generation in one pass
//!   over the weights) and streams text pieces back as they are produced; several KV caches are
//!   kept between requests (`PrefixCaches`) so a prompt prefix shared with an earlier request (a
//!   system prompt, few-shot examples, the turns of a conversation) is not computed again, even
//!   when requests with different prefixes interleave.
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
    /// Mean number of generations decoded together in this one's steps (1 when it ran alone).
    pub decode_batch: f64,
}

/// The sending side of a chat model's queue; the model itself is shared for tokenising.
#[derive(Clone)]
pub struct ChatWorker {
    pub model: Arc<ChatModel>,
    tx: mpsc::Sender<ChatJob>,
    pub queue: usize,
}

impl ChatWorker {
    /// Starts the worker thread with a queue of `queue` waiting requests, `slots` KV caches
    /// kept for prefix reuse, and up to `batch` generations decoded together.
    pub fn spawn(
        name: &str,
        model: Arc<ChatModel>,
        queue: usize,
        slots: usize,
        batch: usize,
    ) -> ChatWorker {
        let (tx, rx) = mpsc::channel::<ChatJob>(queue.max(1));
        let m = model.clone();
        std::thread::Builder::new()
            .name(format!("chat-{name}"))
            .spawn(move || serve_chat(&m, rx, slots, batch.max(1)))
            .expect("spawning a thread");
        ChatWorker { model, tx, queue }
    }

    /// Queues a job; a full queue is a 429.
    pub fn submit(&self, name: &str, job: ChatJob) -> Result<(), ApiError> {
        enqueue(&self.tx, name, self.queue, job)
    }

    /// Requests waiting (not counting those running).
    pub fn waiting(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

fn enqueue<T>(tx: &mpsc::Sender<T>, name: &str, queue: usize, job: T) -> Result<(), ApiError> {
    tx.try_send(job).map_err(|e| match e {
        mpsc::error::TrySendError::Full(_) => ApiError::busy(name, queue),
        mpsc::error::TrySendError::Closed(_) => ApiError::internal("the model worker stopped"),
    })
}

/// One generation being decoded, with its cache (checked out of the pool) and its client.
struct Active {
    cache: frugal_models::chat::KvCache,
    decoding: frugal_models::chat::Decoding,
    next: u32,
    events: mpsc::UnboundedSender<ChatEvent>,
    deadline: Instant,
    timed_out: bool,
    queue_secs: f64,
    /// Decode steps run, and the generations in them summed (for `ChatDone::decode_batch`).
    steps: usize,
    rows: usize,
}

/// Sends a text piece unless past the deadline (then it stops the generation).
fn send_piece(
    events: &mpsc::UnboundedSender<ChatEvent>,
    deadline: Instant,
    timed_out: &mut bool,
    piece: &str,
) -> bool {
    if Instant::now() >= deadline {
        *timed_out = true;
        return false;
    }
    events.send(ChatEvent::Text(piece.to_string())).is_ok()
}

/// Prompt tokens run per turn of a prompt still being read: a long prompt is read in chunks
/// between the other requests' decoding steps, so it cannot stall them, and stops at the next
/// chunk when its client goes away.
pub const PREFILL_CHUNK: usize = 256;

/// A request whose prompt is being read, a chunk a turn.
struct Pending {
    job: ChatJob,
    cache: frugal_models::chat::KvCache,
    /// Prompt tokens the cache held from the prefix pool (reported as cached).
    reused: usize,
    queue_secs: f64,
    prefill_secs: f64,
}

/// Continuous batching: requests join between decode steps (their prompts read a chunk a turn,
/// round robin, between the steps), every step decodes one token of each generation in progress
/// together, and each leaves as soon as it is done. With `batch` 1 requests run one after
/// another.
fn serve_chat(m: &ChatModel, mut rx: mpsc::Receiver<ChatJob>, slots: usize, batch: usize) {
    let mut caches = PrefixCaches::new(slots);
    let mut active: Vec<Active> = vec![];
    let mut pending: std::collections::VecDeque<Pending> = Default::default();
    loop {
        if active.is_empty() && pending.is_empty() {
            match rx.blocking_recv() {
                Some(job) => pending.push_back(checkout(m, &mut caches, job)),
                None => return,
            }
        }
        while active.len() + pending.len() < batch {
            match rx.try_recv() {
                Ok(job) => pending.push_back(checkout(m, &mut caches, job)),
                Err(_) => break,
            }
        }
        // One chunk of one prompt; a prompt read to its end starts generating.
        if let Some(mut p) = pending.pop_front() {
            if p.job.events.is_closed() {
                caches.checkin(p.cache); // the client went away while its prompt was read
            } else if Instant::now() >= p.job.deadline {
                let _ = p
                    .job
                    .events
                    .send(ChatEvent::Done(Err("timed out in the queue".into())));
                caches.checkin(p.cache);
            } else {
                let t0 = Instant::now();
                match m.prefill_chunk(&p.job.prompt_ids, &mut p.cache, PREFILL_CHUNK) {
                    Ok(true) => {
                        p.prefill_secs += t0.elapsed().as_secs_f64();
                        pending.push_back(p);
                    }
                    Ok(false) => {
                        p.prefill_secs += t0.elapsed().as_secs_f64();
                        admit(m, &mut caches, &mut active, p);
                    }
                    Err(e) => fail(&mut caches, &p.job.events, p.cache, &e),
                }
            }
        }
        if active.is_empty() {
            continue;
        }
        let tokens: Vec<u32> = active.iter().map(|a| a.next).collect();
        let mut refs: Vec<&mut frugal_models::chat::KvCache> =
            active.iter_mut().map(|a| &mut a.cache).collect();
        let logits = match m.step_batch(&tokens, &mut refs) {
            Ok(l) => l,
            Err(e) => {
                for a in active.drain(..) {
                    fail(&mut caches, &a.events, a.cache, &e);
                }
                continue;
            }
        };
        let mut still = vec![];
        let width = active.len();
        for (mut a, l) in active.drain(..).zip(logits) {
            a.steps += 1;
            a.rows += width;
            let (events, deadline) = (a.events.clone(), a.deadline);
            let r = m.advance(&mut a.decoding, l, &a.cache, &mut |p| {
                send_piece(&events, deadline, &mut a.timed_out, p)
            });
            match r {
                Ok(Some(next)) => {
                    a.next = next;
                    still.push(a);
                }
                Ok(None) => done(m, &mut caches, a),
                Err(e) => fail(&mut caches, &a.events, a.cache, &e),
            }
        }
        active = still;
    }
}

/// Takes a request in: a cache holding the longest prefix of its prompt from the pool.
fn checkout(m: &ChatModel, caches: &mut PrefixCaches, job: ChatJob) -> Pending {
    let queue_secs = job.enqueued.elapsed().as_secs_f64();
    let cache = caches.checkout(m, &job.prompt_ids);
    Pending {
        reused: cache.len(),
        cache,
        job,
        queue_secs,
        prefill_secs: 0.0,
    }
}

/// Starts a request whose prompt is read (but its last token): runs that and its first token,
/// then keeps it in `active` (or answers it at once when it is already finished or cannot run).
fn admit(m: &ChatModel, caches: &mut PrefixCaches, active: &mut Vec<Active>, p: Pending) {
    let Pending {
        job,
        mut cache,
        reused,
        queue_secs,
        prefill_secs,
    } = p;
    let (mut decoding, logits) = match m.start_prefilled(
        &job.prompt_ids,
        &job.opts,
        &mut cache,
        Some((reused, prefill_secs)),
    ) {
        Ok(x) => x,
        Err(e) => return fail(caches, &job.events, cache, &e),
    };
    let mut timed_out = false;
    let (events, deadline) = (job.events.clone(), job.deadline);
    let r = m.advance(&mut decoding, logits, &cache, &mut |p| {
        send_piece(&events, deadline, &mut timed_out, p)
    });
    let a = Active {
        cache,
        decoding,
        next: 0,
        events: job.events,
        deadline: job.deadline,
        timed_out,
        queue_secs,
        steps: 0,
        rows: 0,
    };
    match r {
        Ok(Some(next)) => active.push(Active { next, ..a }),
        Ok(None) => done(m, caches, a),
        Err(e) => fail(caches, &a.events, a.cache, &e),
    }
}

/// Ends a generation that failed: the error to the client, its cache back to the pool.
fn fail(
    caches: &mut PrefixCaches,
    events: &mpsc::UnboundedSender<ChatEvent>,
    cache: frugal_models::chat::KvCache,
    e: &frugal_models::Error,
) {
    let _ = events.send(ChatEvent::Done(Err(e.to_string())));
    caches.checkin(cache);
}

/// Ends a finished generation: the rest of its text and its result to the client, its cache
/// back to the pool.
fn done(m: &ChatModel, caches: &mut PrefixCaches, a: Active) {
    let Active {
        cache,
        decoding,
        events,
        deadline,
        mut timed_out,
        queue_secs,
        steps,
        rows,
        ..
    } = a;
    let mut generation = m.finish(decoding, &mut |p| {
        send_piece(&events, deadline, &mut timed_out, p)
    });
    if timed_out {
        generation.finish_reason = frugal_models::chat::FinishReason::Length;
    }
    let _ = events.send(ChatEvent::Done(Ok(ChatDone {
        generation,
        queue_secs,
        timed_out,
        decode_batch: if steps == 0 {
            1.0
        } else {
            rows as f64 / steps as f64
        },
    })));
    caches.checkin(cache);
}

/// KV caches kept between requests, each holding the tokens of a finished request (prompt and
/// answer). A new request gets a copy of the longest prefix any of them shares with its prompt
/// (a system prompt, few-shot examples, the earlier turns of a conversation; copying is far
/// cheaper than computing), so the kept caches stay for the other requests that share them,
/// also while generations run concurrently. A finished request's cache replaces the kept one
/// sharing most of it (one it extends, or a sibling with the same system prompt or examples:
/// at least half of the kept one in common), else takes a free slot, else the least recently
/// used one's. With 0 slots nothing is reused (every prompt computed in full: the baseline to
/// measure the reuse against).
pub struct PrefixCaches {
    slots: usize,
    kept: Vec<(frugal_models::chat::KvCache, u64)>,
    clock: u64,
}

impl PrefixCaches {
    pub fn new(slots: usize) -> PrefixCaches {
        PrefixCaches {
            slots,
            kept: vec![],
            clock: 0,
        }
    }

    /// A cache for a request with this prompt, holding the longest prefix kept.
    pub fn checkout(&mut self, model: &ChatModel, prompt: &[u32]) -> frugal_models::chat::KvCache {
        self.clock += 1;
        let best = self
            .kept
            .iter_mut()
            .map(|(c, used)| (c.common_prefix(prompt), c, used))
            .max_by_key(|(common, _, used)| (*common, **used));
        match best {
            Some((common, c, used)) if common > 0 => {
                if 2 * common >= c.len() {
                    *used = self.clock;
                }
                c.prefix_copy(common)
            }
            _ => model.new_cache(),
        }
    }

    /// Keeps a finished request's cache.
    pub fn checkin(&mut self, cache: frugal_models::chat::KvCache) {
        if self.slots == 0 || cache.is_empty() {
            return;
        }
        self.clock += 1;
        let sibling = (0..self.kept.len())
            .map(|i| (cache.common_prefix(self.kept[i].0.tokens()), i))
            .max()
            .filter(|&(common, i)| common > 0 && 2 * common >= self.kept[i].0.len())
            .map(|(_, i)| i);
        let at = match sibling {
            Some(i) => Some(i),
            None if self.kept.len() < self.slots => None,
            None => (0..self.kept.len()).min_by_key(|&i| self.kept[i].1),
        };
        match at {
            Some(i) => self.kept[i] = (cache, self.clock),
            None => self.kept.push((cache, self.clock)),
        }
    }
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
