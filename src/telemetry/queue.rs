//! A bounded, lossy log queue in front of a stream (stdout or stderr), written by its own
//! thread: serving never waits on logging.
//!
//! A request thread appends its formatted line to an in-memory buffer under a short lock: no
//! system call, no thread to wake. The writer thread wakes every [`FLUSH_EVERY`] (or early, when
//! the buffer is half full), takes the whole buffer and writes it with one call. When the buffer
//! holds its bound of lines, new lines are dropped and counted, never waited for: a reader that
//! falls behind (the Functions host forwarding the pipes to Application Insights) fills the pipe
//! and blocks only the writer thread. Per-line hand-offs to a writer thread (a channel message
//! and a wake-up per line) cost more CPU than the request they log; a buffer swapped a few dozen
//! times a second costs next to nothing.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// How often the writer thread writes what has queued up.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// How long shutdown waits for the last lines to be written (a reader that does not read
/// cannot hold the process).
const SHUTDOWN_WAIT: Duration = Duration::from_secs(1);

struct Buffer {
    bytes: Vec<u8>,
    lines: usize,
    closed: bool,
}

struct Shared {
    buffer: Mutex<Buffer>,
    wake: Condvar,
    max_lines: usize,
    dropped: AtomicU64,
}

/// The producer side: cheap to clone, one per stream.
#[derive(Clone)]
pub struct LogQueue {
    shared: Arc<Shared>,
}

/// Stops the writer thread when dropped, after it has written what was queued (waiting
/// [`SHUTDOWN_WAIT`] at most).
pub struct QueueGuard {
    shared: Arc<Shared>,
    done: mpsc::Receiver<()>,
}

impl LogQueue {
    /// A queue of at most `max_lines` lines in front of `stream`, and the thread that writes it.
    pub fn start<W: Write + Send + 'static>(
        stream: W,
        max_lines: usize,
        name: &str,
    ) -> std::io::Result<(LogQueue, QueueGuard)> {
        let shared = Arc::new(Shared {
            buffer: Mutex::new(Buffer {
                bytes: Vec::new(),
                lines: 0,
                closed: false,
            }),
            wake: Condvar::new(),
            max_lines,
            dropped: AtomicU64::new(0),
        });
        let (done_tx, done) = mpsc::channel();
        let writer = shared.clone();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                write_until_closed(&writer, stream);
                let _ = done_tx.send(());
            })?;
        Ok((
            LogQueue {
                shared: shared.clone(),
            },
            QueueGuard { shared, done },
        ))
    }

    /// Queues one line, or drops it (counted) when the queue is full. Never blocks on the
    /// stream.
    pub fn push(&self, line: &[u8]) {
        let mut buffer = self.shared.buffer.lock().unwrap_or_else(|e| e.into_inner());
        if buffer.lines >= self.shared.max_lines {
            drop(buffer);
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        buffer.bytes.extend_from_slice(line);
        buffer.lines += 1;
        // Early when half full, so that a burst is written before it overflows.
        let wake = buffer.lines == self.shared.max_lines / 2;
        drop(buffer);
        if wake {
            self.shared.wake.notify_one();
        }
    }

    /// Lines dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

/// The writer thread: takes the whole buffer at each wake-up and writes it in one call.
fn write_until_closed<W: Write>(shared: &Shared, mut stream: W) {
    let mut pending = Vec::new();
    loop {
        let closed = {
            let mut buffer = shared.buffer.lock().unwrap_or_else(|e| e.into_inner());
            if buffer.lines == 0 && !buffer.closed {
                buffer = shared
                    .wake
                    .wait_timeout(buffer, FLUSH_EVERY)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            std::mem::swap(&mut pending, &mut buffer.bytes);
            buffer.lines = 0;
            buffer.closed
        };
        if !pending.is_empty() {
            // A failed write (a closed pipe) loses these lines; there is nowhere to say so.
            let _ = stream.write_all(&pending).and_then(|()| stream.flush());
            pending.clear();
        }
        if closed {
            return;
        }
    }
}

impl Drop for QueueGuard {
    fn drop(&mut self) {
        self.shared
            .buffer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .closed = true;
        self.shared.wake.notify_one();
        let _ = self.done.recv_timeout(SHUTDOWN_WAIT);
    }
}

impl Write for LogQueue {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        self.push(line);
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogQueue {
    type Writer = LogQueue;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream that takes nothing until it is let go: a pipe nobody reads.
    struct Stuck {
        gate: Arc<(Mutex<bool>, Condvar)>,
        written: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Stuck {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            let (open, opened) = &*self.gate;
            let mut open = open.lock().unwrap();
            while !*open {
                open = opened.wait(open).unwrap();
            }
            self.written.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_stream_costs_lines_never_a_wait_and_shutdown_writes_the_rest() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let written = Arc::new(Mutex::new(Vec::new()));
        let stream = Stuck {
            gate: gate.clone(),
            written: written.clone(),
        };
        let (queue, guard) = LogQueue::start(stream, 8, "test-log").unwrap();
        // The writer may hold one batch in its stuck write; everything else is dropped past 8
        // queued lines, and no push waits.
        for i in 0..1000 {
            queue.push(format!("line {i}\n").as_bytes());
        }
        assert!(
            queue.dropped() >= 1000 - 8 - 8,
            "dropped {}",
            queue.dropped()
        );
        // Let the stream go: shutdown writes what is queued.
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        drop(guard);
        let text = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        let kept = text.lines().count() as u64;
        assert_eq!(
            kept + queue.dropped(),
            1000,
            "every line is written or counted"
        );
        assert!(text.starts_with("line 0\n"), "{text}");
    }

    #[test]
    fn lines_arrive_whole_and_in_order() {
        let written = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new((Mutex::new(true), Condvar::new()));
        let stream = Stuck {
            gate,
            written: written.clone(),
        };
        let (queue, guard) = LogQueue::start(stream, 1000, "test-log").unwrap();
        for i in 0..500 {
            queue.push(format!("{i}\n").as_bytes());
        }
        drop(guard);
        let text = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        let numbers: Vec<usize> = text.lines().map(|l| l.parse().unwrap()).collect();
        assert_eq!(numbers, (0..500).collect::<Vec<_>>());
        assert_eq!(queue.dropped(), 0);
    }
}
