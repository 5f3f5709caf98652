//! Serving the gRPC port one connection at a time, so that each connection
//! can be told to go away on its own: when it reaches its age (jittered),
//! when the balancer moves its streams, or when the server stops. Going
//! away is HTTP/2's graceful `GOAWAY` (calls in flight finish, the client's
//! next call opens a new connection) while the hub ends the connection's
//! streams with a reconnect status; a connection still open a grace period
//! later is shut.
//!
//! Each connection is served by its own run of tonic's server (a stream of
//! one connection that ends when it is to go away), so TLS, the HTTP/2
//! settings and the layers are tonic's, unchanged.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api::connection::ServedConnection;
use crate::watch::{OpenConnections, StreamConnection, WatchHub, jittered};

/// Serves one connection until the future given resolves, then gracefully.
pub(super) type ServeOne = Arc<
    dyn Fn(
            ServedConnection,
            Pin<Box<dyn Future<Output = ()> + Send>>,
        ) -> Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>>
        + Send
        + Sync,
>;

pub(super) struct Accepting {
    pub(super) listener: TcpListener,
    pub(super) serve_one: ServeOne,
    pub(super) connections: Arc<OpenConnections>,
    pub(super) hub: Arc<WatchHub>,
    pub(super) max_age: Duration,
    /// How long a connection told to go may take to close.
    pub(super) grace: Duration,
    /// How long a new connection may take to send its first bytes.
    pub(super) handshake: Duration,
    /// Whether the port speaks TLS: then the TLS handshake's own timeout
    /// (the same `handshake`, from the accept) covers a client that never
    /// speaks as well as one that says hello and stops.
    pub(super) tls: bool,
    /// How long a connection's socket may take no bytes before it is shut.
    pub(super) stall: Duration,
}

impl Accepting {
    /// Accepts until `stop`, then tells every connection to go and waits
    /// for them to close (each within the grace period).
    pub(super) async fn run(self, stop: CancellationToken) -> anyhow::Result<()> {
        let mut served = JoinSet::new();
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => break,
                accepted = self.listener.accept() => accepted,
            };
            while served.try_join_next().is_some() {}
            let tcp = match accepted {
                Ok((tcp, _)) => tcp,
                Err(error) => {
                    // Out of file descriptors, or a connection reset before
                    // it was accepted: pause rather than spin.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Nagle's algorithm off: a response written as a headers frame
            // and a data frame would otherwise wait for the client's
            // delayed ACK (40 ms) between the two.
            let _ = tcp.set_nodelay(true);
            let (number, connection) = self.connections.opened();
            let connections = Arc::clone(&self.connections);
            let (serve_one, hub) = (Arc::clone(&self.serve_one), Arc::clone(&self.hub));
            let (age, grace, handshake, stall, stop) = (
                jittered(self.max_age),
                self.grace,
                self.handshake,
                self.stall,
                stop.clone(),
            );
            let tls = self.tls;
            served.spawn(async move {
                if tls || spoke_in_time(&tcp, handshake).await {
                    let shut = Shut::of(&tcp);
                    let conn = ServedConnection::new(tcp, Arc::clone(&connection), stall);
                    serve(conn, connection, serve_one, hub, age, grace, stop, shut).await;
                }
                connections.ended(number);
            });
        }
        // The port closes now: new clients are refused at once and go
        // elsewhere, rather than wait for a server that will not answer.
        drop(self.listener);
        while served.join_next().await.is_some() {}
        Ok(())
    }
}

/// The bytes that open an HTTP/2 connection (RFC 9113, 3.4); a TLS
/// ClientHello is longer too.
const PREFACE_LEN: usize = 24;

/// Whether a new connection sent the start of a conversation within
/// `limit`: a client that connects and says nothing, or too little, is let
/// go rather than held until its age with two file descriptors.
async fn spoke_in_time(tcp: &tokio::net::TcpStream, limit: Duration) -> bool {
    let heard = async {
        let mut first = [0u8; PREFACE_LEN];
        loop {
            match tcp.peek(&mut first).await {
                // Closed before it spoke.
                Ok(0) | Err(_) => return false,
                Ok(n) if n >= PREFACE_LEN => return true,
                // A preface split over packets: rare, so a short nap
                // rather than a wait for readiness (which stays set while
                // bytes are there to peek at).
                Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    };
    let spoke = tokio::time::timeout(limit, heard).await.unwrap_or(false);
    if !spoke {
        tracing::debug!(limit = ?limit, "closing a connection that did not start HTTP/2 in time");
    }
    spoke
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    conn: ServedConnection,
    connection: Arc<StreamConnection>,
    serve_one: ServeOne,
    hub: Arc<WatchHub>,
    age: Duration,
    grace: Duration,
    stop: CancellationToken,
    shut: Shut,
) {
    let told = Arc::clone(&connection);
    let stopping = stop.clone();
    // The run ends when the connection is to go away, or when it is gone
    // already (the client closed it): its stream of one connection never
    // ends by itself.
    let go = Box::pin(async move {
        tokio::select! {
            () = told.closed() => {}
            () = stopping.cancelled() => {}
            () = told.gone() => {}
        }
    });
    let mut serving = serve_one(conn, go);
    let deadline = async {
        tokio::select! {
            () = connection.closed() => {}
            () = stop.cancelled() => {}
            () = tokio::time::sleep(age) => {
                connection.close();
                if connection.streams() > 0 {
                    hub.wake_all();
                }
            }
        }
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        result = &mut serving => log_end(result),
        () = deadline => {
            shut.now();
            log_end(serving.await);
        }
    }
}

fn log_end(result: Result<(), tonic::transport::Error>) {
    if let Err(error) = result {
        tracing::debug!(%error, "serving a connection failed");
    }
}

/// A second handle on a connection's socket, to shut it when it overstays
/// its grace: shutting wakes the server's pending read, which then ends.
struct Shut(Option<std::net::TcpStream>);

impl Shut {
    fn of(tcp: &tokio::net::TcpStream) -> Self {
        #[cfg(unix)]
        {
            use std::os::fd::AsFd;
            Self(
                tcp.as_fd()
                    .try_clone_to_owned()
                    .ok()
                    .map(std::net::TcpStream::from),
            )
        }
        #[cfg(not(unix))]
        {
            let _ = tcp;
            Self(None)
        }
    }

    fn now(&self) {
        if let Some(socket) = &self.0 {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }
}
