//! Self-test of `tests/upstream`: every helper against the real broker, TLS stack and HTTP
//! client that the forwarder tests will use.

// clippy.toml allows unwrap in #[test] functions only; the helpers of this test crate need it too.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod upstream;

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectionError, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport,
};
use serde_json::{Value, json};

use upstream::{
    Certs, FaultProxy, Mosquitto, MosquittoOptions, Receiver, Subscriber, hmac_sha256_hex,
    mqtt_options, wait_until, wait_until_async,
};

const SECS_10: Duration = Duration::from_secs(10);

/// Publishes `payloads` at QoS 1 and waits for every PUBACK; the first connection error if any.
fn publish(options: MqttOptions, topic: &str, payloads: &[&str]) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        for payload in payloads {
            client
                .publish(topic, QoS::AtLeastOnce, false, payload.as_bytes().to_vec())
                .await
                .unwrap();
        }
        let acks = async {
            let mut acked = 0;
            while acked < payloads.len() {
                if let Event::Incoming(Packet::PubAck(_)) = eventloop.poll().await? {
                    acked += 1;
                }
            }
            Ok(())
        };
        let acked: Result<(), ConnectionError> =
            tokio::time::timeout(SECS_10, acks).await.expect("publishing timed out");
        acked.map_err(|error| error.to_string())
    })
}

fn tls_options(client_id: &str, port: u16, config: rustls::ClientConfig) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(config))));
    options
}

fn payloads(subscriber: &Subscriber) -> Vec<String> {
    subscriber.payloads().into_iter().map(|payload| String::from_utf8(payload).unwrap()).collect()
}

#[test]
fn mosquitto_restarts_on_the_same_port_and_the_subscriber_resubscribes() {
    let dir = tempfile::tempdir().unwrap();
    let options = MosquittoOptions { persistence: true, ..MosquittoOptions::default() };
    let mut broker = Mosquitto::start(dir.path(), options);
    let port = broker.port();
    let subscriber = Subscriber::start(port, "gw/#", None);
    assert_eq!(subscriber.subacks(), 1);

    publish(mqtt_options("pub-1", port, None), "gw/gw-001/events", &["a", "b", "c"]).unwrap();
    assert!(subscriber.wait_for(3, SECS_10));

    broker.restart();
    assert_eq!(broker.port(), port);
    assert!(dir.path().join("mosquitto.db").exists(), "persistence saved nothing");
    assert!(subscriber.wait_subacks(2, SECS_10), "no resubscription after the restart");
    publish(mqtt_options("pub-2", port, None), "gw/gw-001/events", &["d"]).unwrap();
    assert!(wait_until(SECS_10, || payloads(&subscriber).contains(&"d".to_owned())));
    // QoS 1 is at least once: a message in flight to the subscriber when the broker stopped is
    // delivered again after the restart, so compare first arrivals.
    let mut first = Vec::new();
    for payload in payloads(&subscriber) {
        if !first.contains(&payload) {
            first.push(payload);
        }
    }
    assert_eq!(first, ["a", "b", "c", "d"]);
    assert!(subscriber.messages().iter().all(|(topic, _)| topic == "gw/gw-001/events"));

    broker.stop();
    assert!(std::net::TcpStream::connect(broker.addr()).is_err(), "stopped broker still listens");
}

#[test]
fn mosquitto_tls_requires_a_client_certificate_from_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(&dir.path().join("certs"));
    let options = MosquittoOptions {
        tls: Some(certs.clone()),
        require_client_cert: true,
        ..MosquittoOptions::default()
    };
    let broker = Mosquitto::start(&dir.path().join("broker"), options);
    let port = broker.port();
    let subscriber = Subscriber::start(port, "gw/+/events", Some(&certs));

    let big = "x".repeat(4000);
    let options = tls_options("pub-tls", port, certs.client_config(true));
    publish(options, "gw/gw-001/events", &["hello", &big]).unwrap();
    assert!(subscriber.wait_for(2, SECS_10));
    assert_eq!(payloads(&subscriber), ["hello", big.as_str()]);

    let anonymous = tls_options("pub-no-cert", port, certs.client_config(false));
    assert!(publish(anonymous, "gw/gw-001/events", &["no"]).is_err());
    let wrong_ca =
        tls_options("pub-other-ca", port, certs.client_config_trusting(&certs.other_ca, true));
    assert!(publish(wrong_ca, "gw/gw-001/events", &["no"]).is_err());
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(subscriber.messages().len(), 2);
}

#[test]
fn fault_proxy_cuts_and_refuses_connections() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path(), MosquittoOptions::default());
    let proxy = FaultProxy::start(broker.addr());
    let subscriber = Subscriber::start(proxy.port(), "gw/#", None);
    assert_eq!(proxy.connections(), 1);
    publish(mqtt_options("pub-1", broker.port(), None), "gw/x", &["before"]).unwrap();
    assert!(subscriber.wait_for(1, SECS_10));

    proxy.refuse(true);
    proxy.cut();
    assert!(wait_until(SECS_10, || proxy.connections() >= 3), "no reconnection attempts");
    // Queued by the broker for the persistent session while the subscriber is cut off.
    publish(mqtt_options("pub-2", broker.port(), None), "gw/x", &["during"]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(subscriber.messages().len(), 1);
    assert_eq!(subscriber.subacks(), 1);

    proxy.refuse(false);
    assert!(subscriber.wait_subacks(2, SECS_10));
    assert!(subscriber.wait_for(2, SECS_10));
    assert_eq!(payloads(&subscriber), ["before", "during"]);
}

fn https_client(config: rustls::ClientConfig) -> reqwest::Client {
    reqwest::Client::builder().tls_backend_preconfigured(config).timeout(SECS_10).build().unwrap()
}

/// Posts a batch of minimal CloudEvents with a signature header: status, `retry-after`, body.
async fn post(
    client: &reqwest::Client,
    url: &str,
    ids: &[&str],
) -> reqwest::Result<(u16, Option<String>, String)> {
    let events: Vec<Value> = ids
        .iter()
        .map(|id| json!({"specversion": "1.0", "id": id, "source": "slotgate/gw-001", "type": "t"}))
        .collect();
    let body = serde_json::to_vec(&events).unwrap();
    let response = client
        .post(url)
        .header("content-type", "application/cloudevents-batch+json")
        .header("x-signature", hmac_sha256_hex(b"secret", &body))
        .body(body)
        .send()
        .await?;
    let status = response.status().as_u16();
    let retry_after =
        response.headers().get("retry-after").map(|value| value.to_str().unwrap().to_owned());
    Ok((status, retry_after, response.text().await?))
}

#[tokio::test(flavor = "multi_thread")]
async fn receiver_stores_rejects_and_drops_responses() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(dir.path());
    let receiver = Receiver::start(&certs, true);
    let url = receiver.url();
    let client = https_client(certs.client_config(true));

    assert_eq!(
        post(&client, &url, &["a", "b"]).await.unwrap(),
        (200, None, r#"{"accepted":2}"#.into())
    );
    assert_eq!(post(&client, &url, &["b", "c"]).await.unwrap().0, 200);
    assert!(receiver.wait_for_events_async(3, SECS_10).await);
    assert_eq!(receiver.event_ids(), ["a", "b", "c"]);
    assert_eq!(receiver.events()[0]["source"], "slotgate/gw-001");
    assert_eq!((receiver.duplicates(), receiver.duplicates_of("b")), (1, 1));

    receiver.set_status(Some(401), None);
    assert_eq!(post(&client, &url, &["d"]).await.unwrap().0, 401);
    receiver.set_status(Some(503), Some("7"));
    assert_eq!(post(&client, &url, &["d"]).await.unwrap().1.as_deref(), Some("7"));
    receiver.set_status(None, None);

    receiver.reject_ids_containing(Some("bad".into()));
    assert_eq!(post(&client, &url, &["e", "x-bad-1"]).await.unwrap().0, 400);
    receiver.reject_ids_containing(None);
    assert_eq!(receiver.event_ids(), ["a", "b", "c"]);

    receiver.drop_responses_after_commit(1);
    let dropped = post(&client, &url, &["f"]).await;
    assert!(dropped.is_err(), "the client got an answer: {dropped:?}");
    receiver.drop_responses_after_commit(0);
    assert_eq!(post(&client, &url, &["g"]).await.unwrap().0, 200);
    assert_eq!(receiver.event_ids(), ["a", "b", "c", "f", "g"]);

    let requests = receiver.requests();
    let statuses: Vec<u16> = requests.iter().map(|request| request.status).collect();
    assert_eq!(statuses, [200, 200, 401, 503, 400, 0, 200]);
    let first = &requests[0];
    assert_eq!(first.events, 2);
    assert_eq!(first.header("Content-Type"), Some("application/cloudevents-batch+json"));
    assert_eq!(first.header("x-signature").unwrap(), hmac_sha256_hex(b"secret", &first.body));

    // No client certificate, or a server certificate from a CA the client does not trust.
    assert!(post(&https_client(certs.client_config(false)), &url, &["h"]).await.is_err());
    let wrong_ca = https_client(certs.client_config_trusting(&certs.other_ca, true));
    assert!(post(&wrong_ca, &url, &["h"]).await.is_err());
    // The server side notices the wrong-CA alert a moment after the client gave up.
    assert!(wait_until_async(SECS_10, || receiver.tls_failures() == 2).await);
    assert_eq!(receiver.requests().len(), 7);

    // Without client authentication an anonymous client is served.
    let open = Receiver::start(&certs, false);
    let anonymous = https_client(certs.client_config(false));
    assert_eq!(post(&anonymous, &open.url(), &["i"]).await.unwrap().0, 200);
    assert_eq!(open.event_ids(), ["i"]);
}

#[test]
fn hmac_matches_rfc_4231() {
    assert_eq!(
        hmac_sha256_hex(b"Jefe", b"what do ya want for nothing?"),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
}
