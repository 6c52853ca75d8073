//! Round-trip time of connector links. hyper measures HTTP/2 PING round trips internally but
//! does not expose them, so the gateway sends its own probe: every [`INTERVAL`] a `GET`
//! [`PATH_LINK_PING`](postern_proto::wire::PATH_LINK_PING) on the link, which the connector
//! answers with 204 at once (no dial, no tunnel, no audit). One HEADERS frame (on a QUIC link,
//! one stream's request frame) each way: the time to the response is one network round trip
//! plus two event-loop turns, whichever the transport. It goes into
//! `postern_connector_rtt_seconds{site,connector}`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Empty;
use tracing::{debug, warn};

use tokio_util::sync::CancellationToken;

use super::registry::Link;
use crate::clock::SharedClock;
use crate::metrics::Metrics;

/// Time between probes on one link.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// A probe that takes longer is reported and not counted.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Probes `link` until it closes or the gateway shuts down.
pub async fn probe(
    link: Arc<Link>,
    metrics: Arc<Metrics>,
    clock: SharedClock,
    shutdown: CancellationToken,
) {
    let hist = metrics
        .connector_rtt
        .with_label_values(&[&link.site, &link.connector_id]);
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {},
            _ = link.cancel.cancelled() => return,
            _ = shutdown.cancelled() => return,
        }
        if link.is_closed() {
            return;
        }
        let Ok(req) = Request::get(postern_proto::wire::PATH_LINK_PING)
            .header(http::header::HOST, "connector")
            .body(Empty::<Bytes>::new())
        else {
            return;
        };
        let start = clock.instant();
        let answer = tokio::time::timeout(TIMEOUT, link.channel.send(req)).await;
        match answer {
            Ok(Ok(resp)) => {
                let rtt = clock.instant() - start;
                hist.observe(rtt.as_secs_f64());
                debug!(connector_id = %link.connector_id, site = %link.site, rtt_us = rtt.as_micros() as u64, status = resp.status.as_u16(), "link round trip");
            }
            Ok(Err(e)) => {
                debug!(connector_id = %link.connector_id, error = %e, "link probe failed");
            }
            Err(_) => {
                warn!(connector_id = %link.connector_id, site = %link.site, timeout = ?TIMEOUT, "link probe got no answer in time");
            }
        }
    }
}
