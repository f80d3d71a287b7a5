//! Undoes the kernel's `PARMRK` escaping of received bytes (termios(3); sas-protocol.md §1.2
//! "Receive side"). With `INPCK | PARMRK` and without `IGNPAR`/`ISTRIP`, the tty delivers
//!
//! - a byte received with a parity (or framing) error as `FF 00 b`,
//! - a literal `FF` as `FF FF`,
//! - every other byte as itself.
//!
//! In space parity a parity error means the 9th bit was 1: a chirp. The escapes can be split
//! across reads at any byte, so the parser keeps its state between calls. A break reads as
//! `FF 00 00`; it cannot be told from a marked `00` (the port sets `IGNBRK` to avoid it).

/// One received byte and whether the kernel marked it as received with an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Marked {
    pub(crate) byte: u8,
    pub(crate) marked: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum State {
    #[default]
    Plain,
    /// Saw `FF`.
    Escape,
    /// Saw `FF 00`: the next byte is the marked one.
    Marked,
}

/// Stateful `PARMRK` decoder.
#[derive(Debug, Default)]
pub(crate) struct ParmrkParser {
    state: State,
    /// `FF` followed by something other than `00` or `FF`, which the kernel never produces:
    /// counted, and the `FF` is delivered as a plain byte rather than dropped.
    anomalies: u64,
}

impl ParmrkParser {
    /// Decodes `bytes`, appending to `out`.
    pub(crate) fn feed(&mut self, bytes: &[u8], out: &mut Vec<Marked>) {
        for &byte in bytes {
            self.state = match (self.state, byte) {
                (State::Plain, 0xFF) => State::Escape,
                (State::Plain, byte) => {
                    out.push(Marked { byte, marked: false });
                    State::Plain
                }
                (State::Escape, 0xFF) => {
                    out.push(Marked { byte: 0xFF, marked: false });
                    State::Plain
                }
                (State::Escape, 0x00) => State::Marked,
                (State::Escape, byte) => {
                    self.anomalies += 1;
                    out.extend([
                        Marked { byte: 0xFF, marked: false },
                        Marked { byte, marked: false },
                    ]);
                    State::Plain
                }
                (State::Marked, byte) => {
                    out.push(Marked { byte, marked: true });
                    State::Plain
                }
            };
        }
    }

    /// Forgets a partial escape, after the input buffer was flushed.
    pub(crate) fn reset(&mut self) {
        self.state = State::Plain;
    }

    /// Escapes the kernel should never have produced.
    pub(crate) fn anomalies(&self) -> u64 {
        self.anomalies
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn plain(byte: u8) -> Marked {
        Marked { byte, marked: false }
    }

    fn marked(byte: u8) -> Marked {
        Marked { byte, marked: true }
    }

    /// What the kernel delivers for `input`.
    fn escape(input: &[Marked]) -> Vec<u8> {
        let mut wire = Vec::new();
        for m in input {
            match (m.marked, m.byte) {
                (true, b) => wire.extend([0xFF, 0x00, b]),
                (false, 0xFF) => wire.extend([0xFF, 0xFF]),
                (false, b) => wire.push(b),
            }
        }
        wire
    }

    fn parse(chunks: &[&[u8]]) -> Vec<Marked> {
        let mut p = ParmrkParser::default();
        let mut out = Vec::new();
        for chunk in chunks {
            p.feed(chunk, &mut out);
        }
        assert_eq!(p.anomalies(), 0);
        out
    }

    #[test]
    fn plain_bytes_pass_through() {
        assert_eq!(
            parse(&[&[0x01, 0x1F, 0x00, 0x7F, 0x80]]),
            [0x01, 0x1F, 0x00, 0x7F, 0x80].map(plain)
        );
    }

    #[test]
    fn a_doubled_ff_is_one_literal_ff() {
        // An LP1F reply whose CRC contains FF: 01 1F … FF
        assert_eq!(parse(&[&[0x01, 0xFF, 0xFF, 0x1F]]), [plain(0x01), plain(0xFF), plain(0x1F)]);
    }

    #[test]
    fn ff_00_b_is_a_marked_byte_a_chirp_in_space_parity() {
        assert_eq!(parse(&[&[0xFF, 0x00, 0x01]]), [marked(0x01)]);
        // A marked FF and a marked 00 (also how a break reads).
        assert_eq!(parse(&[&[0xFF, 0x00, 0xFF, 0xFF, 0x00, 0x00]]), [marked(0xFF), marked(0x00)]);
    }

    #[test]
    fn escapes_split_across_reads_at_every_point_decode_the_same() {
        let input =
            [plain(0x01), marked(0x01), plain(0xFF), plain(0x00), marked(0xFF), plain(0x1F)];
        let wire = escape(&input);
        for cut in 0..=wire.len() {
            assert_eq!(parse(&[&wire[..cut], &wire[cut..]]), input, "cut at {cut}");
        }
        let bytewise: Vec<&[u8]> = wire.chunks(1).collect();
        assert_eq!(parse(&bytewise), input);
    }

    #[test]
    fn reset_forgets_a_partial_escape() {
        let mut p = ParmrkParser::default();
        let mut out = Vec::new();
        p.feed(&[0xFF, 0x00], &mut out);
        p.reset();
        p.feed(&[0x01], &mut out);
        assert_eq!(out, [plain(0x01)]);
    }

    #[test]
    fn an_impossible_escape_is_counted_and_its_bytes_kept() {
        let mut p = ParmrkParser::default();
        let mut out = Vec::new();
        p.feed(&[0xFF, 0x01, 0x02], &mut out);
        assert_eq!(out, [plain(0xFF), plain(0x01), plain(0x02)]);
        assert_eq!(p.anomalies(), 1);
    }

    proptest! {
        #[test]
        fn any_marked_sequence_survives_escaping_and_arbitrary_chunking(
            input in proptest::collection::vec((any::<u8>(), any::<bool>()), 0..64),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let input: Vec<Marked> =
                input.into_iter().map(|(byte, marked)| Marked { byte, marked }).collect();
            let wire = escape(&input);
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
            points.sort_unstable();
            let mut chunks = Vec::new();
            let mut start = 0;
            for p in points {
                chunks.push(&wire[start..p]);
                start = p;
            }
            chunks.push(&wire[start..]);
            prop_assert_eq!(parse(&chunks), input);
        }
    }
}
