//! Bounds on what one client can make the server hold.
//!
//! A client without a token, or with a read-only one, must never be able to keep a connection,
//! memory or a background task for as long as it likes. The pieces here are the ones that act on
//! bytes in flight; the connection cap and the header timeout live in [`crate::server`]:
//!
//! - [`Pace`]: a request body (stored or drained) that arrives slower than a minimum rate,
//!   averaged over a window, or that stops for the idle timeout, is cut off, the way Apache's
//!   `mod_reqtimeout` `MinRate` does it. Only the time the server spends *waiting for the client*
//!   counts, so a slow storage call never gets a fast client cut off.
//! - [`Bodies`]: refused uploads. An authenticated refusal (403, 409) is read to the end of its
//!   declared length at the minimum rate, because Nx with a read-only token PUTs every artifact
//!   and a refused upload whose unread body turns into a TCP reset makes Nx retry and then fail
//!   the task. A request without a valid token, or a malformed one, gets a brief drain (a few
//!   KiB, a few seconds) and its connection is closed. Full drains running at once are capped.
//! - [`SendTimeout`]: a connection whose client reads nothing of its answer for a while is
//!   closed, so a stalled download releases its connection slot and its buffers.
//! - [`Gate`]: storage calls that one request fans out into (turbo's dry-run query: one
//!   existence check per hash) run at most a fixed number at once across all requests, so a
//!   client with a read-only token cannot turn one request into thousands of calls in flight.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};

/// Bytes read from a refused request that has no valid token (or is malformed) before its
/// connection is closed: enough for the small bodies a client may have sent with its headers.
pub const BRIEF_DRAIN_BYTES: u64 = 16 * 1024;
/// Time allowed for that brief drain.
pub const BRIEF_DRAIN_TIME: Duration = Duration::from_secs(2);

/// The settings type lives beside its section of configuration; its behaviour is here.
pub use crate::config::Pace;

/// A stream of body chunks, as read from a request (and paced here) or from a store.
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

impl Pace {
    /// Only the idle rule: for streams whose other end is trusted (storage).
    pub fn idle_only(idle: Duration) -> Self {
        Self {
            min_rate: 0,
            window: idle,
            idle,
        }
    }

    /// Bytes that must arrive within one window.
    fn bytes_per_window(&self) -> u64 {
        (self.min_rate as f64 * self.window.as_secs_f64()) as u64
    }

    /// Wraps a stream of chunks so that it fails with `TimedOut` when the pace is not kept.
    pub fn apply<S>(self, inner: S) -> Paced<S>
    where
        S: Stream<Item = io::Result<Bytes>> + Unpin,
    {
        Paced {
            inner,
            pace: self,
            window_bytes: 0,
            window_waited: Duration::ZERO,
            wait_started: None,
            window_mark: None,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            finished: false,
        }
    }

    /// A request body as a paced stream of chunks.
    pub fn body(self, body: Body) -> ByteStream {
        let chunks = body.into_data_stream().map_err(io::Error::other);
        Box::pin(self.apply(chunks))
    }
}

/// A stream held to a [`Pace`]. Time counts only while a poll is outstanding, i.e. while the
/// consumer waits for the client; between polls the consumer is busy and the client is not to
/// blame.
pub struct Paced<S> {
    inner: S,
    pace: Pace,
    /// Bytes received in the current window.
    window_bytes: u64,
    /// Waiting time spent in the current window by earlier waits.
    window_waited: Duration,
    /// When the current wait began (for the idle rule); `None` between polls.
    wait_started: Option<Instant>,
    /// When the current wait began to count toward the current window.
    window_mark: Option<Instant>,
    timer: Pin<Box<Sleep>>,
    finished: bool,
}

impl<S> Paced<S> {
    fn deadline(&self) -> Option<Instant> {
        let started = self.wait_started?;
        let mark = self.window_mark?;
        let idle_end = started + self.pace.idle;
        if self.pace.min_rate == 0 {
            return Some(idle_end);
        }
        let window_end = mark + self.pace.window.saturating_sub(self.window_waited);
        Some(idle_end.min(window_end))
    }

    fn start_window(&mut self, now: Instant) {
        self.window_bytes = 0;
        self.window_waited = Duration::ZERO;
        self.window_mark = Some(now);
    }

    fn cut(&mut self, message: String) -> Poll<Option<io::Result<Bytes>>> {
        self.finished = true;
        Poll::Ready(Some(Err(io::Error::new(io::ErrorKind::TimedOut, message))))
    }

    fn too_slow(&self) -> String {
        format!(
            "the body arrived slower than {} bytes/s over {:?}",
            self.pace.min_rate, self.pace.window
        )
    }
}

impl<S> Stream for Paced<S>
where
    S: Stream<Item = io::Result<Bytes>> + Unpin,
{
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.finished {
            return Poll::Ready(None);
        }
        if this.wait_started.is_none() {
            let now = Instant::now();
            this.wait_started = Some(now);
            this.window_mark = Some(now);
            if let Some(deadline) = this.deadline() {
                this.timer.as_mut().reset(deadline);
            }
        }
        loop {
            match this.inner.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    let now = Instant::now();
                    if let Some(mark) = this.window_mark.take() {
                        this.window_waited += now.saturating_duration_since(mark);
                    }
                    this.wait_started = None;
                    this.window_bytes += chunk.len() as u64;
                    if this.pace.min_rate > 0 && this.window_waited >= this.pace.window {
                        if this.window_bytes < this.pace.bytes_per_window() {
                            let message = this.too_slow();
                            return this.cut(message);
                        }
                        this.start_window(now);
                        this.window_mark = None;
                    }
                    return Poll::Ready(Some(Ok(chunk)));
                }
                Poll::Ready(other) => {
                    this.finished = true;
                    return Poll::Ready(other);
                }
                Poll::Pending => {}
            }
            if this.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // The deadline passed while waiting: either the idle rule or the window's budget.
            let now = Instant::now();
            let started = this.wait_started.unwrap_or(now);
            if now.saturating_duration_since(started) >= this.pace.idle {
                let message = format!("no body bytes for {:?}", this.pace.idle);
                return this.cut(message);
            }
            if this.window_bytes < this.pace.bytes_per_window() {
                let message = this.too_slow();
                return this.cut(message);
            }
            // The window was kept: a new one starts now, and the wait goes on.
            this.start_window(now);
            if let Some(deadline) = this.deadline() {
                this.timer.as_mut().reset(deadline);
            }
        }
    }
}

/// Request bodies: the pace they are held to, and the drains of refused uploads.
pub struct Bodies {
    pace: Pace,
    /// Permits for full drains running at once.
    drains: Arc<Semaphore>,
    /// Most bytes one full drain reads.
    max_drain_bytes: u64,
}

/// How a refused upload's body is read away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// The client holds a valid token: read to the end of the declared length, at the pace.
    Full,
    /// No valid token, or a malformed request: a few KiB for a few seconds, then the
    /// connection is closed.
    Brief,
}

impl Bodies {
    pub fn new(pace: Pace, max_drains: usize, max_drain_bytes: u64) -> Self {
        Self {
            pace,
            drains: Arc::new(Semaphore::new(max_drains)),
            max_drain_bytes,
        }
    }

    /// The body of an accepted upload, held to the pace.
    pub fn paced(&self, body: Body) -> ByteStream {
        self.pace.body(body)
    }

    /// Reads a refused upload's body away in the background; returns the kind of drain it got
    /// (a full drain becomes a brief one when too many are running).
    pub fn drain(&self, body: Body, wanted: Drain) -> Drain {
        let permit = match wanted {
            Drain::Full => self.drains.clone().try_acquire_owned().ok(),
            Drain::Brief => None,
        };
        match permit {
            Some(permit) => {
                let stream = self.pace.body(body);
                let limit = self.max_drain_bytes;
                tokio::spawn(async move {
                    if let Err(e) = read_away(stream, limit).await {
                        tracing::info!(reason = %e, "stopped draining a refused upload");
                    }
                    drop(permit);
                });
                Drain::Full
            }
            None => {
                if wanted == Drain::Full {
                    tracing::warn!(
                        "too many refused uploads are being drained at once; closing this one's connection"
                    );
                }
                let stream = Pace::idle_only(BRIEF_DRAIN_TIME).body(body);
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(
                        BRIEF_DRAIN_TIME,
                        read_away(stream, BRIEF_DRAIN_BYTES),
                    )
                    .await;
                });
                Drain::Brief
            }
        }
    }
}

/// Reads and drops up to `limit` bytes. Dropping the body before its end makes hyper close the
/// connection instead of keeping it alive.
async fn read_away(mut stream: ByteStream, limit: u64) -> io::Result<()> {
    let mut read = 0u64;
    while let Some(chunk) = stream.next().await {
        read += chunk?.len() as u64;
        if read > limit {
            return Err(io::Error::other(format!(
                "read {read} bytes, the most a drain reads"
            )));
        }
    }
    Ok(())
}

/// At most `limit` calls of one kind at once, across all requests; a call waits for its turn
/// (the wait is bounded by the request's connection, itself capped). Keeps the most that ran at
/// once, for `/metrics` and the tests that show the bound holds.
pub struct Gate {
    permits: Arc<Semaphore>,
    limit: usize,
    running: AtomicUsize,
    peak: AtomicUsize,
}

/// A call let through a [`Gate`]; its place is given back when this is dropped.
pub struct Passed<'a> {
    gate: &'a Gate,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Passed<'_> {
    fn drop(&mut self) {
        self.gate.running.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Gate {
    pub fn new(limit: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            running: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        }
    }

    /// Waits for a place, and holds it until the result is dropped.
    pub async fn pass(&self) -> Passed<'_> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let running = self.running.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(running, Ordering::Relaxed);
        Passed {
            gate: self,
            _permit: permit,
        }
    }

    /// The most calls that ran at once so far.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }
}

/// A connection whose writes make no progress for `limit` fails with `TimedOut`: its client has
/// stopped reading, and the connection's slot and buffers go back to other clients.
pub struct SendTimeout<T> {
    inner: T,
    limit: Duration,
    /// Running while a write is blocked on a full socket.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<T> SendTimeout<T> {
    pub fn new(inner: T, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            stalled: None,
        }
    }

    /// Called when the socket could not take bytes: starts or checks the stall timer.
    fn poll_stall<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        let limit = self.limit;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                tracing::info!(
                    timeout = ?limit,
                    "closing a connection whose client read nothing of its answer"
                );
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the client read nothing for {limit:?}"),
                )))
            }
        }
    }

    fn progress<R>(
        &mut self,
        result: Poll<io::Result<R>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<R>> {
        match result {
            Poll::Ready(result) => {
                self.stalled = None;
                Poll::Ready(result)
            }
            Poll::Pending => self.poll_stall(cx),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for SendTimeout<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SendTimeout<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progress(result, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progress(result, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.progress(result, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.progress(result, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;

    /// A stream that yields `chunk` bytes every `every`, `count` times.
    fn trickle(chunk: usize, every: Duration, count: usize) -> ByteStream {
        Box::pin(stream::unfold(0, move |sent| async move {
            if sent == count {
                return None;
            }
            tokio::time::sleep(every).await;
            Some((Ok(Bytes::from(vec![0u8; chunk])), sent + 1))
        }))
    }

    async fn outcome(stream: impl Stream<Item = io::Result<Bytes>> + Unpin) -> Result<u64, String> {
        let mut stream = stream;
        let mut total = 0;
        while let Some(chunk) = stream.next().await {
            total += chunk.map_err(|e| e.to_string())?.len() as u64;
        }
        Ok(total)
    }

    fn pace(min_rate: u64, window_s: u64, idle_s: u64) -> Pace {
        Pace {
            min_rate,
            window: Duration::from_secs(window_s),
            idle: Duration::from_secs(idle_s),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_at_the_rate_passes() {
        // 1000 bytes every 100 ms = 10 kB/s, for 60 s, against a floor of 8 kB/s.
        let body = trickle(1000, Duration::from_millis(100), 600);
        assert_eq!(outcome(pace(8000, 10, 5).apply(body)).await, Ok(600_000));
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_under_the_idle_timeout_is_cut_by_the_rate() {
        // One byte every 4 s never trips a 5 s idle timeout, but is far under 1 kB/s.
        let body = trickle(1, Duration::from_secs(4), 1000);
        let started = Instant::now();
        let result = outcome(pace(1000, 10, 5).apply(body)).await;
        assert!(result.unwrap_err().contains("slower than"));
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(10) && took <= Duration::from_secs(11),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stall_is_cut_by_the_idle_timeout() {
        let body = trickle(100_000, Duration::from_secs(7), 3);
        let result = outcome(pace(1000, 10, 5).apply(body)).await;
        assert!(result.unwrap_err().contains("no body bytes"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_body_finishes_within_one_window() {
        // 30 bytes at 1 byte/100 ms: under the rate, but over before the window ends.
        let body = trickle(1, Duration::from_millis(100), 30);
        assert_eq!(outcome(pace(1000, 10, 5).apply(body)).await, Ok(30));
    }

    #[tokio::test(start_paused = true)]
    async fn time_the_consumer_spends_elsewhere_does_not_count() {
        // The client delivers at once, but the consumer takes 20 s between reads (a slow
        // storage call): the body must not be cut.
        let chunks: Vec<io::Result<Bytes>> =
            (0..5).map(|_| Ok(Bytes::from(vec![1u8; 10]))).collect();
        let mut paced = pace(1000, 10, 5).apply(stream::iter(chunks));
        let mut total = 0;
        while let Some(chunk) = paced.next().await {
            total += chunk.unwrap().len();
            tokio::time::sleep(Duration::from_secs(20)).await;
        }
        assert_eq!(total, 50);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_only_ignores_the_rate() {
        let body = trickle(1, Duration::from_secs(4), 10);
        assert_eq!(
            outcome(Pace::idle_only(Duration::from_secs(5)).apply(body)).await,
            Ok(10)
        );
    }

    #[tokio::test]
    async fn a_gate_lets_through_its_limit_at_once() {
        let gate = Arc::new(Gate::new(3));
        let calls: Vec<_> = (0..20)
            .map(|_| {
                let gate = gate.clone();
                tokio::spawn(async move {
                    let _passed = gate.pass().await;
                    tokio::task::yield_now().await;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                })
            })
            .collect();
        for call in calls {
            call.await.unwrap();
        }
        assert_eq!(
            gate.peak(),
            3,
            "as many as the limit ran at once, never more"
        );
        assert_eq!(gate.running.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn read_away_stops_at_its_limit() {
        let chunks: Vec<io::Result<Bytes>> =
            (0..10).map(|_| Ok(Bytes::from(vec![1u8; 100]))).collect();
        assert!(
            read_away(Box::pin(stream::iter(chunks)), 350)
                .await
                .is_err()
        );
        let chunks: Vec<io::Result<Bytes>> =
            (0..3).map(|_| Ok(Bytes::from(vec![1u8; 100]))).collect();
        assert!(read_away(Box::pin(stream::iter(chunks)), 350).await.is_ok());
    }
}
