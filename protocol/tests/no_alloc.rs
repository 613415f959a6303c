//! Proves the per-message hot path does not allocate: framing, envelope parsing of an object and
//! id rewriting into an `out` buffer that already has room.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use codex_bus_protocol::{
    append_with_bus_id, append_with_token, parse, Frame, LineFramer, Message, SessionPath,
};

thread_local! {
    /// Per thread, so tests running in parallel do not see each other's allocations.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

struct Counting;

// SAFETY: forwards every call unchanged to the system allocator; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_during(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

#[test]
fn hot_path_does_not_allocate() {
    let stream = concat!(
        r#"{"jsonrpc":"2.0","id":"c-1","method":"tools/call","params":{"sessionId":"s1","x":[1,{"y":null}]}}"#,
        "\r\n",
        r#"{"jsonrpc":"2.0","id":77,"result":{"content":[{"type":"text","text":"h\u00e9 \"q\""}]}}"#,
        "\n",
        r#"{"jsonrpc":"2.0","method":"notify","p\u006fol":"gpu","params":{}}"#,
        "\n",
    )
    .as_bytes();
    let path = SessionPath::parse("params.sessionId").unwrap();
    let mut framer = LineFramer::new(1 << 20);
    let mut out = Vec::with_capacity(4096);
    let mut back = Vec::with_capacity(4096);
    framer.spare();

    let mut lines = 0;
    let count = allocations_during(|| {
        for _ in 0..100 {
            let spare = framer.spare();
            spare[..stream.len()].copy_from_slice(stream);
            framer.filled(stream.len());
            while let Some(Frame::Line(line)) = framer.next_frame() {
                lines += 1;
                let Ok(Message::Object(env)) = parse(line, &path) else {
                    panic!("not an object");
                };
                let Some(id) = env.id else { continue };
                out.clear();
                append_with_bus_id(&mut out, line, id.clone(), 123);
                back.clear();
                let forwarded = &out[..out.len() - 1];
                append_with_token(&mut back, forwarded, id.start..id.start + 3, &line[id]);
                assert_eq!(&back[..back.len() - 1], line);
            }
        }
    });
    assert_eq!(lines, 300);
    assert_eq!(count, 0);
}
