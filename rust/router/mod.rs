//! The routing core, free of Python: one call per request picks a production variant (weighted,
//! targeted or sticky) and one of its healthy instances (least outstanding requests or random),
//! and says how many healthy instances the variant has and whether the pick failed over.
//!
//! The table lives in an `ArcSwap`: a pick loads it without a lock, and a change (new specs, new
//! weights) builds a whole new table and swaps it in, so a concurrent pick sees the old table or the
//! new one, never a mix. Instances that keep their name across a change keep their in-flight count
//! and health (the tables share the slot).
//!
//! The table is generic over a label type `L`, made once per instance (from its variant's spec, its
//! own name and its `InstanceHandle`) when a table is built, and handed back by each pick of that
//! instance; the Python bindings keep the Python-side objects a pick returns in it, so a pick
//! converts and allocates nothing. Names and labels swap together because they live in the same
//! table.
//!
//! Failover (a router option): when the variant an untargeted pick drew has no healthy instance,
//! the pick is drawn again, by weight, among the variants with a weight above 0 and a healthy
//! instance, from the same seeded generator.

mod error;
mod random;
mod sticky;
mod table;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use xxhash_rust::xxh3::xxh3_64_with_seed;

pub use error::{InvalidTable, RouterError};
pub use table::{InstanceHandle, RoutingStrategy, VariantSpec};

use random::{LocalRng, SharedRng};
use table::RoutingTable;

/// Seeds the hash of the router's salt (any fixed value works; this one is "splitsrv" in ASCII).
const SALT_HASH_SEED: u64 = 0x7370_6c69_7473_7276;

/// What one pick hands to the caller's `emit`.
#[derive(Debug)]
pub struct Routed<'table, L> {
    /// The picked instance's label (it knows the variant, the instance and its handle).
    pub label: &'table L,
    /// How many healthy instances the serving variant had at the pick (at least 1).
    pub healthy_instances: usize,
    /// Whether the drawn variant had no healthy instance and the pick failed over to this one.
    pub failed_over: bool,
}

/// A thread-safe router over one endpoint's production variants.
pub struct Router<L> {
    table: ArcSwap<RoutingTable<L>>,
    rng: SharedRng,
    /// Seeds the sticky key hash; from the salt, so routers with one salt agree on every key.
    salt_seed: u64,
    /// Untargeted picks whose variant has no healthy instance fail over to another variant. An
    /// atomic flag, not part of the table: turning it on or off (`set_failover`) changes no pick
    /// in flight and no instance's count or health.
    failover: AtomicBool,
    /// Serialises table changes, so a change derived from the current table (`set_weights`) is not
    /// lost to a concurrent one. Picks never take it.
    writer: Mutex<()>,
}

impl<L> Router<L> {
    /// A router over `specs`. `salt` makes the sticky assignment specific to this router (routers
    /// with the same salt and weights agree on every key). `seed` fixes the PRNG for reproducible
    /// picks; None seeds it from the OS. `failover` turns failover on (see the module docs).
    /// `label(variant_spec, instance, handle)` makes what a pick of that instance hands back; it is
    /// called once per instance whenever a table is built, and its error, if any, is returned as
    /// is.
    ///
    /// # Errors
    /// `RouterError::InvalidTable` when `specs` break a rule (see `InvalidTable`), converted to
    /// `E`; `label`'s own errors.
    pub fn new<E: From<RouterError>>(
        specs: &[VariantSpec],
        salt: &str,
        seed: Option<u64>,
        failover: bool,
        mut label: impl FnMut(&VariantSpec, &str, InstanceHandle) -> Result<L, E>,
    ) -> Result<Self, E> {
        let table = RoutingTable::build(specs, None, &mut label)?;
        Ok(Self {
            table: ArcSwap::from_pointee(table),
            rng: SharedRng::new(seed.unwrap_or_else(random::os_seed)),
            salt_seed: xxh3_64_with_seed(salt.as_bytes(), SALT_HASH_SEED),
            failover: AtomicBool::new(failover),
            writer: Mutex::new(()),
        })
    }

    /// Whether untargeted picks fail over (as built, or as `set_failover` last set it).
    pub fn failover(&self) -> bool {
        self.failover.load(Ordering::Relaxed)
    }

    /// Turns failover on or off for every pick that starts after this call (the endpoint's
    /// `splitserve:failover` tag changed). Relaxed ordering is enough: the flag guards no other
    /// data, and a pick reads it once.
    pub fn set_failover(&self, failover: bool) {
        self.failover.store(failover, Ordering::Relaxed);
    }

    /// Picks a variant and one of its healthy instances, counts one more request in flight on that
    /// instance (undo with `release`), and returns `emit(what was picked)`.
    ///
    /// The variant is `target` whatever its weight if given; else the sticky choice for `key` if
    /// given; else a weighted random choice. With failover on, an untargeted pick (sticky
    /// included) whose variant has no healthy instance is drawn again by weight among the
    /// variants with a weight above 0 and a healthy instance.
    ///
    /// # Errors
    /// `UnknownVariant` (target not in the table), `NoRoutableVariant` (untargeted or sticky pick
    /// with every weight 0), `NoHealthyInstance` (the variant has no healthy instance, and no
    /// failover found another).
    #[inline]
    pub fn route<R>(
        &self,
        target: Option<&str>,
        key: Option<&str>,
        emit: impl FnOnce(Routed<'_, L>) -> R,
    ) -> Result<R, RouterError> {
        let table = self.table.load();
        let draw = self.rng.next_u64();
        let variant = match (target, key) {
            (Some(name), _) => table.variant(name)?,
            (None, Some(key)) => table.sticky_variant(sticky::key_hash(key, self.salt_seed))?,
            (None, None) => table.weighted_variant(draw)?,
        };
        let mut rng = LocalRng::new(draw);
        let mut failed_over = false;
        let mut picked = variant.pick_instance(&mut rng);
        if picked.is_none() && target.is_none() && self.failover() {
            if let Some(other) = table.failover_variant(rng.next_u64()) {
                picked = other.pick_instance(&mut rng);
                failed_over = picked.is_some();
            }
        }
        let (instance, healthy_instances) =
            picked.ok_or_else(|| RouterError::NoHealthyInstance {
                variant: variant.name.to_string(),
            })?;
        instance.slot.acquire();
        Ok(emit(Routed {
            label: &instance.label,
            healthy_instances,
            failed_over,
        }))
    }

    /// Counts one request fewer in flight on the instance of `handle` (never below 0); the
    /// handle is the one its pick's label carries, so no lookup is needed.
    pub fn release(&self, handle: &InstanceHandle) {
        handle.release();
    }

    /// Replaces the whole table (weights, instances, strategies) atomically.
    ///
    /// # Errors
    /// `InvalidTable` when `specs` break a rule, converted to `E`, and `label`'s own errors; the
    /// router then keeps its table.
    pub fn replace<E: From<RouterError>>(
        &self,
        specs: &[VariantSpec],
        mut label: impl FnMut(&VariantSpec, &str, InstanceHandle) -> Result<L, E>,
    ) -> Result<(), E> {
        let _writing = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.table.load_full();
        let table = RoutingTable::build(specs, Some(&current), &mut label)?;
        self.table.store(Arc::new(table));
        Ok(())
    }

    /// Replaces the table with one where only the named variants' weights differ.
    ///
    /// # Errors
    /// `UnknownVariant` for a name not in the table, `InvalidTable` for a bad weight (both converted
    /// to `E`), and `label`'s own errors; the router then keeps its table.
    pub fn set_weights<'name, E: From<RouterError>>(
        &self,
        weights: impl IntoIterator<Item = (&'name str, f64)>,
        mut label: impl FnMut(&VariantSpec, &str, InstanceHandle) -> Result<L, E>,
    ) -> Result<(), E> {
        let _writing = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.table.load_full();
        let mut specs = current.specs();
        for (name, weight) in weights {
            let spec = specs
                .iter_mut()
                .find(|spec| spec.name == name)
                .ok_or_else(|| RouterError::UnknownVariant {
                    variant: name.to_owned(),
                    known: current.variant_names(),
                })?;
            spec.weight = weight;
        }
        let table = RoutingTable::build(&specs, Some(&current), &mut label)?;
        self.table.store(Arc::new(table));
        Ok(())
    }

    /// Marks `instance` healthy (pickable) or not; no table is rebuilt.
    ///
    /// # Errors
    /// `UnknownInstance` if the current table has no such instance.
    pub fn set_healthy(&self, instance: &str, healthy: bool) -> Result<(), RouterError> {
        self.table.load().slot(instance)?.set_healthy(healthy);
        Ok(())
    }

    /// How many picks of `instance` have not been released.
    ///
    /// # Errors
    /// `UnknownInstance` if the current table has no such instance.
    pub fn in_flight(&self, instance: &str) -> Result<u64, RouterError> {
        Ok(self.table.load().slot(instance)?.in_flight())
    }

    /// Each variant's name and weight, in table order.
    pub fn weights(&self) -> Vec<(String, f64)> {
        self.table
            .load()
            .variants
            .iter()
            .map(|variant| (variant.name.to_string(), variant.weight))
            .collect()
    }

    /// The specs of the current table, in table order.
    pub fn specs(&self) -> Vec<VariantSpec> {
        self.table.load().specs()
    }

    /// The names of `variant`'s healthy instances, in table order.
    ///
    /// # Errors
    /// `UnknownVariant` if the current table has no such variant.
    pub fn healthy_instances(&self, variant: &str) -> Result<Vec<String>, RouterError> {
        let table = self.table.load();
        Ok(table
            .variant(variant)?
            .instances
            .iter()
            .filter(|instance| instance.slot.is_healthy())
            .map(|instance| instance.name.to_string())
            .collect())
    }
}
