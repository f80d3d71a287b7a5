//! The MQTT destination: QoS 1 publishes through rumqttc, with delivery tracked here.
//!
//! One task owns the client; rumqttc's event loop runs in a pump task that hands every event over
//! a channel (its `poll` is not cancel-safe, so it is never raced in a `select!`). Each publish
//! is a journal seq; rumqttc reports `Outgoing::Publish(pkid)` in the order publishes were
//! requested, so a FIFO maps packet ids to seqs, and each PUBACK acknowledges one seq in the
//! [`Outbox`]. Packet ids wrap and are reused, so the map lives only as long as one connection.
//!
//! Every connection is a new client: after any error, a broker restart or a clean session
//! rumqttc would drop or replay its in-flight messages on its own (field-lessons.md §B2, §C4);
//! instead everything unacknowledged is resent from the journal on the replay lane. The MQTT
//! session is persistent (`clean_session = false`) for the broker's sake. A connection that is
//! up but gets no PUBACK for `stuck_after` while messages are in flight is recycled the same
//! way (rumqttc's collision livelock, stuck brokers).
//!
//! **Remote commands** (when the daemon takes them): each connection subscribes at QoS 1 to
//! the venue's command topic and to every machine's ([`command_filters`]). Incoming publishes
//! go, in order of arrival, to a worker that hands each to the [`super::CommandInbox`] and
//! sends its PUBACK (manual acks) only once the inbox answered, so the command is journalled
//! before the broker may forget it; PUBACKs leave in the order the publishes came, as MQTT
//! 3.1.1 (4.6) asks. An inbox error is never acknowledged: the connection is recycled and the
//! broker, holding the message in our persistent session, delivers it again. Manual acks
//! concern only what we receive: the PUBACKs of our event publishes are tracked as before.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Outgoing, Packet, Publish, QoS,
    SubscribeFilter, SubscribeReasonCode, TlsConfiguration, Transport,
};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::outbox::{Lane, Outbox, ReplayBudget};
use super::{CursorWriter, LinkState, Progress, Shared};
use crate::config::{DestinationConfig, MqttDestination};
use crate::transport::backoff::ExponentialBackoff;

/// How long a connection attempt may take, TCP and TLS and CONNACK together.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stop waits for the acknowledgements of messages in flight.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// How often the status and gauges are refreshed while connected.
const STATUS_EVERY: Duration = Duration::from_millis(100);
/// Largest packet either way; events are a few KiB.
const MAX_PACKET: usize = 1 << 20;

/// A configured MQTT destination, its secrets read and its TLS built.
#[derive(Debug)]
pub struct Driver {
    config: DestinationConfig,
    mqtt: MqttDestination,
    /// Revocation holds while this is unchanged.
    fingerprint: String,
    host: String,
    port: u16,
    client_id: String,
    topic: String,
    credentials: Option<(String, super::Secret)>,
    tls: Option<Arc<rustls::ClientConfig>>,
    keep_alive: Duration,
    window: usize,
    stuck_after: Duration,
    /// The replay lane's budget; a replay with a lower rate sets its own.
    pub(crate) budget: ReplayBudget,
}

enum Ended {
    Stopped,
    Lost(String),
    /// The broker refused the login (CONNACK 4 or 5).
    Revoked(String),
}

/// What a revocation is tied to: the user name, the password file and the client certificate.
fn fingerprint_of(config: &DestinationConfig, mqtt: &MqttDestination) -> String {
    super::credentials_fingerprint(
        &[
            mqtt.password_file.as_deref(),
            config.tls.as_ref().and_then(|t| t.client_cert.as_deref()),
        ],
        &format!("{}:{}:{}", mqtt.host, mqtt.port, mqtt.username.as_deref().unwrap_or_default()),
    )
}

impl Driver {
    pub fn new(config: &DestinationConfig, mqtt: &MqttDestination) -> anyhow::Result<Self> {
        let tls = config.tls.as_ref().map(super::tls::client_config).transpose()?;
        let password = mqtt.password_file.as_deref().map(super::read_secret).transpose()?;
        let credentials = match (&mqtt.username, password) {
            (Some(user), password) => Some((user.clone(), password.unwrap_or_default())),
            (None, Some(token)) => Some((String::new(), token)),
            (None, None) => None,
        };
        Ok(Self {
            config: config.clone(),
            mqtt: mqtt.clone(),
            fingerprint: fingerprint_of(config, mqtt),
            host: mqtt.host.clone(),
            port: mqtt.port,
            client_id: mqtt.client_id.clone(),
            topic: mqtt.topic.clone(),
            credentials,
            tls,
            keep_alive: mqtt.keep_alive,
            window: usize::from(mqtt.max_in_flight),
            stuck_after: mqtt.stuck_after,
            budget: ReplayBudget { rate: config.replay_rate, burst: config.replay_burst },
        })
    }

    pub(crate) async fn run(&mut self, shared: &Shared, cancel: CancellationToken) {
        let mut reason = "revoked before this start".to_owned();
        loop {
            if super::still_revoked(&shared.state_dir, &shared.name, &self.fingerprint)
                && !self.await_new_credentials(shared, &cancel, &reason).await
            {
                return;
            }
            super::clear_revoked(&shared.state_dir, &shared.name);
            match self.deliver(shared, &cancel).await {
                Some(why) => reason = why,
                None => return,
            }
        }
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
            let changed = || fingerprint_of(&self.config, &self.mqtt) != refused;
            if !super::wait_until_changed(shared, &outbox, cancel, changed).await {
                return false;
            }
            match Self::new(&self.config, &self.mqtt) {
                Ok(fresh) => {
                    *self = fresh;
                    tracing::warn!(destination = %shared.name, "Credentials changed: connecting again.");
                    return true;
                }
                Err(error) => {
                    tracing::warn!(destination = %shared.name, error = %format!("{error:#}"),
                        "Changed credentials are not usable yet.");
                }
            }
        }
    }

    /// Connects and sends until the stop (`None`) or a refused login (the reason).
    async fn deliver(&self, shared: &Shared, cancel: &CancellationToken) -> Option<String> {
        let mut outbox = shared.outbox(self.budget);
        let mut cursor = CursorWriter::new(outbox.cursor());
        let mut backoff = ExponentialBackoff::DEFAULT.start();
        let mut durable = shared.journal.durable();
        // The host may carry a user name and password (`user:pass@host`).
        let broker = super::redact_url(&format!("mqtt://{}:{}", self.host, self.port));
        tracing::info!(destination = %shared.name, %broker, cursor = outbox.cursor(),
            backlog = outbox.backlog(), order = ?shared.order, "MQTT forwarder started.");
        let revoked = loop {
            shared.update(&outbox, |s| s.state = LinkState::Connecting);
            let ended = self
                .connection(shared, &mut outbox, &mut durable, &mut cursor, cancel, &mut backoff)
                .await;
            cursor.maybe_write(shared, &outbox, true).await;
            match ended {
                Ended::Stopped => break None,
                Ended::Revoked(reason) => {
                    if let Err(error) =
                        super::mark_revoked(&shared.state_dir, &shared.name, &self.fingerprint)
                    {
                        tracing::error!(destination = %shared.name, %error, "Cannot store the revocation.");
                    }
                    break Some(reason);
                }
                Ended::Lost(reason) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(destination = %shared.name, %reason, retry_in = ?delay,
                        in_flight = outbox.in_flight(), "MQTT connection lost.");
                    shared.update(&outbox, |s| {
                        s.state = LinkState::Down;
                        s.last_error = Some(reason);
                    });
                    let until = Instant::now() + delay;
                    loop {
                        tokio::select! {
                            () = cancel.cancelled() => break,
                            () = tokio::time::sleep_until(until) => break,
                            // What is journalled during the outage shows as waiting.
                            Ok(()) = durable.changed() => shared.update(&outbox, |_| {}),
                        }
                    }
                    if cancel.is_cancelled() {
                        break None;
                    }
                }
            }
        };
        if revoked.is_none() {
            shared.update(&outbox, |s| s.state = LinkState::Down);
            tracing::info!(destination = %shared.name, cursor = outbox.cursor(), "MQTT forwarder stopped.");
        }
        revoked
    }

    fn options(&self, commands: bool) -> MqttOptions {
        let mut options = MqttOptions::new(&self.client_id, &self.host, self.port);
        options
            .set_keep_alive(self.keep_alive)
            .set_clean_session(false)
            .set_inflight(u16::try_from(self.window).unwrap_or(u16::MAX))
            .set_request_channel_capacity(self.window + 16)
            .set_max_packet_size(MAX_PACKET, MAX_PACKET)
            // A command's PUBACK waits until it is journalled (module doc).
            .set_manual_acks(commands);
        if let Some((user, password)) = &self.credentials {
            options.set_credentials(user, password.expose());
        }
        if let Some(tls) = &self.tls {
            options
                .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls.clone())));
        }
        options
    }

    fn topic(&self, shared: &Shared, machine: &str) -> String {
        self.topic
            .replace("{venue}", &shared.origin.venue)
            .replace("{gateway}", &shared.origin.gateway)
            .replace("{machine}", machine)
    }

    /// One connection, from CONNECT to its loss or the stop.
    async fn connection(
        &self,
        shared: &Shared,
        outbox: &mut Outbox,
        durable: &mut watch::Receiver<u64>,
        cursor: &mut CursorWriter,
        cancel: &CancellationToken,
        backoff: &mut crate::transport::backoff::Backoff,
    ) -> Ended {
        let options = self.options(shared.commands.is_some());
        let (client, eventloop) = AsyncClient::new(options, self.window + 16);
        let (tx, mut events) = mpsc::channel(1024);
        let pump = ConnectionTask(tokio::spawn(pump(eventloop, tx)));
        let connected = tokio::select! {
            () = cancel.cancelled() => return Ended::Stopped,
            connack = tokio::time::timeout(CONNECT_TIMEOUT, wait_connack(&mut events)) => connack,
        };
        match connected {
            Ok(Ok(())) => {}
            Ok(Err(ended)) => return ended,
            Err(_) => return Ended::Lost(format!("no CONNACK within {CONNECT_TIMEOUT:?}")),
        }
        backoff.reset();
        outbox.connected(*durable.borrow());
        tracing::info!(destination = %shared.name, backlog = outbox.backlog(), "MQTT connected.");
        shared.update(outbox, |s| {
            s.state = LinkState::Up;
            s.last_error = None;
        });
        let (inbound, mut refused, worker) = match &shared.commands {
            Some(inbox) => {
                let filters = command_filters(&shared.origin.venue)
                    .map(|topic| SubscribeFilter::new(topic, QoS::AtLeastOnce));
                if let Err(error) = client.try_subscribe_many(filters) {
                    return Ended::Lost(format!("cannot subscribe to the command topics: {error}"));
                }
                let (inbound, publishes) = mpsc::unbounded_channel();
                let (refuse, refused) = mpsc::channel(1);
                let origin = format!("mqtt:{}", shared.name);
                let work = take_commands(inbox.clone(), client.clone(), origin, publishes, refuse);
                (Some(inbound), Some(refused), Some(ConnectionTask(tokio::spawn(work))))
            }
            None => (None, None, None),
        };

        let mut requested: VecDeque<u64> = VecDeque::new();
        // One topic per machine, built once per connection.
        let mut topics: HashMap<String, String> = HashMap::new();
        let mut pkids: HashMap<u16, u64> = HashMap::new();
        let mut last_ack = Instant::now();
        let mut progress = Progress::new();
        let mut status_at = Instant::now();
        let ended = loop {
            let head = *durable.borrow();
            let now = Instant::now();
            if outbox.in_flight() == 0 {
                last_ack = now;
            }
            // Live first: with the window full of replay messages a live one waits for a single
            // PUBACK at most, so the replay lane may use the whole window.
            let room = self.window.saturating_sub(outbox.in_flight());
            let live = outbox.take(Lane::Live, now, head, room);
            // Replay refills in chunks of at least a quarter window: fewer, larger journal
            // reads and wake-ups than one record per PUBACK.
            let room = self.window.saturating_sub(outbox.in_flight());
            let room = if room >= self.window.div_ceil(4) { room } else { 0 };
            let replay = outbox.take(Lane::Replay, now, head, room);
            for (lane, seqs) in [(Lane::Live, live), (Lane::Replay, replay)] {
                let encoded = match shared.load(outbox, &seqs, lane) {
                    Ok(encoded) => encoded,
                    Err(error) => {
                        tracing::warn!(destination = %shared.name, %error, "Cannot read the journal.");
                        outbox.failed(&seqs);
                        continue;
                    }
                };
                let mut encoded = encoded.into_iter();
                while let Some(event) = encoded.next() {
                    let seq = event.seq;
                    let topic = topics
                        .entry(event.subject)
                        .or_insert_with_key(|machine| self.topic(shared, machine))
                        .clone();
                    if let Err(error) =
                        client.try_publish(topic, QoS::AtLeastOnce, false, event.json)
                    {
                        // The request channel is sized to the window, so this is a closed client:
                        // the loss shows on the event channel next.
                        tracing::debug!(destination = %shared.name, %error, "Publish not queued.");
                        outbox.failed(&[seq]);
                        encoded.by_ref().for_each(|rest| outbox.failed(&[rest.seq]));
                        break;
                    }
                    requested.push_back(seq);
                }
            }
            let wake = outbox
                .replay_ready_at()
                .map_or(Duration::from_millis(200), |t| t.saturating_duration_since(now))
                .clamp(Duration::from_millis(1), Duration::from_millis(200));
            tokio::select! {
                () = cancel.cancelled() => break Ended::Stopped,
                event = events.recv() => {
                    let mut next = Some(event);
                    while let Some(event) = next.take() {
                        match event {
                            Some(Ok(Event::Incoming(Packet::Publish(publish)))) => {
                                // Not acknowledged if the worker is gone: the broker sends it
                                // again on the next connection.
                                if let Some(inbound) = &inbound {
                                    let _ = inbound.send(publish);
                                }
                            }
                            Some(Ok(Event::Incoming(Packet::SubAck(ack))))
                                if ack.return_codes.contains(&SubscribeReasonCode::Failure) =>
                            {
                                // Events still flow; only the state system's commands cannot
                                // arrive, which no retry mends.
                                tracing::error!(destination = %shared.name,
                                    "The broker refused the subscription to the command topics \
                                     (its ACL?): remote commands cannot arrive on this destination.");
                            }
                            Some(Ok(event)) => {
                                if track(&event, &mut requested, &mut pkids, outbox, shared) {
                                    last_ack = Instant::now();
                                }
                            }
                            Some(Err(error)) => return self.lost(shared, outbox, cursor, error.to_string()).await,
                            None => return self.lost(shared, outbox, cursor, "event loop ended".into()).await,
                        }
                        next = events.try_recv().ok().map(Some);
                    }
                }
                Some(reason) = next_refusal(&mut refused) => {
                    break Ended::Lost(format!(
                        "a remote command was not journalled ({reason}): not acknowledged, \
                         reconnecting for the broker to send it again"
                    ));
                }
                _ = durable.changed() => {}
                () = tokio::time::sleep(wake) => {}
            }
            if outbox.in_flight() > 0 && last_ack.elapsed() >= self.stuck_after {
                break Ended::Lost(format!(
                    "no acknowledgement for {:?} with {} message(s) in flight: recycling the connection",
                    self.stuck_after,
                    outbox.in_flight()
                ));
            }
            cursor.maybe_write(shared, outbox, false).await;
            progress.tick(shared, outbox);
            if status_at.elapsed() >= STATUS_EVERY {
                shared.update(outbox, |_| {});
                status_at = Instant::now();
            }
        };
        if matches!(ended, Ended::Stopped) {
            // Give what is in flight a moment to be acknowledged, so a restart resends less.
            let deadline = Instant::now() + STOP_GRACE;
            while outbox.in_flight() > 0 {
                match tokio::time::timeout_at(deadline, events.recv()).await {
                    Ok(Some(Ok(event))) => {
                        track(&event, &mut requested, &mut pkids, outbox, shared);
                    }
                    _ => break,
                }
            }
            let _ = client.try_disconnect();
        }
        drop((worker, pump));
        ended
    }

    async fn lost(
        &self,
        shared: &Shared,
        outbox: &Outbox,
        cursor: &mut CursorWriter,
        reason: String,
    ) -> Ended {
        cursor.maybe_write(shared, outbox, true).await;
        Ended::Lost(reason)
    }
}

/// Follows one event-loop event: a publish on the wire gets its packet id mapped to the seq it
/// carries; a PUBACK acknowledges that seq. Returns whether something was acknowledged.
fn track(
    event: &Event,
    requested: &mut VecDeque<u64>,
    pkids: &mut HashMap<u16, u64>,
    outbox: &mut Outbox,
    shared: &Shared,
) -> bool {
    match event {
        Event::Outgoing(Outgoing::Publish(pkid)) => {
            if let Some(seq) = requested.pop_front() {
                pkids.insert(*pkid, seq);
            }
            false
        }
        Event::Incoming(Packet::PubAck(ack)) => match pkids.remove(&ack.pkid) {
            Some(seq) => {
                outbox.acknowledged(seq);
                // Counted without waking watchers: readers poll the status.
                shared.status.send_if_modified(|s| {
                    s.delivered += 1;
                    false
                });
                true
            }
            None => false,
        },
        _ => false,
    }
}

/// The venue's command topic and the machines' (one `+` level: the registry id), following
/// the events' `slotgate/{venue}/{machine}/events`. The envelope, not the topic, says which
/// machines a command is for.
pub fn command_filters(venue: &str) -> [String; 2] {
    [format!("slotgate/{venue}/commands"), format!("slotgate/{venue}/+/commands")]
}

/// The next refusal of the command worker; pending forever without one.
async fn next_refusal(refused: &mut Option<mpsc::Receiver<String>>) -> Option<String> {
    match refused {
        Some(refused) => refused.recv().await,
        None => std::future::pending().await,
    }
}

/// One connection's command worker: hands each command publish to the inbox in order of
/// arrival and acknowledges it once the inbox answered. An inbox error is sent on `refuse`
/// and ends the worker with the command unacknowledged (module doc).
async fn take_commands(
    inbox: Arc<dyn super::CommandInbox>,
    client: AsyncClient,
    origin: String,
    mut publishes: mpsc::UnboundedReceiver<Publish>,
    refuse: mpsc::Sender<String>,
) {
    while let Some(publish) = publishes.recv().await {
        let topic = publish.topic.clone();
        match inbox.submit(publish.payload.to_vec(), origin.clone()).await {
            Ok(outcome) => {
                tracing::info!(%origin, %topic, %outcome, "Remote command taken.");
                if let Err(error) = client.ack(&publish).await {
                    // The connection is closing: the broker sends it again, a duplicate.
                    tracing::debug!(%origin, %error, "Command PUBACK not queued.");
                    return;
                }
            }
            Err(error) => {
                tracing::warn!(%origin, %topic, %error, "Remote command not journalled.");
                let _ = refuse.send(error).await;
                return;
            }
        }
    }
}

/// Aborts a connection's task (the event-loop pump, the command worker) when it ends.
struct ConnectionTask(tokio::task::JoinHandle<()>);

impl Drop for ConnectionTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn pump(mut eventloop: EventLoop, tx: mpsc::Sender<Result<Event, rumqttc::ConnectionError>>) {
    eventloop.network_options.set_connection_timeout(CONNECT_TIMEOUT.as_secs());
    // Nagle's algorithm stays on (no TCP_NODELAY): rumqttc writes each publish with a syscall
    // of its own, and Nagle coalesces those written while earlier ones are unacknowledged, so a
    // replay costs the gateway and the broker fewer segments (+8 % replay throughput measured,
    // BENCHMARKS.md). A lone live event still leaves at once; one that follows another within a
    // round trip waits for its ACK, which the broker's PUBACK carries, so at worst a round trip
    // more. On loopback with 250 machines live p99 stayed at 3-5 ms.
    loop {
        let event = eventloop.poll().await;
        let failed = event.is_err();
        if tx.send(event).await.is_err() || failed {
            return;
        }
    }
}

/// The CONNACK; a refused login (return code 4 or 5, like HTTP 401/403) revokes the
/// destination, since retrying the same credentials cannot succeed.
async fn wait_connack(
    events: &mut mpsc::Receiver<Result<Event, rumqttc::ConnectionError>>,
) -> Result<(), Ended> {
    while let Some(event) = events.recv().await {
        let code = match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => ack.code,
            // rumqttc reports a refusing CONNACK as an error carrying its code.
            Err(rumqttc::ConnectionError::ConnectionRefused(code)) => code,
            Ok(_) => continue,
            Err(error) => return Err(Ended::Lost(error.to_string())),
        };
        return match code {
            ConnectReturnCode::Success => Ok(()),
            ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized => {
                Err(Ended::Revoked(format!("the broker refused our login: {code:?}")))
            }
            code => Err(Ended::Lost(format!("the broker refused the connection: {code:?}"))),
        };
    }
    Err(Ended::Lost("event loop ended".into()))
}

#[cfg(test)]
mod tests {
    use rumqttc::ConnAck;

    use super::*;

    #[tokio::test]
    async fn a_refused_login_is_a_revocation_and_other_refusals_are_retried() {
        for (code, revoked) in [
            (ConnectReturnCode::BadUserNamePassword, true),
            (ConnectReturnCode::NotAuthorized, true),
            (ConnectReturnCode::ServiceUnavailable, false),
        ] {
            let (tx, mut rx) = mpsc::channel(1);
            tx.send(Ok(Event::Incoming(Packet::ConnAck(ConnAck::new(code, false))))).await.unwrap();
            let ended = wait_connack(&mut rx).await;
            assert_eq!(matches!(ended, Err(Ended::Revoked(_))), revoked, "{code:?}");
            let (tx, mut rx) = mpsc::channel(1);
            tx.send(Err(rumqttc::ConnectionError::ConnectionRefused(code))).await.unwrap();
            let ended = wait_connack(&mut rx).await;
            assert_eq!(matches!(ended, Err(Ended::Revoked(_))), revoked, "{code:?} as an error");
        }
    }
}
