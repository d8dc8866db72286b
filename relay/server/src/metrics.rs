//! Hand-rolled Prometheus counters and gauges. No label carries an identifier.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

macro_rules! metrics {
    ($(#[doc = $doc:literal] $kind:ident $name:ident;)*) => {
        /// The relay's metrics.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $(#[doc = $doc] pub $name: metrics!(@ty $kind),)*
        }

        impl Metrics {
            /// The Prometheus text exposition.
            pub fn render(&self) -> String {
                let mut out = String::new();
                $(
                    let _ = writeln!(out, "# HELP sotto_relay_{} {}", stringify!($name), $doc.trim());
                    let _ = writeln!(out, "# TYPE sotto_relay_{} {}", stringify!($name), stringify!($kind));
                    let _ = writeln!(out, "sotto_relay_{} {}", stringify!($name), self.$name.load(Ordering::Relaxed));
                )*
                out
            }
        }
    };
    (@ty counter) => { AtomicU64 };
    (@ty gauge) => { AtomicI64 };
}

metrics! {
    /// WebSocket connections currently open.
    gauge connections_open;
    /// WebSocket connections accepted.
    counter connections_total;
    /// WebSocket connections refused because the relay was full.
    counter connections_refused_total;
    /// Failed device authentications (WebSocket and HTTP).
    counter auth_failures_total;
    /// Sends stored.
    counter sends_stored_total;
    /// Sends answered with a device-set mismatch.
    counter sends_mismatch_total;
    /// Sends rejected with an error code.
    counter sends_rejected_total;
    /// Sends received on anonymous connections (also counted as stored, mismatch or rejected).
    counter sends_anonymous_total;
    /// Connections that sent instead of authenticating (anonymous senders).
    counter connections_anonymous_total;
    /// Envelopes stored.
    counter envelopes_stored_total;
    /// Envelopes delivered over WebSockets (redeliveries included).
    counter envelopes_delivered_total;
    /// Envelopes deleted by acknowledgements.
    counter envelopes_acked_total;
    /// Envelopes deleted by expiry.
    counter envelopes_expired_total;
    /// Ephemeral payloads queued for a connected device.
    counter ephemeral_forwarded_total;
    /// Ephemeral payloads dropped because a connection's queue was full.
    counter ephemeral_dropped_total;
    /// Frames that did not decode.
    counter malformed_frames_total;
    /// Requests and frames refused by the per-connection rate limit.
    counter rate_limited_total;
    /// HTTP requests answered with an error code.
    counter http_errors_total;
}

/// Adds to a counter.
pub(crate) fn inc(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}
