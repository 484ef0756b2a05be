//! A stable-Rust fuzz harness for the decoders: structured mutation of valid encodings
//! (the golden vectors). Nightly-only fuzzers are not available on our machines; this
//! runs anywhere, deterministically from a seed, briefly in the test suite and for
//! millions of inputs with `cargo run --release -p relaymesh-protocol --example fuzz_protocol`.

use crate::wire::WireMessage;

/// Deterministic mutation source (splitmix64: tiny, fast, good enough for fuzzing).
#[derive(Clone, Debug)]
pub struct Mutator {
    state: u64,
}

/// CBOR bytes that make decoders work hardest: length headers of every size class,
/// indefinite-length markers, break, tags, simple values and floats.
const INTERESTING: &[u8] = &[
    0x00, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1f, 0x40, 0x58, 0x5b, 0x5f, 0x60, 0x7b, 0x7f, 0x80, 0x98,
    0x9b, 0x9f, 0xa0, 0xbb, 0xbf, 0xc0, 0xc2, 0xd8, 0xf4, 0xf5, 0xf6, 0xf7, 0xf9, 0xfb, 0xff,
];

impl Mutator {
    /// A mutator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next pseudo-random number (for mutators built on this one, e.g. of JSON).
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A pseudo-random number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// One to four random edits of `input`, sometimes splicing in part of another
    /// corpus entry.
    pub fn mutate(&mut self, input: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
        let mut out = input.to_vec();
        for _ in 0..1 + self.below(4) {
            let len = out.len();
            match self.below(9) {
                0 if len > 0 => {
                    let i = self.below(len);
                    out[i] ^= 1 << self.below(8);
                }
                1 if len > 0 => {
                    let i = self.below(len);
                    out[i] = self.next_u64() as u8;
                }
                2 if len > 0 => {
                    let i = self.below(len);
                    out[i] = INTERESTING[self.below(INTERESTING.len())];
                }
                3 => {
                    let i = self.below(len + 1);
                    out.insert(i, INTERESTING[self.below(INTERESTING.len())]);
                }
                4 if len > 0 => {
                    let start = self.below(len);
                    let end = (start + 1 + self.below(16)).min(len);
                    out.drain(start..end);
                }
                5 => out.truncate(self.below(len + 1)),
                6 if len > 0 => {
                    // Duplicate a range: repeated fields and elements.
                    let start = self.below(len);
                    let end = (start + 1 + self.below(32)).min(len);
                    let chunk = out[start..end].to_vec();
                    let at = self.below(out.len() + 1);
                    out.splice(at..at, chunk);
                }
                7 if !corpus.is_empty() => {
                    let other = &corpus[self.below(corpus.len())];
                    if !other.is_empty() {
                        let start = self.below(other.len());
                        let end = (start + 1 + self.below(64)).min(other.len());
                        let at = self.below(len + 1);
                        out.splice(at..at, other[start..end].iter().copied());
                    }
                }
                _ => {
                    // Overwrite a big-endian integer with an extreme value.
                    if len >= 8 {
                        let i = self.below(len - 7);
                        let v = [u64::MAX, 0, 1 << 63, u64::from(u32::MAX) + 1][self.below(4)];
                        out[i..i + 8].copy_from_slice(&v.to_be_bytes());
                    }
                }
            }
        }
        out
    }
}

/// What a fuzz run saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FuzzStats {
    /// Inputs tried.
    pub inputs: u64,
    /// Inputs that decoded (and re-encoded to themselves).
    pub accepted: u64,
}

/// Throws `iterations` mutants of `corpus` at `target`, which says whether it accepted
/// each one: the byte-level entry point for decoders that are not a [`WireMessage`]
/// (stream framing, other crates' codecs). A panic fails the caller.
pub fn fuzz_bytes(
    corpus: &[Vec<u8>],
    iterations: u64,
    seed: u64,
    mut target: impl FnMut(&[u8]) -> bool,
) -> FuzzStats {
    let mut mutator = Mutator::new(seed);
    let mut stats = FuzzStats::default();
    if corpus.is_empty() {
        return stats;
    }
    for i in 0..iterations {
        let base = &corpus[(i % corpus.len() as u64) as usize];
        let input = mutator.mutate(base, corpus);
        stats.inputs += 1;
        if target(&input) {
            stats.accepted += 1;
        }
    }
    stats
}

/// Throws `iterations` mutants of `corpus` at `T::decode`. A panic fails the caller;
/// an accepted input that does not re-encode to itself panics too.
pub fn fuzz_decoder<T: WireMessage>(corpus: &[Vec<u8>], iterations: u64, seed: u64) -> FuzzStats {
    fuzz_bytes(corpus, iterations, seed, |input| {
        let Ok(value) = T::decode(input) else {
            return false;
        };
        let again = value
            .encode()
            .expect("a decoded message fits its own limit");
        assert_eq!(
            again,
            input,
            "{}: accepted bytes that do not re-encode to themselves",
            T::NAME
        );
        true
    })
}
