//! Which connection a call came on: each accepted connection is served
//! with a [`StreamConnection`] of its own in its requests' extensions, so
//! `WatchRank` streams can be counted per connection and ended when it
//! closes (see [`crate::watch::StreamConnection`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::Request;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

use crate::watch::StreamConnection;

/// What a request knows of its connection: the peer, as tonic gives it
/// for TCP, and the connection's handle.
#[derive(Clone)]
pub struct ConnectionInfo {
    pub tcp: TcpConnectInfo,
    pub connection: Arc<StreamConnection>,
}

pin_project_lite::pin_project! {
    /// An accepted TCP connection with its handle. Dropped when the server
    /// is done with the connection, which it then tells the handle.
    ///
    /// A socket that takes no bytes for `stall` (the client stopped
    /// reading, and its receive buffer and ours are full) fails the write
    /// with `TimedOut`, which ends the connection: otherwise what its
    /// streams would send piles up in the server until the client's age.
    pub struct ServedConnection {
        #[pin]
        tcp: TcpStream,
        info: ConnectionInfo,
        stall: Stall,
    }
    impl PinnedDrop for ServedConnection {
        fn drop(this: Pin<&mut Self>) {
            this.info.connection.dropped();
        }
    }
}

impl ServedConnection {
    pub fn new(tcp: TcpStream, connection: Arc<StreamConnection>, stall: Duration) -> Self {
        let tcp_info = tcp.connect_info();
        Self {
            tcp,
            info: ConnectionInfo {
                tcp: tcp_info,
                connection,
            },
            stall: Stall {
                limit: stall,
                timer: None,
                tripped: false,
            },
        }
    }
}

/// A connection's writes watched for a stall: armed when a write first
/// waits, reset by any progress; once it has waited `limit`, the
/// connection is dead: every read and write fails from then on, so the
/// server drops it whatever it was waiting for.
struct Stall {
    limit: Duration,
    // Only a blocked connection pays for a timer.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    tripped: bool,
}

impl Stall {
    fn error(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the client took no bytes for {:?}", self.limit),
        )
    }

    fn write<T>(
        &mut self,
        cx: &mut Context<'_>,
        write: impl FnOnce(&mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if self.tripped {
            return Poll::Ready(Err(self.error()));
        }
        let outcome = write(cx);
        if outcome.is_ready() {
            self.timer = None;
            return outcome;
        }
        if self.limit.is_zero() {
            return outcome;
        }
        let limit = self.limit;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.timer = None;
        self.tripped = true;
        crate::telemetry::metrics::metrics()
            .stalled
            .get_or_create(&crate::telemetry::metrics::StalledLabels { what: "connection" })
            .inc();
        tracing::debug!(limit = ?limit, "closing a connection whose client took no bytes");
        Poll::Ready(Err(self.error()))
    }
}

impl Connected for ServedConnection {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        self.info.clone()
    }
}

impl AsyncRead for ServedConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if this.stall.tripped {
            return Poll::Ready(Err(this.stall.error()));
        }
        this.tcp.poll_read(cx, buf)
    }
}

impl AsyncWrite for ServedConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let tcp = this.tcp;
        this.stall.write(cx, |cx| tcp.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let tcp = this.tcp;
        this.stall.write(cx, |cx| tcp.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let tcp = this.tcp;
        this.stall.write(cx, |cx| tcp.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().tcp.poll_shutdown(cx)
    }
}

/// The connection a request came on, with or without TLS; `None` when the
/// service is served some other way (an embedder's own server).
pub fn stream_connection<T>(request: &Request<T>) -> Option<Arc<StreamConnection>> {
    let extensions = request.extensions();
    extensions
        .get::<ConnectionInfo>()
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<ConnectionInfo>>()
                .map(TlsConnectInfo::get_ref)
        })
        .map(|info| Arc::clone(&info.connection))
}
