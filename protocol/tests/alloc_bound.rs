//! Decoding never allocates beyond what the input's size justifies, however large the
//! lengths the input declares. A counting global allocator watches every decode.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use relaymesh_protocol::messages::wire_decoders;
use relaymesh_protocol::wire::fuzz::Mutator;

#[path = "common/vectors.rs"]
mod vectors;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
        PEAK.fetch_max(live, Ordering::SeqCst);
        LARGEST.fetch_max(layout.size(), Ordering::SeqCst);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Inserts a CBOR header declaring 2^62 items of the given major type at `at`.
fn huge_header(bytes: &[u8], at: usize, major: u8) -> Vec<u8> {
    let mut out = bytes[..at].to_vec();
    out.push((major << 5) | 27);
    out.extend_from_slice(&(1u64 << 62).to_be_bytes());
    out.extend_from_slice(&bytes[at..]);
    out
}

#[test]
fn decoders_allocate_in_proportion_to_their_input() {
    let all = vectors::all();
    let mut mutator = Mutator::new(11);
    let mut worst_ratio: f64 = 0.0;
    for decoder in wire_decoders() {
        let corpus = vectors::corpus(&all, decoder.name);
        let mut inputs = Vec::new();
        for base in &corpus {
            for at in (0..base.len()).step_by(3) {
                for major in [2u8, 3, 4, 5] {
                    inputs.push(huge_header(base, at, major));
                }
            }
            for _ in 0..500 {
                inputs.push(mutator.mutate(base, &corpus));
            }
        }
        for input in inputs {
            let before = LIVE.load(Ordering::SeqCst);
            PEAK.store(before, Ordering::SeqCst);
            LARGEST.store(0, Ordering::SeqCst);
            let _ = (decoder.decode)(&input);
            let peak = PEAK.load(Ordering::SeqCst) - before;
            let largest = LARGEST.load(Ordering::SeqCst);
            // Decoded values, the canonical re-encoding and parser scratch: a small
            // multiple of the input, never the declared lengths (the 1 KiB is the
            // text of a parse error).
            let allowance = 16 * input.len().min(decoder.max_size) + 16 * 1024;
            assert!(
                largest <= 2 * decoder.max_size + 1024 && peak <= allowance,
                "{}: {} input bytes led to peak {peak} and an allocation of {largest}",
                decoder.name,
                input.len()
            );
            worst_ratio = worst_ratio.max(peak as f64 / (input.len() as f64 + 1.0));
        }
    }
    println!("worst peak allocation per input byte: {worst_ratio:.1}");
}
