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
        // Set when the port speaks TLS: the client's records, watched for
        // the end of its handshake.
        tls: Option<TlsHandshake>,
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
            tls: None,
        }
    }

    /// Watches the client's TLS records from here on; the handle says when
    /// its handshake is done.
    pub fn watch_tls_handshake(&mut self) -> Arc<HandshakeDone> {
        let done = Arc::new(HandshakeDone::default());
        self.tls = Some(TlsHandshake {
            records: Records::default(),
            done: Arc::clone(&done),
        });
        done
    }
}

/// Whether a TLS client has finished its handshake, for the deadline a
/// connection has to start talking: a client that sends its hello and
/// then nothing would otherwise hold the connection until its age, since
/// the handshake itself has no deadline.
#[derive(Default)]
pub struct HandshakeDone {
    done: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

impl HandshakeDone {
    /// Resolves once the client has finished its handshake.
    pub async fn finished(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.done.load(std::sync::atomic::Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    fn set(&self) {
        self.done.store(true, std::sync::atomic::Ordering::Release);
        self.notify.notify_waiters();
    }
}

struct TlsHandshake {
    records: Records,
    done: Arc<HandshakeDone>,
}

/// The client's TLS records, header by header, as the server reads them
/// off the socket. A client has finished its handshake once it has sent a
/// whole record of application data (content type 23): in TLS 1.3 its
/// Finished goes in such a record, in TLS 1.2 they follow it, and an
/// HTTP/2 client sends its preface as one at once. The whole record, not
/// its header: a header alone, its body never sent, would leave the TLS
/// library waiting as long as a hello alone does; a body that is not
/// genuine fails to decrypt, and the server closes the connection.
#[derive(Default)]
struct Records {
    header: [u8; 5],
    have: usize,
    /// Bytes of the current record's body still to pass.
    skip: usize,
    /// The current record is application data.
    data: bool,
}

impl Records {
    const APPLICATION_DATA: u8 = 23;

    /// Takes the bytes read next; true once a whole application data
    /// record has come.
    fn feed(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                bytes = &bytes[n..];
                self.skip -= n;
                if self.skip == 0 && self.data {
                    return true;
                }
                continue;
            }
            let n = (self.header.len() - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == self.header.len() {
                self.skip = usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
                self.data = self.header[0] == Self::APPLICATION_DATA && self.skip > 0;
                self.have = 0;
            }
        }
        false
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
        let before = buf.filled().len();
        let read = this.tcp.poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some(tls)) = (&read, this.tls.as_mut())
            && tls.records.feed(&buf.filled()[before..])
        {
            tls.done.set();
            *this.tls = None;
        }
        read
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

#[cfg(test)]
mod tests {
    use super::Records;

    fn record(kind: u8, body: usize) -> Vec<u8> {
        let mut bytes = vec![kind, 3, 3];
        bytes.extend_from_slice(&(body as u16).to_be_bytes());
        bytes.extend(std::iter::repeat_n(0x17, body));
        bytes
    }

    #[test]
    fn a_handshake_is_done_with_the_first_whole_application_data_record_however_the_bytes_come() {
        // A hello whose body is full of 23s, a change of cipher spec, then
        // application data: only the third record, whole, counts.
        let mut stream = record(22, 300);
        stream.extend(record(20, 1));
        stream.extend(record(23, 40));
        for chunk in [1, 2, 5, 7, 64, stream.len()] {
            let mut records = Records::default();
            let mut fed = 0;
            let mut done_at = None;
            for piece in stream.chunks(chunk) {
                fed += piece.len();
                if records.feed(piece) {
                    done_at = Some(fed);
                    break;
                }
            }
            let done_at = done_at.expect("application data seen");
            // Done with the piece that completes the data record.
            let whole = stream.len();
            assert!(
                done_at >= whole && done_at < whole + chunk,
                "{chunk}: {done_at}"
            );
        }
        let mut hello_only = Records::default();
        assert!(!hello_only.feed(&record(22, 300)));
        // A data record's header with no body, or an empty one, is not the
        // end of a handshake.
        let mut header_only = Records::default();
        assert!(!header_only.feed(&record(22, 300)));
        assert!(!header_only.feed(&record(23, 40)[..5]));
        let mut empty = Records::default();
        assert!(!empty.feed(&record(23, 0)));
    }
}
