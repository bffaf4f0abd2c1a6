//! Time conversions the protocol needs, written once: wall-clock Unix milliseconds (the
//! persisted records' timestamps) and `google.protobuf.Duration` to and from
//! `std::time::Duration`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now, in milliseconds since the Unix epoch (0 if the clock is before it, saturating far in
/// the future).
pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `d` as a protobuf duration, saturating at the largest one protobuf can hold.
pub fn to_proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(d).unwrap_or(prost_types::Duration {
        seconds: i64::MAX,
        nanos: 0,
    })
}

/// A protobuf duration as a `Duration`; `None` when it is negative or out of range.
pub fn from_proto_duration(d: &prost_types::Duration) -> Option<Duration> {
    Duration::try_from(*d).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip_and_saturate() {
        let d = Duration::from_millis(1_500);
        assert_eq!(from_proto_duration(&to_proto_duration(d)), Some(d));
        let huge = to_proto_duration(Duration::MAX);
        assert!(huge.seconds > 0);
        let negative = prost_types::Duration {
            seconds: -1,
            nanos: 0,
        };
        assert_eq!(from_proto_duration(&negative), None);
    }

    #[test]
    fn now_is_after_2020() {
        assert!(unix_ms() > 1_577_836_800_000);
    }
}
