//! Federated learning on a real Flower federation (flwr 1.42.0, installed by `fed up` into a
//! virtual environment): a SuperLink on loopback with TLS, frugal's Flower server app, and Rust
//! `frugal fed node` processes training MiniLM heads on SpamAssassin partitions.

mod common;
use common::{fails, frugal, json_of};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Each test below runs a whole federation (a SuperLink, Flower's server app and several node
/// processes) whose rounds must meet the nodes a test starts or kills while it runs; on a
/// 2-core machine several at once starve each other and the timing breaks. One at a time.
fn one_federation_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A failed test poisons the lock; the next one still runs alone.
    ONE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every `step`-th line of a split of the SpamAssassin data (both labels, in the corpus order).
fn subset(dir: &Path, split: &str, step: usize) -> PathBuf {
    let data = dir.join("spam");
    if !data.join("train.jsonl").is_file() {
        let r = frugal()
            .args(["data", "prepare", "spamassassin", "--out"])
            .arg(&data)
            .output()
            .unwrap();
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    }
    let text = std::fs::read_to_string(data.join(format!("{split}.jsonl"))).unwrap();
    let lines: Vec<&str> = text.lines().step_by(step).collect();
    let p = dir.join(format!("{split}-every{step}.jsonl"));
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    p
}

#[test]
fn rust_nodes_train_a_classifier_on_flower_over_tls_as_the_simulation_does() {
    let _alone = one_federation_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let train = subset(dir.path(), "train", 7);
    let test = subset(dir.path(), "test", 4);
    let out = dir.path().join("up");
    let common = [
        "--nodes",
        "3",
        "--rounds",
        "4",
        "--partition",
        "iid",
        "--data",
        train.to_str().unwrap(),
        "--test",
        test.to_str().unwrap(),
        "--seed",
        "0",
    ];
    let mut args = vec!["fed", "up", "--out", out.to_str().unwrap(), "--json"];
    args.extend(common);
    let up = json_of(&args);
    assert_eq!(up["engine"], "flower");
    assert_eq!(up["tls"], true);
    // Flower's own aggregation of the nodes' replies, every round.
    let h = &up["history"];
    for r in 1..=4 {
        let k = r.to_string();
        assert!(h["train"][&k]["train_loss"].as_f64().unwrap() > 0.0, "{h}");
        assert!(h["evaluate"][&k]["accuracy"].as_f64().is_some(), "{h}");
    }
    // The initial model (a fresh head) against the final one, on the same test data.
    let eval = |model: &Path| -> f64 {
        json_of(&[
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--data",
            test.to_str().unwrap(),
            "--json",
        ])["accuracy"]
            .as_f64()
            .unwrap()
    };
    let (before, after) = (eval(&out.join("initial")), eval(&out.join("model")));
    assert!(
        after > before + 0.2,
        "initial {before}, after 4 rounds {after}"
    );
    assert!((after - up["test_accuracy"].as_f64().unwrap()).abs() < 1e-9);
    let first = h["evaluate"]["1"]["accuracy"].as_f64().unwrap();
    let last = h["evaluate"]["4"]["accuracy"].as_f64().unwrap();
    assert!(last >= first - 0.02, "round 1 {first}, round 4 {last}");
    // Every node answered every instruction, with no error replies.
    for i in 0..3 {
        let log = std::fs::read_to_string(out.join(format!("logs/node{i}.log"))).unwrap();
        assert!(
            log.contains("4 train and 4 evaluate instructions answered, 0 errors"),
            "{log}"
        );
    }
    // The same federation simulated in one process lands within noise.
    let mut args = vec!["fed", "simulate", "--no-centralised", "--json", "--out"];
    let sim_out = dir.path().join("sim");
    args.push(sim_out.to_str().unwrap());
    args.extend(common);
    let sim = json_of(&args);
    let sim_acc = sim["final"]["test_accuracy"].as_f64().unwrap();
    assert!(
        (sim_acc - after).abs() < 0.03,
        "Flower {after}, simulation {sim_acc}"
    );
}

/// A child stopped (SIGTERM: `fed up` then stops what it started) if the test fails.
struct Kill(Option<std::process::Child>);

impl Drop for Kill {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = std::process::Command::new("kill")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
    }
}

/// `frugal fed up ARGS` on IID partitions of `train`, writing to `out`, its output piped (read
/// after it ends); stopped if the test fails.
fn start_up(args: &[&str], train: &Path, out: &Path) -> Kill {
    let child = frugal()
        .args(["fed", "up"])
        .args(args)
        .args(["--partition", "iid", "--json", "--data"])
        .arg(train)
        .arg("--out")
        .arg(out)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    Kill(Some(child))
}

/// The port and CA of a running `fed up` (from the Flower config it wrote).
fn superlink_of(out: &Path) -> Option<(String, PathBuf)> {
    let cfg = std::fs::read_to_string(out.join("flwr/config.toml")).ok()?;
    let addr = cfg
        .lines()
        .find_map(|l| l.strip_prefix("address = \"")?.strip_suffix('"'))?
        .to_string();
    Some((addr, out.join("tls/ca.pem")))
}

#[test]
fn a_federation_survives_a_killed_node_and_a_node_that_cannot_take_the_model() {
    let _alone = one_federation_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let train = subset(dir.path(), "train", 9);
    let out = dir.path().join("up");
    let mut up = start_up(
        &["--nodes", "3", "--min-nodes", "2", "--rounds", "30"],
        &train,
        &out,
    );
    // Once node 0 has trained a round, kill it (no goodbye) ...
    let t0 = Instant::now();
    let log0 = out.join("logs/node0.log");
    while !std::fs::read_to_string(&log0)
        .unwrap_or_default()
        .contains(": trained on")
    {
        let ended = up.0.as_mut().unwrap().try_wait().unwrap();
        if ended.is_some() || t0.elapsed() > Duration::from_secs(600) {
            let read =
                |f: &str| std::fs::read_to_string(out.join("logs").join(f)).unwrap_or_default();
            panic!(
                "node 0 never trained ({ended:?})\nnode0: {}\nserver app: {}",
                read("node0.log"),
                read("serverapp.log")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let node0 = out.join("nodes/node0.jsonl");
    let killed = std::process::Command::new("pkill")
        .args(["-KILL", "-f", node0.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(killed.success());
    // ... and, while the run is on (30 rounds: a federation of small nodes finishes a round in
    // seconds, and both nodes below must meet it running), a node given another CA is told
    // what failed ...
    let (addr, ca) = superlink_of(&out).unwrap();
    let other = dir.path().join("other-ca.pem");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    std::fs::write(&other, p.self_signed(&ca_key).unwrap().pem()).unwrap();
    fails(
        &[
            "fed",
            "node",
            "--superlink",
            &addr,
            "--root-certificates",
            other.to_str().unwrap(),
            "--data",
            train.to_str().unwrap(),
            "--retry-for",
            "5",
        ],
        &["TLS with", "--root-certificates"],
    );
    // ... and a node whose model has three labels: the global model does not fit it.
    let odd = frugal()
        .args(["fed", "node", "--superlink", &addr, "--root-certificates"])
        .arg(&ca)
        .args([
            "--data",
            train.to_str().unwrap(),
            "--labels",
            "ham,spam,other",
        ])
        .args(["--heartbeat", "10", "--max-messages", "1"])
        .output()
        .unwrap();
    let odd_log = String::from_utf8_lossy(&odd.stderr);
    assert!(odd.status.success(), "{odd_log}");
    assert!(
        odd_log.contains("error reply") && odd_log.contains("in the global model but [3"),
        "{odd_log}"
    );
    // The run goes on with the nodes left and finishes.
    let r = up.0.take().unwrap().wait_with_output().unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let v: Value = serde_json::from_slice(&r.stdout).unwrap();
    assert!(
        v["history"]["evaluate"]["30"]["accuracy"]
            .as_f64()
            .is_some(),
        "{v}"
    );
    let server = std::fs::read_to_string(out.join("logs/serverapp.log")).unwrap();
    assert!(server.contains("failures"), "{server}");
}

#[test]
fn an_unreachable_superlink_is_retried_then_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.jsonl");
    std::fs::write(
        &data,
        "{\"text\": \"a\", \"label\": \"x\"}\n{\"text\": \"b\", \"label\": \"y\"}\n",
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let t0 = Instant::now();
    fails(
        &[
            "fed",
            "node",
            "--superlink",
            &addr,
            "--insecure",
            "--data",
            data.to_str().unwrap(),
            "--retry-for",
            "3",
        ],
        &[&format!("the SuperLink at {addr} is unreachable"), "tries"],
    );
    assert!(t0.elapsed() >= Duration::from_secs(2), "it retried");
    fails(
        &[
            "fed",
            "node",
            "--superlink",
            &addr,
            "--data",
            data.to_str().unwrap(),
        ],
        &["--root-certificates"],
    );
    fails(
        &[
            "fed",
            "node",
            "--superlink",
            &addr,
            "--insecure",
            "--data",
            data.to_str().unwrap(),
            "--heartbeat",
            "5",
        ],
        &["--heartbeat 5", "10 to 1800"],
    );
}

#[test]
fn a_superlink_of_another_flower_version_is_named() {
    let _alone = one_federation_at_a_time();
    use std::io::{Read, Write};
    // A server that describes itself as Flower 1.41.0 (as a SuperLink's /openapi.json does).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten().take(4) {
            let mut s = s;
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let body = r#"{"info": {"title": "SuperLink API", "version": "1.41.0"}}"#;
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.jsonl");
    std::fs::write(
        &data,
        "{\"text\": \"a\", \"label\": \"x\"}\n{\"text\": \"b\", \"label\": \"y\"}\n",
    )
    .unwrap();
    fails(
        &[
            "fed",
            "node",
            "--superlink",
            &addr,
            "--insecure",
            "--data",
            data.to_str().unwrap(),
        ],
        &[
            "runs Flower 1.41.0",
            "speaks the Fleet API of Flower 1.42.0",
        ],
    );
}

/// The pinned Flower's `bin` folder, as `fed up` and .ci/run make it.
fn flower_bin() -> PathBuf {
    let home = std::env::var_os("FRUGAL_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/frugal"));
    home.join("venvs/flwr-1.42.0/bin")
}

#[test]
fn a_node_started_before_its_superlink_keeps_trying_and_joins() {
    let _alone = one_federation_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let train = subset(dir.path(), "train", 50);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let log = dir.path().join("node.log");
    let node = frugal()
        .args([
            "fed",
            "node",
            "--superlink",
            &addr,
            "--insecure",
            "--retry-for",
            "120",
        ])
        .args(["--data", train.to_str().unwrap(), "--heartbeat", "10"])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut node = Kill(Some(node));
    std::thread::sleep(Duration::from_secs(4));
    let bin = flower_bin();
    if !bin.join("flower-superlink").is_file() {
        // `fed up` makes the venv; run it once (quick, insecure, 1 round) if no test did yet.
        let up = dir.path().join("warm");
        json_of(&[
            "fed",
            "up",
            "--nodes",
            "2",
            "--rounds",
            "1",
            "--insecure",
            "--data",
            train.to_str().unwrap(),
            "--partition",
            "iid",
            "--out",
            up.to_str().unwrap(),
            "--json",
        ]);
    }
    let home = dir.path().join("flwr");
    std::fs::create_dir_all(&home).unwrap();
    let superlink = std::process::Command::new(bin.join("flower-superlink"))
        .args([
            "--insecure",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .arg("--disable-runtime-dependency-installation")
        .env(
            "PATH",
            format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        )
        .env("FLWR_HOME", &home)
        .env("FLWR_TELEMETRY_ENABLED", "0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _superlink = Kill(Some(superlink));
    let t0 = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap()
        .contains("joined as node")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "{}",
            std::fs::read_to_string(&log).unwrap()
        );
        assert!(
            node.0.as_mut().unwrap().try_wait().unwrap().is_none(),
            "the node gave up"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn fedprox_with_server_side_differential_privacy_runs_on_flower() {
    let _alone = one_federation_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let train = subset(dir.path(), "train", 12);
    let out = dir.path().join("prox");
    let v = json_of(&[
        "fed",
        "up",
        "--nodes",
        "3",
        "--rounds",
        "2",
        "--insecure",
        "--partition",
        "iid",
        "--strategy",
        "fedprox",
        "--proximal-mu",
        "0.1",
        "--dp-noise",
        "0.1",
        "--dp-clip",
        "5",
        "--data",
        train.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(v["strategy"], "fedprox");
    assert!(
        v["history"]["train"]["2"]["train_loss"].as_f64().is_some(),
        "{v}"
    );
    let server = std::fs::read_to_string(out.join("logs/serverapp.log")).unwrap();
    assert!(server.to_lowercase().contains("clipping"), "{server}");
    // The nodes were told FedProx's μ.
    let info: Value =
        serde_json::from_slice(&std::fs::read(out.join("model/frugal.json")).unwrap()).unwrap();
    assert_eq!(info["federated"]["strategy"], "fedprox");
}

/// A TCP proxy to `upstream` that can drop every connection and refuse new ones for a while.
struct Proxy {
    addr: String,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Proxy {
    fn start(upstream: String) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(vec![]));
        let (d, c) = (down.clone(), conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if d.load(Ordering::Relaxed) {
                    continue; // dropped: the connection closes at once
                }
                let Ok(server) = std::net::TcpStream::connect(&upstream) else {
                    continue;
                };
                let mut list = c.lock().unwrap();
                list.push(client.try_clone().unwrap());
                list.push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Proxy { addr, down, conns }
    }

    /// Cuts every open connection and refuses new ones for `d`.
    fn outage(&self, d: Duration) {
        use std::sync::atomic::Ordering;
        self.down.store(true, Ordering::Relaxed);
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        std::thread::sleep(d);
        self.down.store(false, Ordering::Relaxed);
    }
}

#[test]
fn a_node_whose_connection_drops_mid_run_comes_back_and_keeps_training() {
    let _alone = one_federation_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let train = subset(dir.path(), "train", 12);
    let out = dir.path().join("up");
    // Two nodes from `fed up`; the run waits for a third, which reaches the SuperLink through a
    // proxy that will cut it off for a few seconds.
    let mut up = start_up(
        &[
            "--nodes",
            "2",
            "--min-nodes",
            "2",
            "--rounds",
            "4",
            "--insecure",
        ],
        &train,
        &out,
    );
    let t0 = Instant::now();
    let addr = loop {
        if let Some((a, _)) = superlink_of(&out) {
            if std::net::TcpStream::connect(&a).is_ok() {
                break a;
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(300), "no SuperLink");
        assert!(
            up.0.as_mut().unwrap().try_wait().unwrap().is_none(),
            "fed up ended"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let proxy = Proxy::start(addr);
    let log = dir.path().join("node.log");
    let node = frugal()
        .args([
            "fed",
            "node",
            "--superlink",
            &proxy.addr,
            "--insecure",
            "--heartbeat",
            "10",
        ])
        .args([
            "--data",
            train.to_str().unwrap(),
            "--retry-for",
            "60",
            "--poll-ms",
            "300",
        ])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut node = Kill(Some(node));
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    while !read().contains(": trained on") {
        assert!(t0.elapsed() < Duration::from_secs(600), "{}", read());
        std::thread::sleep(Duration::from_millis(200));
    }
    let before = read().matches(": trained on").count() + read().matches(": evaluated on").count();
    proxy.outage(Duration::from_secs(5));
    // The run finishes, and the node answered instructions after the outage.
    let r = up.0.take().unwrap().wait_with_output().unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let after = read().matches(": trained on").count() + read().matches(": evaluated on").count();
    assert!(
        after > before,
        "nothing answered after the outage:\n{}",
        read()
    );
    assert!(!read().contains("error reply"), "{}", read());
    let _ = node.0.as_mut().unwrap().try_wait();
}
