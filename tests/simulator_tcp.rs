//! The simulator in-process on 127.0.0.1, spoken to over TCP with the 9-bit framing (flag byte,
//! then data byte, per character) the way slotgate's TCP transport will. Every wait is bounded.

// clippy.toml allows unwrap in #[test] functions only; the helpers of this test crate need it too.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use firmware_protocols::sas::message::MachineInfo;
use firmware_protocols::sas::ninebit::{self, Decoder};
use firmware_protocols::sas::{Address, Character, HostMessage, LongPoll, Reply};
use slotgate::simulator::{EndpointKind, SimulateArgs, Simulation};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Bound on every single wait; the chirp test needs more than the 5 s loop-break delay.
const WAIT: Duration = Duration::from_secs(10);

/// A hand-written host on one TCP connection.
struct Host {
    stream: TcpStream,
    decoder: Decoder,
    pending: Vec<Character>,
}

impl Host {
    async fn connect(addr: SocketAddr) -> Self {
        let stream = timeout(WAIT, TcpStream::connect(addr)).await.unwrap().unwrap();
        Self { stream, decoder: Decoder::default(), pending: Vec::new() }
    }

    async fn send(&mut self, message: &[u8]) {
        let mut out = Vec::new();
        ninebit::encode_message(message, &mut out);
        self.stream.write_all(&out).await.unwrap();
    }

    /// Reads exactly `n` characters.
    async fn read(&mut self, n: usize) -> Vec<Character> {
        let mut buf = [0u8; 256];
        while self.pending.len() < n {
            let got =
                timeout(WAIT, self.stream.read(&mut buf)).await.expect("reply in time").unwrap();
            assert!(got > 0, "connection closed");
            self.decoder.decode(&buf[..got], &mut self.pending).unwrap();
        }
        self.pending.drain(..n).collect()
    }

    /// Sends a long poll and reads its `len`-byte reply, checking that no reply byte carries
    /// the wakeup bit (sas-protocol.md §1.1).
    async fn exchange(&mut self, address: Address, poll: LongPoll, len: usize) -> Reply {
        self.send(&HostMessage::LongPoll(address, poll).encode().unwrap()).await;
        let reply = self.read(len).await;
        assert!(reply.iter().all(|c| !c.wakeup));
        let bytes: Vec<u8> = reply.iter().map(|c| c.byte).collect();
        Reply::decode_frame(address, &bytes).unwrap()
    }
}

fn tcp_endpoints(sim: &Simulation) -> Vec<(u8, SocketAddr)> {
    sim.endpoints()
        .iter()
        .map(|e| match e.kind {
            EndpointKind::Tcp(addr) => (e.address, addr),
            EndpointKind::Pty(_) => panic!("asked for TCP"),
        })
        .collect()
}

#[tokio::test]
async fn a_host_syncs_then_reads_meters_and_machine_info_over_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.jsonl");
    let mut args = SimulateArgs::defaults();
    args.machines = 2;
    args.tcp = "127.0.0.1:0".parse().unwrap();
    args.game_rate = 600.0;
    args.game_duration = Duration::from_millis(100);
    args.max_games = Some(2);
    args.ledger = Some(ledger.clone());
    let sim = Simulation::start(&args).await.unwrap();
    let endpoints = tcp_endpoints(&sim);
    assert_eq!(endpoints.len(), 2);
    assert_ne!(endpoints[0].1, endpoints[1].1, "one port per machine");
    let (address, addr) = endpoints[1];
    assert_eq!(address, 2);
    let address = Address::new(address).unwrap();

    // Both machines play their two games meanwhile.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let mut host = Host::connect(addr).await;
    host.send(&[0x80]).await; // sync poll: no answer
    host.send(&[address.general_poll_byte()]).await;
    let first = host.read(1).await;
    assert!(!first[0].wakeup);
    assert_ne!(first[0].byte, 0x00, "bills and games are waiting to be reported");

    let Reply::Meters(meters) = host.exchange(address, LongPoll::SendMeters, 36).await else {
        panic!("LP1C answers with the basic meters")
    };
    assert_eq!(meters.games_played, 2);
    let Reply::MachineInfo(MachineInfo { denomination, base_percentage, .. }) =
        host.exchange(address, LongPoll::SendMachineInfo, 24).await
    else {
        panic!("LP1F answers with the machine information")
    };
    assert_eq!(denomination, 0x01);
    assert_eq!(&base_percentage, b"9600");
    drop(host);
    sim.stop().await.unwrap();

    // The ledger agrees with what the host read.
    let text = std::fs::read_to_string(ledger).unwrap();
    let records: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let of_machine_1 = |kind: &str| {
        records
            .iter()
            .filter(|r| r["machine"] == 1 && r["type"] == kind)
            .cloned()
            .collect::<Vec<_>>()
    };
    let games = of_machine_1("game");
    assert_eq!(games.len(), 2);
    let bets: u64 = games.iter().map(|g| g["bet"].as_u64().unwrap()).sum();
    assert_eq!(bets, meters.coin_in);
    assert_eq!(of_machine_1("start").len(), 1);
    assert_eq!(of_machine_1("stop").len(), 1);
    assert!(records.iter().any(|r| r["machine"] == 0 && r["type"] == "stop"));
    assert_eq!(games[0]["serial"], "SIM000001");
}

#[tokio::test]
async fn an_unpolled_machine_chirps_with_the_wakeup_bit() {
    let mut args = SimulateArgs::defaults();
    args.game_rate = 0.0;
    let sim = Simulation::start(&args).await.unwrap();
    let (address, addr) = tcp_endpoints(&sim)[0];
    let mut host = Host::connect(addr).await;
    // Nothing is sent for 5 s: the machine marks a loop break and chirps every 200 ms.
    let chirps = timeout(Duration::from_secs(8), host.read(2)).await.unwrap();
    assert_eq!(chirps, [Character { byte: address, wakeup: true }; 2]);
    sim.stop().await.unwrap();
}

#[tokio::test]
async fn run_serves_until_the_shutdown_future_resolves() {
    let mut args = SimulateArgs::defaults();
    args.machines = 3;
    let shutdown = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(())
    };
    timeout(WAIT, slotgate::simulator::run(args, shutdown)).await.unwrap().unwrap();
}
