//! The demo's embedded upstream receiver: the state monitoring system's side of the HTTPS
//! protocol (`docs/upstream-protocol.md`), on loopback, with a certificate authority and
//! credentials the demo generates. It checks what a real receiver checks (bearer token, the
//! body's HMAC signature, one copy per event id) and also what the demo proves: every new
//! event arrives in `gatewayseq` order and each machine's without a gap in `machineseq`.
//!
//! [`Receiver::set_up`] switches the uplink: while down every request is answered 503 with
//! `Retry-After: 1`, as an overloaded or failed-over state system would, and nothing is kept.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::task::JoinHandle;

use super::tally::{PerMachine, add_event};

/// What the receiver has accepted so far.
#[derive(Debug, Default)]
pub struct Inbox {
    /// Whether the uplink is up (requests accepted) or down (answered 503).
    pub up: bool,
    /// The `gatewayseq` of every event accepted: each is kept once.
    pub seqs: HashSet<u64>,
    last_gateway_seq: Option<u64>,
    last_machine_seq: HashMap<String, u64>,
    /// Bets, games and wins from the accepted events' canonical data.
    pub totals: PerMachine,
    pub out_of_order: u64,
    pub duplicates: u64,
    /// Accepted events flagged `historical`: delivered by the replay.
    pub historical: u64,
    /// Requests answered 503 because the uplink was down.
    pub refused_while_down: u64,
    /// Requests refused for a wrong token or signature, or a body that is not a batch.
    pub rejected: u64,
}

impl Inbox {
    /// Keeps a batch's new events; `Err` when it is not a batch of CloudEvents with
    /// `gatewayseq` (nothing is kept then).
    fn accept(&mut self, batch: &[Value]) -> Result<(), ()> {
        let seq = |e: &Value, field: &str| e[field].as_str().and_then(|s| s.parse::<u64>().ok());
        if batch.iter().any(|e| seq(e, "gatewayseq").is_none()) {
            return Err(());
        }
        for event in batch {
            let Some(gateway_seq) = seq(event, "gatewayseq") else { continue };
            if !self.seqs.insert(gateway_seq) {
                self.duplicates += 1;
                continue;
            }
            if self.last_gateway_seq.is_some_and(|last| gateway_seq <= last) {
                self.out_of_order += 1;
            }
            self.last_gateway_seq = self.last_gateway_seq.max(Some(gateway_seq));
            if let (Some(subject), Some(machine_seq)) =
                (event["subject"].as_str(), seq(event, "machineseq"))
            {
                let last = self.last_machine_seq.insert(subject.to_owned(), machine_seq);
                if last.is_some_and(|last| machine_seq != last + 1) {
                    self.out_of_order += 1;
                }
            }
            if event["historical"] == true {
                self.historical += 1;
            }
            add_event(&mut self.totals, &event["data"]);
        }
        Ok(())
    }
}

/// The receiver's credentials and certificate authority, as files the gateway's configuration
/// names.
#[derive(Debug)]
pub struct Credentials {
    pub ca_file: PathBuf,
    pub token_file: PathBuf,
    pub hmac_key_file: PathBuf,
    token: String,
    hmac_key: String,
    tls: Arc<rustls::ServerConfig>,
}

impl Credentials {
    /// A new CA, a server certificate for 127.0.0.1 it signs, a bearer token and an HMAC key,
    /// written into `dir` (secrets mode 0600, as `slotgate run` requires).
    pub fn generate(dir: &Path) -> anyhow::Result<Self> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let mut ca = CertificateParams::new(Vec::new())?;
        ca.distinguished_name.push(DnType::CommonName, "slotgate demo state system CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate()?;
        let ca_pem = ca.self_signed(&ca_key)?.pem();
        let issuer = Issuer::new(ca, ca_key);
        let mut server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".into()])?;
        server.distinguished_name.push(DnType::CommonName, "slotgate demo receiver");
        let server_key = KeyPair::generate()?;
        let server_cert = server.signed_by(&server_key, &issuer)?;

        let private = rustls::pki_types::PrivateKeyDer::try_from(server_key.serialize_der())
            .map_err(|e| anyhow::anyhow!("the generated server key: {e}"))?;
        let tls =
            rustls::ServerConfig::builder_with_provider(Arc::new(crate::forward::tls::provider()))
                .with_safe_default_protocol_versions()
                .context("TLS versions")?
                .with_no_client_auth()
                .with_single_cert(vec![server_cert.der().clone()], private)
                .context("the generated server certificate")?;

        let random_hex = || {
            let mut bytes = [0u8; 32];
            rand::fill(&mut bytes);
            crate::journal::record::hex(&bytes)
        };
        let creds = Self {
            ca_file: dir.join("receiver-ca.pem"),
            token_file: dir.join("receiver.token"),
            hmac_key_file: dir.join("receiver.hmac"),
            token: random_hex(),
            hmac_key: random_hex(),
            tls: Arc::new(tls),
        };
        write_file(&creds.ca_file, &ca_pem, 0o644)?;
        write_file(&creds.token_file, &creds.token, 0o600)?;
        write_file(&creds.hmac_key_file, &creds.hmac_key, 0o600)?;
        Ok(creds)
    }
}

fn write_file(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))
}

/// The running receiver; stops when dropped.
#[derive(Debug)]
pub struct Receiver {
    addr: SocketAddr,
    inbox: Arc<Mutex<Inbox>>,
    task: JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The checks and the answer for one request.
async fn handle(
    inbox: Arc<Mutex<Inbox>>,
    creds: Arc<(String, String)>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let answer = |status: StatusCode| {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = status;
        response
    };
    if request.method() != hyper::Method::POST || request.uri().path() != "/events" {
        return Ok(answer(StatusCode::NOT_FOUND));
    }
    let header = |name: &str| request.headers().get(name).map(|v| v.as_bytes().to_vec());
    let (token, signature) =
        (header("authorization"), header(crate::forward::https::SIGNATURE_HEADER));
    let body = request.into_body().collect().await?.to_bytes();
    let (expected_token, hmac_key) = &*creds;
    let signed = format!("sha256={}", crate::forward::https::sign(hmac_key.as_bytes(), &body));
    let mut inbox = inbox.lock().unwrap_or_else(PoisonError::into_inner);
    if token.as_deref() != Some(format!("Bearer {expected_token}").as_bytes())
        || signature.as_deref() != Some(signed.as_bytes())
    {
        inbox.rejected += 1;
        return Ok(answer(StatusCode::UNAUTHORIZED));
    }
    if !inbox.up {
        inbox.refused_while_down += 1;
        let mut response = answer(StatusCode::SERVICE_UNAVAILABLE);
        response
            .headers_mut()
            .insert(hyper::header::RETRY_AFTER, hyper::header::HeaderValue::from_static("1"));
        return Ok(response);
    }
    let batch: Result<Vec<Value>, _> = serde_json::from_slice(&body);
    match batch.map_err(|_| ()).and_then(|batch| inbox.accept(&batch)) {
        Ok(()) => Ok(answer(StatusCode::OK)),
        Err(()) => {
            inbox.rejected += 1;
            Ok(answer(StatusCode::BAD_REQUEST))
        }
    }
}

impl Receiver {
    /// Listens on 127.0.0.1 (a free port), up.
    pub async fn start(creds: &Credentials) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("the demo receiver cannot listen on 127.0.0.1")?;
        let addr = listener.local_addr()?;
        let inbox = Arc::new(Mutex::new(Inbox { up: true, ..Inbox::default() }));
        let acceptor = tokio_rustls::TlsAcceptor::from(creds.tls.clone());
        let secrets = Arc::new((creds.token.clone(), creds.hmac_key.clone()));
        let served = inbox.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let (acceptor, inbox, secrets) =
                    (acceptor.clone(), served.clone(), secrets.clone());
                connections.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let service = hyper::service::service_fn(move |request| {
                        handle(inbox.clone(), secrets.clone(), request)
                    });
                    // A connection error is the gateway going away: it resends what had no
                    // answer.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(Self { addr, inbox, task })
    }

    /// The URL the gateway posts to.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}/events", self.addr.port())
    }

    /// Brings the uplink up (accepting) or down (503 to everything).
    pub fn set_up(&self, up: bool) {
        self.inbox().up = up;
    }

    /// What has been accepted so far.
    pub fn inbox(&self) -> std::sync::MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn event(gateway_seq: u64, subject: &str, machine_seq: u64) -> Value {
        json!({"gatewayseq": gateway_seq.to_string(), "subject": subject,
               "machineseq": machine_seq.to_string(), "historical": false,
               "data": {"kind": "game_ended", "machine": {"registry_id": subject},
                        "data": {"games": 1, "win": {"credits": 4}}}})
    }

    #[tokio::test]
    async fn it_serves_https_checks_token_and_signature_and_answers_503_while_down() {
        let dir = tempfile::tempdir().unwrap();
        let creds = Credentials::generate(dir.path()).unwrap();
        let receiver = Receiver::start(&creds).await.unwrap();
        let files = crate::forward::tls::TlsFiles {
            ca_file: Some(creds.ca_file.clone()),
            ..Default::default()
        };
        let tls = crate::forward::tls::client_config(&files).unwrap();
        let client =
            reqwest::Client::builder().tls_backend_preconfigured((*tls).clone()).build().unwrap();
        let token = std::fs::read_to_string(&creds.token_file).unwrap();
        let key = std::fs::read_to_string(&creds.hmac_key_file).unwrap();
        let signed =
            |body: &[u8]| format!("sha256={}", crate::forward::https::sign(key.as_bytes(), body));
        let post = |token: &str, signature: String, body: &[u8]| {
            let request = client
                .post(receiver.url())
                .bearer_auth(token)
                .header(crate::forward::https::SIGNATURE_HEADER, signature)
                .body(body.to_vec());
            async move { request.send().await.unwrap() }
        };
        let body = serde_json::to_vec(&[event(1, "A", 0)]).unwrap();

        assert_eq!(post("wrong", signed(&body), &body).await.status(), 401);
        assert_eq!(post(&token, signed(b"other"), &body).await.status(), 401);
        receiver.set_up(false);
        let down = post(&token, signed(&body), &body).await;
        assert_eq!(
            (down.status().as_u16(), down.headers()["retry-after"].to_str().unwrap()),
            (503, "1")
        );
        assert!(receiver.inbox().seqs.is_empty(), "nothing kept while refused");
        receiver.set_up(true);
        assert_eq!(post(&token, signed(&body), &body).await.status(), 200);
        assert_eq!(post(&token, signed(b"{}"), b"{}").await.status(), 400);
        let counts = {
            let inbox = receiver.inbox();
            (inbox.seqs.len(), inbox.rejected, inbox.refused_while_down)
        };
        assert_eq!(counts, (1, 3, 1));
        // Only this demo's CA vouches for it: a client trusting another CA refuses it.
        let other = tempfile::tempdir().unwrap();
        let other = crate::forward::tls::TlsFiles {
            ca_file: Some(Credentials::generate(other.path()).unwrap().ca_file),
            ..Default::default()
        };
        let other = crate::forward::tls::client_config(&other).unwrap();
        let stranger =
            reqwest::Client::builder().tls_backend_preconfigured((*other).clone()).build().unwrap();
        assert!(stranger.post(receiver.url()).body(body).send().await.is_err());
    }

    #[test]
    fn events_in_order_are_kept_once_and_disorder_is_counted() {
        let mut inbox = Inbox::default();
        inbox.accept(&[event(1, "A", 0), event(2, "B", 7), event(3, "A", 1)]).unwrap();
        inbox.accept(&[event(3, "A", 1)]).unwrap();
        assert_eq!((inbox.seqs.len(), inbox.duplicates, inbox.out_of_order), (3, 1, 0));
        assert_eq!(inbox.totals["A"].games, 2);
        // A gap in A's machineseq, then an older gatewayseq arriving late.
        inbox.accept(&[event(5, "A", 3)]).unwrap();
        inbox.accept(&[event(4, "A", 2)]).unwrap();
        assert_eq!(inbox.out_of_order, 3);
        assert!(inbox.accept(&[json!({"id": "no seq"})]).is_err());
    }
}
