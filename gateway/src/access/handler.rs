//! [`EndpointHandler`]: what happens to a session's bytes, chosen by the endpoint's protocol.
//! The broker opens both streams and the session supervises them; the handler serves them.
//! Today every protocol uses the opaque [`TcpRelay`]; a web proxy, DICOM inspection or
//! resumable tunnels are new implementations registered in [`Handlers`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use postern_net::relay::{relay, Counters, Ended};

pub use crate::stream::BoxIo;

/// What a handler sees of its session.
pub struct HandlerCtx {
    pub session_id: String,
    pub endpoint: String,
    pub protocol: String,
    /// Bytes client → endpoint (`a_to_b`) and back, published as they move.
    pub counters: Arc<Counters>,
}

/// Serves one session's two streams until one side ends.
pub trait EndpointHandler: Send + Sync + 'static {
    fn serve<'a>(
        &'a self,
        ctx: &'a HandlerCtx,
        client: BoxIo,
        upstream: BoxIo,
    ) -> Pin<Box<dyn Future<Output = Ended> + Send + 'a>>;
}

/// The opaque relay: bytes both ways, half-close aware, counted.
#[derive(Debug, Default)]
pub struct TcpRelay;

impl EndpointHandler for TcpRelay {
    fn serve<'a>(
        &'a self,
        ctx: &'a HandlerCtx,
        client: BoxIo,
        upstream: BoxIo,
    ) -> Pin<Box<dyn Future<Output = Ended> + Send + 'a>> {
        Box::pin(relay(client, upstream, ctx.counters.clone()))
    }
}

/// Handlers by endpoint protocol, with the TCP relay for every protocol not listed.
pub struct Handlers {
    default: Arc<dyn EndpointHandler>,
    by_protocol: HashMap<String, Arc<dyn EndpointHandler>>,
}

impl Default for Handlers {
    fn default() -> Handlers {
        Handlers {
            default: Arc::new(TcpRelay),
            by_protocol: HashMap::new(),
        }
    }
}

impl Handlers {
    /// Serves `protocol` with `handler`.
    pub fn register(&mut self, protocol: &str, handler: Arc<dyn EndpointHandler>) {
        self.by_protocol.insert(protocol.to_owned(), handler);
    }

    /// The handler for `protocol`.
    pub fn for_protocol(&self, protocol: &str) -> Arc<dyn EndpointHandler> {
        self.by_protocol
            .get(protocol)
            .cloned()
            .unwrap_or_else(|| self.default.clone())
    }
}
