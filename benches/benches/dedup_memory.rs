//! Memory cost of the agent's dedup set per remembered id, measured with a counting allocator.
//!
//! Run: `cargo bench -p runnel-benches --bench dedup_memory`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use runnel_agent::dedup::{Dedup, id_hash};

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: delegates to the system allocator and only counts.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn main() {
    for millions in [1usize, 4] {
        let n = millions * 1_000_000;
        let before = LIVE.load(Ordering::Relaxed);
        let mut d = Dedup::new(3_600_000, usize::MAX);
        // Spread over the window like a steady stream.
        for i in 0..n {
            let now = (i as i64) * 3_600_000 / n as i64;
            d.insert(id_hash(&format!("ev-{i:012}")), now);
        }
        let bytes = LIVE.load(Ordering::Relaxed) - before;
        println!(
            "dedup: {n} ids use {:.1} MiB: {:.1} bytes per id ({:.1} MiB per million)",
            bytes as f64 / (1 << 20) as f64,
            bytes as f64 / n as f64,
            bytes as f64 / n as f64 * 1e6 / (1 << 20) as f64
        );
        drop(d);
    }
}
