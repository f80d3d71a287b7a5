//! The HTTPS destination: batches of CloudEvents POSTed with reqwest over rustls.
//!
//! Each lane has at most one request in flight, so each lane's batches arrive in order and a
//! retried batch is retried before anything after it. Every request carries the batch's
//! idempotency key (SHA-256 of its event ids, so a retry of the same batch has the same key),
//! the configured bearer token or API key, and an HMAC-SHA256 of the body under the configured
//! key, so the receiver can check where it came from.
//!
//! | answer | what happens |
//! |---|---|
//! | 2xx, 409 (duplicate) | acknowledged |
//! | 429, 503 | retried after `Retry-After` (seconds or an HTTP date), else the backoff |
//! | other 5xx, timeout, connection error | retried with jittered backoff |
//! | 401, 403 | revoked: nothing more is sent, the journal keeps everything, an alarm stays up until the credential files change, checked every 2 s (a mark in `<storage.dir>/destinations/` keeps it across restarts) |
//! | other 4xx | the batch is resent one event per request; an event refused alone goes to `<storage.dir>/destinations/<name>.quarantine.jsonl` with an alarm, and is acknowledged |

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::cloudevent::{BATCH_CONTENT_TYPE, Encoded, batch};
use super::outbox::{Lane, Outbox, ReplayBudget};
use super::{CursorWriter, LinkState, Progress, Shared};
use crate::config::{DestinationConfig, HttpsDestination};
use crate::journal::{Body, Class, NewRecord};
use crate::transport::backoff::ExponentialBackoff;

/// Header carrying the body's HMAC: `sha256=<hex>`.
pub const SIGNATURE_HEADER: &str = "x-slotgate-signature";
/// Header naming the gateway: `{venue}/{gateway}`.
pub const GATEWAY_HEADER: &str = "x-slotgate-gateway";

/// How often a revoked destination looks for changed credentials.
const CREDENTIALS_CHECK_EVERY: Duration = Duration::from_secs(2);

/// A configured HTTPS destination, its secrets read and its client built.
#[derive(Debug)]
pub struct Driver {
    config: DestinationConfig,
    https: HttpsDestination,
    url: String,
    client: reqwest::Client,
    token: Option<super::Secret>,
    api_key: Option<super::Secret>,
    hmac_key: Option<super::Secret>,
    batch_size: usize,
    budget: ReplayBudget,
    /// Revocation holds while this is unchanged.
    fingerprint: String,
}

/// How one request ended.
#[derive(Debug)]
enum Answer {
    Status { code: u16, retry_after: Option<Duration> },
    Failed(String),
}

struct Sent {
    lane: Lane,
    events: Vec<Encoded>,
    answer: Answer,
}

/// How a delivery run ended.
enum Ended {
    Stopped,
    /// The receiver refused the credentials; the revocation mark is written.
    Revoked(String),
}

/// What a revocation is tied to: the credentials and the client certificate, as files.
fn fingerprint_of(config: &DestinationConfig, https: &HttpsDestination) -> String {
    super::credentials_fingerprint(
        &[
            https.token_file.as_deref(),
            https.api_key_file.as_deref(),
            config.tls.as_ref().and_then(|t| t.client_cert.as_deref()),
        ],
        &https.url,
    )
}

impl Driver {
    pub fn new(config: &DestinationConfig, https: &HttpsDestination) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .timeout(https.timeout)
            .connect_timeout(https.timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .http1_only()
            .user_agent(concat!("slotgate/", env!("CARGO_PKG_VERSION")));
        match &config.tls {
            Some(files) => {
                let tls = super::tls::client_config(files)?;
                builder = builder.https_only(true).tls_backend_preconfigured((*tls).clone());
            }
            None => builder = builder.https_only(false),
        }
        let client = builder.build()?;
        let read = |p: &Option<PathBuf>| p.as_deref().map(super::read_secret).transpose();
        let fingerprint = fingerprint_of(config, https);
        let token = read(&https.token_file)?;
        let api_key = read(&https.api_key_file)?;
        for (secret, file) in [(&token, &https.token_file), (&api_key, &https.api_key_file)] {
            if let (Some(secret), Some(file)) = (secret, file)
                && reqwest::header::HeaderValue::from_str(secret.expose()).is_err()
            {
                anyhow::bail!(
                    "{}: not usable in an HTTP header (control characters?)",
                    file.display()
                );
            }
        }
        Ok(Self {
            config: config.clone(),
            https: https.clone(),
            url: https.url.clone(),
            client,
            token,
            api_key,
            hmac_key: read(&https.hmac_key_file)?,
            batch_size: https.batch_size,
            budget: ReplayBudget { rate: config.replay_rate, burst: config.replay_burst },
            fingerprint,
        })
    }

    pub(crate) async fn run(mut self, shared: Shared, cancel: CancellationToken) {
        let mut reason = "revoked before this start".to_owned();
        loop {
            if super::still_revoked(&shared.state_dir, &shared.name, &self.fingerprint)
                && !self.await_new_credentials(&shared, &cancel, &reason).await
            {
                return;
            }
            super::clear_revoked(&shared.state_dir, &shared.name);
            match self.deliver(&shared, &cancel).await {
                Ended::Stopped => return,
                Ended::Revoked(why) => reason = why,
            }
        }
    }

    /// Sends until the stop or a revocation.
    async fn deliver(&self, shared: &Shared, cancel: &CancellationToken) -> Ended {
        let mut outbox = shared.outbox(self.budget);
        let mut cursor = CursorWriter::new(outbox.cursor());
        let mut backoff = ExponentialBackoff::DEFAULT.start();
        let mut durable = shared.journal.durable();
        let mut progress = Progress::new();
        let mut requests: JoinSet<Sent> = JoinSet::new();
        let mut busy = [false, false];
        let mut paused_until = Instant::now();
        // Per lane: seqs up to this one go one per request, since a batch with them was refused.
        let mut singles_through: [Option<u64>; 2] = [None, None];
        let mut interrupted = false;
        tracing::info!(destination = %shared.name, url = %self.url, cursor = outbox.cursor(),
            backlog = outbox.backlog(), order = ?shared.order, "HTTPS forwarder started.");
        outbox.connected(*durable.borrow());
        shared.update(&outbox, |s| s.state = LinkState::Up);
        loop {
            // After a failure, what was journalled meanwhile is backlog: once nothing is on the
            // wire it moves to the replay lane (budgeted, historical), as a reconnect does for
            // MQTT.
            if requests.is_empty() && interrupted {
                outbox.connected(*durable.borrow());
                interrupted = false;
            }
            let now = Instant::now();
            if now >= paused_until {
                for (slot, lane) in [(0, Lane::Live), (1, Lane::Replay)] {
                    if busy[slot] {
                        continue;
                    }
                    let head = *durable.borrow();
                    let room = if singles_through[slot].is_some() { 1 } else { self.batch_size };
                    // A budgeted replay sends full batches, not a request per token.
                    if lane == Lane::Replay
                        && outbox.replay_ready_for(room as u64).is_some_and(|at| at > now)
                    {
                        continue;
                    }
                    let seqs = outbox.take(lane, now, head, room);
                    if let (Some(through), Some(&first)) = (singles_through[slot], seqs.first())
                        && first > through
                    {
                        singles_through[slot] = None;
                    }
                    let events = match shared.load(&mut outbox, &seqs, lane) {
                        Ok(events) => events,
                        Err(error) => {
                            tracing::warn!(destination = %shared.name, %error, "Cannot read the journal.");
                            outbox.failed(&seqs);
                            continue;
                        }
                    };
                    if events.is_empty() {
                        continue;
                    }
                    busy[slot] = true;
                    let request = self.request(shared, &events);
                    requests.spawn(async move {
                        let answer = match request.send().await {
                            Ok(response) => Answer::Status {
                                code: response.status().as_u16(),
                                retry_after: retry_after(response.headers()),
                            },
                            Err(error) => Answer::Failed(error_chain(&error)),
                        };
                        Sent { lane, events, answer }
                    });
                }
            }
            let wake = outbox
                .replay_ready_for(self.batch_size as u64)
                .map_or(Duration::from_millis(200), |t| t.saturating_duration_since(now))
                .max(paused_until.saturating_duration_since(now))
                .clamp(Duration::from_millis(1), Duration::from_millis(500));
            tokio::select! {
                () = cancel.cancelled() => break,
                Some(done) = requests.join_next() => {
                    let Ok(sent) = done else { continue };
                    busy[usize::from(sent.lane == Lane::Replay)] = false;
                    let seqs: Vec<u64> = sent.events.iter().map(|e| e.seq).collect();
                    match sent.answer {
                        Answer::Status { code, .. } if (200..300).contains(&code) || code == 409 => {
                            for seq in &seqs {
                                outbox.acknowledged(*seq);
                            }
                            backoff.reset();
                            shared.status.send_modify(|s| {
                                s.delivered += seqs.len() as u64;
                                s.state = LinkState::Up;
                                s.last_error = None;
                            });
                        }
                        Answer::Status { code: code @ (401 | 403), .. } => {
                            outbox.failed(&seqs);
                            requests.abort_all();
                            let reason = format!("the receiver refused our credentials (HTTP {code})");
                            if let Err(error) = super::mark_revoked(&shared.state_dir, &shared.name, &self.fingerprint) {
                                tracing::error!(destination = %shared.name, %error, "Cannot store the revocation.");
                            }
                            cursor.maybe_write(shared, &outbox, true).await;
                            return Ended::Revoked(reason);
                        }
                        Answer::Status { code: code @ (429 | 503), retry_after } => {
                            outbox.failed(&seqs);
                            interrupted = true;
                            let delay = retry_after.unwrap_or_else(|| backoff.next_delay());
                            paused_until = Instant::now() + delay;
                            tracing::warn!(destination = %shared.name, code, retry_in = ?delay, "The receiver asks to wait.");
                            shared.update(&outbox, |s| s.last_error = Some(format!("HTTP {code}, retry in {delay:?}")));
                        }
                        Answer::Status { code, .. } if (400..500).contains(&code) => {
                            if seqs.len() > 1 {
                                outbox.failed(&seqs);
                                singles_through[usize::from(sent.lane == Lane::Replay)] = seqs.last().copied();
                                tracing::warn!(destination = %shared.name, code, events = seqs.len(),
                                    "A batch was refused; resending its events one by one.");
                            } else if self.quarantine(shared, &sent.events, code).await {
                                for seq in &seqs {
                                    outbox.acknowledged(*seq);
                                }
                            } else {
                                let reason = format!("HTTP {code}, and the quarantine file is not writable");
                                self.retry_later(shared, &mut outbox, &seqs, &mut backoff, &mut paused_until, reason);
                            }
                        }
                        Answer::Status { code, .. } => {
                            interrupted = true;
                            self.retry_later(shared, &mut outbox, &seqs, &mut backoff, &mut paused_until, format!("HTTP {code}"));
                        }
                        Answer::Failed(reason) => {
                            interrupted = true;
                            self.retry_later(shared, &mut outbox, &seqs, &mut backoff, &mut paused_until, reason);
                        }
                    }
                }
                _ = durable.changed() => {}
                () = tokio::time::sleep(wake) => {}
            }
            cursor.maybe_write(shared, &outbox, false).await;
            progress.tick(shared, &outbox);
            shared.update(&outbox, |_| {});
        }
        // Let the requests on the wire finish, so their acknowledgements are kept.
        let grace = tokio::time::Instant::now() + Duration::from_secs(2);
        while let Ok(Some(Ok(sent))) = tokio::time::timeout_at(grace, requests.join_next()).await {
            if let Answer::Status { code, .. } = sent.answer
                && ((200..300).contains(&code) || code == 409)
            {
                sent.events.iter().for_each(|e| {
                    outbox.acknowledged(e.seq);
                });
            }
        }
        cursor.maybe_write(shared, &outbox, true).await;
        shared.update(&outbox, |s| s.state = LinkState::Down);
        tracing::info!(destination = %shared.name, cursor = outbox.cursor(), "HTTPS forwarder stopped.");
        Ended::Stopped
    }

    fn request(&self, shared: &Shared, events: &[Encoded]) -> reqwest::RequestBuilder {
        let body = batch(events);
        let mut ids = Sha256::new();
        for event in events {
            ids.update(event.id.as_bytes());
            ids.update(b"\n");
        }
        let key = crate::journal::record::hex(&ids.finalize().into());
        let mut request = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, BATCH_CONTENT_TYPE)
            .header("idempotency-key", key)
            .header(GATEWAY_HEADER, format!("{}/{}", shared.origin.venue, shared.origin.gateway));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token.expose());
        }
        if let Some(api_key) = &self.api_key
            && let Ok(mut value) = reqwest::header::HeaderValue::from_str(api_key.expose())
        {
            value.set_sensitive(true);
            request = request.header("x-api-key", value);
        }
        if let Some(key) = &self.hmac_key {
            let signature = sign(key.expose().as_bytes(), &body);
            request = request.header(SIGNATURE_HEADER, format!("sha256={signature}"));
        }
        request.body(body)
    }

    fn retry_later(
        &self,
        shared: &Shared,
        outbox: &mut Outbox,
        seqs: &[u64],
        backoff: &mut crate::transport::backoff::Backoff,
        paused_until: &mut Instant,
        reason: String,
    ) {
        outbox.failed(seqs);
        let delay = backoff.next_delay();
        *paused_until = Instant::now() + delay;
        tracing::warn!(destination = %shared.name, %reason, retry_in = ?delay, "Sending failed.");
        shared.update(outbox, |s| {
            s.state = LinkState::Down;
            s.last_error = Some(reason);
        });
    }

    /// Sends nothing, the journal keeping everything, until the credential files change (then
    /// reloads them and returns true) or the stop (false).
    async fn await_new_credentials(
        &mut self,
        shared: &Shared,
        cancel: &CancellationToken,
        reason: &str,
    ) -> bool {
        let message = format!(
            "destination {}: {reason}; nothing is sent until its credentials change (events stay \
             in the journal)",
            shared.name
        );
        tracing::error!(destination = %shared.name, alarm = "destination_revoked", "ALARM: {message}");
        raise_alarm(shared, "destination_revoked", &message).await;
        let outbox = shared.outbox(self.budget);
        shared.update(&outbox, |s| {
            s.state = LinkState::Revoked;
            s.last_error = Some(message.clone());
        });
        loop {
            tokio::select! {
                () = cancel.cancelled() => return false,
                () = tokio::time::sleep(CREDENTIALS_CHECK_EVERY) => {}
            }
            if fingerprint_of(&self.config, &self.https) == self.fingerprint {
                continue;
            }
            match Self::new(&self.config, &self.https) {
                Ok(fresh) => {
                    *self = fresh;
                    tracing::warn!(destination = %shared.name, "Credentials changed: sending again.");
                    return true;
                }
                // Half-written files, say: the next look may find them complete.
                Err(error) => {
                    tracing::warn!(destination = %shared.name, error = %format!("{error:#}"),
                        "Changed credentials are not usable yet.");
                }
            }
        }
    }

    /// Keeps a refused event where an operator finds it, durably, before it is acknowledged.
    /// Returns whether it was kept; if not, it must not be acknowledged.
    async fn quarantine(&self, shared: &Shared, events: &[Encoded], code: u16) -> bool {
        let path = shared.state_dir.join(format!("{}.quarantine.jsonl", shared.name));
        let written = (|| -> std::io::Result<()> {
            std::fs::create_dir_all(&shared.state_dir)?;
            let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
            for event in events {
                file.write_all(&event.json)?;
                file.write_all(b"\n")?;
            }
            file.sync_all()
        })();
        if let Err(error) = written {
            // Not acknowledged then: retried until the file can be written.
            tracing::error!(destination = %shared.name, file = %path.display(), %error,
                "Cannot write the quarantine file.");
            return false;
        }
        let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        let message = format!(
            "destination {}: HTTP {code} refused event(s) {}; kept in {}",
            shared.name,
            ids.join(", "),
            path.display()
        );
        tracing::error!(destination = %shared.name, alarm = "upstream_quarantine", "ALARM: {message}");
        raise_alarm(shared, "upstream_quarantine", &message).await;
        shared.status.send_modify(|s| {
            s.quarantined += events.len() as u64;
            s.last_error = Some(message);
        });
        metrics::counter!("slotgate_forward_quarantined_total", "destination" => shared.name.clone())
            .increment(events.len() as u64);
        true
    }
}

/// Journals an alarm record, so it reaches every destination that still accepts events.
async fn raise_alarm(shared: &Shared, alarm: &str, message: &str) {
    let record = NewRecord {
        class: Class::Alarm,
        machine: String::new(),
        machine_seq: None,
        body: Body::Alarm {
            alarm: alarm.to_owned(),
            level: "error".into(),
            message: message.to_owned(),
        },
        snapshot_of: None,
    };
    if let Err(error) = shared.journal.append(vec![record]).await {
        tracing::warn!(destination = %shared.name, %error, "Cannot journal the alarm.");
    }
}

/// HMAC-SHA256 of `body` under `key`, hex.
pub fn sign(key: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length; the error arm is unreachable in practice.
    let Ok(mut mac) = hmac::Hmac::<Sha256>::new_from_slice(key) else { return String::new() };
    mac.update(body);
    crate::journal::record::hex(&mac.finalize().into_bytes().into())
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds.min(3600)));
    }
    let at = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    let wait = at.duration_since(jiff::Timestamp::now());
    Some(Duration::try_from(wait).unwrap_or(Duration::ZERO).min(Duration::from_secs(3600)))
}

/// An error with its causes, since reqwest's own message hides the TLS reason.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_rfc_4231_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers
            .insert(reqwest::header::RETRY_AFTER, "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::ZERO), "a date in the past: at once");
        headers.insert(reqwest::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
    }
}
