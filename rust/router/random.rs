//! The router's PRNG: splitmix64 (Steele, Lea & Flood, "Fast splittable pseudorandom number
//! generators", 2014). Its state is a counter advanced by a fixed odd gamma, kept in an `AtomicU64`:
//! lock-free, thread-safe, and deterministic for a given seed and sequence of calls. Each pick draws
//! once from the shared generator and derives any further numbers it needs from a local
//! (non-atomic) splitmix64 seeded with that draw.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};

/// The splitmix64 increment: 2^64 divided by the golden ratio, rounded to odd.
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// splitmix64's output function (Stafford's "Mix13"): a bijection with full avalanche.
#[inline]
pub(crate) fn mix64(mut value: u64) -> u64 {
    value = (value ^ (value >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    value = (value ^ (value >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    value ^ (value >> 31)
}

/// A seed from the OS: std seeds every `RandomState` from the OS's random source (getrandom).
pub(crate) fn os_seed() -> u64 {
    RandomState::new().hash_one(GOLDEN_GAMMA)
}

/// A uniform integer in `0..bound` from a uniform `u64` (Lemire's multiply-shift; the bias is at
/// most `bound / 2^64`, far below anything a routing split can show). `bound` must be > 0.
#[inline]
pub(crate) fn below(random: u64, bound: usize) -> usize {
    let scaled = (u128::from(random) * bound as u128) >> 64;
    // scaled < bound, so it fits the usize that bound came from.
    #[allow(clippy::cast_possible_truncation)]
    let index = scaled as usize;
    index
}

/// The generator every pick of one router draws from.
// Its own cache line: it is written on every pick, the table pointer next to it is only read.
#[repr(align(64))]
pub(crate) struct SharedRng {
    state: AtomicU64,
}

impl SharedRng {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            state: AtomicU64::new(seed),
        }
    }

    /// The next number of the sequence.
    ///
    /// The state advances by a relaxed load and store, not a `fetch_add`: a locked read-modify-write
    /// costs about as much as the rest of an untargeted pick. The price is that two threads drawing
    /// at the same instant may both get the same number (a lost update), which only makes those two
    /// picks agree; each draw is still uniform, so the split is unaffected, and a single thread (or
    /// Python, which calls under the GIL) sees exactly the seeded sequence.
    #[inline]
    pub(crate) fn next_u64(&self) -> u64 {
        let state = self
            .state
            .load(Ordering::Relaxed)
            .wrapping_add(GOLDEN_GAMMA);
        self.state.store(state, Ordering::Relaxed);
        mix64(state)
    }
}

/// A generator private to one pick, seeded from one draw of the `SharedRng`.
pub(crate) struct LocalRng {
    state: u64,
}

impl LocalRng {
    pub(crate) fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    #[inline]
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        mix64(self.state)
    }

    /// A uniform integer in `0..bound`; `bound` must be > 0.
    #[inline]
    pub(crate) fn below(&mut self, bound: usize) -> usize {
        below(self.next_u64(), bound)
    }
}
