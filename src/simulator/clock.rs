//! Time for the sans-IO machine: the caller passes a monotonic `Instant`, and this module turns
//! it into wall-clock time for the ledger (RFC 3339, UTC) and into the machine's own clock for
//! LP7E/7F (sas-protocol.md §8).
//!
//! The wall clock is anchored once, at construction: `wall(now) = wall_origin + (now − origin)`.
//! Tests therefore get reproducible timestamps from injected instants. The EGM clock is an
//! offset from the wall clock. SAS date/time carries no time zone (§8), so whatever the host sets
//! is kept as given and runs on from there; at start the EGM clock shows UTC plus the configured
//! drift.

use std::time::{Duration, Instant, SystemTime};

use firmware_protocols::sas::message::DateTime;

/// A date the machine's clock cannot hold (before 1970, or not a calendar date).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a representable date and time")]
pub struct InvalidDateTime(pub DateTime);

/// Wall clock and EGM clock of one machine.
#[derive(Debug, Clone)]
pub struct Clock {
    origin: Instant,
    wall_origin: SystemTime,
    /// EGM clock minus wall clock, in milliseconds.
    egm_offset_ms: i64,
}

impl Clock {
    /// Anchors `origin` at `wall_origin`; the EGM clock starts `offset_secs` off.
    pub fn new(origin: Instant, wall_origin: SystemTime, offset_secs: i64) -> Self {
        Self { origin, wall_origin, egm_offset_ms: offset_secs.saturating_mul(1_000) }
    }

    /// True time at `now`.
    pub fn wall(&self, now: Instant) -> SystemTime {
        self.wall_origin + now.saturating_duration_since(self.origin)
    }

    /// RFC 3339 UTC with milliseconds, as every ledger record carries it.
    pub fn stamp(&self, now: Instant) -> String {
        humantime::format_rfc3339_millis(self.wall(now)).to_string()
    }

    /// The EGM clock at `now` (LP7E).
    pub fn egm_date_time(&self, now: Instant) -> DateTime {
        let wall = self.wall(now);
        let offset = Duration::from_millis(self.egm_offset_ms.unsigned_abs());
        let egm = if self.egm_offset_ms >= 0 {
            wall.checked_add(offset)
        } else {
            wall.checked_sub(offset)
        };
        from_system_time(egm.unwrap_or(wall))
    }

    /// Sets the EGM clock (LP7F).
    pub fn set_egm(&mut self, now: Instant, to: DateTime) -> Result<(), InvalidDateTime> {
        let target = to_system_time(to).ok_or(InvalidDateTime(to))?;
        let wall = self.wall(now);
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        self.egm_offset_ms = match target.duration_since(wall) {
            Ok(ahead) => ms(ahead),
            Err(behind) => -ms(behind.duration()),
        };
        Ok(())
    }

    /// EGM clock minus true time, whole seconds (for the ledger).
    pub fn egm_offset_secs(&self) -> i64 {
        self.egm_offset_ms / 1_000
    }
}

/// Calendar fields of a UTC time, via its RFC 3339 text (`YYYY-MM-DDTHH:MM:SSZ`), which spares
/// this module its own calendar arithmetic.
fn from_system_time(t: SystemTime) -> DateTime {
    let text = humantime::format_rfc3339_seconds(t).to_string();
    let field = |range: std::ops::Range<usize>| -> u16 {
        text.get(range).and_then(|s| s.parse().ok()).unwrap_or(0)
    };
    DateTime {
        year: field(0..4),
        month: field(5..7) as u8,
        day: field(8..10) as u8,
        hour: field(11..13) as u8,
        minute: field(14..16) as u8,
        second: field(17..19) as u8,
    }
}

fn to_system_time(t: DateTime) -> Option<SystemTime> {
    let text = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    );
    humantime::parse_rfc3339(&text).ok()
}

// Sans-IO code under test: any instant will do as its `now`.
#[allow(clippy::disallowed_methods)]
#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> SystemTime {
        humantime::parse_rfc3339(text).unwrap()
    }

    #[test]
    fn the_wall_clock_follows_injected_instants() {
        let t0 = Instant::now();
        let clock = Clock::new(t0, at("2024-03-15T13:45:30Z"), 0);
        assert_eq!(clock.stamp(t0 + Duration::from_millis(1_250)), "2024-03-15T13:45:31.250Z");
    }

    #[test]
    fn the_egm_clock_drifts_and_can_be_set() {
        let t0 = Instant::now();
        let mut clock = Clock::new(t0, at("2024-03-15T13:45:30Z"), -90);
        let dt = clock.egm_date_time(t0);
        assert_eq!((dt.year, dt.month, dt.day), (2024, 3, 15));
        assert_eq!((dt.hour, dt.minute, dt.second), (13, 44, 0));
        let set = DateTime { year: 2025, month: 1, day: 2, hour: 3, minute: 4, second: 5 };
        clock.set_egm(t0, set).unwrap();
        assert_eq!(clock.egm_date_time(t0 + Duration::from_secs(10)).second, 15);
        let bad = DateTime { month: 2, day: 31, ..set };
        assert_eq!(clock.set_egm(t0, bad), Err(InvalidDateTime(bad)));
    }
}
