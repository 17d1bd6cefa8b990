//! A Flower SuperNode in Rust: registers with the SuperLink, keeps a heartbeat, pulls
//! instructions, runs `train` / `evaluate` with the shared node logic (`crate::node`) on local
//! data, and pushes the replies as Flower objects. Undecodable instructions get an error reply;
//! a SuperLink that forgot the node (restarted) is rejoined with a fresh key.

use super::client::{CallError, Connection, Fleet};
use super::objects::{self, Content, Obj, Value};
use super::proto;
use crate::node::{evaluate, local_round, NodeData, RoundTask};
use crate::weights::Weights;
use crate::{Error, Result};
use frugal_train::learner::Learner;
use frugal_train::trainer::TrainConfig;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How the node runs.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub connection: Connection,
    /// Seconds between heartbeats the SuperLink expects (Flower: 10..=1800).
    pub heartbeat_interval: f64,
    /// Wait between polls when there is nothing to do.
    pub poll: Duration,
    /// Local training unless the instruction's config says otherwise (`lr`, `local-epochs`,
    /// `batch-size`, `proximal-mu`).
    pub train: TrainConfig,
    /// Stop after this many instructions (tests; `None`: until stopped or the SuperLink goes).
    pub max_messages: Option<usize>,
}

/// What the node did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct NodeLog {
    pub node_id: u64,
    pub trained: usize,
    pub evaluated: usize,
    pub errors: usize,
    pub rejoined: usize,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A registered, active node and its heartbeat thread.
struct Session {
    fleet: Arc<Fleet>,
    node: proto::Node,
    alive: Arc<AtomicBool>,
}

impl Session {
    fn open(o: &NodeOptions) -> Result<Session> {
        let fleet = Arc::new(Fleet::new(&o.connection)?);
        fleet.check_version()?;
        let fatal = |e: CallError| {
            match e {
            CallError::Fatal(e) => e,
            CallError::RunNotRunning(m) => Error::Invalid(m),
            CallError::Unauthorized => Error::Invalid(
                "the SuperLink refused this node's signature (401); are the clocks in sync, and is node authentication off?".into(),
            ),
            CallError::Message(m) => Error::Invalid(m),
        }
        };
        let reg: proto::RegisterNodeFleetResponse = fleet
            .call(
                "register-node",
                &proto::RegisterNodeFleetRequest {
                    public_key: fleet.public_key(),
                },
            )
            .map_err(fatal)?;
        let act: proto::ActivateNodeResponse = fleet
            .call(
                "activate-node",
                &proto::ActivateNodeRequest {
                    public_key: fleet.public_key(),
                    heartbeat_interval: o.heartbeat_interval,
                },
            )
            .map_err(fatal)?;
        let node_id = if act.node_id != 0 {
            act.node_id
        } else {
            reg.node_id
        };
        let node = proto::Node { node_id };
        let alive = Arc::new(AtomicBool::new(true));
        // Heartbeats well inside the interval (as Flower's node: (interval − 5) · 0.7–0.9).
        let (f, a, interval) = (fleet.clone(), alive.clone(), o.heartbeat_interval);
        std::thread::spawn(move || {
            let every = Duration::from_secs_f64(((interval - 5.0) * 0.8).max(2.0));
            let mut last = Instant::now();
            while a.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));

                if last.elapsed() < every {
                    continue;
                }
                last = Instant::now();
                let r: std::result::Result<proto::SendNodeHeartbeatResponse, _> = f.call(
                    "send-node-heartbeat",
                    &proto::SendNodeHeartbeatRequest {
                        node: Some(node),
                        heartbeat_interval: interval,
                    },
                );
                if let Err(CallError::Fatal(e)) = r {
                    tracing::warn!("heartbeat: {e}");
                }
            }
        });
        Ok(Session { fleet, node, alive })
    }

    /// Deactivates and unregisters (best effort, a few seconds at most).
    fn close(self) {
        self.alive.store(false, Ordering::Relaxed);
        self.fleet.set_retry_for(Duration::from_secs(3));
        let id = self.node.node_id;
        let _: std::result::Result<proto::DeactivateNodeResponse, _> = self.fleet.call(
            "deactivate-node",
            &proto::DeactivateNodeRequest { node_id: id },
        );
        let _: std::result::Result<proto::UnregisterNodeFleetResponse, _> = self.fleet.call(
            "unregister-node",
            &proto::UnregisterNodeFleetRequest { node_id: id },
        );
    }
}

/// Runs the node until `stop` is set (or `max_messages` instructions were answered).
pub fn run(
    o: &NodeOptions,
    learner: &mut Learner,
    data: &NodeData,
    stop: &AtomicBool,
    log_line: &mut dyn FnMut(&str),
) -> Result<NodeLog> {
    let mut s = Session::open(o)?;
    let mut log = NodeLog {
        node_id: s.node.node_id,
        ..Default::default()
    };
    log_line(&format!("joined as node {}", s.node.node_id));
    let mut answered = 0;
    while !stop.load(Ordering::Relaxed) && o.max_messages.is_none_or(|m| answered < m) {
        let pulled: std::result::Result<proto::PullMessagesResponse, _> = s.fleet.call(
            "pull-messages",
            &proto::PullMessagesRequest {
                node: Some(s.node),
                message_ids: vec![],
            },
        );
        let pulled = match pulled {
            Ok(p) => p,
            Err(CallError::Unauthorized) => {
                // The SuperLink no longer knows this node (it restarted): join again.
                s.alive.store(false, Ordering::Relaxed);
                s = Session::open(o)?;
                log.rejoined += 1;
                log.node_id = s.node.node_id;
                log_line(&format!("rejoined as node {}", s.node.node_id));
                continue;
            }
            // Asked to stop while a call was retrying: that is the stop, not a failure.
            Err(CallError::Fatal(_)) if stop.load(Ordering::Relaxed) => break,
            Err(CallError::Fatal(e)) => {
                s.close();
                return Err(e);
            }
            Err(CallError::RunNotRunning(_)) | Err(CallError::Message(_)) => {
                sleep_unless(stop, o.poll);
                continue;
            }
        };
        let (Some(msg), Some(tree)) = (
            pulled.messages_list.into_iter().next(),
            pulled.message_object_trees.into_iter().next(),
        ) else {
            sleep_unless(stop, o.poll);
            continue;
        };
        let md = msg.metadata.unwrap_or_default();
        match handle(&s, &md, &tree, learner, data, o, &mut log) {
            Ok(what) => log_line(&what),
            Err(CallError::RunNotRunning(_)) => log_line("run is not running; message dropped"),
            Err(CallError::Unauthorized) => log_line("the SuperLink forgot this node mid-message"),
            Err(CallError::Message(m)) => {
                log.errors += 1;
                log_line(&format!("{}: dropped: {m}", md.message_type));
            }
            // Asked to stop while a call was retrying: that is the stop, not a failure.
            Err(CallError::Fatal(_)) if stop.load(Ordering::Relaxed) => break,
            Err(CallError::Fatal(e)) => {
                s.close();
                return Err(e);
            }
        }
        answered += 1;
    }
    s.close();
    Ok(log)
}

fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let t0 = Instant::now();
    while t0.elapsed() < d && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every object of a pulled message, children first; waits for ones not yet available.
fn pull_objects(
    s: &Session,
    run_id: u64,
    tree: &proto::ObjectTree,
    out: &mut HashMap<String, Vec<u8>>,
) -> std::result::Result<(), CallError> {
    for c in &tree.children {
        pull_objects(s, run_id, c, out)?;
    }
    if out.contains_key(&tree.object_id) {
        return Ok(());
    }
    let mut wait = Duration::from_millis(200);
    let t0 = Instant::now();
    loop {
        let r: proto::PullObjectResponse = s.fleet.call(
            "pull-object",
            &proto::PullObjectRequest {
                node: Some(s.node),
                run_id,
                object_id: tree.object_id.clone(),
            },
        )?;
        if !r.object_found {
            return Err(CallError::Message(format!(
                "the SuperLink has no object {} of run {run_id}",
                tree.object_id
            )));
        }
        if r.object_available {
            out.insert(tree.object_id.clone(), r.object_content);
            return Ok(());
        }
        if t0.elapsed() > Duration::from_secs(600) {
            return Err(CallError::Message(format!(
                "object {} of run {run_id} did not become available in 600 s",
                tree.object_id
            )));
        }
        std::thread::sleep(wait);
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

/// Pulls, runs and answers one instruction; returns a line for the log.
fn handle(
    s: &Session,
    ins: &proto::Metadata,
    tree: &proto::ObjectTree,
    learner: &mut Learner,
    data: &NodeData,
    o: &NodeOptions,
    log: &mut NodeLog,
) -> std::result::Result<String, CallError> {
    let t0 = Instant::now();
    let mut objs = HashMap::new();
    pull_objects(s, ins.run_id, tree, &mut objs)?;
    let _: proto::ConfirmMessageReceivedResponse = s.fleet.call(
        "confirm-message-received",
        &proto::ConfirmMessageReceivedRequest {
            node: Some(s.node),
            run_id: ins.run_id,
            message_object_id: ins.message_id.clone(),
        },
    )?;
    let outcome = objects::decode_message(&tree.object_id, &objs)
        .and_then(|(_, _, content)| answer(&ins.message_type, &content, learner, data, o));
    let created_at = now();
    let reply_md = proto::Metadata {
        run_id: ins.run_id,
        message_id: String::new(),
        src_node_id: ins.dst_node_id,
        dst_node_id: ins.src_node_id,
        reply_to_message_id: ins.message_id.clone(),
        group_id: ins.group_id.clone(),
        ttl: ins.created_at + ins.ttl - created_at,
        message_type: ins.message_type.clone(),
        created_at,
        src_task_id: ins.dst_task_id,
        dst_task_id: ins.src_task_id,
    };
    let (root, error, line) = match outcome {
        Ok((content, line)) => (objects::message(&reply_md, Some(content), None), None, line),
        Err(e) => {
            let error = proto::Error {
                code: 2,
                reason: e.to_string(),
            };
            let line = format!("{}: error reply: {}", ins.message_type, error.reason);
            let root = objects::message(&reply_md, None, Some(error.clone()));
            (root, Some(error), line)
        }
    };
    let mut pushed_md = reply_md.clone();
    pushed_md.message_id = root.id.clone();
    let pushed = proto::Message {
        metadata: Some(pushed_md),
        content: error.is_none().then(proto::RecordDict::default),
        error: error.clone(),
    };
    let r: proto::PushMessagesResponse = s.fleet.call(
        "push-messages",
        &proto::PushMessagesRequest {
            node: Some(s.node),
            messages_list: vec![pushed],
            message_object_trees: vec![root.tree()],
            clientapp_runtime_list: vec![t0.elapsed().as_secs_f64()],
        },
    )?;
    if r.objects_to_push.is_empty() {
        // Flower rejects a reply silently (a duplicate after a lost response, a late one…):
        // the message is lost for this round, the node goes on.
        log.errors += 1;
        return Ok(format!(
            "{}: the SuperLink did not take the reply to {} (see its log)",
            ins.message_type, ins.message_id
        ));
    }
    let mut all = HashMap::new();
    root.all(&mut all);
    for id in &r.objects_to_push {
        let content = all.get(id).cloned().ok_or_else(|| {
            Error::Invalid(format!(
                "the SuperLink asked for object {id}, which the reply does not have"
            ))
        })?;
        let p: proto::PushObjectResponse = s.fleet.call(
            "push-object",
            &proto::PushObjectRequest {
                node: Some(s.node),
                run_id: ins.run_id,
                object_id: id.clone(),
                object_content: content,
                session_id: r.session_id.clone(),
            },
        )?;
        if !p.stored {
            return Err(CallError::Message(format!(
                "the SuperLink did not store object {id} of the reply"
            )));
        }
    }
    // Counted once the reply is in (a reply the SuperLink refuses counts as an error above).
    match (&error, ins.message_type.split('.').next()) {
        (Some(_), _) => log.errors += 1,
        (None, Some("train")) => log.trained += 1,
        _ => log.evaluated += 1,
    }
    Ok(line)
}

/// A config value as a number.
fn config_f64(c: &Content, key: &str) -> Option<f64> {
    c.configs
        .iter()
        .flat_map(|(_, items)| items)
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| v.as_f64())
}

/// The global model of an instruction, in the learner's layout; names and shapes must match.
fn global_weights(c: &Content, learner: &Learner) -> Result<(Weights, Vec<String>)> {
    let (_, arrays) = c.arrays.first().ok_or_else(|| {
        Error::Invalid("the instruction carries no ArrayRecord (the global model)".into())
    })?;
    let local = Weights::from_named(&learner.weights()?)?;
    let order: Vec<String> = arrays.iter().map(|a| a.0.clone()).collect();
    let mut data = vec![];
    for (name, shape) in local.names.iter().zip(&local.shapes) {
        let (_, s, v) = arrays.iter().find(|a| a.0 == *name).ok_or_else(|| {
            Error::Invalid(format!(
                "the global model has no array '{name}' (it has {}); the node trains {}",
                order.join(", "),
                local.names.join(", ")
            ))
        })?;
        if s != shape {
            return Err(Error::Invalid(format!(
                "array '{name}' is {s:?} in the global model but {shape:?} here: are the server's checkpoint and this node's --base and --labels the same?"
            )));
        }
        data.extend_from_slice(v);
    }
    if arrays.len() != local.names.len() {
        return Err(Error::Invalid(format!(
            "the global model has {} arrays ({}); the node trains {} ({})",
            arrays.len(),
            order.join(", "),
            local.names.len(),
            local.names.join(", ")
        )));
    }
    Ok((local.with_data(data), order))
}

/// Runs a `train` or `evaluate` instruction: the reply's RecordDict and a log line.
fn answer(
    kind: &str,
    c: &Content,
    learner: &mut Learner,
    data: &NodeData,
    o: &NodeOptions,
) -> Result<(Obj, String)> {
    let (global, order) = global_weights(c, learner)?;
    let round = config_f64(c, "server-round").unwrap_or(0.0) as usize;
    match kind.split('.').next().unwrap_or("") {
        "train" => {
            let mut cfg = o.train.clone();
            if let Some(lr) = config_f64(c, "lr") {
                cfg.lr = lr;
            }
            if let Some(e) = config_f64(c, "local-epochs") {
                cfg.epochs = (e as usize).max(1);
            }
            if let Some(b) = config_f64(c, "batch-size") {
                cfg.batch = (b as usize).max(1);
            }
            let prox_mu = config_f64(c, "proximal-mu").unwrap_or(0.0);
            let update = local_round(
                learner,
                data,
                &global,
                &RoundTask {
                    round,
                    train: cfg,
                    prox_mu,
                    local_dp: None,
                },
            )?;
            let new: Vec<f32> = global
                .data
                .iter()
                .zip(&update.delta)
                .map(|(g, d)| g + d)
                .collect();
            let w = global.with_data(new);
            let named = reorder(&w, &order);
            let content = objects::record_dict(vec![
                ("arrays".into(), objects::array_record(&named)),
                (
                    "metrics".into(),
                    objects::metric_record(&[
                        ("train_loss", Value::Double(update.loss)),
                        ("num-examples", Value::Int(update.examples as i64)),
                    ]),
                ),
            ]);
            Ok((
                content,
                format!(
                    "round {round}: trained on {} examples, loss {:.4}",
                    update.examples, update.loss
                ),
            ))
        }
        "evaluate" => {
            learner.set_weights(&global.to_named()?)?;
            let n = data.valid.len();
            let m = evaluate(learner, data)?;
            let (acc, f1) = m.map_or((0.0, 0.0), |m| (m.accuracy, m.macro_f1));
            let content = objects::record_dict(vec![(
                "metrics".into(),
                objects::metric_record(&[
                    ("accuracy", Value::Double(acc)),
                    ("macro_f1", Value::Double(f1)),
                    ("num-examples", Value::Int(n as i64)),
                ]),
            )]);
            Ok((
                content,
                format!("round {round}: evaluated on {n} examples, accuracy {acc:.4}"),
            ))
        }
        other => Err(Error::Invalid(format!(
            "message type '{other}': this node answers train and evaluate"
        ))),
    }
}

/// Named arrays in `order` (the instruction's), for the reply.
fn reorder(w: &Weights, order: &[String]) -> Vec<objects::NamedArray> {
    let mut at = 0;
    let mut by_name = HashMap::new();
    for (n, s) in w.names.iter().zip(&w.shapes) {
        let len: usize = s.iter().product();
        by_name.insert(n.clone(), (s.clone(), w.data[at..at + len].to_vec()));
        at += len;
    }
    order
        .iter()
        .filter_map(|n| by_name.remove(n).map(|(s, d)| (n.clone(), s, d)))
        .collect()
}
