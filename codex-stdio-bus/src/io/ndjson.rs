//! NDJSON over a byte stream: one JSON-RPC message per line, each way.
//!
//! Reading cuts lines with the shared frame loop and refuses an oversize line with
//! `message_too_large` (without buffering it); writing hands the client's queue, which already
//! holds newline-terminated messages, to the stream in batches.

use std::sync::Arc;
use std::time::{Duration, Instant};

use codex_bus_protocol::{ErrorKind, Frame, LineFramer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::connection::{MessageSink, MessageSource};
use super::frames::{read_frames, FrameHandler};
use crate::core::client::Client;
use crate::core::outbox::WriteFailed;
use crate::metrics::{self, Direction};
use crate::router::{send_error, Router};

/// The reading half of an NDJSON stream.
pub(crate) struct NdjsonSource<R> {
    reader: R,
    /// `max_input_buffer`: the longest line accepted, in bytes.
    max_line: usize,
}

impl<R> NdjsonSource<R> {
    /// Reads lines of at most `max_line` bytes from `reader`.
    pub(crate) fn new(reader: R, max_line: usize) -> Self {
        NdjsonSource { reader, max_line }
    }
}

impl<R: AsyncRead + Unpin + Send> MessageSource for NdjsonSource<R> {
    async fn pump(&mut self, router: &Router, client: &Arc<Client>) {
        let mut handler = ToRouter {
            router,
            client,
            max_line: self.max_line,
            recorded: None,
            messages: metrics::get().messages(Direction::FromClient),
        };
        let bytes = metrics::get().bytes(Direction::FromClient);
        // Mostly idle: 2 KiB between short reads rather than 64 KiB per connection.
        let framer = LineFramer::lean(self.max_line);
        read_frames(&mut self.reader, framer, bytes, &mut handler).await;
    }
}

/// Routes a client's lines.
struct ToRouter<'a> {
    router: &'a Router,
    client: &'a Arc<Client>,
    max_line: usize,
    /// The read whose time the client's idle clock has: every line of one read shares it, so
    /// it is recorded once per read, not once per line.
    recorded: Option<Instant>,
    /// The counter of lines read from clients, resolved once (as the worker side does).
    messages: &'static ::metrics::Counter,
}

impl FrameHandler for ToRouter<'_> {
    async fn ready(&mut self) {
        // Backpressure toward a client that does not read its replies: stop reading its requests.
        self.client.out.wait_for_space().await;
    }

    async fn frame(&mut self, frame: Frame<'_>, read_at: Instant) {
        self.messages.increment(1);
        if self.recorded != Some(read_at) {
            self.recorded = Some(read_at);
            self.client.line_read(read_at);
        }
        match frame {
            Frame::Line(line) => self.router.client_message(self.client, line, read_at).await,
            Frame::Oversize { .. } => {
                let detail = format!(
                    "line longer than max_input_buffer ({} bytes); skipped",
                    self.max_line
                );
                send_error(self.client, None, ErrorKind::MessageTooLarge, Some(&detail));
            }
        }
    }
}

/// The writing half of an NDJSON stream.
pub(crate) struct NdjsonSink<W>(pub W);

impl<W: AsyncWrite + Unpin + Send + 'static> MessageSink for NdjsonSink<W> {
    async fn drain(mut self, client: &Client, stall: Duration) -> Result<(), WriteFailed> {
        let written = metrics::get().bytes(Direction::ToClient);
        let drained = client
            .out
            .drain_into(&mut self.0, Some(stall), |n| written.increment(n as u64))
            .await;
        if drained.is_ok() {
            // Ends the stream the transport's own way: over TLS a close_notify, without which the
            // client must take the end for a truncation; a plain socket gets the FIN its drop
            // would send. Bounded, as every write to a client is.
            let _ = tokio::time::timeout(stall, self.0.shutdown()).await;
        }
        drained
    }
}
