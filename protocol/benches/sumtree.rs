//! Building sum trees: 1,000,000 leaves in one bulk build (time, and peak heap from a
//! counting allocator), and incremental inserts as a supplier mines.
//! `cargo bench -p relaymesh-protocol --bench sumtree`

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use relaymesh_protocol::sumtree::{LeafEntry, MemoryStore, SumTree};
use relaymesh_protocol::Digest;

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn leaves(n: u64) -> Vec<LeafEntry> {
    (0..n)
        .map(|i| {
            let key = Digest(*blake3::hash(&i.to_le_bytes()).as_bytes());
            LeafEntry {
                key,
                value: key,
                weight: 100 + i % 1000,
            }
        })
        .collect()
}

fn sumtree(c: &mut Criterion) {
    // One measured bulk build of a million leaves, with its peak heap.
    let million = leaves(1_000_000);
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let started = Instant::now();
    let tree = SumTree::build(MemoryStore::default(), million.clone()).unwrap();
    let elapsed = started.elapsed();
    let peak = PEAK.load(Ordering::Relaxed) - base;
    println!(
        "bulk build of 1,000,000 leaves: {:.2} s, peak heap {:.0} MiB ({} nodes stored)",
        elapsed.as_secs_f64(),
        peak as f64 / (1 << 20) as f64,
        tree.store().len()
    );
    drop(tree);

    let mut group = c.benchmark_group("sum tree");
    group.sample_size(10);
    let hundred_k = leaves(100_000);
    group.throughput(Throughput::Elements(100_000));
    group.bench_function("bulk build, 100k leaves", |b| {
        b.iter_batched(
            || hundred_k.clone(),
            |l| SumTree::build(MemoryStore::default(), l).unwrap(),
            BatchSize::LargeInput,
        )
    });
    group.bench_function("incremental insert, 100k leaves", |b| {
        b.iter(|| {
            let mut tree = SumTree::new();
            for leaf in &hundred_k {
                tree.insert(*leaf).unwrap();
            }
            tree.root().unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, sumtree);
criterion_main!(benches);
