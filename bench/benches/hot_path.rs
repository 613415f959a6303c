//! Microbenchmarks of the per-message work of the bus: framing, envelope extraction, id
//! rewrite/restore and session placement. `thrpt` is messages per second; its inverse is the time
//! per message (framing and new sessions run in batches, so their `time` is per batch).

use std::hint::black_box;

use codex_bus_protocol::{
    append_with_bus_id, append_with_token, parse, Frame, LineFramer, Message, SessionPath,
};
use codex_stdio_bus::router::placement::{slot_for, Sessions};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

/// A request as `bus-bench` sends it in `single` (~60 bytes).
const REQUEST: &[u8] = br#"{"jsonrpc":"2.0","id":"m0.12345","method":"ping","params":{}}"#;
/// The same with a 36-byte session id (`fanout`, `sessions`).
const SESSION_REQUEST: &[u8] = br#"{"jsonrpc":"2.0","id":"m0.12345","method":"ping","params":{},"sessionId":"00000002-0000-4000-8000-0000000004d2"}"#;
/// A mock worker's reply to a rewritten request.
const REPLY: &[u8] = br#"{"jsonrpc":"2.0","id":123456,"result":{"pool":"bench","slot":0,"pid":4242,"method":"ping"}}"#;

fn one_kib_request() -> Vec<u8> {
    let mut line =
        br#"{"jsonrpc":"2.0","id":"m0.12345","method":"ping","params":{"pad":""#.to_vec();
    line.resize(1024 - 3, b'x');
    line.extend_from_slice(b"\"}}");
    line
}

fn id_span(line: &[u8]) -> std::ops::Range<usize> {
    match parse(line, &SessionPath::default()) {
        Ok(Message::Object(env)) => env.id.expect("the sample has an id"),
        other => panic!("sample does not parse: {other:?}"),
    }
}

fn framing(c: &mut Criterion) {
    let lines = 4096;
    let stream: Vec<u8> = (0..lines)
        .flat_map(|_| REQUEST.iter().copied().chain([b'\n']))
        .collect();
    let mut group = c.benchmark_group("framing");
    group.throughput(Throughput::Elements(lines as u64));
    group.bench_function("LineFramer 60-byte lines, 64 KiB reads", |b| {
        let mut framer = LineFramer::new(1 << 20);
        b.iter(|| {
            let mut frames = 0usize;
            for chunk in stream.chunks(64 * 1024) {
                let spare = framer.spare();
                spare[..chunk.len()].copy_from_slice(chunk);
                framer.filled(chunk.len());
                while let Some(Frame::Line(line)) = framer.next_frame() {
                    frames += black_box(line).len();
                }
            }
            frames
        })
    });
    group.finish();
}

fn envelope(c: &mut Criterion) {
    let session = SessionPath::default();
    let kib = one_kib_request();
    let mut group = c.benchmark_group("envelope parse");
    group.throughput(Throughput::Elements(1));
    for (name, line) in [
        ("request 60 B", REQUEST),
        ("request + sessionId 113 B", SESSION_REQUEST),
        ("worker reply 95 B", REPLY),
        ("request 1 KiB", &kib[..]),
    ] {
        group.bench_function(name, |b| b.iter(|| parse(black_box(line), &session)));
    }
    group.finish();
}

fn rewrite(c: &mut Criterion) {
    let request_id = id_span(REQUEST);
    let reply_id = id_span(REPLY);
    let original = &REQUEST[request_id.clone()];
    let mut group = c.benchmark_group("id rewrite");
    group.throughput(Throughput::Elements(1));
    group.bench_function("append_with_bus_id (request to worker)", |b| {
        let mut out = Vec::with_capacity(1 << 16);
        b.iter(|| {
            out.clear();
            append_with_bus_id(&mut out, black_box(REQUEST), request_id.clone(), 123_456);
            out.len()
        })
    });
    group.bench_function("append_with_token (reply to client)", |b| {
        let mut out = Vec::with_capacity(1 << 16);
        b.iter(|| {
            out.clear();
            append_with_token(&mut out, black_box(REPLY), reply_id.clone(), original);
            out.len()
        })
    });
    group.finish();
}

fn placement(c: &mut Criterion) {
    let keys: Vec<Vec<u8>> = (0..1024u64)
        .map(|i| format!("00000002-0000-4000-8000-{i:012x}").into_bytes())
        .collect();
    let mut group = c.benchmark_group("slot lookup");
    group.throughput(Throughput::Elements(1));
    group.bench_function("slot_for 36-byte key, 4 slots", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % keys.len();
            slot_for(black_box(&keys[i]), 4)
        })
    });
    group.bench_function("Sessions::locate, placed session", |b| {
        let sessions = Sessions::<()>::new(usize::MAX);
        for key in &keys {
            let placed = sessions.locate(key, 1, 0, || Ok((0, slot_for(key, 4), ())), || ());
            assert!(placed.is_ok());
        }
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % keys.len();
            sessions.locate(black_box(&keys[i]), 1, 0, || Ok((0, 0, ())), || ())
        })
    });
    // 64 new sessions per iteration (in a fresh table each time), so time/64 is per session.
    group.throughput(Throughput::Elements(64));
    group.bench_function("Sessions::locate, 64 new sessions", |b| {
        b.iter_batched(
            || Sessions::<()>::new(usize::MAX),
            |sessions| {
                for key in &keys[..64] {
                    let placed =
                        sessions.locate(key, 1, 0, || Ok((0, slot_for(key, 4), ())), || ());
                    black_box(placed.ok());
                }
                sessions
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, framing, envelope, rewrite, placement);
criterion_main!(benches);
