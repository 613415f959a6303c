//! The one frame-reading loop: bytes from a reader, cut into lines by a [`LineFramer`] that never
//! buffers an oversize line, each handed to a handler with the time its read completed.
//!
//! Client connections (NDJSON) and worker stdout both read through it; they differ only in their
//! handler: a client's waits for room in its output queue before each read (backpressure) and for
//! room in a worker's queue per message, a worker's never waits.

use std::future::Future;
use std::time::Instant;

use codex_bus_protocol::{Frame, LineFramer};
use metrics::Counter;
use tokio::io::{AsyncRead, AsyncReadExt};

/// What a frame-reading loop does with what it reads.
pub(crate) trait FrameHandler: Send {
    /// Resolves once the handler can take more input; the loop does not read until then.
    fn ready(&mut self) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }

    /// Handles one frame (a line without its newline, or the size of a skipped oversize line)
    /// from a read that completed at `read_at`.
    fn frame(&mut self, frame: Frame<'_>, read_at: Instant) -> impl Future<Output = ()> + Send;
}

/// Reads `reader` to its end (or first error), cutting lines with `framer` (which sets the line
/// limit and how oversize lines are reported) and handing each to `handler`; every byte read is
/// counted into `bytes`. A last line without its newline is still handed over.
///
/// One clock read per read call, not per line: a batch of pipelined lines shares its timestamp.
pub(crate) async fn read_frames<R, H>(
    reader: &mut R,
    mut framer: LineFramer,
    bytes: &Counter,
    handler: &mut H,
) where
    R: AsyncRead + Unpin + Send,
    H: FrameHandler,
{
    loop {
        handler.ready().await;
        match reader.read(framer.spare()).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                bytes.increment(n as u64);
                framer.filled(n);
            }
        }
        let read_at = Instant::now();
        while let Some(frame) = framer.next_frame() {
            handler.frame(frame, read_at).await;
        }
    }
    if let Some(frame) = framer.finish() {
        handler.frame(frame, Instant::now()).await;
    }
}
