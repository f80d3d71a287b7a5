//! The simulator behind a pseudo-terminal: the host opens the printed slave path like a serial
//! port and exchanges polls. A pty has no 9th bit, so the machine splits messages by length and
//! by the 5 ms gap (sas-protocol.md §1.4). Every wait is bounded.

// clippy.toml allows unwrap in #[test] functions only; the helpers of this test crate need it too.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use firmware_protocols::sas::{Address, Reply};
use slotgate::simulator::{EndpointKind, SimulateArgs, Simulation};

fn read_exactly(port: &mut File, n: usize) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut out = Vec::new();
    let mut buf = [0u8; 64];
    while out.len() < n {
        assert!(Instant::now() < deadline, "only {out:02X?} arrived");
        match port.read(&mut buf[..n - out.len()]) {
            Ok(got) => out.extend_from_slice(&buf[..got]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => panic!("pty read failed: {e}"),
        }
    }
    out
}

fn host_session(path: PathBuf) -> (Vec<u8>, Vec<u8>) {
    let mut port = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(&path)
        .unwrap();
    // Sync poll and general poll: one write, split by the length table (both are one byte).
    port.write_all(&[0x80, 0x81]).unwrap();
    let exception = read_exactly(&mut port, 1);
    // After more than 5 ms of silence: LP1C, then the 36-byte meter frame.
    std::thread::sleep(Duration::from_millis(10));
    port.write_all(&[0x01, 0x1C]).unwrap();
    let meters = read_exactly(&mut port, 36);
    (exception, meters)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_exchanges_polls_through_the_printed_pty_path() {
    let mut args = SimulateArgs::defaults();
    args.pty = true;
    args.game_rate = 0.0;
    let sim = Simulation::start(&args).await.unwrap();
    let endpoint = &sim.endpoints()[0];
    assert!(endpoint.to_string().starts_with("machine=0 address=1 serial=SIM000000 pty=/dev/"));
    let EndpointKind::Pty(path) = endpoint.kind.clone() else { panic!("asked for a pty") };
    let (exception, meters) =
        tokio::task::spawn_blocking(move || host_session(path)).await.unwrap();
    assert_eq!(exception, [0x00], "nothing has happened yet");
    let reply = Reply::decode_frame(Address::new(1).unwrap(), &meters).unwrap();
    assert!(matches!(reply, Reply::Meters(m) if m == Default::default()));
    sim.stop().await.unwrap();
}
