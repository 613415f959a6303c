//! Where a worker slot sits: its pool's index and its own, in config order.
//!
//! A worker's request remembers the slot that asked by address rather than by reference, so a
//! client's table never holds a slot alive and the client and slot types need not know each other.

/// A slot's place: `pool` indexes the router's pools, `slot` that pool's slots (both from 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct SlotAddress {
    /// The pool's index in config order.
    pub pool: u32,
    /// The slot's number within its pool.
    pub slot: u32,
}
