//! Stdin reader thread: blocking reads of large chunks, handed to the event loop over a channel.
//!
//! A plain thread (rather than tokio's stdin) keeps the next read in flight while the loop works,
//! and never switches the inherited stdin to non-blocking mode behind the parent's back.

use std::io::{self, Read};
use std::thread;

use tokio::sync::mpsc;

use crate::log;

/// Bytes asked for per read; large reads are what keeps syscalls per message far below one.
const CHUNK_BYTES: usize = 64 * 1024;

/// Chunks queued ahead of the loop; small, so a slow loop pushes back on the writer through the pipe.
const CHUNKS_IN_FLIGHT: usize = 4;

/// Starts the reader; the channel closes at end of input (read errors count as end of input).
pub fn spawn_stdin_reader() -> io::Result<mpsc::Receiver<Vec<u8>>> {
    let (sender, receiver) = mpsc::channel(CHUNKS_IN_FLIGHT);
    thread::Builder::new()
        .name("stdin-reader".to_owned())
        .spawn(move || read_chunks(&sender))?;
    Ok(receiver)
}

fn read_chunks(sender: &mpsc::Sender<Vec<u8>>) {
    let mut stdin = io::stdin().lock();
    loop {
        let mut chunk = vec![0; CHUNK_BYTES];
        match stdin.read(&mut chunk) {
            Ok(0) => return,
            Ok(len) => {
                chunk.truncate(len);
                if sender.blocking_send(chunk).is_err() {
                    return;
                }
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => {
                log::line(format_args!(
                    "stdin read failed, treating as end of input: {err}"
                ));
                return;
            }
        }
    }
}
