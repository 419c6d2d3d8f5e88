//! A sampler tick allocates nothing once warm: counted with a global allocator that only counts
//! on the thread under test (the harness's own threads may allocate freely).
use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    sync::atomic::{AtomicU64, Ordering},
};

#[path = "support/fake_rapl.rs"]
mod fake_rapl;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    if COUNTING.with(Cell::get) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; counting has no effect on
// the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn tick_allocates_nothing_after_warm_up() {
    let tmp = tempfile::tempdir().unwrap();
    let mut sampler = fake_rapl::sampler_over_fake_rapl(tmp.path());
    let mut snap = sampler.new_snapshot();
    for _ in 0..3 {
        sampler.tick(&mut snap);
    }
    COUNTING.with(|c| c.set(true));
    for _ in 0..200 {
        sampler.tick(&mut snap);
    }
    COUNTING.with(|c| c.set(false));
    assert_eq!(
        ALLOCS.load(Ordering::Relaxed),
        0,
        "allocations in 200 warm ticks"
    );
    // The counter itself works: one Vec is one allocation.
    COUNTING.with(|c| c.set(true));
    std::hint::black_box(vec![0u8; 16]);
    COUNTING.with(|c| c.set(false));
    assert_eq!(ALLOCS.load(Ordering::Relaxed), 1);
    // The tick did real work: RAPL zones, CPU time and the model all reported.
    assert_eq!(snap.readings.len(), 5);
    assert!(snap.cpu.is_some_and(|c| c.target_alive == 1));
}
