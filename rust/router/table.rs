//! The routing table: validated variants with their weights, instances and instance-choice strategy,
//! plus everything a pick needs precomputed (cumulative thresholds, name hashes, the instance index).
//! A table is immutable once built; the router replaces it whole.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use xxhash_rust::xxh3::{xxh3_64, Xxh3DefaultBuilder};

use super::error::{InvalidTable, RouterError};
use super::random::LocalRng;
use super::sticky;

/// Weighted picks compare the top 53 bits of a random `u64` (an f64's precision) with thresholds
/// on this scale.
const PICK_BITS: u32 = 53;
const PICK_SCALE: u64 = 1 << PICK_BITS;

/// How a variant chooses one of its healthy instances (`RoutingConfig` of a production variant).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoutingStrategy {
    /// The instance with the fewest requests in flight; ties are broken uniformly at random.
    LeastOutstandingRequests,
    /// An instance chosen uniformly at random.
    Random,
}

impl RoutingStrategy {
    /// The strategy named by a `RoutingConfig.RoutingStrategy` string.
    ///
    /// # Errors
    /// `RouterError::InvalidTable(UnknownRoutingStrategy)` for any other string.
    pub fn parse(text: &str) -> Result<Self, RouterError> {
        match text {
            "LEAST_OUTSTANDING_REQUESTS" => Ok(Self::LeastOutstandingRequests),
            "RANDOM" => Ok(Self::Random),
            _ => Err(InvalidTable::UnknownRoutingStrategy {
                strategy: text.to_owned(),
            }
            .into()),
        }
    }

    /// The `RoutingConfig.RoutingStrategy` string for this strategy.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LeastOutstandingRequests => "LEAST_OUTSTANDING_REQUESTS",
            Self::Random => "RANDOM",
        }
    }
}

/// One production variant as configured: what a table is built from.
#[derive(Clone, Debug, PartialEq)]
pub struct VariantSpec {
    /// The variant's name (unique in the table).
    pub name: String,
    /// Its share of untargeted traffic is `weight / sum of weights`; finite and >= 0.
    pub weight: f64,
    /// Its instances' names (unique across the whole router); may be empty.
    pub instances: Vec<String>,
    /// How one of its healthy instances is chosen.
    pub routing_strategy: RoutingStrategy,
}

/// An instance's mutable state. It lives behind an `Arc` so that a table replacement hands the same
/// slot to the new table when the instance keeps its name.
#[derive(Debug)]
pub(crate) struct InstanceSlot {
    in_flight: AtomicU64,
    healthy: AtomicBool,
}

impl InstanceSlot {
    fn new() -> Self {
        Self {
            in_flight: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
        }
    }

    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub(crate) fn acquire(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// One request fewer in flight, saturating at 0 (a stray release cannot wrap the count).
    pub(crate) fn release(&self) {
        // Err means the count was already 0: nothing to undo.
        let _ = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |count| {
                count.checked_sub(1)
            });
    }

    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub(crate) fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }
}

/// A handle on one instance's in-flight count: what a pick hands back (inside its label) so that
/// the request can be released without looking the instance up again. It stays valid after a
/// table change: an instance that keeps its name keeps its slot, and releasing a removed
/// instance's handle touches only its own, no longer routed, slot.
#[derive(Clone, Debug)]
pub struct InstanceHandle {
    slot: Arc<InstanceSlot>,
}

impl InstanceHandle {
    /// One request fewer in flight on the instance (never below 0).
    pub fn release(&self) {
        self.slot.release();
    }

    /// How many picks of the instance have not been released.
    pub fn in_flight(&self) -> u64 {
        self.slot.in_flight()
    }
}

/// An instance in a table, with its caller-supplied label: what a pick of it hands back.
pub(crate) struct Instance<L> {
    pub(crate) name: Box<str>,
    pub(crate) label: L,
    pub(crate) slot: Arc<InstanceSlot>,
}

/// A variant in a table.
pub(crate) struct Variant<L> {
    pub(crate) name: Box<str>,
    pub(crate) weight: f64,
    /// `1 / weight` (infinite for weight 0): sticky scores multiply by it rather than divide.
    pub(crate) inverse_weight: f64,
    pub(crate) routing_strategy: RoutingStrategy,
    pub(crate) instances: Box<[Instance<L>]>,
    /// Seeds this variant's rendezvous hash; from the name, so sticky keys follow names, not
    /// positions.
    pub(crate) name_hash: u64,
}

impl<L> Variant<L> {
    /// One of this variant's healthy instances by its strategy and how many healthy instances the
    /// variant has (at least 1), or None if it has none.
    #[inline]
    pub(crate) fn pick_instance(&self, rng: &mut LocalRng) -> Option<(&Instance<L>, usize)> {
        match self.routing_strategy {
            RoutingStrategy::LeastOutstandingRequests => self.least_outstanding(rng),
            RoutingStrategy::Random => self.uniform(rng),
        }
    }

    /// Whether any instance of this variant is healthy.
    pub(crate) fn has_healthy_instance(&self) -> bool {
        self.instances
            .iter()
            .any(|instance| instance.slot.is_healthy())
    }

    /// The healthy instance with the fewest requests in flight, and the healthy count. Each
    /// instance gets a random tiebreak, and the lowest (in-flight count, tiebreak) wins, so each
    /// tied instance is equally likely whatever its position. Comparing one 128-bit rank keeps the
    /// random outcome of a tie out of the branch predictor's way.
    fn least_outstanding(&self, rng: &mut LocalRng) -> Option<(&Instance<L>, usize)> {
        let mut best: Option<&Instance<L>> = None;
        let mut best_rank = u128::MAX;
        let mut healthy = 0_usize;
        for instance in &self.instances {
            if !instance.slot.is_healthy() {
                continue;
            }
            healthy += 1;
            let rank = (u128::from(instance.slot.in_flight()) << 64) | u128::from(rng.next_u64());
            // `<=`: the first healthy instance always wins against the initial rank.
            if rank <= best_rank {
                best = Some(instance);
                best_rank = rank;
            }
        }
        best.map(|instance| (instance, healthy))
    }

    /// A healthy instance chosen uniformly, and the healthy count. One draw settles it when the
    /// drawn instance is healthy; otherwise reservoir sampling over the healthy ones. Both together
    /// stay uniform: a healthy instance is drawn first with probability 1/n, and from the reservoir
    /// with probability (1 - h/n) / h, which sum to 1/h for h healthy instances of n.
    fn uniform(&self, rng: &mut LocalRng) -> Option<(&Instance<L>, usize)> {
        if self.instances.is_empty() {
            return None;
        }
        let drawn = self.instances.get(rng.below(self.instances.len()))?;
        if drawn.slot.is_healthy() {
            let healthy = self
                .instances
                .iter()
                .filter(|instance| instance.slot.is_healthy())
                .count();
            // At least the drawn one, should its health change between the two reads.
            return Some((drawn, healthy.max(1)));
        }
        let mut chosen = None;
        let mut healthy = 0_usize;
        for instance in &self.instances {
            if instance.slot.is_healthy() {
                healthy += 1;
                if rng.below(healthy) == 0 {
                    chosen = Some(instance);
                }
            }
        }
        chosen.map(|instance| (instance, healthy))
    }
}

/// A validated, immutable routing table.
pub(crate) struct RoutingTable<L> {
    pub(crate) variants: Box<[Variant<L>]>,
    /// `thresholds[i]` is the cumulative share of variants `0..=i` on the `PICK_SCALE` scale; an
    /// untargeted pick takes the first variant whose threshold exceeds a uniform draw below
    /// `PICK_SCALE`. Zero-weight variants repeat the previous threshold, so they are never taken;
    /// all weights zero leaves every threshold at 0, so no variant is. One per variant: the table
    /// holds as many variants as it is given (how many an endpoint may have is the control
    /// plane's rule, from `config.py`, not the router's).
    thresholds: Box<[u64]>,
    instances: HashMap<Box<str>, Arc<InstanceSlot>, Xxh3DefaultBuilder>,
}

impl<L> RoutingTable<L> {
    /// Validates `specs` and builds the table. Instances whose name is in `previous` share its slot
    /// (in-flight count and health); new ones start healthy with nothing in flight. `label` makes
    /// each instance's label from its variant's spec, its own name and its handle.
    pub(crate) fn build<E: From<RouterError>>(
        specs: &[VariantSpec],
        previous: Option<&Self>,
        label: &mut impl FnMut(&VariantSpec, &str, InstanceHandle) -> Result<L, E>,
    ) -> Result<Self, E> {
        validate(specs).map_err(RouterError::from)?;
        let mut instances: HashMap<Box<str>, Arc<InstanceSlot>, Xxh3DefaultBuilder> =
            HashMap::default();
        let mut variants = Vec::with_capacity(specs.len());
        for spec in specs {
            let mut variant_instances = Vec::with_capacity(spec.instances.len());
            for name in &spec.instances {
                if instances.contains_key(name.as_str()) {
                    let duplicate = InvalidTable::DuplicateInstance {
                        instance: name.clone(),
                    };
                    return Err(RouterError::from(duplicate).into());
                }
                let slot = previous
                    .and_then(|table| table.instances.get(name.as_str()))
                    .map_or_else(|| Arc::new(InstanceSlot::new()), Arc::clone);
                instances.insert(name.as_str().into(), Arc::clone(&slot));
                let handle = InstanceHandle {
                    slot: Arc::clone(&slot),
                };
                variant_instances.push(Instance {
                    name: name.as_str().into(),
                    label: label(spec, name, handle)?,
                    slot,
                });
            }
            variants.push(Variant {
                name: spec.name.as_str().into(),
                weight: spec.weight,
                inverse_weight: spec.weight.recip(),
                routing_strategy: spec.routing_strategy,
                instances: variant_instances.into_boxed_slice(),
                name_hash: xxh3_64(spec.name.as_bytes()),
            });
        }
        Ok(Self {
            thresholds: thresholds(specs).map_err(RouterError::from)?,
            variants: variants.into_boxed_slice(),
            instances,
        })
    }

    /// The specs this table was built from (health and counts are not part of them).
    pub(crate) fn specs(&self) -> Vec<VariantSpec> {
        self.variants
            .iter()
            .map(|variant| VariantSpec {
                name: variant.name.to_string(),
                weight: variant.weight,
                instances: variant
                    .instances
                    .iter()
                    .map(|instance| instance.name.to_string())
                    .collect(),
                routing_strategy: variant.routing_strategy,
            })
            .collect()
    }

    pub(crate) fn variant_names(&self) -> Vec<String> {
        self.variants
            .iter()
            .map(|variant| variant.name.to_string())
            .collect()
    }

    /// The variant called `name`.
    pub(crate) fn variant(&self, name: &str) -> Result<&Variant<L>, RouterError> {
        // An endpoint has a handful of variants (the API allows 10): a scan beats hashing.
        self.variants
            .iter()
            .find(|variant| &*variant.name == name)
            .ok_or_else(|| RouterError::UnknownVariant {
                variant: name.to_owned(),
                known: self.variant_names(),
            })
    }

    /// The variant an untargeted pick takes for the uniform draw `random`.
    #[inline]
    pub(crate) fn weighted_variant(&self, random: u64) -> Result<&Variant<L>, RouterError> {
        let point = random >> (64 - PICK_BITS);
        // The index of the first threshold above `point` is the number of thresholds at or below
        // it. Counting (rather than stopping at the first) compiles to compare-and-add with a loop
        // of fixed length per table, so a random draw costs no branch misprediction. All weights 0
        // counts past the variants.
        let index = self
            .thresholds
            .iter()
            .map(|&threshold| usize::from(threshold <= point))
            .sum::<usize>();
        self.variants
            .get(index)
            .ok_or_else(|| self.no_routable_variant())
    }

    /// The variant a failed-over pick takes for the uniform draw `random`: drawn by weight among
    /// the variants with a weight above 0 and a healthy instance; None when there is none.
    pub(crate) fn failover_variant(&self, random: u64) -> Option<&Variant<L>> {
        let eligible =
            |variant: &&Variant<L>| variant.weight > 0.0 && variant.has_healthy_instance();
        let total: f64 = self
            .variants
            .iter()
            .filter(eligible)
            .map(|variant| variant.weight)
            .sum();
        // The top 53 bits as a fraction in [0, 1), scaled to the eligible weights.
        let point = (random >> (64 - PICK_BITS)) as f64 / PICK_SCALE as f64 * total;
        let mut cumulative = 0.0_f64;
        let mut last = None;
        for variant in self.variants.iter().filter(eligible) {
            cumulative += variant.weight;
            if point < cumulative {
                return Some(variant);
            }
            // Rounding (or a health change between the two passes) may leave the point past
            // the sum: the last eligible variant takes it.
            last = Some(variant);
        }
        last
    }

    /// The variant a sticky pick takes for a key whose salted hash is `key_hash`.
    pub(crate) fn sticky_variant(&self, key_hash: u64) -> Result<&Variant<L>, RouterError> {
        sticky::rendezvous(&self.variants, key_hash).ok_or_else(|| self.no_routable_variant())
    }

    fn no_routable_variant(&self) -> RouterError {
        RouterError::NoRoutableVariant {
            variants: self.variant_names(),
        }
    }

    /// The slot of the instance called `name`.
    pub(crate) fn slot(&self, name: &str) -> Result<&InstanceSlot, RouterError> {
        self.instances
            .get(name)
            .map(AsRef::as_ref)
            .ok_or_else(|| RouterError::UnknownInstance {
                instance: name.to_owned(),
            })
    }
}

/// Every table-level rule except instance uniqueness (checked while the index is built).
fn validate(specs: &[VariantSpec]) -> Result<(), InvalidTable> {
    if specs.is_empty() {
        return Err(InvalidTable::NoVariants);
    }
    for (index, spec) in specs.iter().enumerate() {
        if spec.name.is_empty() {
            return Err(InvalidTable::EmptyVariantName);
        }
        if specs[..index]
            .iter()
            .any(|earlier| earlier.name == spec.name)
        {
            return Err(InvalidTable::DuplicateVariant {
                variant: spec.name.clone(),
            });
        }
        if !spec.weight.is_finite() || spec.weight < 0.0 {
            return Err(InvalidTable::InvalidWeight {
                variant: spec.name.clone(),
                weight: spec.weight,
            });
        }
        if spec.instances.iter().any(String::is_empty) {
            return Err(InvalidTable::EmptyInstanceName {
                variant: spec.name.clone(),
            });
        }
    }
    Ok(())
}

/// The cumulative thresholds of an untargeted pick, one per spec (see `RoutingTable::thresholds`).
/// `specs` must have been validated.
fn thresholds(specs: &[VariantSpec]) -> Result<Box<[u64]>, InvalidTable> {
    let mut thresholds = vec![PICK_SCALE; specs.len()].into_boxed_slice();
    let total: f64 = specs.iter().map(|spec| spec.weight).sum();
    if !total.is_finite() {
        return Err(InvalidTable::WeightSumNotFinite);
    }
    if total == 0.0 {
        thresholds.fill(0);
        return Ok(thresholds);
    }
    // From the last positive weight on, the threshold is the whole scale, so rounding can never
    // leave a draw without a variant.
    let last_positive = specs
        .iter()
        .rposition(|spec| spec.weight > 0.0)
        .unwrap_or(0);
    let mut cumulative = 0.0_f64;
    for (threshold, spec) in thresholds.iter_mut().zip(specs).take(last_positive) {
        cumulative += spec.weight;
        // cumulative <= total, so the product is in 0..=2^53 and converts exactly.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let scaled = (cumulative / total * PICK_SCALE as f64) as u64;
        *threshold = scaled.min(PICK_SCALE);
    }
    Ok(thresholds)
}
