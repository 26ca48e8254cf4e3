//! Kernel timestamps (CLOCK_BOOTTIME) to wall-clock RFC 3339.
use chrono::{DateTime, SecondsFormat, Utc};
use nix::time::{clock_gettime, ClockId};

pub struct Clock;

/// A wall-clock time as records give it (RFC 3339, ns) and in ns since the
/// epoch.
pub struct Stamp {
    pub ns: i64,
    pub text: String,
}

fn ns(clock: ClockId) -> u64 {
    clock_gettime(clock).map_or(0, |t| {
        t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
    })
}

impl Clock {
    pub fn boot_ns() -> u64 {
        ns(ClockId::CLOCK_BOOTTIME)
    }

    /// The wall-clock time of `boot_ns`, or of now. The offset between the two
    /// clocks is taken afresh each time, so wall-clock steps are followed.
    pub fn rfc3339(&self, boot_ns: Option<u64>) -> String {
        self.stamp(boot_ns).text
    }

    /// [`Clock::rfc3339`] with the same time in ns since the epoch, which
    /// alert windows count in: they need not read the text back.
    pub fn stamp(&self, boot_ns: Option<u64>) -> Stamp {
        let real = ns(ClockId::CLOCK_REALTIME);
        let wall = match boot_ns {
            Some(at) => real.saturating_sub(Self::boot_ns().saturating_sub(at)),
            None => real,
        } as i64;
        Stamp {
            ns: wall,
            text: DateTime::<Utc>::from_timestamp_nanos(wall)
                .to_rfc3339_opts(SecondsFormat::Nanos, true),
        }
    }

    /// `seconds` since the epoch as RFC 3339 (the bare number if out of
    /// range).
    pub fn unix_rfc3339(seconds: u64) -> String {
        i64::try_from(seconds)
            .ok()
            .and_then(|s| DateTime::<Utc>::from_timestamp(s, 0))
            .map_or_else(
                || seconds.to_string(),
                |t| t.to_rfc3339_opts(SecondsFormat::Secs, true),
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_boot_time_to_wall_clock() {
        let clock = Clock;
        let now = Clock::boot_ns();
        let a = DateTime::parse_from_rfc3339(&clock.rfc3339(Some(now))).unwrap();
        let b = DateTime::parse_from_rfc3339(&clock.rfc3339(Some(now - 2_000_000_000))).unwrap();
        let diff = (a - b).num_milliseconds();
        assert!((1990..=2010).contains(&diff), "{diff}");
        assert!(clock.rfc3339(None).ends_with('Z'));
        let stamp = clock.stamp(Some(now));
        let read = DateTime::parse_from_rfc3339(&stamp.text).unwrap();
        assert_eq!(read.timestamp_nanos_opt(), Some(stamp.ns));
        assert_eq!(
            clock.rfc3339(None).split('.').nth(1).unwrap().len(),
            10,
            "nanoseconds + Z"
        );
    }
}
