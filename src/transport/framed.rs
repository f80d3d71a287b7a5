//! A [`Line`] over any byte stream, with each 9-bit character carried as a flag byte (bit 0 =
//! wakeup) and a data byte: the framing of 9-bit capable device servers (sas-protocol.md §1.5),
//! specified in `firmware-protocols/README.md` and implemented by
//! [`firmware_protocols::sas::ninebit`]. TCP and the in-memory pair are this type over a
//! `TcpStream` and a `DuplexStream`, so they share every line of the framing logic.
//!
//! A peer at the other end may not be a SAS line at all, or may babble: what one call takes
//! from it is bounded ([`CLEAR_LIMIT`], [`READ_RATE`]), so a flood costs the poller neither its
//! ability to stop nor a whole core.

use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use firmware_protocols::sas::ninebit::{Decoder, encode_character};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

use super::{Character, Line, LineDiagnostics, TransportError, WakeupMethod};

/// Bytes read from the stream per call.
const READ_CHUNK: usize = 512;
/// Most bytes one `clear_input` drops: about four of the longest SAS frames (260 characters, two
/// bytes each), far more than a late answer. A peer that has more than that waiting is flooding the
/// line; reading on until its stream ran dry would never return (#15).
const CLEAR_LIMIT: usize = 4 * READ_CHUNK;
/// Bytes per second read from the peer, and the burst allowed: about nineteen times what a SAS
/// line at 19 200 baud carries (1,745 characters a second, two bytes each on the wire). A real
/// line never comes near it; a flood is read no faster, and the rest waits in the socket.
const READ_RATE: u64 = 64 * 1024;

/// 9-bit characters over a byte stream `S`.
#[derive(Debug)]
pub struct FramedLine<S> {
    io: S,
    /// Names the line in logs and errors, e.g. `tcp 10.0.0.5:4001`.
    name: String,
    /// Holds the flag byte of a character whose data byte has not arrived; it survives across
    /// reads and across a cancelled `recv`.
    decoder: Decoder,
    /// Set when the peer broke the framing, so every later call fails the same way.
    invalid: Option<firmware_protocols::sas::ninebit::InvalidFlag>,
    /// Set while a write is in progress; still set on entry means a send was cancelled mid-way.
    writing: bool,
    encoded: Vec<u8>,
    read_buf: Box<[u8; READ_CHUNK]>,
    budget: ReadBudget,
    post_wakeup_delay: Duration,
}

/// A token bucket over the bytes read from the peer ([`READ_RATE`]).
#[derive(Debug)]
struct ReadBudget {
    /// Bytes that may be read now; negative after a read larger than what was left.
    available: i64,
    /// When `available` was last topped up; `None` before the first read.
    at: Option<Instant>,
}

impl ReadBudget {
    const CAPACITY: i64 = READ_RATE as i64;
    const NANOS: u128 = 1_000_000_000;

    fn new() -> Self {
        Self { available: Self::CAPACITY, at: None }
    }

    /// How long to wait before the next read, after topping up for the time passed.
    fn wait(&mut self, now: Instant) -> Option<Duration> {
        let at = *self.at.get_or_insert(now);
        let gained =
            now.saturating_duration_since(at).as_nanos() * u128::from(READ_RATE) / Self::NANOS;
        // A top-up that gains nothing keeps `at`, so frequent calls still add up.
        if gained > 0 {
            let gained = i64::try_from(gained).unwrap_or(i64::MAX);
            self.available = self.available.saturating_add(gained).min(Self::CAPACITY);
            self.at = Some(now);
        }
        if self.available > 0 {
            return None;
        }
        let missing = u128::from(self.available.unsigned_abs()) + 1;
        let nanos = missing * Self::NANOS / u128::from(READ_RATE) + 1;
        Some(Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX)))
    }

    fn spend(&mut self, bytes: usize) {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        self.available = self.available.saturating_sub(bytes);
    }
}

impl<S> FramedLine<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    /// Frames `io`. `name` appears in logs and errors.
    pub fn new(io: S, name: impl Into<String>) -> Self {
        Self {
            io,
            name: name.into(),
            decoder: Decoder::default(),
            invalid: None,
            writing: false,
            encoded: Vec::new(),
            read_buf: Box::new([0; READ_CHUNK]),
            budget: ReadBudget::new(),
            post_wakeup_delay: Duration::ZERO,
        }
    }

    /// Pauses for `delay` after the first character of every multi-character message
    /// ([`super::TcpConfig::post_wakeup_delay`]).
    pub fn with_post_wakeup_delay(mut self, delay: Duration) -> Self {
        self.post_wakeup_delay = delay;
        self
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    fn check_usable(&self) -> Result<(), TransportError> {
        if self.writing {
            return Err(TransportError::Desynchronised { line: self.name.clone() });
        }
        if let Some(source) = self.invalid {
            return Err(TransportError::InvalidFlag { line: self.name.clone(), source });
        }
        Ok(())
    }

    async fn write_characters(&mut self, chars: &[Character]) -> Result<(), TransportError> {
        self.encoded.clear();
        for &c in chars {
            encode_character(c, &mut self.encoded);
        }
        self.io
            .write_all(&self.encoded)
            .await
            .map_err(|e| TransportError::io(&self.name, "write", e))?;
        self.io.flush().await.map_err(|e| TransportError::io(&self.name, "flush", e))
    }

    /// Runs `bytes` through the decoder, appending to `out` (or dropping, for `clear_input`).
    fn decode(&mut self, bytes_len: usize, out: Option<&mut Vec<Character>>) -> usize {
        let mut scratch = Vec::new();
        let sink = match out {
            Some(out) => out,
            None => &mut scratch,
        };
        let before = sink.len();
        if let Err(flag) = self.decoder.decode(&self.read_buf[..bytes_len], sink) {
            self.invalid = Some(flag);
        }
        sink.len() - before
    }
}

impl<S> Line for FramedLine<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    /// Not cancel-safe: a send dropped mid-write leaves the line
    /// [`TransportError::Desynchronised`].
    async fn send(&mut self, chars: &[Character]) -> Result<(), TransportError> {
        self.check_usable()?;
        if chars.is_empty() {
            return Ok(());
        }
        self.writing = true;
        match chars.split_first() {
            Some((first, rest)) if !rest.is_empty() && !self.post_wakeup_delay.is_zero() => {
                self.write_characters(std::slice::from_ref(first)).await?;
                tokio::time::sleep(self.post_wakeup_delay).await;
                self.write_characters(rest).await?;
            }
            _ => self.write_characters(chars).await?,
        }
        self.writing = false;
        Ok(())
    }

    /// Cancel-safe: the awaits are the wait for read budget, which consumes nothing, and one
    /// `read`, which either returns bytes (decoded before the next await) or consumes nothing.
    async fn recv(&mut self, out: &mut Vec<Character>) -> Result<usize, TransportError> {
        loop {
            self.check_usable()?;
            if let Some(wait) = self.budget.wait(Instant::now()) {
                tokio::time::sleep(wait).await;
                continue;
            }
            let n = self
                .io
                .read(&mut self.read_buf[..])
                .await
                .map_err(|e| TransportError::io(&self.name, "read", e))?;
            if n == 0 {
                return Err(TransportError::Closed { line: self.name.clone() });
            }
            self.budget.spend(n);
            let appended = self.decode(n, Some(out));
            if appended > 0 {
                // Characters decoded before a bad flag byte are delivered; the error follows on
                // the next call.
                return Ok(appended);
            }
        }
    }

    /// Reads what is already buffered, up to `CLEAR_LIMIT` bytes, without waiting, and drops
    /// it, still through the decoder: a flag byte without its data byte must stay paired with
    /// the data byte that comes next, or the stream would be misread from then on. Bytes beyond
    /// the limit are left for `recv`, whose caller counts them as unexpected. End of stream and
    /// errors are left for the next `recv` to report.
    fn clear_input(&mut self) -> u64 {
        let mut cx = Context::from_waker(Waker::noop());
        let mut dropped = 0;
        while dropped < CLEAR_LIMIT {
            let mut buf = ReadBuf::new(&mut self.read_buf[..]);
            match Pin::new(&mut self.io).poll_read(&mut cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    let n = buf.filled().len();
                    self.decode(n, None);
                    dropped += n;
                }
                _ => break,
            }
        }
        if dropped > 0 {
            self.budget.spend(dropped);
            tracing::debug!(line = %self.name, bytes = dropped, "Discarded stale input.");
        }
        u64::try_from(dropped).unwrap_or(u64::MAX)
    }

    fn describe(&self) -> String {
        format!("{}, wakeup: {}", self.name, WakeupMethod::Framed)
    }

    fn diagnostics(&self) -> LineDiagnostics {
        LineDiagnostics::new(WakeupMethod::Framed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(byte: u8, wakeup: bool) -> Character {
        Character { byte, wakeup }
    }

    #[tokio::test]
    async fn a_message_is_framed_as_flag_and_data_bytes() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut line = FramedLine::new(a, "test");
        line.send(&[ch(0x01, true), ch(0x1F, false)]).await.unwrap();
        let mut raw = [0u8; 4];
        b.read_exact(&mut raw).await.unwrap();
        assert_eq!(raw, [1, 0x01, 0, 0x1F]);
    }

    #[tokio::test]
    async fn clearing_input_keeps_a_split_character_aligned() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut line = FramedLine::new(a, "test");
        // A stale character and the flag byte of the next one are in the pipe when the poller
        // clears its input; the data byte arrives afterwards.
        b.write_all(&[0, 0x55, 1]).await.unwrap();
        tokio::task::yield_now().await;
        line.clear_input();
        b.write_all(&[0x01]).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), line.recv(&mut out)).await.unwrap().unwrap();
        assert_eq!(out, [ch(0x01, true)]);
    }

    /// Framed zero characters, `bytes` bytes of them, written into the pipe by a task.
    fn flood(mut peer: tokio::io::DuplexStream, bytes: usize) {
        tokio::spawn(async move {
            let _ = peer.write_all(&vec![0; bytes]).await;
            // Keep the pipe open: the reader, not an end of stream, decides when it stops.
            std::future::pending::<()>().await;
        });
    }

    #[tokio::test]
    async fn clearing_input_drops_a_bounded_amount_and_leaves_the_rest_aligned() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let mut line = FramedLine::new(a, "test");
        flood(b, 64 * 1024 + 1);
        tokio::task::yield_now().await;
        let dropped = line.clear_input();
        assert_eq!(dropped, CLEAR_LIMIT as u64, "one clear drops at most CLEAR_LIMIT bytes");
        let mut out = Vec::new();
        line.recv(&mut out).await.unwrap();
        assert!(out.iter().all(|c| *c == ch(0, false)), "still paired after the clear: {out:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_is_read_no_faster_than_the_read_rate_and_a_sas_line_never_waits() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let mut line = FramedLine::new(a, "test");
        let total = 4 * READ_RATE as usize;
        flood(b, total);
        let start = Instant::now();
        let mut out = Vec::new();
        // A second's worth of a busy SAS line (3,490 bytes) comes at once.
        while out.len() * 2 < 3_490 {
            line.recv(&mut out).await.unwrap();
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        while out.len() * 2 < total {
            line.recv(&mut out).await.unwrap();
        }
        // One second of burst, then READ_RATE a second: three seconds for the other three.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(2_990), "{took:?}");
        assert!(took <= Duration::from_millis(3_100), "{took:?}");
    }

    #[tokio::test]
    async fn a_send_cancelled_mid_write_leaves_the_line_desynchronised() {
        // A pipe of 3 bytes cannot take a 4-byte frame, so the write stalls half way.
        let (a, _b) = tokio::io::duplex(3);
        let mut line = FramedLine::new(a, "test");
        let sent = tokio::time::timeout(
            Duration::from_millis(20),
            line.send(&[ch(0x01, true), ch(0x1F, false)]),
        )
        .await;
        assert!(sent.is_err(), "the write should have stalled");
        let again = line.send(&[ch(0x81, true)]).await;
        assert!(matches!(again, Err(TransportError::Desynchronised { .. })), "{again:?}");
    }
}
