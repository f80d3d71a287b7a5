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

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS,
    TlsConfiguration, Transport,
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

    fn options(&self) -> MqttOptions {
        let mut options = MqttOptions::new(&self.client_id, &self.host, self.port);
        options
            .set_keep_alive(self.keep_alive)
            .set_clean_session(false)
            .set_inflight(u16::try_from(self.window).unwrap_or(u16::MAX))
            .set_request_channel_capacity(self.window + 16)
            .set_max_packet_size(MAX_PACKET, MAX_PACKET);
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
        let (client, eventloop) = AsyncClient::new(self.options(), self.window + 16);
        let (tx, mut events) = mpsc::channel(1024);
        let pump = Pump(tokio::spawn(pump(eventloop, tx)));
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
        drop(pump);
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

/// Aborts the event-loop task when the connection ends.
struct Pump(tokio::task::JoinHandle<()>);

impl Drop for Pump {
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
