//! The HTTPS destination: batches of CloudEvents POSTed with reqwest over rustls.
//!
//! Each lane has at most one request in flight, so each lane's batches arrive in order and a
//! retried batch is retried before anything after it. Every request carries the batch's
//! idempotency key (SHA-256 of its event ids), the configured bearer token or API key, and an
//! HMAC-SHA256 of the body under the configured key, so the receiver can check where it came
//! from. A batch that got no verdict on its content (no answer, 5xx, 429, 3xx, an endpoint
//! fault) is sent again byte for byte, so its key and signature stay the same. Redirects are
//! never followed and proxies named by the environment never used; only the status decides,
//! and a response body is never read.
//!
//! | answer | what happens |
//! |---|---|
//! | 2xx, 409 (duplicate) | acknowledged |
//! | 429, 503 | the same batch again after `Retry-After` (seconds or an HTTP date), else the backoff |
//! | other 5xx, timeout, connection error | the same batch again after a jittered backoff |
//! | 3xx, 4xx other than those below | an endpoint fault (wrong URL, method, size, media type): the same batch again after the backoff, one alarm while it lasts |
//! | 401, 403 | revoked: nothing more is sent, the journal keeps everything, an alarm stays up until the credential files change, checked every 2 s (a mark in `<storage.dir>/destinations/` keeps it across restarts) |
//! | 400, 422 | a batch is resent one event per request; an event refused alone is quarantined (below) |
//!
//! An event refused alone stays in flight as a suspect until the receiver accepts something
//! else (another event, or an empty batch `[]` sent when nothing else is on the wire): then it
//! goes to `<storage.dir>/destinations/<name>.quarantine.jsonl` with an alarm and is
//! acknowledged. A receiver that refuses the empty batch too, or [`MAX_SUSPECTS`] events alone
//! in a row, refuses everything: an endpoint fault, and nothing is quarantined. A refused
//! gateway alarm is quarantined without an alarm of its own, so alarms cannot feed themselves.
//!
//! **Remote commands** (with `commands_url` set and the daemon taking them): every
//! `commands_interval` one `GET {commands_url}/pending`, with the same credentials, answers a
//! JSON array of envelopes. Each envelope's bytes, exactly as received, go to the
//! [`super::CommandInbox`] in order; once it answered (the command or its refusal is
//! journalled) `POST {commands_url}/{id}/ack` carries the outcome. An inbox error ends the
//! round unacknowledged, so the receiver serves the command again. Any answer but 200 or 204, a
//! redirect (never followed), a body over [`MAX_PENDING_BYTES`] or not a JSON array, or no
//! answer within `timeout` submits nothing; the poll runs beside the event lanes and never
//! holds them up.

use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::cloudevent::{BATCH_CONTENT_TYPE, Encoded, batch};
use super::outbox::{Lane, Outbox, ReplayBudget};
use super::{Alarms, CommandInbox, CursorWriter, LinkState, Progress, Shared};
use crate::config::{CommandPoll, DestinationConfig, HttpsDestination};
use crate::transport::backoff::ExponentialBackoff;

/// Header carrying the body's HMAC: `sha256=<hex>`.
pub const SIGNATURE_HEADER: &str = "x-slotgate-signature";
/// Header naming the gateway: `{venue}/{gateway}`.
pub const GATEWAY_HEADER: &str = "x-slotgate-gateway";

/// The longest answer to `GET {commands_url}/pending` that is read: 40 envelopes of the
/// largest size.
pub const MAX_PENDING_BYTES: usize = 40 * command_envelope::MAX_ENVELOPE_BYTES;

/// A configured HTTPS destination, its secrets read and its client built.
pub struct Driver {
    config: DestinationConfig,
    https: HttpsDestination,
    url: String,
    client: reqwest::Client,
    credentials: Credentials,
    batch_size: usize,
    /// The replay lane's budget; a replay with a lower rate sets its own.
    pub(crate) budget: ReplayBudget,
    /// Revocation holds while this is unchanged.
    fingerprint: String,
}

/// By hand: the URL's query and user info are secrets too.
impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("url", &super::redact_url(&self.url))
            .field("credentials", &self.credentials)
            .field("batch_size", &self.batch_size)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

/// Events refused alone in a row, with nothing accepted in between, that make a refusal of
/// everything rather than of these events.
const MAX_SUSPECTS: usize = 3;

/// How one request ended.
#[derive(Debug)]
enum Answer {
    Status { code: u16, retry_after: Option<Duration>, location: Option<String> },
    Failed(String),
}

struct Sent {
    /// `None` for the empty probe batch.
    lane: Option<Lane>,
    events: Vec<Encoded>,
    answer: Answer,
}

/// What an answer says about the batch that got it.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// 2xx, or 409 (a duplicate).
    Delivered,
    /// 401, 403.
    Revoked(u16),
    /// 400, 422: the receiver refused the content.
    Refused(u16),
    /// Nothing about the content: the same batch goes again after a wait.
    Again(Fault),
}

/// Why nothing was delivered, when the content is not to blame.
#[derive(Debug, PartialEq, Eq)]
struct Fault {
    reason: String,
    /// `Retry-After`; the backoff when `None`.
    wait: Option<Duration>,
    /// An alarm raised once while the fault lasts: the endpoint is misconfigured, which no
    /// retry mends.
    alarm: Option<&'static str>,
}

impl Fault {
    fn retry(reason: String) -> Self {
        Self { reason, wait: None, alarm: None }
    }

    fn endpoint(alarm: &'static str, reason: String) -> Self {
        Self { reason, wait: None, alarm: Some(alarm) }
    }
}

/// The status-code policy (module doc).
fn verdict(answer: &Answer) -> Verdict {
    let (code, retry_after, location) = match answer {
        Answer::Failed(reason) => return Verdict::Again(Fault::retry(reason.clone())),
        Answer::Status { code, retry_after, location } => (*code, *retry_after, location),
    };
    match code {
        200..=299 | 409 => Verdict::Delivered,
        401 | 403 => Verdict::Revoked(code),
        400 | 422 => Verdict::Refused(code),
        429 | 503 => Verdict::Again(Fault {
            reason: format!("HTTP {code}: the receiver asks to wait"),
            wait: retry_after,
            alarm: None,
        }),
        300..=399 => {
            let to = location
                .as_deref()
                .map_or_else(|| "nowhere (no Location)".into(), super::redact_url);
            Verdict::Again(Fault::endpoint(
                "destination_redirect",
                format!(
                    "HTTP {code} redirect to {to}: redirects are not followed, set the url to the final address"
                ),
            ))
        }
        402..=499 => Verdict::Again(Fault::endpoint(
            "destination_endpoint",
            format!(
                "HTTP {code} for a whole batch: the endpoint does not take events (wrong path, \
                 method, size limit or media type?)"
            ),
        )),
        _ => Verdict::Again(Fault::retry(format!("HTTP {code}"))),
    }
}

/// Suspected events go back to their lanes, to be sent again.
fn release(outbox: &mut Outbox, suspects: &mut Vec<Encoded>) {
    for event in suspects.drain(..) {
        outbox.failed(&[event.seq]);
    }
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
            // A redirect is not a delivery: followed, a 302 turns the POST into a GET whose 200
            // would acknowledge events nobody stored, and a 307 re-sends the credentials and the
            // signature to whatever origin it names.
            .redirect(reqwest::redirect::Policy::none())
            // The regulator's traffic goes where the configuration says, never through a proxy
            // named by the environment (HTTPS_PROXY, ALL_PROXY, HTTP_PROXY).
            .no_proxy()
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
            credentials: Credentials { token, api_key, hmac_key: read(&https.hmac_key_file)? },
            batch_size: https.batch_size,
            budget: ReplayBudget { rate: config.replay_rate, burst: config.replay_burst },
            fingerprint,
        })
    }

    pub(crate) async fn run(&mut self, shared: &Shared, cancel: CancellationToken) {
        let mut alarms = Alarms::default();
        let mut reason = "revoked before this start".to_owned();
        loop {
            if super::still_revoked(&shared.state_dir, &shared.name, &self.fingerprint)
                && !self.await_new_credentials(shared, &cancel, &reason).await
            {
                return;
            }
            super::clear_revoked(&shared.state_dir, &shared.name);
            match self.deliver(shared, &mut alarms, &cancel).await {
                Ended::Stopped => return,
                Ended::Revoked(why) => reason = why,
            }
        }
    }

    /// Sends until the stop or a revocation.
    async fn deliver(
        &self,
        shared: &Shared,
        alarms: &mut Alarms,
        cancel: &CancellationToken,
    ) -> Ended {
        let mut outbox = shared.outbox(self.budget);
        let mut cursor = CursorWriter::new(outbox.cursor());
        let mut backoff = ExponentialBackoff::DEFAULT.start();
        let mut durable = shared.journal.durable();
        let mut progress = Progress::new();
        let mut requests: JoinSet<Sent> = JoinSet::new();
        let mut busy = [false, false];
        // Per lane: a batch that got no verdict on its content, sent again byte for byte (same
        // Idempotency-Key, same signature) before anything else of its lane.
        let mut held: [Option<Vec<Encoded>>; 2] = [None, None];
        let mut paused_until = Instant::now();
        // Per lane: seqs up to this one go one per request, since a batch with them was refused.
        let mut singles_through: [Option<u64>; 2] = [None, None];
        // Events refused alone (400/422), kept in flight: quarantined once the receiver takes
        // something else, sent again if it takes nothing.
        let mut suspects: Vec<Encoded> = Vec::new();
        let mut interrupted = false;
        // At most one round of the command poll at a time, beside the lanes.
        let poll = self.https.commands.as_ref().zip(shared.commands.as_ref());
        let mut polls: JoinSet<()> = JoinSet::new();
        let mut poll_every = tokio::time::interval(
            poll.map_or(Duration::from_secs(3600), |(poll, _)| poll.interval),
        );
        poll_every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!(destination = %shared.name, url = %super::redact_url(&self.url),
            cursor = outbox.cursor(), backlog = outbox.backlog(), order = ?shared.order,
            "HTTPS forwarder started.");
        outbox.connected(*durable.borrow());
        shared.update(&outbox, |s| s.state = LinkState::Up);
        loop {
            // After a failure, what was journalled meanwhile is backlog: once nothing is on the
            // wire, held or suspected, it moves to the replay lane (budgeted, historical), as a
            // reconnect does for MQTT.
            if interrupted
                && requests.is_empty()
                && held.iter().all(Option::is_none)
                && suspects.is_empty()
            {
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
                    let next = match held[slot].take() {
                        Some(events) => Some(events),
                        None => self.next_batch(
                            shared,
                            &mut outbox,
                            (lane, now, head),
                            &mut singles_through[slot],
                        ),
                    };
                    if let Some(events) = next {
                        busy[slot] = true;
                        requests.spawn(self.send(shared, Some(lane), events));
                    }
                }
                // Nothing else on the wire to tell a refusal of these events from a refusal of
                // everything: an empty batch asks.
                if requests.is_empty() && !suspects.is_empty() {
                    requests.spawn(self.send(shared, None, Vec::new()));
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
                    let slot = sent.lane.map(|lane| usize::from(lane == Lane::Replay));
                    if let Some(slot) = slot {
                        busy[slot] = false;
                    }
                    let seqs: Vec<u64> = sent.events.iter().map(|e| e.seq).collect();
                    let mut fault = None;
                    match verdict(&sent.answer) {
                        Verdict::Delivered => {
                            for seq in &seqs {
                                outbox.acknowledged(*seq);
                            }
                            backoff.reset();
                            alarms.clear(shared);
                            shared.status.send_modify(|s| {
                                s.delivered += seqs.len() as u64;
                                s.state = LinkState::Up;
                                s.last_error = None;
                            });
                            // The receiver takes events: those it refused alone were refused
                            // for what they are.
                            if !suspects.is_empty() {
                                if self.quarantine(shared, alarms, &suspects).await {
                                    suspects.drain(..).for_each(|e| {
                                        outbox.acknowledged(e.seq);
                                    });
                                } else {
                                    release(&mut outbox, &mut suspects);
                                    fault = Some(Fault::retry("the quarantine file is not writable".into()));
                                }
                            }
                        }
                        Verdict::Revoked(code) => {
                            outbox.failed(&seqs);
                            requests.abort_all();
                            let reason = format!("the receiver refused our credentials (HTTP {code})");
                            if let Err(error) = super::mark_revoked(&shared.state_dir, &shared.name, &self.fingerprint) {
                                tracing::error!(destination = %shared.name, %error, "Cannot store the revocation.");
                            }
                            cursor.maybe_write(shared, &outbox, true).await;
                            return Ended::Revoked(reason);
                        }
                        Verdict::Refused(code) if sent.events.is_empty() => {
                            let ids: Vec<&str> = suspects.iter().map(|e| e.id.as_str()).collect();
                            let reason = format!("HTTP {code} for an empty batch as for event(s) {} sent alone: \
                                the receiver refuses everything", ids.join(", "));
                            release(&mut outbox, &mut suspects);
                            fault = Some(Fault::endpoint("destination_endpoint", reason));
                        }
                        Verdict::Refused(code) if seqs.len() > 1 => {
                            outbox.failed(&seqs);
                            if let Some(slot) = slot {
                                singles_through[slot] = seqs.last().copied();
                            }
                            tracing::warn!(destination = %shared.name, code, events = seqs.len(),
                                "A batch was refused; resending its events one by one.");
                        }
                        Verdict::Refused(code) => {
                            suspects.extend(sent.events);
                            if suspects.len() >= MAX_SUSPECTS {
                                let reason = format!("HTTP {code} for each of {} events sent alone in a row: \
                                    the receiver refuses everything", suspects.len());
                                release(&mut outbox, &mut suspects);
                                fault = Some(Fault::endpoint("destination_endpoint", reason));
                            }
                        }
                        Verdict::Again(again) => {
                            match slot {
                                Some(slot) => held[slot] = Some(sent.events),
                                // A probe with no answer on the events: they are sent again.
                                None => release(&mut outbox, &mut suspects),
                            }
                            fault = Some(again);
                        }
                    }
                    if let Some(fault) = fault {
                        interrupted = true;
                        self.fault(shared, alarms, &outbox, &mut backoff, &mut paused_until, fault).await;
                    }
                }
                _ = poll_every.tick(), if poll.is_some() && polls.is_empty() => {
                    if let Some((poll, inbox)) = poll {
                        polls.spawn(self.take_commands(shared, poll, inbox.clone()));
                    }
                }
                Some(_) = polls.join_next() => {}
                _ = durable.changed() => {}
                () = tokio::time::sleep(wake) => {}
            }
            cursor.maybe_write(shared, &outbox, false).await;
            progress.tick(shared, &outbox);
            shared.update(&outbox, |_| {});
        }
        // Let the requests on the wire finish, so their acknowledgements are kept.
        let grace = Instant::now() + Duration::from_secs(2);
        while let Ok(Some(Ok(sent))) = tokio::time::timeout_at(grace, requests.join_next()).await {
            if verdict(&sent.answer) == Verdict::Delivered {
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

    /// The next batch of a lane, read from the journal (`at`: lane, now, durable head); `None`
    /// when it has nothing to send now.
    fn next_batch(
        &self,
        shared: &Shared,
        outbox: &mut Outbox,
        (lane, now, head): (Lane, Instant, u64),
        singles_through: &mut Option<u64>,
    ) -> Option<Vec<Encoded>> {
        let room = if singles_through.is_some() { 1 } else { self.batch_size };
        // A budgeted replay sends full batches, not a request per token.
        if lane == Lane::Replay && outbox.replay_ready_for(room as u64).is_some_and(|at| at > now) {
            return None;
        }
        let seqs = outbox.take(lane, now, head, room);
        if let (Some(through), Some(&first)) = (*singles_through, seqs.first())
            && first > through
        {
            *singles_through = None;
        }
        match shared.load(outbox, &seqs, lane) {
            Ok(events) => (!events.is_empty()).then_some(events),
            Err(error) => {
                tracing::warn!(destination = %shared.name, %error, "Cannot read the journal.");
                outbox.failed(&seqs);
                None
            }
        }
    }

    /// The request for `events` as a future that owns everything it needs; `lane` is `None`
    /// for the empty probe batch.
    fn send(
        &self,
        shared: &Shared,
        lane: Option<Lane>,
        events: Vec<Encoded>,
    ) -> impl Future<Output = Sent> + Send + 'static {
        let request = self.request(shared, &events);
        async move {
            let answer = match request.send().await {
                // The status decides; the body is never read, so a receiver cannot make the
                // gateway buffer or wait for it.
                Ok(response) => {
                    let headers = response.headers();
                    Answer::Status {
                        code: response.status().as_u16(),
                        retry_after: retry_after(headers),
                        location: headers
                            .get(reqwest::header::LOCATION)
                            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
                    }
                }
                // reqwest's message names the URL, query string and all.
                Err(error) => Answer::Failed(error_chain(&error.without_url())),
            };
            Sent { lane, events, answer }
        }
    }

    /// One round of the command poll (module doc) as a future that owns what it needs.
    fn take_commands(
        &self,
        shared: &Shared,
        poll: &CommandPoll,
        inbox: Arc<dyn CommandInbox>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let (client, credentials) = (self.client.clone(), self.credentials.clone());
        let (name, base) = (shared.name.clone(), poll.url.clone());
        let gateway = format!("{}/{}", shared.origin.venue, shared.origin.gateway);
        let get = credentials.apply(client.get(format!("{base}/pending")), shared, Vec::new());
        async move {
            let shown = super::redact_url(&base);
            let envelopes = match fetch_pending(get).await {
                Ok(envelopes) => envelopes,
                Err(reason) => {
                    tracing::warn!(destination = %name, url = %shown, %reason,
                        "No remote commands taken from the destination.");
                    return;
                }
            };
            let origin = format!("https:{name}");
            for envelope in envelopes {
                let id = envelope_id(&envelope);
                let outcome = match inbox.submit(envelope, origin.clone()).await {
                    Ok(outcome) => outcome,
                    Err(error) => {
                        tracing::warn!(destination = %name, %error,
                            "Remote command not journalled; not acknowledged, taken again next time.");
                        return;
                    }
                };
                tracing::info!(destination = %name, %outcome, "Remote command taken.");
                let Some(id) = id else {
                    tracing::warn!(destination = %name, %outcome,
                        "A pending command without a usable id cannot be acknowledged.");
                    continue;
                };
                let ack = client
                    .post(format!("{base}/{id}/ack"))
                    .header(reqwest::header::CONTENT_TYPE, "application/json");
                let ack = credentials.apply_for(ack, &gateway, outcome.into_bytes());
                match ack.send().await {
                    Ok(answer) if answer.status().is_success() => {}
                    Ok(answer) => {
                        tracing::warn!(destination = %name, %id, status = answer.status().as_u16(),
                        "The acknowledgement of a remote command was refused; it is answered as a duplicate next time.")
                    }
                    Err(error) => {
                        tracing::warn!(destination = %name, %id, error = %error_chain(&error.without_url()),
                        "The acknowledgement of a remote command failed; it is answered as a duplicate next time.")
                    }
                }
            }
        }
    }

    /// Nothing was delivered and the content is not to blame: waits (`Retry-After` or the
    /// backoff), marks the destination down, and raises the fault's alarm once.
    async fn fault(
        &self,
        shared: &Shared,
        alarms: &mut Alarms,
        outbox: &Outbox,
        backoff: &mut crate::transport::backoff::Backoff,
        paused_until: &mut Instant,
        fault: Fault,
    ) {
        let delay = fault.wait.unwrap_or_else(|| backoff.next_delay());
        *paused_until = Instant::now() + delay;
        let mut reason = fault.reason;
        if let Some(alarm) = fault.alarm {
            let message = format!(
                "destination {}: {reason}; events stay in the journal and are sent again",
                shared.name
            );
            let times = alarms.raise(shared, alarm, alarm, &message).await;
            if times > 1 {
                reason = format!("{reason} ({times} times in a row)");
            }
        }
        tracing::warn!(destination = %shared.name, %reason, retry_in = ?delay, "Sending failed.");
        shared.update(outbox, |s| {
            s.state = LinkState::Down;
            s.last_error = Some(reason);
        });
    }

    fn request(&self, shared: &Shared, events: &[Encoded]) -> reqwest::RequestBuilder {
        let body = batch(events);
        let mut ids = Sha256::new();
        for event in events {
            ids.update(event.id.as_bytes());
            ids.update(b"\n");
        }
        let key = crate::journal::record::hex(&ids.finalize().into());
        let request = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, BATCH_CONTENT_TYPE)
            .header("idempotency-key", key);
        self.credentials.apply(request, shared, body)
    }

    /// Sends nothing, the journal keeping everything, until the credential files change (then
    /// reloads them and returns true) or the stop (false).
    async fn await_new_credentials(
        &mut self,
        shared: &Shared,
        cancel: &CancellationToken,
        reason: &str,
    ) -> bool {
        let outbox = shared.outbox(self.budget);
        super::revoked(shared, &outbox, reason).await;
        loop {
            let refused = self.fingerprint.clone();
            let changed = || fingerprint_of(&self.config, &self.https) != refused;
            if !super::wait_until_changed(shared, &outbox, cancel, changed).await {
                return false;
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

    /// Keeps refused events where an operator finds them, durably, before they are
    /// acknowledged. Returns whether they were kept; if not, they must not be acknowledged.
    /// A refused gateway alarm raises no alarm of its own: an alarm about a destination that
    /// refuses it would otherwise feed itself.
    async fn quarantine(&self, shared: &Shared, alarms: &mut Alarms, events: &[Encoded]) -> bool {
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
        let ids = |alarm: bool| -> Vec<&str> {
            events.iter().filter(|e| e.alarm == alarm).map(|e| e.id.as_str()).collect()
        };
        let (refused, refused_alarms) = (ids(false), ids(true));
        let message = format!(
            "destination {}: refused event(s) {}; kept in {}",
            shared.name,
            refused.iter().chain(&refused_alarms).copied().collect::<Vec<_>>().join(", "),
            path.display()
        );
        if refused.is_empty() {
            tracing::error!(destination = %shared.name, "{message}");
        } else {
            alarms.raise(shared, "upstream_quarantine", "upstream_quarantine", &message).await;
        }
        shared.status.send_modify(|s| {
            s.quarantined += events.len() as u64;
            s.last_error = Some(message);
        });
        metrics::counter!("slotgate_forward_quarantined_total", "destination" => shared.name.clone())
            .increment(events.len() as u64);
        true
    }
}

/// The credentials every request carries: bearer token, API key, the body's HMAC, and the
/// gateway header.
#[derive(Debug, Clone)]
struct Credentials {
    token: Option<super::Secret>,
    api_key: Option<super::Secret>,
    hmac_key: Option<super::Secret>,
}

impl Credentials {
    fn apply(
        &self,
        request: reqwest::RequestBuilder,
        shared: &Shared,
        body: Vec<u8>,
    ) -> reqwest::RequestBuilder {
        let gateway = format!("{}/{}", shared.origin.venue, shared.origin.gateway);
        self.apply_for(request, &gateway, body)
    }

    fn apply_for(
        &self,
        request: reqwest::RequestBuilder,
        gateway: &str,
        body: Vec<u8>,
    ) -> reqwest::RequestBuilder {
        let mut request = request.header(GATEWAY_HEADER, gateway);
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
        if body.is_empty() { request } else { request.body(body) }
    }
}

/// The pending commands' envelopes, each its bytes as received, or why none are taken.
async fn fetch_pending(get: reqwest::RequestBuilder) -> Result<Vec<Vec<u8>>, String> {
    let mut response = get.send().await.map_err(|e| error_chain(&e.without_url()))?;
    match response.status().as_u16() {
        200 => {}
        204 => return Ok(Vec::new()),
        code => return Err(format!("HTTP {code} (redirects are not followed)")),
    }
    let too_large = || format!("the answer is larger than {MAX_PENDING_BYTES} bytes");
    if response.content_length().is_some_and(|n| n > MAX_PENDING_BYTES as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| error_chain(&e.without_url()))? {
        if body.len() + chunk.len() > MAX_PENDING_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    json_array_elements(&body).ok_or_else(|| "the answer is not a JSON array".to_owned())
}

/// The elements of a JSON array, each its bytes exactly as they stand (the envelope parser
/// then sees duplicate fields and every other detail); `None` unless `body` is one array.
fn json_array_elements(body: &[u8]) -> Option<Vec<Vec<u8>>> {
    serde_json::from_slice::<Vec<serde::de::IgnoredAny>>(body).ok()?;
    // Valid JSON from here on: elements end at a comma or the closing bracket outside any
    // string and nesting.
    let start = body.iter().position(|b| *b == b'[')? + 1;
    let mut elements = Vec::new();
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    let mut from = start;
    for (at, byte) in body.iter().enumerate().skip(start) {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => depth += 1,
            b']' | b'}' if depth > 0 => depth -= 1,
            b',' | b']' if depth == 0 => {
                let element = body.get(from..at)?.trim_ascii();
                if !element.is_empty() {
                    elements.push(element.to_vec());
                }
                from = at + 1;
                if *byte == b']' {
                    break;
                }
            }
            _ => {}
        }
    }
    Some(elements)
}

/// The `id` an envelope is acknowledged by, when it is fit for a URL path segment (no `.`, so
/// no `..` can move the acknowledgement elsewhere).
fn envelope_id(envelope: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Id {
        id: String,
    }
    let id = serde_json::from_slice::<Id>(envelope).ok()?.id;
    let usable = (1..=64).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    usable.then_some(id)
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
    fn only_400_and_422_blame_the_content_and_redirects_are_endpoint_faults() {
        let status = |code: u16, location: Option<&str>| {
            verdict(&Answer::Status {
                code,
                retry_after: None,
                location: location.map(str::to_owned),
            })
        };
        assert_eq!(status(200, None), Verdict::Delivered);
        assert_eq!(status(409, None), Verdict::Delivered);
        assert_eq!(status(403, None), Verdict::Revoked(403));
        assert_eq!(status(422, None), Verdict::Refused(422));
        for code in [404, 405, 410, 413, 415, 418] {
            let Verdict::Again(fault) = status(code, None) else { panic!("{code}") };
            assert_eq!(fault.alarm, Some("destination_endpoint"), "{code}");
        }
        let Verdict::Again(fault) = status(302, Some("https://u:p@elsewhere/ok?sig=1")) else {
            panic!("a redirect is no delivery")
        };
        assert_eq!(fault.alarm, Some("destination_redirect"));
        assert!(fault.reason.contains("https://elsewhere/ok?…"), "{}", fault.reason);
        assert!(!fault.reason.contains("sig=1") && !fault.reason.contains("u:p"));
        for code in [500, 502, 504] {
            assert_eq!(status(code, None), Verdict::Again(Fault::retry(format!("HTTP {code}"))));
        }
    }

    #[test]
    fn pending_commands_keep_their_bytes_and_only_arrays_are_taken() {
        let body = br#" [ {"id":"a","reason":"x, ] } \" ["} ,{"id":"b","id":"dup"}, 7 ,[1,[2]] ] "#;
        let elements = json_array_elements(body).unwrap();
        let elements: Vec<&[u8]> = elements.iter().map(Vec::as_slice).collect();
        assert_eq!(
            elements,
            [
                &br#"{"id":"a","reason":"x, ] } \" ["}"#[..],
                br#"{"id":"b","id":"dup"}"#,
                b"7",
                b"[1,[2]]"
            ],
            "exactly as sent: the parser sees the duplicate field"
        );
        assert_eq!(json_array_elements(b"[]"), Some(Vec::new()));
        for not_an_array in [&b"{}"[..], b"", b"[1,", b"[1] [2]", b"null", b"\"[1]\""] {
            assert_eq!(json_array_elements(not_an_array), None, "{not_an_array:?}");
        }
    }

    #[test]
    fn only_ids_fit_for_a_path_segment_are_acknowledged() {
        assert_eq!(
            envelope_id(br#"{"id":"6f1c9a52-8d0e-4b7a-9c3e-2a5b8f4d1e07","x":1}"#).as_deref(),
            Some("6f1c9a52-8d0e-4b7a-9c3e-2a5b8f4d1e07")
        );
        for bad in [
            &br#"{"id":"../x"}"#[..],
            br#"{"id":".."}"#,
            br#"{"id":"a/b"}"#,
            br#"{"id":""}"#,
            br#"{"id":7}"#,
            b"[]",
        ] {
            assert_eq!(envelope_id(bad), None, "{}", String::from_utf8_lossy(bad));
        }
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
