//! A bounded, lossy log queue in front of the two output streams (stdout and stderr), written
//! by its own thread: serving never waits on logging.
//!
//! A request thread appends its formatted line, tagged with its stream, to an in-memory buffer
//! under a short lock: no system call, no thread to wake. The writer thread wakes every
//! [`FLUSH_EVERY`] (or early, when the buffer is half full), takes the whole buffer and writes
//! each run of lines for one stream with one call. When the buffer holds its bound of lines, new
//! lines are dropped and counted, never waited for: a reader that falls behind (the Functions
//! host forwarding the pipes to Application Insights) fills a pipe and blocks only the writer
//! thread. Per-line hand-offs to a writer thread (a channel message and a wake-up per line)
//! cost more CPU than the request they log; a buffer swapped a few dozen times a second costs
//! next to nothing.
//!
//! One writer for both streams keeps the lines in the order they were logged: a line reaches
//! its stream only after every line logged before it reached its own. Someone who reads both
//! streams into one (`2>&1`, the tests) sees them in that order. The price: while one pipe is
//! not read, the other stream's lines wait (and are dropped) too. Under Azure Functions one
//! host process reads both, so the two fall behind together anyway.

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

/// Which stream a line goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Out,
    Err,
}

struct Buffer {
    bytes: Vec<u8>,
    /// Runs of consecutive lines for one stream: the stream and where its run ends in `bytes`.
    runs: Vec<(Stream, usize)>,
    lines: usize,
    closed: bool,
}

impl Buffer {
    fn empty() -> Buffer {
        Buffer {
            bytes: Vec::new(),
            runs: Vec::new(),
            lines: 0,
            closed: false,
        }
    }
}

struct Shared {
    buffer: Mutex<Buffer>,
    wake: Condvar,
    max_lines: usize,
    dropped: AtomicU64,
}

/// The producer side: cheap to clone; [`LogQueue::writer`] gives a writer for one stream.
#[derive(Clone)]
pub struct LogQueue {
    shared: Arc<Shared>,
}

/// Writes whole lines into the queue for one stream (what the subscriber writes through).
#[derive(Clone)]
pub struct StreamWriter {
    queue: LogQueue,
    stream: Stream,
}

/// Stops the writer thread when dropped, after it has written what was queued (waiting
/// [`SHUTDOWN_WAIT`] at most).
pub struct QueueGuard {
    shared: Arc<Shared>,
    done: mpsc::Receiver<()>,
}

impl LogQueue {
    /// A queue of at most `max_lines` lines in front of `out` and `err`, and the thread that
    /// writes it.
    pub fn start<O, E>(out: O, err: E, max_lines: usize) -> std::io::Result<(LogQueue, QueueGuard)>
    where
        O: Write + Send + 'static,
        E: Write + Send + 'static,
    {
        let shared = Arc::new(Shared {
            buffer: Mutex::new(Buffer::empty()),
            wake: Condvar::new(),
            max_lines,
            dropped: AtomicU64::new(0),
        });
        let (done_tx, done) = mpsc::channel();
        let writer = shared.clone();
        std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || {
                write_until_closed(&writer, out, err);
                let _ = done_tx.send(());
            })?;
        Ok((
            LogQueue {
                shared: shared.clone(),
            },
            QueueGuard { shared, done },
        ))
    }

    /// A writer of lines for `stream`.
    pub fn writer(&self, stream: Stream) -> StreamWriter {
        StreamWriter {
            queue: self.clone(),
            stream,
        }
    }

    /// Queues one line for `stream`, or drops it (counted) when the queue is full. Never blocks
    /// on a stream.
    pub fn push(&self, stream: Stream, line: &[u8]) {
        let mut buffer = self.shared.buffer.lock().unwrap_or_else(|e| e.into_inner());
        if buffer.lines >= self.shared.max_lines {
            drop(buffer);
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        buffer.bytes.extend_from_slice(line);
        let end = buffer.bytes.len();
        match buffer.runs.last_mut() {
            Some((last, run_end)) if *last == stream => *run_end = end,
            _ => buffer.runs.push((stream, end)),
        }
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

/// The writer thread: takes the whole buffer at each wake-up and writes each run of lines to
/// its stream in one call, in the order they were queued.
fn write_until_closed<O: Write, E: Write>(shared: &Shared, mut out: O, mut err: E) {
    let mut pending = Buffer::empty();
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
            std::mem::swap(&mut pending.bytes, &mut buffer.bytes);
            std::mem::swap(&mut pending.runs, &mut buffer.runs);
            buffer.lines = 0;
            buffer.closed
        };
        let mut start = 0;
        for &(stream, end) in &pending.runs {
            let run = &pending.bytes[start..end];
            // A failed write (a closed pipe) loses these lines; there is nowhere to say so.
            let _ = match stream {
                Stream::Out => out.write_all(run).and_then(|()| out.flush()),
                Stream::Err => err.write_all(run).and_then(|()| err.flush()),
            };
            start = end;
        }
        pending.bytes.clear();
        pending.runs.clear();
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

impl Write for StreamWriter {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        self.queue.push(self.stream, line);
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for StreamWriter {
    type Writer = StreamWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream that takes nothing until it is let go (a pipe nobody reads), and records what
    /// it was given, tagged with its name.
    #[derive(Clone)]
    struct Stuck {
        name: &'static str,
        gate: Arc<(Mutex<bool>, Condvar)>,
        written: Arc<Mutex<Vec<String>>>,
    }

    impl Write for Stuck {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            let (open, opened) = &*self.gate;
            let mut open = open.lock().unwrap();
            while !*open {
                open = opened.wait(open).unwrap();
            }
            let text = String::from_utf8(bytes.to_vec()).unwrap();
            let mut written = self.written.lock().unwrap();
            written.extend(text.lines().map(|l| format!("{}:{l}", self.name)));
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Two streams sharing one record of what was written (as `2>&1` would).
    fn streams(open: bool) -> (Stuck, Stuck, Arc<(Mutex<bool>, Condvar)>) {
        let gate = Arc::new((Mutex::new(open), Condvar::new()));
        let written = Arc::new(Mutex::new(Vec::new()));
        let out = Stuck {
            name: "out",
            gate: gate.clone(),
            written,
        };
        let err = Stuck {
            name: "err",
            ..out.clone()
        };
        (out, err, gate)
    }

    #[test]
    fn a_stuck_stream_costs_lines_never_a_wait_and_shutdown_writes_the_rest() {
        let (out, err, gate) = streams(false);
        let written = out.written.clone();
        let (queue, guard) = LogQueue::start(out, err, 8).unwrap();
        // The writer may hold one batch in its stuck write; everything else is dropped past 8
        // queued lines, and no push waits.
        for i in 0..1000 {
            queue.push(Stream::Out, format!("line {i}\n").as_bytes());
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
        let written = written.lock().unwrap().clone();
        assert_eq!(
            written.len() as u64 + queue.dropped(),
            1000,
            "every line is written or counted"
        );
        assert_eq!(written[0], "out:line 0");
    }

    #[test]
    fn lines_arrive_whole_on_their_stream_and_in_the_order_they_were_logged() {
        let (out, err, _gate) = streams(true);
        let written = out.written.clone();
        let (queue, guard) = LogQueue::start(out, err, 1000).unwrap();
        let (mut info, mut warn) = (queue.writer(Stream::Out), queue.writer(Stream::Err));
        let mut expected = Vec::new();
        for i in 0..500 {
            // Runs of different lengths on each stream.
            if i % 7 < 3 {
                warn.write_all(format!("{i}\n").as_bytes()).unwrap();
                expected.push(format!("err:{i}"));
            } else {
                info.write_all(format!("{i}\n").as_bytes()).unwrap();
                expected.push(format!("out:{i}"));
            }
        }
        drop(guard);
        assert_eq!(*written.lock().unwrap(), expected);
        assert_eq!(queue.dropped(), 0);
    }
}
