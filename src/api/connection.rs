//! Which connection a call came on: each accepted connection is served
//! with a [`StreamConnection`] of its own in its requests' extensions, so
//! `WatchRank` streams can be counted per connection and ended when it
//! closes (see [`crate::watch::StreamConnection`]).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

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
    pub struct ServedConnection {
        #[pin]
        tcp: TcpStream,
        info: ConnectionInfo,
    }
    impl PinnedDrop for ServedConnection {
        fn drop(this: Pin<&mut Self>) {
            this.info.connection.dropped();
        }
    }
}

impl ServedConnection {
    pub fn new(tcp: TcpStream, connection: Arc<StreamConnection>) -> Self {
        let tcp_info = tcp.connect_info();
        Self {
            tcp,
            info: ConnectionInfo {
                tcp: tcp_info,
                connection,
            },
        }
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
        self.project().tcp.poll_read(cx, buf)
    }
}

impl AsyncWrite for ServedConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().tcp.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().tcp.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().tcp.poll_flush(cx)
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
