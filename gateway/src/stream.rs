//! [`BoxIo`]: an owned byte stream — a client's tunnel, or the stream to an endpoint through
//! a connector — as the broker, the upstream and the endpoint handlers pass it around.

use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An owned byte stream.
pub type BoxIo = Box<dyn Io>;
