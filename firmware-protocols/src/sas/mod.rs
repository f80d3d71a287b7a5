//! SAS 6.0x, host side (sas-protocol.md). Layers, bottom up:
//!
//! - [`message`]: typed messages and their exact byte layouts;
//! - [`codec`]: where frames start and end on a noisy half-duplex line, with resync;
//! - [`ninebit`]: the two-bytes-per-character framing that carries the wakeup bit over TCP;
//! - [`session`]: the per-machine poll cycle with implied ACK/NACK, retries and follow-ups.

pub mod codec;
pub mod exception;
pub mod message;
pub mod meter;
pub mod ninebit;
pub mod session;

pub use exception::Exception;
pub use message::{HostMessage, LongPoll, RealTimeEvent, RemoteControl, Reply};
pub use meter::MeterCode;

/// An EGM address, 1–127 (sas-protocol.md §2.1). Address 0 is the broadcast address and is
/// never a machine's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address(u8);

impl Address {
    /// `None` for 0 and for anything above 127.
    pub fn new(address: u8) -> Option<Self> {
        (1..=127).contains(&address).then_some(Self(address))
    }

    /// The address byte.
    pub fn get(self) -> u8 {
        self.0
    }

    /// `0x80 | addr`: this machine's general poll.
    pub fn general_poll_byte(self) -> u8 {
        0x80 | self.0
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// One 9-bit character: a data byte and its wakeup (9th) bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Character {
    pub byte: u8,
    pub wakeup: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_zero_and_above_127_are_not_machine_addresses() {
        assert_eq!(Address::new(0), None);
        assert_eq!(Address::new(128), None);
        assert_eq!(Address::new(127).map(Address::general_poll_byte), Some(0xFF));
        assert_eq!(Address::new(1).map(Address::general_poll_byte), Some(0x81));
    }
}
