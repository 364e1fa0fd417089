//! Sticky assignment of keys (user ids) to variants by weighted rendezvous hashing (Schindelhauer &
//! Schomaker, "Weighted distributed hash tables", 2005; the "logarithmic method").
//!
//! Why not contiguous bucket ranges: a key's bucket is fixed, and the ranges move when any weight
//! changes. With three or more variants, growing variant A shifts the boundary between B and C, so
//! keys move from C to B although neither changed. Rendezvous hashing has no boundaries:
//!
//! - each variant `v` draws, per key, `u_v = hash(key_hash, name_hash(v))` uniform in (0, 1) and
//!   scores `-ln(u_v) / weight_v` (an exponential variable with rate `weight_v`);
//! - the key goes to the variant with the lowest score. The minimum of independent exponentials
//!   is variant `v` with probability `weight_v / sum of weights`: the split is exactly proportional;
//! - growing `weight_A` lowers only A's score, so a key either stays or moves into A; keys never
//!   move between the other variants (a canary raised from 10% to 20% keeps its users). Adding a
//!   variant only moves keys into it; removing one only moves its own keys;
//! - scores depend on variant names, not positions, so reordering the table moves nothing.
//!
//! Weight-0 variants are never chosen. The key hash is salted per router, so two routers with
//! different salts assign keys independently.

use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::table::Variant;

/// The salted hash of a key; the router's salt gives `salt_seed`.
#[inline]
pub(crate) fn key_hash(key: &str, salt_seed: u64) -> u64 {
    xxh3_64_with_seed(key.as_bytes(), salt_seed)
}

/// The variant's draw for this key, uniform in the open interval (0, 1).
#[inline]
fn unit_draw(key_hash: u64, name_hash: u64) -> f64 {
    let mixed = xxh3_64_with_seed(&key_hash.to_le_bytes(), name_hash);
    // The top 53 bits, centred in their cell: never 0 and never 1, so ln() is finite and < 0.
    ((mixed >> 11) as f64 + 0.5) * (1.0 / (1_u64 << 53) as f64)
}

/// The variant with the lowest score for this key, or None when every weight is 0. Equal scores
/// (practically impossible) go to the smaller name, so the result never depends on table order.
pub(crate) fn rendezvous<L>(variants: &[Variant<L>], key_hash: u64) -> Option<&Variant<L>> {
    let mut best: Option<(&Variant<L>, f64)> = None;
    for variant in variants {
        if variant.weight <= 0.0 {
            continue;
        }
        let score = -unit_draw(key_hash, variant.name_hash).ln() * variant.inverse_weight;
        let keeps_leader = best.is_some_and(|(leader, leader_score)| {
            leader_score
                .total_cmp(&score)
                .then_with(|| leader.name.cmp(&variant.name))
                .is_le()
        });
        if !keeps_leader {
            best = Some((variant, score));
        }
    }
    best.map(|(variant, _)| variant)
}
