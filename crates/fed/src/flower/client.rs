//! The Fleet API of a Flower 1.42 SuperLink as a node calls it: protobuf bodies over HTTP/1.1
//! (`POST /v1/fleet/<call>`, `application/protobuf`), every request signed with the node's
//! P-384 key (ECDSA over SHA-256 of an ISO timestamp, DER, base64), over TLS unless `--insecure`.
//! Connection failures and 502/503/504 are retried with exponential backoff.

use crate::{Error, Result};
use base64::Engine;
use p384::ecdsa::signature::hazmat::PrehashSigner;
use p384::ecdsa::{DerSignature, SigningKey};
use p384::pkcs8::{EncodePublicKey, LineEnding};
use prost::Message;
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};

/// The Flower version whose Fleet API this node speaks.
pub const FLOWER_VERSION: &str = "1.42.0";

/// How to reach the SuperLink.
#[derive(Debug, Clone)]
pub struct Connection {
    /// `HOST:PORT`.
    pub superlink: String,
    /// PEM file of the CA that signed the SuperLink's certificate; `None` with `insecure`.
    pub root_certificates: Option<std::path::PathBuf>,
    /// Plain HTTP (no TLS).
    pub insecure: bool,
    /// How long to keep retrying an unreachable SuperLink before giving up.
    pub retry_for: Duration,
    /// Set (Ctrl-C, SIGTERM) to make a retrying call give up at once.
    pub stop: Option<&'static std::sync::atomic::AtomicBool>,
}

/// Why a call failed.
#[derive(Debug)]
pub enum CallError {
    /// The run this call is about is not running (403): drop its message.
    RunNotRunning(String),
    /// The SuperLink does not know this node's key (401), e.g. after a restart: join again.
    Unauthorized,
    /// This one message cannot be handled (its objects are gone, a reply object was refused):
    /// count it and go on.
    Message(String),
    /// Anything else; fatal for the node.
    Fatal(Error),
}

impl From<Error> for CallError {
    fn from(e: Error) -> Self {
        CallError::Fatal(e)
    }
}

/// A signed Fleet API client.
pub struct Fleet {
    http: reqwest::blocking::Client,
    base: String,
    superlink: String,
    key: SigningKey,
    pem: String,
    /// Milliseconds to keep retrying (shortened for the goodbye calls at shutdown).
    retry_ms: std::sync::atomic::AtomicU64,
    stop: Option<&'static std::sync::atomic::AtomicBool>,
}

impl Fleet {
    /// A client with a fresh P-384 key (Flower registers a node by its public key; a key cannot
    /// register twice, so each process makes its own).
    pub fn new(c: &Connection) -> Result<Fleet> {
        let mut b = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(4)); // under uvicorn's 5 s keep-alive
        let scheme = if c.insecure {
            "http"
        } else {
            let path = c.root_certificates.as_ref().ok_or_else(|| {
                Error::Invalid(
                    "give --root-certificates CA.pem for TLS, or --insecure for plain HTTP".into(),
                )
            })?;
            let pem = std::fs::read(path).map_err(|e| {
                Error::Invalid(format!(
                    "--root-certificates {}: cannot read: {e}",
                    path.display()
                ))
            })?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| {
                Error::Invalid(format!(
                    "--root-certificates {}: not a PEM certificate: {e}",
                    path.display()
                ))
            })?;
            b = b.tls_built_in_root_certs(false).add_root_certificate(cert);
            "https"
        };
        let http = b
            .build()
            .map_err(|e| Error::Invalid(format!("HTTP client: {e}")))?;
        let key = SigningKey::random(&mut p384::elliptic_curve::rand_core::OsRng);
        let pem = key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| Error::Invalid(format!("encoding the node key: {e}")))?;
        Ok(Fleet {
            http,
            base: format!("{scheme}://{}/v1/fleet/", c.superlink),
            superlink: c.superlink.clone(),
            key,
            pem,
            retry_ms: std::sync::atomic::AtomicU64::new(c.retry_for.as_millis() as u64),
            stop: c.stop,
        })
    }

    /// The SuperLink's Flower version from its API description (`/openapi.json`), when it
    /// answers; a version other than 1.42 is refused by name.
    pub fn check_version(&self) -> Result<Option<String>> {
        let url = self.base.replace("/v1/fleet/", "/openapi.json");
        let Ok(r) = self.http.get(&url).send() else {
            return Ok(None); // unreachable: the first call retries and says so
        };
        let Ok(v) = r.json::<serde_json::Value>() else {
            return Ok(None);
        };
        let Some(version) = v["info"]["version"].as_str().map(String::from) else {
            return Ok(None);
        };
        let minor = |s: &str| s.split('.').take(2).collect::<Vec<_>>().join(".");
        if minor(&version) != minor(FLOWER_VERSION) {
            return Err(Error::Invalid(format!(
                "the SuperLink at {} runs Flower {version}; frugal fed node speaks the Fleet API of Flower {FLOWER_VERSION} (run flwr=={FLOWER_VERSION} there)",
                self.superlink
            )));
        }
        Ok(Some(version))
    }

    /// The retry budget now: none once a stop was asked for.
    fn retry_for(&self) -> Duration {
        if self
            .stop
            .is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed))
        {
            return Duration::ZERO;
        }
        Duration::from_millis(self.retry_ms.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Retries for at most `d` from now on (shutdown should not wait for a SuperLink that went).
    pub fn set_retry_for(&self, d: Duration) {
        self.retry_ms
            .store(d.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// The node's public key as Flower identifies it (SubjectPublicKeyInfo PEM).
    pub fn public_key(&self) -> Vec<u8> {
        self.pem.as_bytes().to_vec()
    }

    /// The signature headers of one request.
    fn sign(&self) -> Result<[(&'static str, String); 3]> {
        let ts = humantime::format_rfc3339_micros(std::time::SystemTime::now())
            .to_string()
            .replace('Z', "+00:00");
        let sig: DerSignature = self
            .key
            .sign_prehash(&Sha256::digest(ts.as_bytes()))
            .map_err(|e| Error::Invalid(format!("signing a request: {e}")))?;
        let b64 = base64::engine::general_purpose::STANDARD;
        Ok([
            ("flwr-public-key", b64.encode(self.pem.as_bytes())),
            ("flwr-timestamp", ts),
            ("flwr-signature", b64.encode(sig.as_bytes())),
        ])
    }

    /// One Fleet call; connection failures and 502/503/504 are retried with backoff (1 s
    /// doubling to 20 s) for up to `retry_for`.
    pub fn call<Req: Message, Resp: Message + Default>(
        &self,
        path: &str,
        req: &Req,
    ) -> std::result::Result<Resp, CallError> {
        let body = req.encode_to_vec();
        let t0 = Instant::now();
        let mut wait = Duration::from_secs(1);
        let mut tries = 0;
        loop {
            tries += 1;
            let mut rb = self
                .http
                .post(format!("{}{path}", self.base))
                .header("content-type", "application/protobuf")
                .header("accept", "application/protobuf")
                .header("flwr-package-name", "flwr")
                .header("flwr-package-version", FLOWER_VERSION)
                .header("flwr-component-name", "SuperNode")
                .body(body.clone());
            for (k, v) in self.sign()? {
                rb = rb.header(k, v);
            }
            let retry = match rb.send() {
                Ok(r) => {
                    let status = r.status().as_u16();
                    match r.bytes() {
                        // A connection lost mid-answer is retried like one lost before it.
                        Err(e) => error_chain(&e),
                        Ok(bytes) => match status {
                        200 => {
                            return Resp::decode(bytes.as_ref()).map_err(|e| {
                                CallError::Fatal(Error::Invalid(format!(
                                    "the SuperLink's answer to {path} is not the protobuf Flower {FLOWER_VERSION} sends ({e}); is it another Flower version?"
                                )))
                            })
                        }
                        401 => return Err(CallError::Unauthorized),
                        403 => {
                            return Err(CallError::RunNotRunning(
                                String::from_utf8_lossy(&bytes).to_string(),
                            ))
                        }
                        404 | 405 | 415 => {
                            return Err(CallError::Fatal(Error::Invalid(format!(
                                "{} answered {status} to POST /v1/fleet/{path}: it does not speak the Fleet HTTP API of Flower {FLOWER_VERSION} (older Flower SuperLinks serve gRPC only); run flwr=={FLOWER_VERSION}",
                                self.superlink
                            ))))
                        }
                        502..=504 => format!("HTTP {status}"),
                        _ => {
                            return Err(CallError::Fatal(Error::Invalid(format!(
                                "the SuperLink refused {path} ({status}): {}",
                                String::from_utf8_lossy(&bytes)
                            ))))
                        }
                        },
                    }
                }
                Err(e) => {
                    // Certificate problems do not heal by retrying: say so at once.
                    let chain = error_chain(&e);
                    if chain.contains("certificate") || chain.contains("UnknownIssuer") {
                        return Err(CallError::Fatal(Error::Invalid(format!(
                            "TLS with {} failed: {chain}; check --root-certificates (the CA that signed the SuperLink's certificate) and that the certificate names {}",
                            self.superlink,
                            self.superlink.split(':').next().unwrap_or("")
                        ))));
                    }
                    chain
                }
            };
            // Read each time: a stop request shortens it while a call is retrying.
            let retry_for = self.retry_for();
            if t0.elapsed() >= retry_for {
                return Err(CallError::Fatal(Error::Invalid(format!(
                    "the SuperLink at {} is unreachable ({retry}) after {tries} tries over {:.0} s; is it running, and is --superlink right?",
                    self.superlink,
                    t0.elapsed().as_secs_f64()
                ))));
            }
            let pause = wait.min(retry_for.saturating_sub(t0.elapsed()));
            tracing::warn!("{path}: {retry}; retrying in {:.1} s", pause.as_secs_f64());
            let slept = Instant::now();
            while slept.elapsed() < pause && t0.elapsed() < self.retry_for() {
                std::thread::sleep(Duration::from_millis(100));
            }
            wait = (wait * 2).min(Duration::from_secs(20));
        }
    }
}

/// An error and its sources, joined.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
