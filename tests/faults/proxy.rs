//! A small TCP proxy between the service and Redis that the test steers:
//! pass bytes on, hold each chunk back for a while, or cut every connection
//! (and refuse new ones) for a while.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    pub addr: SocketAddr,
    /// Where new connections go; open ones stay where they went.
    upstream: Arc<std::sync::Mutex<SocketAddr>>,
    /// Milliseconds each chunk is held back in either direction.
    delay_ms: Arc<AtomicU64>,
    /// Odd while cut: every connection open at a cut ends, and new ones are
    /// refused until it is even again. A connection is only made while it
    /// is even, so any change it sees is a cut.
    cuts: watch::Sender<usize>,
    pub connections: Arc<AtomicUsize>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let delay_ms = Arc::new(AtomicU64::new(0));
        let (cuts, watching) = watch::channel(0usize);
        let connections = Arc::new(AtomicUsize::new(0));
        let upstream = Arc::new(std::sync::Mutex::new(upstream));
        let (delay, counted, target) = (
            Arc::clone(&delay_ms),
            Arc::clone(&connections),
            Arc::clone(&upstream),
        );
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if *watching.borrow() % 2 == 1 {
                    drop(client);
                    continue;
                }
                let to = *target.lock().unwrap();
                let Ok(server) = TcpStream::connect(to).await else {
                    continue;
                };
                counted.fetch_add(1, Ordering::Relaxed);
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                for (from, to) in [
                    (
                        Box::new(cr) as Box<dyn Read>,
                        Box::new(sw) as Box<dyn Write>,
                    ),
                    (Box::new(sr), Box::new(cw)),
                ] {
                    let (delay, mut cut) = (Arc::clone(&delay), watching.clone());
                    cut.mark_unchanged();
                    tokio::spawn(pipe(from, to, delay, cut));
                }
            }
        });
        Self {
            addr,
            upstream,
            delay_ms,
            cuts,
            connections,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Sends new connections to `upstream`, as a Service does once it
    /// follows a new master; connections already open stay where they are.
    pub fn retarget(&self, upstream: SocketAddr) {
        *self.upstream.lock().unwrap() = upstream;
    }

    pub fn delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// Closes every connection now and refuses new ones until
    /// [`Proxy::reopen`].
    pub fn cut(&self) {
        self.cuts.send_if_modified(|n| {
            let open = *n % 2 == 0;
            if open {
                *n += 1;
            }
            open
        });
    }

    pub fn reopen(&self) {
        self.cuts.send_if_modified(|n| {
            let closed = *n % 2 == 1;
            if closed {
                *n += 1;
            }
            closed
        });
    }
}

trait Read: tokio::io::AsyncRead + Unpin + Send {}
impl<T: tokio::io::AsyncRead + Unpin + Send> Read for T {}
trait Write: tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncWrite + Unpin + Send> Write for T {}

async fn pipe(
    mut from: Box<dyn Read>,
    mut to: Box<dyn Write>,
    delay_ms: Arc<AtomicU64>,
    mut cut: watch::Receiver<usize>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            read = from.read(&mut buffer) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = cut.changed() => break,
        };
        let delay = delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(delay)) => {}
                _ = cut.changed() => break,
            }
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
