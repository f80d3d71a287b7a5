//! Upstream test support for the forwarder tests: everything the state system side of slotgate
//! looks like, run for real on loopback.
//!
//! - [`Certs`]: a test CA, a server certificate for `localhost`/127.0.0.1, a client certificate
//!   (CN `gw-001`) and an unrelated CA for wrong-CA tests, as PEM files, plus rustls configs.
//! - [`Mosquitto`]: Debian's broker on a free port, plain or TLS, stoppable and restartable on
//!   the same port.
//! - [`Subscriber`]: an MQTT QoS 1 subscriber that records every message and resubscribes
//!   after every reconnection.
//! - [`FaultProxy`]: a TCP proxy whose connections can be cut and refused on demand.
//! - [`Receiver`]: an HTTPS receiver for CloudEvents batches with switchable failure modes,
//!   which also serves pending remote commands and records their acknowledgements.
//!
//! Every helper that runs network code owns a one-worker tokio runtime of its own (not a task
//! on the caller's runtime), so the helpers work the same from a plain `#[test]` and from
//! `#[tokio::test(flavor = "multi_thread")]`; the runtime is shut down in the background on
//! drop, which is allowed inside async code. All sockets are on 127.0.0.1 with free ports, every
//! wait has a timeout, and child processes are killed on drop.

// Each test crate uses a different subset of these helpers.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::HashMap;
use std::future::Future;
use std::net::{SocketAddr, TcpListener as StdTcpListener, TcpStream as StdTcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// Installs ring as the process-wide rustls provider (idempotent).
// rustls 0.23.48 deprecated `ring::default_provider` (no post-quantum key exchange); ring is
// still the provider slotgate uses.
#[allow(deprecated)]
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    StdTcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `done` every 10 ms until it holds or `timeout` passes; whether it held.
pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// [`wait_until`] for async tests: sleeps on the caller's runtime instead of blocking it.
pub async fn wait_until_async(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn unique_id(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A bound, non-blocking loopback listener to hand to a helper runtime.
fn loopback_listener() -> (StdTcpListener, SocketAddr) {
    let listener = StdTcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// A one-worker runtime owned by a helper, shut down in the background when dropped.
#[derive(Debug)]
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl OwnRuntime {
    fn new(name: &str) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(name)
            .enable_all()
            .build()
            .unwrap();
        Self(Some(runtime))
    }

    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.0.as_ref().unwrap().spawn(task);
    }
}

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Certificates

/// Test PKI as PEM files in `dir` (keys are PKCS#8).
#[derive(Debug, Clone)]
pub struct Certs {
    pub dir: PathBuf,
    /// The CA that signed the server and client certificates.
    pub ca: PathBuf,
    /// For DNS `localhost` and IP 127.0.0.1, serverAuth.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// CN `gw-001`, clientAuth.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A second CA that signed nothing here.
    pub other_ca: PathBuf,
}

fn new_ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}

fn new_leaf(
    names: &[&str],
    cn: &str,
    usage: ExtendedKeyUsagePurpose,
    ca: &Issuer<'static, KeyPair>,
) -> (String, String) {
    let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn read_certs(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path).unwrap().map(Result::unwrap).collect()
}

fn read_key(path: &Path) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_file(path).unwrap()
}

fn root_store(ca: &Path) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(ca) {
        roots.add(cert).unwrap();
    }
    roots
}

impl Certs {
    /// Generates a fresh PKI into `dir` (created if missing).
    pub fn generate(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let (ca_pem, ca) = new_ca("slotgate test CA");
        let (other_ca_pem, _) = new_ca("unrelated test CA");
        let (server_pem, server_key_pem) = new_leaf(
            &["localhost", "127.0.0.1"],
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
            &ca,
        );
        let (client_pem, client_key_pem) =
            new_leaf(&[], "gw-001", ExtendedKeyUsagePurpose::ClientAuth, &ca);
        let certs = Self {
            dir: dir.to_path_buf(),
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server-key.pem"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client-key.pem"),
            other_ca: dir.join("other-ca.pem"),
        };
        for (path, pem) in [
            (&certs.ca, &ca_pem),
            (&certs.server_cert, &server_pem),
            (&certs.server_key, &server_key_pem),
            (&certs.client_cert, &client_pem),
            (&certs.client_key, &client_key_pem),
            (&certs.other_ca, &other_ca_pem),
        ] {
            std::fs::write(path, pem).unwrap();
        }
        // `slotgate run` refuses private keys others can read.
        for key in [&certs.server_key, &certs.client_key] {
            std::fs::set_permissions(key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap();
        }
        certs
    }

    /// Server side with the server certificate; client certificates are verified against `ca`
    /// and required when `require_client_cert`, not asked for otherwise.
    pub fn server_config(&self, require_client_cert: bool) -> Arc<rustls::ServerConfig> {
        install_crypto();
        let builder = rustls::ServerConfig::builder();
        let builder = if require_client_cert {
            let roots = Arc::new(root_store(&self.ca));
            builder.with_client_cert_verifier(WebPkiClientVerifier::builder(roots).build().unwrap())
        } else {
            builder.with_no_client_auth()
        };
        let config = builder
            .with_single_cert(read_certs(&self.server_cert), read_key(&self.server_key))
            .unwrap();
        Arc::new(config)
    }

    /// Client side trusting `ca`, presenting the client certificate when `client_cert`.
    pub fn client_config(&self, client_cert: bool) -> rustls::ClientConfig {
        self.client_config_trusting(&self.ca, client_cert)
    }

    /// Client side trusting only the CA file `trust` (e.g. `&certs.other_ca`).
    pub fn client_config_trusting(&self, trust: &Path, client_cert: bool) -> rustls::ClientConfig {
        install_crypto();
        let builder = rustls::ClientConfig::builder().with_root_certificates(root_store(trust));
        if client_cert {
            builder
                .with_client_auth_cert(read_certs(&self.client_cert), read_key(&self.client_key))
                .unwrap()
        } else {
            builder.with_no_client_auth()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Mosquitto

#[derive(Debug, Default, Clone)]
pub struct MosquittoOptions {
    /// TLS 1.2 listener with the server certificate of these certs.
    pub tls: Option<Certs>,
    /// With `tls`: clients must present a certificate signed by the CA.
    pub require_client_cert: bool,
    /// Keep sessions and queued messages across `restart` (saved on SIGTERM).
    pub persistence: bool,
    /// A fixed port; a free one when `None`.
    pub port: Option<u16>,
    /// When not empty, only these `(user, password)` may connect (`mosquitto_passwd`).
    pub users: Vec<(String, String)>,
}

/// A `mosquitto` process configured by `dir/mosquitto.conf`, logging to `dir/mosquitto.log`.
#[derive(Debug)]
pub struct Mosquitto {
    dir: PathBuf,
    options: MosquittoOptions,
    port: u16,
    child: Option<Child>,
}

fn mosquitto_bin() -> PathBuf {
    let on_path = Command::new("which").arg("mosquitto").output();
    match on_path {
        Ok(out) if out.status.success() => {
            PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
        }
        _ if Path::new("/usr/sbin/mosquitto").exists() => PathBuf::from("/usr/sbin/mosquitto"),
        _ => panic!("mosquitto is not installed: run `apt-get install -y mosquitto`"),
    }
}

/// Effective uid 0 (`nix::unistd::geteuid` needs a nix feature slotgate does not enable).
fn running_as_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let uids = status.lines().find_map(|line| line.strip_prefix("Uid:")).unwrap();
    uids.split_whitespace().nth(1) == Some("0")
}

impl Mosquitto {
    /// Starts the broker and waits (10 s at most) until it accepts TCP connections.
    pub fn start(dir: &Path, options: MosquittoOptions) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let port = options.port.unwrap_or_else(free_port);
        let mut broker = Self { dir: dir.to_path_buf(), options, port, child: None };
        for _ in 0..5 {
            if broker.spawn_and_wait() {
                return broker;
            }
            if broker.options.port.is_some() {
                std::thread::sleep(Duration::from_millis(200));
            } else {
                broker.port = free_port(); // lost the race for the free port
            }
        }
        panic!("mosquitto did not start on port {}:\n{}", broker.port, broker.log());
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// What the broker logged so far (all runs).
    pub fn log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default();
        let stderr = std::fs::read_to_string(self.dir.join("mosquitto.stderr")).unwrap_or_default();
        log + &stderr
    }

    /// SIGTERM, then wait for the exit (SIGKILL after 10 s). No-op when stopped.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the broker and starts it again on the same port (retrying for about 5 s while
    /// the port is still busy), then waits until it accepts TCP connections.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.spawn_and_wait() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not restart on port {}:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn write_config(&self) -> PathBuf {
        let dir = self.dir.display();
        let mut conf = format!(
            "listener {port} 127.0.0.1\n\
             allow_anonymous {anonymous}\n\
             persistence {persistence}\n\
             persistence_location {dir}/\n\
             max_queued_messages 1000000\n\
             max_inflight_messages 100\n\
             log_dest file {dir}/mosquitto.log\n\
             log_type error\nlog_type warning\nlog_type notice\nlog_type information\n",
            port = self.port,
            persistence = self.options.persistence,
            anonymous = self.options.users.is_empty(),
        );
        if !self.options.users.is_empty() {
            let passwd = self.dir.join("passwd");
            let _ = std::fs::remove_file(&passwd);
            std::fs::write(&passwd, "").unwrap();
            for (user, password) in &self.options.users {
                let status = Command::new("mosquitto_passwd")
                    .arg("-b")
                    .arg(&passwd)
                    .args([user, password])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .unwrap();
                assert!(status.success(), "mosquitto_passwd failed");
            }
            conf.push_str(&format!("password_file {}\n", passwd.display()));
        }
        if running_as_root() {
            // Otherwise mosquitto drops to the `mosquitto` user, which cannot write to `dir`.
            conf.push_str("user root\n");
        }
        if let Some(certs) = &self.options.tls {
            conf.push_str(&format!(
                "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {}\ntls_version tlsv1.2\n",
                certs.ca.display(),
                certs.server_cert.display(),
                certs.server_key.display(),
                self.options.require_client_cert,
            ));
        }
        let path = self.dir.join("mosquitto.conf");
        std::fs::write(&path, conf).unwrap();
        path
    }

    /// Whether the new process accepts connections; false when it exited (e.g. port busy).
    fn spawn_and_wait(&mut self) -> bool {
        let conf = self.write_config();
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("mosquitto.stderr"))
            .unwrap();
        let mut child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if child.try_wait().unwrap().is_some() {
                return false;
            }
            if StdTcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).is_ok() {
                self.child = Some(child);
                return true;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("mosquitto accepted no connection within 10 s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// MQTT subscriber

/// Client options for 127.0.0.1:`port`: keep-alive 5 s, 1 MiB packets both ways, and with
/// `tls` a TLS connection trusting the test CA and presenting the client certificate.
pub fn mqtt_options(client_id: &str, port: u16, tls: Option<&Certs>) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(5));
    options.set_max_packet_size(1 << 20, 1 << 20);
    if let Some(certs) = tls {
        let config = Arc::new(certs.client_config(true));
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
    }
    options
}

#[derive(Debug, Default)]
struct Inbox {
    messages: Mutex<Vec<(String, Vec<u8>)>>,
    subacks: AtomicUsize,
}

/// A QoS 1 subscriber (persistent session, unique client id) on its own runtime. It reconnects
/// every 200 ms after a failure and subscribes again after every CONNACK.
#[derive(Debug)]
pub struct Subscriber {
    inbox: Arc<Inbox>,
    client: AsyncClient,
    _runtime: OwnRuntime,
}

impl Subscriber {
    /// Connects, subscribes to `topic_filter` and returns once the SUBACK arrived (10 s at most).
    pub fn start(port: u16, topic_filter: &str, tls: Option<&Certs>) -> Self {
        let mut options = mqtt_options(&unique_id("subscriber"), port, tls);
        options.set_clean_session(false);
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        let inbox = Arc::new(Inbox::default());
        let (subscribed, first_suback) = mpsc::channel();
        let runtime = OwnRuntime::new("mqtt-subscriber");
        let (task_inbox, task_client, filter) =
            (inbox.clone(), client.clone(), topic_filter.to_owned());
        runtime.spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = task_client.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        task_inbox.subacks.fetch_add(1, Ordering::SeqCst);
                        let _ = subscribed.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        let message = (publish.topic, publish.payload.to_vec());
                        task_inbox.messages.lock().unwrap().push(message);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        assert!(
            first_suback.recv_timeout(Duration::from_secs(10)).is_ok(),
            "no SUBACK from the broker on port {port} within 10 s"
        );
        Self { inbox, client, _runtime: runtime }
    }

    /// Everything received, in arrival order, duplicates included.
    pub fn messages(&self) -> Vec<(String, Vec<u8>)> {
        self.inbox.messages.lock().unwrap().clone()
    }

    /// Payloads only, in arrival order.
    pub fn payloads(&self) -> Vec<Vec<u8>> {
        self.messages().into_iter().map(|(_, payload)| payload).collect()
    }

    /// The canonical events received (the CloudEvents' `data`), once per event id as the state
    /// system would store them, ordered by machine and sequence number.
    pub fn unique_events(&self) -> Vec<Value> {
        let mut by_id: std::collections::BTreeMap<String, Value> = Default::default();
        for payload in self.payloads() {
            let event: Value = serde_json::from_slice(&payload).unwrap();
            // The gateway's own records (software_id at each start) are not machine events.
            if event["type"] == "slotgate.gateway_alarm" {
                continue;
            }
            by_id.entry(event["id"].as_str().unwrap().to_owned()).or_insert(event);
        }
        let mut events: Vec<Value> = by_id.into_values().map(|e| e["data"].clone()).collect();
        events.sort_by_key(|e| {
            (e["machine"]["registry_id"].as_str().unwrap().to_owned(), e["machine_seq"].as_u64())
        });
        events
    }

    /// Whether at least `count` messages arrived within `timeout` (blocks the thread).
    pub fn wait_for(&self, count: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.inbox.messages.lock().unwrap().len() >= count)
    }

    /// [`Self::wait_for`] without blocking the caller's runtime.
    pub async fn wait_for_async(&self, count: usize, timeout: Duration) -> bool {
        wait_until_async(timeout, || self.inbox.messages.lock().unwrap().len() >= count).await
    }

    /// Publishes `payload` on `topic` at QoS 1 (the state system sending a command).
    pub fn publish(&self, topic: &str, payload: Vec<u8>) {
        self.client.try_publish(topic, QoS::AtLeastOnce, false, payload).unwrap();
    }

    /// SUBACKs received so far: 1 after `start`, one more after every reconnection.
    pub fn subacks(&self) -> usize {
        self.inbox.subacks.load(Ordering::SeqCst)
    }

    /// Whether at least `count` SUBACKs arrived within `timeout`: after a broker restart or a
    /// cut, wait for `subacks() + 1` before publishing what must not be lost.
    pub fn wait_subacks(&self, count: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.subacks() >= count)
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.client.try_disconnect();
    }
}

// ---------------------------------------------------------------------------------------------
// TCP fault proxy

/// A TCP proxy from 127.0.0.1:`addr().port()` to a target, on its own runtime.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    cuts: Arc<watch::Sender<u64>>,
    refusing: Arc<AtomicBool>,
    stalled: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    _runtime: OwnRuntime,
}

impl FaultProxy {
    pub fn start(target: SocketAddr) -> Self {
        let (listener, addr) = loopback_listener();
        let cuts = Arc::new(watch::Sender::new(0_u64));
        let refusing = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let stalled = Arc::new(AtomicBool::new(false));
        let runtime = OwnRuntime::new("fault-proxy");
        let (task_cuts, task_refusing, task_accepted, task_stalled) =
            (cuts.clone(), refusing.clone(), accepted.clone(), stalled.clone());
        runtime.spawn(async move {
            let listener = TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { continue };
                task_accepted.fetch_add(1, Ordering::SeqCst);
                if task_refusing.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let mut cut = task_cuts.subscribe();
                let stalled = task_stalled.clone();
                tokio::spawn(async move {
                    let relay = async {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let outbound = TcpStream::connect(target).await?;
                        let (mut from_client, mut to_client) = inbound.split();
                        let (mut from_target, mut to_target) = outbound.into_split();
                        let up = tokio::io::copy(&mut from_client, &mut to_target);
                        // Target → client holds its bytes while stalled: the connection stays
                        // up and silent, like a stuck peer.
                        let down = async {
                            let mut buf = vec![0u8; 16 * 1024];
                            loop {
                                while stalled.load(Ordering::SeqCst) {
                                    tokio::time::sleep(Duration::from_millis(5)).await;
                                }
                                let n = from_target.read(&mut buf).await?;
                                if n == 0 {
                                    return Ok::<u64, std::io::Error>(0);
                                }
                                to_client.write_all(&buf[..n]).await?;
                            }
                        };
                        tokio::select! {
                            r = up => r,
                            r = down => r,
                        }
                    };
                    tokio::select! {
                        _ = relay => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Self { addr, cuts, refusing, stalled, accepted, _runtime: runtime }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Closes every current connection on both sides (within milliseconds, asynchronously).
    pub fn cut(&self) {
        self.cuts.send_modify(|generation| *generation += 1);
    }

    /// While on, new connections are accepted and closed at once.
    pub fn refuse(&self, on: bool) {
        self.refusing.store(on, Ordering::SeqCst);
    }

    /// While on, nothing flows from the target back to clients; connections stay open.
    pub fn stall(&self, on: bool) {
        self.stalled.store(on, Ordering::SeqCst);
    }

    /// Connections accepted so far, refused ones included.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

// ---------------------------------------------------------------------------------------------
// HTTPS receiver

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct RequestInfo {
    /// The status answered; 0 when the connection was dropped instead of answering.
    pub status: u16,
    pub method: String,
    pub path: String,
    /// Header names are lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Events in the batch (0 when the body is not a batch).
    pub events: usize,
}

impl RequestInfo {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(key, _)| *key == name).map(|(_, value)| value.as_str())
    }
}

#[derive(Debug, Default)]
struct ReceiverState {
    status: Option<(u16, Option<String>)>,
    drop_every: u32,
    stored_batches: u32,
    reject: Option<String>,
    /// Answer 400 to a body containing this text anywhere (an alarm that names a refused id).
    reject_body: Option<String>,
    /// Answer `POST /events` with this redirect; `/ok` answers 200 to anything.
    redirect: Option<(u16, String)>,
    /// Record the request, then wait this long and close the connection without an answer.
    stall: Option<Duration>,
    order: Vec<String>,
    events: HashMap<String, (Value, usize)>,
    duplicates: usize,
    requests: Vec<RequestInfo>,
    tls_failures: usize,
    /// Benchmarks: keep no request bodies, and store each event's arrival time (ms since the
    /// Unix epoch) instead of the event.
    light: bool,
    /// Envelopes `GET /commands/pending` answers, as a JSON array; an acknowledged one leaves.
    pending: Vec<String>,
    /// Instead: answer `GET /commands/pending` with this status and `Location`.
    pending_answer: Option<(u16, Option<String>)>,
    pending_polls: usize,
    /// `POST /commands/{id}/ack`: the id and the outcome in the body.
    acks: Vec<(String, Value)>,
}

/// The remote-command endpoints of the state system, or `None` for another path.
fn commands_answer(
    state: &mut ReceiverState,
    method: &str,
    path: &str,
    body: &[u8],
) -> Option<Response<Full<Bytes>>> {
    if path == "/commands/pending" && method == "GET" {
        state.pending_polls += 1;
        if let Some((status, location)) = state.pending_answer.clone() {
            let mut answer = response(status, None, String::new());
            if let Some(location) = location {
                answer.headers_mut().insert("location", location.parse().unwrap());
            }
            return Some(answer);
        }
        return Some(response(200, None, format!("[{}]", state.pending.join(","))));
    }
    let id = path.strip_prefix("/commands/")?.strip_suffix("/ack")?.to_owned();
    if method != "POST" {
        return None;
    }
    state.acks.push((id.clone(), serde_json::from_slice(body).unwrap_or(Value::Null)));
    state.pending.retain(|envelope| {
        serde_json::from_str::<Value>(envelope)
            .ok()
            .and_then(|e| e["id"].as_str().map(str::to_owned))
            != Some(id.clone())
    });
    Some(response(200, None, "{}".into()))
}

/// A CloudEvents batch receiver: `POST /events` over HTTPS (HTTP/1.1) on its own runtime.
#[derive(Debug)]
pub struct Receiver {
    addr: SocketAddr,
    state: Arc<Mutex<ReceiverState>>,
    _runtime: OwnRuntime,
}

/// The ids of a JSON array of objects that all have a string `id`.
fn batch_ids(body: &[u8]) -> Option<Vec<(String, Value)>> {
    let Ok(Value::Array(events)) = serde_json::from_slice::<Value>(body) else { return None };
    events.into_iter().map(|event| Some((event.get("id")?.as_str()?.to_owned(), event))).collect()
}

/// The ids only, without building a value per event: a benchmark's receiver must not be the
/// bottleneck it measures.
fn light_batch_ids(body: &[u8]) -> Option<Vec<(String, Value)>> {
    #[derive(serde::Deserialize)]
    struct IdOnly<'a> {
        #[serde(borrow)]
        id: std::borrow::Cow<'a, str>,
    }
    let events: Vec<IdOnly<'_>> = serde_json::from_slice(body).ok()?;
    Some(events.into_iter().map(|e| (e.id.into_owned(), Value::Null)).collect())
}

fn response(status: u16, retry_after: Option<&str>, body: String) -> Response<Full<Bytes>> {
    let mut builder = Response::builder().status(status).header("content-type", "application/json");
    if let Some(retry_after) = retry_after {
        builder = builder.header("retry-after", retry_after);
    }
    builder.body(Full::new(Bytes::from(body))).unwrap()
}

async fn handle(
    state: Arc<Mutex<ReceiverState>>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let is_post = request.method() == Method::POST && request.uri().path() == "/events";
    let is_ok = request.uri().path() == "/ok";
    let (method, path) = (request.method().to_string(), request.uri().path().to_owned());
    let headers = request
        .headers()
        .iter()
        .map(|(name, value)| (name.to_string(), String::from_utf8_lossy(value.as_bytes()).into()))
        .collect();
    let body = request.into_body().collect().await.map_err(std::io::Error::other)?.to_bytes();
    let (light, stall) = {
        let state = state.lock().unwrap();
        (state.light, state.stall)
    };
    if let Some(stall) = stall {
        let info = RequestInfo { status: 0, method, path, headers, body: body.to_vec(), events: 0 };
        state.lock().unwrap().requests.push(info);
        tokio::time::sleep(stall).await;
        return Err(std::io::Error::other("receiver stalls: no answer"));
    }
    let batch = if light { light_batch_ids(&body) } else { batch_ids(&body) };
    let mut guard = state.lock().unwrap();
    let state = &mut *guard;
    let mut info = RequestInfo {
        status: 0,
        method,
        path,
        headers,
        body: body.to_vec(),
        events: batch.as_ref().map_or(0, Vec::len),
    };
    let answer = if is_ok {
        response(200, None, "{}".into())
    } else if let Some(answer) = commands_answer(state, &info.method, &info.path, &body) {
        answer
    } else if !is_post {
        response(404, None, r#"{"error":"POST /events only"}"#.into())
    } else if let Some((status, location)) = state.redirect.clone() {
        let mut answer = response(status, None, String::new());
        answer.headers_mut().insert("location", location.parse().unwrap());
        answer
    } else if state
        .reject_body
        .as_ref()
        .is_some_and(|needle| String::from_utf8_lossy(&body).contains(needle.as_str()))
    {
        response(400, None, r#"{"error":"rejected body"}"#.into())
    } else if let Some((status, retry_after)) = state.status.clone() {
        response(status, retry_after.as_deref(), r#"{"error":"switched"}"#.into())
    } else if let Some(batch) = batch {
        let rejected = state
            .reject
            .as_ref()
            .is_some_and(|needle| batch.iter().any(|(id, _)| id.contains(needle.as_str())));
        if rejected {
            response(400, None, r#"{"error":"rejected id"}"#.into())
        } else {
            let arrived = jiff::Timestamp::now().as_millisecond();
            if state.light {
                info.body = Vec::new();
            }
            for (id, event) in batch {
                let event = if state.light { Value::from(arrived) } else { event };
                if let Some((_, count)) = state.events.get_mut(&id) {
                    *count += 1;
                    state.duplicates += 1;
                } else {
                    state.order.push(id.clone());
                    state.events.insert(id, (event, 0));
                }
            }
            state.stored_batches += 1;
            if state.drop_every > 0 && state.stored_batches.is_multiple_of(state.drop_every) {
                state.requests.push(info);
                return Err(std::io::Error::other("receiver drops this response"));
            }
            response(200, None, format!(r#"{{"accepted":{}}}"#, info.events))
        }
    } else {
        response(400, None, r#"{"error":"not a batch of events with string ids"}"#.into())
    };
    info.status = answer.status().as_u16();
    state.requests.push(info);
    Ok(answer)
}

impl Receiver {
    pub fn start(certs: &Certs, require_client_cert: bool) -> Self {
        let acceptor = TlsAcceptor::from(certs.server_config(require_client_cert));
        let (listener, addr) = loopback_listener();
        let state = Arc::new(Mutex::new(ReceiverState::default()));
        let runtime = OwnRuntime::new("https-receiver");
        let task_state = state.clone();
        runtime.spawn(async move {
            let listener = TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let (acceptor, state) = (acceptor.clone(), task_state.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        state.lock().unwrap().tls_failures += 1;
                        return;
                    };
                    let service = service_fn(move |request| handle(state.clone(), request));
                    // An error here is a dropped response or a client going away: the
                    // connection is closed without an answer either way.
                    let _ =
                        http1::Builder::new().serve_connection(TokioIo::new(tls), service).await;
                });
            }
        });
        Self { addr, state, _runtime: runtime }
    }

    /// `https://localhost:PORT/events`
    pub fn url(&self) -> String {
        format!("https://localhost:{}/events", self.addr.port())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://localhost:PORT/commands`, the base of the remote-command endpoints.
    pub fn commands_url(&self) -> String {
        format!("https://localhost:{}/commands", self.addr.port())
    }

    /// Serves `envelopes` (JSON objects) as pending commands until each is acknowledged.
    pub fn set_pending_commands(&self, envelopes: Vec<String>) {
        self.state.lock().unwrap().pending = envelopes;
    }

    /// `Some((status, location))`: answer `GET /commands/pending` so; `None`: serve them.
    pub fn set_pending_answer(&self, answer: Option<(u16, Option<String>)>) {
        self.state.lock().unwrap().pending_answer = answer;
    }

    /// `GET /commands/pending` requests so far.
    pub fn pending_polls(&self) -> usize {
        self.state.lock().unwrap().pending_polls
    }

    /// Acknowledged commands: the id in the path and the outcome posted, in order.
    pub fn command_acks(&self) -> Vec<(String, Value)> {
        self.state.lock().unwrap().acks.clone()
    }

    /// `Some(status)`: answer it to every request without storing; `None`: back to normal.
    pub fn set_status(&self, status: Option<u16>, retry_after: Option<&str>) {
        self.state.lock().unwrap().status =
            status.map(|status| (status, retry_after.map(str::to_owned)));
    }

    /// Store every n-th batch, then close the connection without answering (0: off; the
    /// count restarts).
    /// For benchmarks: keep no bodies; `events()` then gives each event's arrival time in
    /// milliseconds since the Unix epoch.
    pub fn light(&self) {
        self.state.lock().unwrap().light = true;
    }

    pub fn drop_responses_after_commit(&self, every_nth: u32) {
        let mut state = self.state.lock().unwrap();
        state.drop_every = every_nth;
        state.stored_batches = 0;
    }

    /// Answer 400 and store nothing for a batch with an id containing `needle`.
    pub fn reject_ids_containing(&self, needle: Option<String>) {
        self.state.lock().unwrap().reject = needle;
    }

    /// Answer 400 and store nothing for a body containing `needle` anywhere.
    pub fn reject_bodies_containing(&self, needle: Option<String>) {
        self.state.lock().unwrap().reject_body = needle;
    }

    /// `Some((status, location))`: answer every `POST /events` with that redirect (`/ok`
    /// always answers 200); `None`: back to normal.
    pub fn redirect(&self, redirect: Option<(u16, String)>) {
        self.state.lock().unwrap().redirect = redirect;
    }

    /// `Some(wait)`: record each request, store nothing, and close its connection without an
    /// answer after `wait`; `None`: back to normal.
    pub fn stall(&self, wait: Option<Duration>) {
        self.state.lock().unwrap().stall = wait;
    }

    /// Unique events (first body seen), in first-arrival order.
    pub fn events(&self) -> Vec<Value> {
        let state = self.state.lock().unwrap();
        state.order.iter().map(|id| state.events[id].0.clone()).collect()
    }

    /// Unique event ids in first-arrival order.
    pub fn event_ids(&self) -> Vec<String> {
        self.state.lock().unwrap().order.clone()
    }

    /// Deliveries of an already stored id, over all ids.
    pub fn duplicates(&self) -> usize {
        self.state.lock().unwrap().duplicates
    }

    /// Deliveries of `id` after its first.
    pub fn duplicates_of(&self, id: &str) -> usize {
        self.state.lock().unwrap().events.get(id).map_or(0, |(_, count)| *count)
    }

    /// Every request received, rejected and dropped ones included.
    pub fn requests(&self) -> Vec<RequestInfo> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Connections whose TLS handshake failed (e.g. no or a wrong client certificate).
    pub fn tls_failures(&self) -> usize {
        self.state.lock().unwrap().tls_failures
    }

    /// Whether at least `n` unique events arrived within `timeout` (blocks the thread).
    pub fn wait_for_events(&self, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.state.lock().unwrap().order.len() >= n)
    }

    /// [`Self::wait_for_events`] without blocking the caller's runtime.
    pub async fn wait_for_events_async(&self, n: usize, timeout: Duration) -> bool {
        wait_until_async(timeout, || self.state.lock().unwrap().order.len() >= n).await
    }
}

/// Lower-case hex HMAC-SHA256 of `body` under `key`.
pub fn hmac_sha256_hex(key: &[u8], body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(body);
    mac.finalize().into_bytes().iter().map(|byte| format!("{byte:02x}")).collect()
}

// ---------------------------------------------------------------------------------------------
// Raw HTTPS receiver: hostile answers hyper will not give

/// How a [`RawReceiver`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawMode {
    /// 200 with a short body; the batch's ids are stored.
    Normal,
    /// 200 with a declared body of [`HUGE_BODY`] bytes, written as fast as the client reads;
    /// the ids are stored.
    HugeBody,
    /// The status line one byte every 200 ms, never finished; nothing stored.
    Dribble,
    /// Half the request body read, then the connection reset (RST); nothing stored.
    ResetMidBody,
}

/// The declared size of a [`RawMode::HugeBody`] answer: 100 MB.
pub const HUGE_BODY: u64 = 100 * 1024 * 1024;

#[derive(Debug)]
struct RawState {
    mode: RawMode,
    requests: usize,
    /// Each request's first line (`GET /commands/pending HTTP/1.1`).
    lines: Vec<String>,
    ids: Vec<String>,
    body_bytes_sent: u64,
}

/// An HTTPS/1.1 receiver written on the socket, for answers a well-behaved server never gives.
#[derive(Debug)]
pub struct RawReceiver {
    addr: SocketAddr,
    state: Arc<Mutex<RawState>>,
    _runtime: OwnRuntime,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn raw_exchange(
    mut tls: tokio_rustls::server::TlsStream<TcpStream>,
    state: Arc<Mutex<RawState>>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let head_end = loop {
            if let Some(at) = find(&buf, b"\r\n\r\n") {
                break at + 4;
            }
            let n = tls.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        let mode = {
            let mut state = state.lock().unwrap();
            state.requests += 1;
            state.lines.push(head.lines().next().unwrap_or_default().to_owned());
            state.mode
        };
        let wanted = if mode == RawMode::ResetMidBody { length / 2 } else { length };
        while buf.len() < head_end + wanted {
            let n = tls.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body: Vec<u8> = buf.drain(..head_end + wanted).skip(head_end).collect();
        let store = |state: &Mutex<RawState>| {
            let ids = batch_ids(&body).unwrap_or_default();
            state.lock().unwrap().ids.extend(ids.into_iter().map(|(id, _)| id));
        };
        match mode {
            RawMode::Normal => {
                store(&state);
                tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").await?;
                tls.flush().await?;
            }
            RawMode::HugeBody => {
                store(&state);
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {HUGE_BODY}\r\n\r\n");
                tls.write_all(head.as_bytes()).await?;
                let zeros = vec![b'0'; 64 * 1024];
                let mut sent = 0u64;
                while sent < HUGE_BODY {
                    tls.write_all(&zeros).await?;
                    sent += zeros.len() as u64;
                    state.lock().unwrap().body_bytes_sent = sent;
                }
                return Ok(());
            }
            RawMode::Dribble => {
                for byte in b"HTTP/1.1 200 OK\r\n" {
                    tls.write_all(&[*byte]).await?;
                    tls.flush().await?;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                tokio::time::sleep(Duration::from_secs(60)).await;
                return Ok(());
            }
            RawMode::ResetMidBody => {
                tls.get_ref().0.set_zero_linger()?;
                return Ok(()); // dropped with SO_LINGER 0: a reset
            }
        }
    }
}

impl RawReceiver {
    pub fn start(certs: &Certs) -> Self {
        let acceptor = TlsAcceptor::from(certs.server_config(false));
        let (listener, addr) = loopback_listener();
        let state = Arc::new(Mutex::new(RawState {
            mode: RawMode::Normal,
            requests: 0,
            lines: Vec::new(),
            ids: Vec::new(),
            body_bytes_sent: 0,
        }));
        let runtime = OwnRuntime::new("raw-receiver");
        let task_state = state.clone();
        runtime.spawn(async move {
            let listener = TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let (acceptor, state) = (acceptor.clone(), task_state.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        let _ = raw_exchange(tls, state).await;
                    }
                });
            }
        });
        Self { addr, state, _runtime: runtime }
    }

    /// `https://localhost:PORT/events`
    pub fn url(&self) -> String {
        format!("https://localhost:{}/events", self.addr.port())
    }

    pub fn set_mode(&self, mode: RawMode) {
        self.state.lock().unwrap().mode = mode;
    }

    /// Requests whose head arrived.
    pub fn requests(&self) -> usize {
        self.state.lock().unwrap().requests
    }

    /// Each request's first line, lower case (`get /commands/pending http/1.1`).
    pub fn request_lines(&self) -> Vec<String> {
        self.state.lock().unwrap().lines.clone()
    }

    /// Event ids stored, with repeats.
    pub fn ids(&self) -> Vec<String> {
        self.state.lock().unwrap().ids.clone()
    }

    /// Bytes of the last [`RawMode::HugeBody`] body the client took.
    pub fn body_bytes_sent(&self) -> u64 {
        self.state.lock().unwrap().body_bytes_sent
    }
}
