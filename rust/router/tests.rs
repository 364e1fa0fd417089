//! Unit tests of the routing core. Each test returns `Result` so that request-path errors surface
//! through `?` rather than `unwrap()`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};

use super::{InstanceHandle, InvalidTable, Router, RouterError, RoutingStrategy, VariantSpec};

type Pick = (String, String);
type TestRouter = Router<Label>;

/// The label of an instance in these tests: its names and its handle.
#[derive(Clone, Debug)]
struct Label {
    variant: String,
    instance: String,
    handle: InstanceHandle,
}

/// What a pick returned, in full.
#[derive(Debug)]
struct Picked {
    pick: Pick,
    handle: InstanceHandle,
    healthy_instances: usize,
    failed_over: bool,
}

const LOR: RoutingStrategy = RoutingStrategy::LeastOutstandingRequests;
const RANDOM: RoutingStrategy = RoutingStrategy::Random;

fn spec(name: &str, weight: f64, instances: &[&str], strategy: RoutingStrategy) -> VariantSpec {
    VariantSpec {
        name: name.to_owned(),
        weight,
        instances: instances
            .iter()
            .map(|&instance| instance.to_owned())
            .collect(),
        routing_strategy: strategy,
    }
}

/// The label of an instance in these tests. (The router takes fallible label makers; this one
/// never fails.)
#[allow(clippy::unnecessary_wraps)]
fn names(
    variant: &VariantSpec,
    instance: &str,
    handle: InstanceHandle,
) -> Result<Label, RouterError> {
    Ok(Label {
        variant: variant.name.clone(),
        instance: instance.to_owned(),
        handle,
    })
}

fn router(specs: &[VariantSpec], seed: u64) -> Result<TestRouter, RouterError> {
    Router::new(specs, "test-salt", Some(seed), false, names)
}

fn failover_router(specs: &[VariantSpec], seed: u64) -> Result<TestRouter, RouterError> {
    Router::new(specs, "test-salt", Some(seed), true, names)
}

fn full_pick(
    router: &TestRouter,
    target: Option<&str>,
    key: Option<&str>,
) -> Result<Picked, RouterError> {
    router.route(target, key, |routed| Picked {
        pick: (routed.label.variant.clone(), routed.label.instance.clone()),
        handle: routed.label.handle.clone(),
        healthy_instances: routed.healthy_instances,
        failed_over: routed.failed_over,
    })
}

fn pick(router: &TestRouter) -> Result<Pick, RouterError> {
    full_pick(router, None, None).map(|picked| picked.pick)
}

fn pick_target(router: &TestRouter, target: &str) -> Result<Pick, RouterError> {
    full_pick(router, Some(target), None).map(|picked| picked.pick)
}

fn pick_key(router: &TestRouter, key: &str) -> Result<Pick, RouterError> {
    full_pick(router, None, Some(key)).map(|picked| picked.pick)
}

/// Three variants A, B, C with one instance each (a-0, b-0, c-0) and the given weights.
fn three(weights: [f64; 3]) -> Vec<VariantSpec> {
    vec![
        spec("A", weights[0], &["a-0"], LOR),
        spec("B", weights[1], &["b-0"], LOR),
        spec("C", weights[2], &["c-0"], LOR),
    ]
}

fn counts(router: &TestRouter, picks: usize) -> Result<HashMap<String, usize>, RouterError> {
    let mut counts = HashMap::new();
    for _ in 0..picks {
        let picked = full_pick(router, None, None)?;
        router.release(&picked.handle);
        *counts.entry(picked.pick.0).or_insert(0) += 1;
    }
    Ok(counts)
}

fn share(counts: &HashMap<String, usize>, variant: &str, total: usize) -> f64 {
    counts.get(variant).copied().unwrap_or(0) as f64 / total as f64
}

fn invalid(result: Result<TestRouter, RouterError>) -> Option<InvalidTable> {
    match result {
        Err(RouterError::InvalidTable(problem)) => Some(problem),
        _ => None,
    }
}

// --- weighted split ---------------------------------------------------------------------------

#[test]
fn split_follows_weights() -> Result<(), RouterError> {
    let router = router(&three([1.0, 3.0, 6.0]), 7)?;
    let total = 200_000;
    let counts = counts(&router, total)?;
    for (variant, expected) in [("A", 0.1), ("B", 0.3), ("C", 0.6)] {
        let observed = share(&counts, variant, total);
        assert!(
            (observed - expected).abs() < 0.005,
            "{variant}: {observed} vs {expected}"
        );
    }
    Ok(())
}

/// The router holds as many variants as it is given: how many an endpoint may have is the control
/// plane's rule (`config.MAX_PRODUCTION_VARIANTS`), and no second copy of it lives here.
#[test]
fn a_table_of_any_size_splits_by_weight() -> Result<(), RouterError> {
    let variant_names: Vec<String> = (0..12).map(|index| format!("v{index}")).collect();
    let specs: Vec<VariantSpec> = variant_names
        .iter()
        .map(|name| spec(name, 1.0, &[&format!("{name}-0")], LOR))
        .collect();
    let router = router(&specs, 11)?;
    let total = 120_000;
    let counts = counts(&router, total)?;
    for name in &variant_names {
        let observed = share(&counts, name, total);
        assert!((observed - 1.0 / 12.0).abs() < 0.01, "{name}: {observed}");
    }
    let last_only: Vec<VariantSpec> = specs
        .iter()
        .enumerate()
        .map(|(index, variant)| VariantSpec {
            weight: if index == 11 { 1.0 } else { 0.0 },
            ..variant.clone()
        })
        .collect();
    router.replace(&last_only, names)?;
    assert_eq!(pick(&router)?.0, "v11");
    Ok(())
}

#[test]
fn zero_weight_variants_are_never_picked_untargeted() -> Result<(), RouterError> {
    let specs = vec![
        spec("first-zero", 0.0, &["z-0"], LOR),
        spec("A", 1.0, &["a-0"], LOR),
        spec("middle-zero", 0.0, &["z-1"], LOR),
        spec("B", 1.0, &["b-0"], LOR),
        spec("last-zero", 0.0, &["z-2"], LOR),
    ];
    let router = router(&specs, 3)?;
    let counts = counts(&router, 20_000)?;
    let picked: HashSet<&str> = counts.keys().map(String::as_str).collect();
    assert_eq!(picked, HashSet::from(["A", "B"]));
    Ok(())
}

#[test]
fn a_single_positive_weight_takes_everything() -> Result<(), RouterError> {
    let router = router(&three([0.0, 0.0, 1e-300]), 11)?;
    let counts = counts(&router, 1_000)?;
    assert_eq!(counts.get("C"), Some(&1_000));
    Ok(())
}

#[test]
fn the_same_seed_gives_the_same_picks() -> Result<(), RouterError> {
    let first = router(&three([1.0, 1.0, 1.0]), 42)?;
    let second = router(&three([1.0, 1.0, 1.0]), 42)?;
    for _ in 0..1_000 {
        assert_eq!(pick(&first)?, pick(&second)?);
    }
    Ok(())
}

#[test]
fn routers_without_a_seed_differ() -> Result<(), RouterError> {
    let first: TestRouter = Router::new(&three([1.0, 1.0, 1.0]), "salt", None, false, names)?;
    let second: TestRouter = Router::new(&three([1.0, 1.0, 1.0]), "salt", None, false, names)?;
    let first_picks: Vec<Pick> = (0..64).map(|_| pick(&first)).collect::<Result<_, _>>()?;
    let second_picks: Vec<Pick> = (0..64).map(|_| pick(&second)).collect::<Result<_, _>>()?;
    assert_ne!(first_picks, second_picks);
    Ok(())
}

// --- targeted ---------------------------------------------------------------------------------

#[test]
fn target_variant_wins_whatever_its_weight() -> Result<(), RouterError> {
    let router = router(&three([0.0, 1.0, 1.0]), 1)?;
    for _ in 0..100 {
        assert_eq!(
            pick_target(&router, "A")?,
            ("A".to_owned(), "a-0".to_owned())
        );
    }
    // A target also beats a sticky key.
    let targeted = full_pick(&router, Some("A"), Some("user-1"))?;
    assert_eq!(targeted.pick.0, "A");
    Ok(())
}

#[test]
fn an_unknown_target_names_the_variants() -> Result<(), RouterError> {
    let router = router(&three([1.0, 1.0, 1.0]), 1)?;
    let error = pick_target(&router, "D");
    assert_eq!(
        error,
        Err(RouterError::UnknownVariant {
            variant: "D".to_owned(),
            known: vec!["A".to_owned(), "B".to_owned(), "C".to_owned()],
        })
    );
    let message = error
        .err()
        .map(|error| error.to_string())
        .unwrap_or_default();
    assert!(
        message.contains("'D'") && message.contains("'A', 'B', 'C'"),
        "{message}"
    );
    Ok(())
}

#[test]
fn all_weights_zero_allows_only_targeted_picks() -> Result<(), RouterError> {
    let router = router(&three([0.0, 0.0, 0.0]), 1)?;
    let expected = RouterError::NoRoutableVariant {
        variants: vec!["A".to_owned(), "B".to_owned(), "C".to_owned()],
    };
    assert_eq!(pick(&router), Err(expected.clone()));
    assert_eq!(pick_key(&router, "user-1"), Err(expected.clone()));
    assert!(expected.to_string().contains("TargetVariant"));
    assert_eq!(pick_target(&router, "B")?.0, "B");
    Ok(())
}

// --- sticky -----------------------------------------------------------------------------------

fn assignment(router: &TestRouter, keys: usize) -> Result<Vec<String>, RouterError> {
    (0..keys)
        .map(|index| pick_key(router, &format!("user-{index}")).map(|(variant, _)| variant))
        .collect()
}

#[test]
fn sticky_is_deterministic_across_routers_with_one_salt() -> Result<(), RouterError> {
    let first = router(&three([1.0, 2.0, 3.0]), 1)?;
    let second = router(&three([1.0, 2.0, 3.0]), 99)?;
    assert_eq!(assignment(&first, 2_000)?, assignment(&second, 2_000)?);
    // And stable across calls of one router.
    assert_eq!(assignment(&first, 2_000)?, assignment(&first, 2_000)?);
    Ok(())
}

#[test]
fn sticky_depends_on_the_salt() -> Result<(), RouterError> {
    let first: TestRouter = Router::new(&three([1.0, 1.0, 1.0]), "salt-1", Some(1), false, names)?;
    let second: TestRouter = Router::new(&three([1.0, 1.0, 1.0]), "salt-2", Some(1), false, names)?;
    let (first, second) = (assignment(&first, 2_000)?, assignment(&second, 2_000)?);
    let differing = first.iter().zip(&second).filter(|(a, b)| a != b).count();
    // Independent assignments with three equal variants differ for about 2/3 of the keys.
    assert!(differing > 1_000, "{differing}");
    Ok(())
}

#[test]
fn sticky_shares_follow_weights() -> Result<(), RouterError> {
    let router = router(&three([1.0, 3.0, 6.0]), 1)?;
    let keys = 100_000;
    let mut counts = HashMap::new();
    for variant in assignment(&router, keys)? {
        *counts.entry(variant).or_insert(0) += 1;
    }
    for (variant, expected) in [("A", 0.1), ("B", 0.3), ("C", 0.6)] {
        let observed = share(&counts, variant, keys);
        assert!(
            (observed - expected).abs() < 0.006,
            "{variant}: {observed} vs {expected}"
        );
    }
    Ok(())
}

#[test]
fn growing_a_weight_only_moves_keys_into_that_variant() -> Result<(), RouterError> {
    let router = router(&three([1.0, 8.0, 1.0]), 1)?;
    let before = assignment(&router, 5_000)?;
    // The canary A goes from 10% to 20%.
    router.set_weights([("A", 2.0)], names)?;
    let after = assignment(&router, 5_000)?;
    let moved: Vec<(&String, &String)> = before
        .iter()
        .zip(&after)
        .filter(|(was, is)| was != is)
        .collect();
    assert!(!moved.is_empty());
    assert!(moved.iter().all(|(_, is)| is.as_str() == "A"), "{moved:?}");
    // About 1/11 of the keys should move (from 1/10 to 2/11).
    assert!(moved.len() > 300 && moved.len() < 600, "{}", moved.len());
    Ok(())
}

#[test]
fn adding_a_variant_only_moves_keys_into_it() -> Result<(), RouterError> {
    let router = router(&three([1.0, 1.0, 1.0]), 1)?;
    let before = assignment(&router, 5_000)?;
    let mut grown = three([1.0, 1.0, 1.0]);
    grown.push(spec("D", 1.0, &["d-0"], LOR));
    router.replace(&grown, names)?;
    let after = assignment(&router, 5_000)?;
    assert!(before
        .iter()
        .zip(&after)
        .all(|(was, is)| was == is || is.as_str() == "D"));
    Ok(())
}

#[test]
fn sticky_depends_on_names_not_positions() -> Result<(), RouterError> {
    let router = router(&three([1.0, 2.0, 3.0]), 1)?;
    let before = assignment(&router, 2_000)?;
    let mut reordered = three([1.0, 2.0, 3.0]);
    reordered.reverse();
    router.replace(&reordered, names)?;
    assert_eq!(before, assignment(&router, 2_000)?);
    Ok(())
}

#[test]
fn sticky_skips_zero_weights() -> Result<(), RouterError> {
    let router = router(&three([0.0, 1.0, 0.0]), 1)?;
    assert!(assignment(&router, 1_000)?
        .iter()
        .all(|variant| variant == "B"));
    Ok(())
}

// --- instance choice --------------------------------------------------------------------------

#[test]
fn least_outstanding_requests_picks_the_least_loaded() -> Result<(), RouterError> {
    let specs = vec![spec("A", 1.0, &["a-0", "a-1", "a-2"], LOR)];
    let router = router(&specs, 5)?;
    // Three picks without release spread over the three instances.
    let mut picked: Vec<Picked> = (0..3)
        .map(|_| full_pick(&router, None, None))
        .collect::<Result<_, _>>()?;
    picked.sort_by(|first, second| first.pick.cmp(&second.pick));
    let names: Vec<&str> = picked.iter().map(|one| one.pick.1.as_str()).collect();
    assert_eq!(names, ["a-0", "a-1", "a-2"]);
    assert!(picked.iter().all(|one| one.healthy_instances == 3));
    // Release a-1 twice (the second saturates at 0): it is now the least loaded.
    router.release(&picked[1].handle);
    router.release(&picked[1].handle);
    assert_eq!(router.in_flight("a-1")?, 0);
    assert_eq!(pick(&router)?.1, "a-1");
    assert_eq!(router.in_flight("a-1")?, 1);
    Ok(())
}

#[test]
fn least_outstanding_requests_breaks_ties_at_random() -> Result<(), RouterError> {
    let specs = vec![spec("A", 1.0, &["a-0", "a-1", "a-2", "a-3"], LOR)];
    let router = router(&specs, 5)?;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..4_000 {
        let picked = full_pick(&router, None, None)?;
        router.release(&picked.handle);
        *counts.entry(picked.pick.1).or_insert(0) += 1;
    }
    // All always tied at 0: each should get about a quarter.
    assert_eq!(counts.len(), 4);
    assert!(
        counts.values().all(|&count| (800..1_200).contains(&count)),
        "{counts:?}"
    );
    Ok(())
}

#[test]
fn random_strategy_spreads_over_healthy_instances() -> Result<(), RouterError> {
    let specs = vec![spec("A", 1.0, &["a-0", "a-1", "a-2", "a-3"], RANDOM)];
    let router = router(&specs, 5)?;
    router.set_healthy("a-2", false)?;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..6_000 {
        // No release: RANDOM ignores the load.
        *counts.entry(pick(&router)?.1).or_insert(0) += 1;
    }
    assert_eq!(counts.get("a-2"), None);
    assert_eq!(counts.len(), 3);
    assert!(
        counts
            .values()
            .all(|&count| (1_800..2_200).contains(&count)),
        "{counts:?}"
    );
    Ok(())
}

#[test]
fn unhealthy_instances_are_skipped_until_healthy_again() -> Result<(), RouterError> {
    let specs = vec![spec("A", 1.0, &["a-0", "a-1"], LOR)];
    let router = router(&specs, 5)?;
    router.set_healthy("a-0", false)?;
    assert_eq!(router.healthy_instances("A")?, ["a-1"]);
    for _ in 0..10 {
        assert_eq!(pick(&router)?.1, "a-1");
    }
    router.set_healthy("a-1", false)?;
    let no_healthy = RouterError::NoHealthyInstance {
        variant: "A".to_owned(),
    };
    assert_eq!(pick(&router), Err(no_healthy.clone()));
    assert!(no_healthy.to_string().contains("'A'"));
    router.set_healthy("a-0", true)?;
    assert_eq!(pick(&router)?.1, "a-0");
    Ok(())
}

#[test]
fn a_variant_without_instances_has_no_healthy_instance() -> Result<(), RouterError> {
    let specs = vec![spec("A", 1.0, &[], RANDOM), spec("B", 0.0, &["b-0"], LOR)];
    let router = router(&specs, 5)?;
    assert_eq!(
        pick(&router),
        Err(RouterError::NoHealthyInstance {
            variant: "A".to_owned()
        })
    );
    assert_eq!(pick_target(&router, "B")?.1, "b-0");
    Ok(())
}

#[test]
fn unknown_instances_are_errors() -> Result<(), RouterError> {
    let router = router(&three([1.0, 1.0, 1.0]), 5)?;
    let unknown = RouterError::UnknownInstance {
        instance: "x-0".to_owned(),
    };
    assert_eq!(router.set_healthy("x-0", true), Err(unknown.clone()));
    assert_eq!(router.in_flight("x-0"), Err(unknown.clone()));
    assert!(unknown.to_string().contains("'x-0'"));
    assert!(matches!(
        router.healthy_instances("D"),
        Err(RouterError::UnknownVariant { .. })
    ));
    Ok(())
}

// --- table changes ----------------------------------------------------------------------------

#[test]
fn replace_keeps_counts_and_health_of_kept_instances() -> Result<(), RouterError> {
    let router = router(&[spec("A", 1.0, &["a-0", "a-1"], LOR)], 5)?;
    pick_target(&router, "A")?;
    pick_target(&router, "A")?;
    pick_target(&router, "A")?;
    let (a0, a1) = (router.in_flight("a-0")?, router.in_flight("a-1")?);
    assert_eq!(a0 + a1, 3);
    router.set_healthy("a-1", false)?;
    // a-0 moves to variant B, a-1 stays, a-2 is new; the strategy changes too.
    router.replace(
        &[
            spec("A", 1.0, &["a-1", "a-2"], RANDOM),
            spec("B", 1.0, &["a-0"], LOR),
        ],
        names,
    )?;
    assert_eq!(router.in_flight("a-0")?, a0);
    assert_eq!(router.in_flight("a-1")?, a1);
    assert_eq!(router.in_flight("a-2")?, 0);
    assert_eq!(router.healthy_instances("A")?, ["a-2"]);
    assert_eq!(router.healthy_instances("B")?, ["a-0"]);
    assert_eq!(router.specs()[0].routing_strategy, RANDOM);
    // Dropped instances are gone.
    router.replace(&[spec("C", 1.0, &["c-0"], LOR)], names)?;
    assert!(router.in_flight("a-0").is_err());
    Ok(())
}

#[test]
fn set_weights_changes_only_the_named_weights() -> Result<(), RouterError> {
    let router = router(&three([1.0, 2.0, 3.0]), 5)?;
    pick_target(&router, "B")?;
    router.set_weights([("C", 0.0), ("A", 5.0)], names)?;
    let weights: Vec<(String, f64)> = router.weights();
    assert_eq!(
        weights,
        [
            ("A".to_owned(), 5.0),
            ("B".to_owned(), 2.0),
            ("C".to_owned(), 0.0)
        ]
    );
    assert_eq!(router.in_flight("b-0")?, 1);
    let specs = router.specs();
    assert_eq!(specs[1].instances, ["b-0"]);
    Ok(())
}

#[test]
fn a_refused_change_keeps_the_table() -> Result<(), RouterError> {
    let router = router(&three([1.0, 2.0, 3.0]), 5)?;
    let before = router.specs();
    assert!(matches!(
        router.set_weights([("A", 2.0), ("D", 1.0)], names),
        Err(RouterError::UnknownVariant { .. })
    ));
    assert!(matches!(
        router.set_weights([("A", -1.0)], names),
        Err(RouterError::InvalidTable(
            InvalidTable::InvalidWeight { .. }
        ))
    ));
    assert!(matches!(
        router.replace(&[], names),
        Err(RouterError::InvalidTable(InvalidTable::NoVariants))
    ));
    assert_eq!(router.specs(), before);
    Ok(())
}

#[test]
fn a_label_error_is_returned_and_keeps_the_table() -> Result<(), RouterError> {
    let router = router(&three([1.0, 2.0, 3.0]), 5)?;
    let refuse = |_: &VariantSpec, _: &str, _: InstanceHandle| -> Result<Label, RouterError> {
        Err(RouterError::UnknownInstance {
            instance: "label".to_owned(),
        })
    };
    assert!(router.replace(&three([1.0, 1.0, 1.0]), refuse).is_err());
    assert_eq!(router.specs(), three([1.0, 2.0, 3.0]));
    Ok(())
}

#[test]
fn concurrent_picks_see_one_whole_table() -> Result<(), RouterError> {
    // Table "old" has variants old-* with instances old-*-*, table "new" new-* with new-*-*; a
    // pick mixing the two would name an old variant with a new instance or the reverse.
    let table = |prefix: &str| -> Vec<VariantSpec> {
        (0..3)
            .map(|index| {
                let name = format!("{prefix}-{index}");
                let instances = [format!("{name}-0"), format!("{name}-1")];
                let instances: Vec<&str> = instances.iter().map(String::as_str).collect();
                spec(&name, 1.0, &instances, LOR)
            })
            .collect()
    };
    let (old, new) = (table("old"), table("new"));
    let router = router(&old, 5)?;
    let stop = AtomicBool::new(false);
    let results: Vec<Result<usize, RouterError>> = std::thread::scope(|scope| {
        let pickers: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| -> Result<usize, RouterError> {
                    let mut picks = 0;
                    while !stop.load(Ordering::Relaxed) || picks < 1_000 {
                        let picked = full_pick(&router, None, None)?;
                        let (variant, instance) = &picked.pick;
                        assert!(variant.starts_with("old-") || variant.starts_with("new-"));
                        assert!(instance.starts_with(&format!("{variant}-")), "{variant}");
                        // The instance may have been swapped out since: its handle still
                        // releases its own slot.
                        router.release(&picked.handle);
                        picks += 1;
                    }
                    Ok(picks)
                })
            })
            .collect();
        for round in 0..2_000 {
            let next = if round % 2 == 0 { &new } else { &old };
            if let Err(error) = router.replace(next, names) {
                stop.store(true, Ordering::Relaxed);
                return vec![Err(error)];
            }
        }
        stop.store(true, Ordering::Relaxed);
        pickers
            .into_iter()
            .map(|picker| picker.join().unwrap_or(Ok(0)))
            .collect()
    });
    for result in results {
        assert!(result? >= 1_000);
    }
    Ok(())
}

// --- failover ---------------------------------------------------------------------------------

/// A (weight 2, two instances), B (weight 1, one), C (weight 1, one), D (weight 0, one).
fn four_for_failover() -> Vec<VariantSpec> {
    vec![
        spec("A", 2.0, &["a-0", "a-1"], LOR),
        spec("B", 1.0, &["b-0"], LOR),
        spec("C", 1.0, &["c-0"], RANDOM),
        spec("D", 0.0, &["d-0"], LOR),
    ]
}

#[test]
fn picks_say_how_many_healthy_instances_the_variant_has() -> Result<(), RouterError> {
    let router = router(&four_for_failover(), 3)?;
    assert_eq!(full_pick(&router, Some("A"), None)?.healthy_instances, 2);
    router.set_healthy("a-1", false)?;
    assert_eq!(full_pick(&router, Some("A"), None)?.healthy_instances, 1);
    let random = full_pick(&router, Some("C"), None)?;
    assert_eq!((random.healthy_instances, random.failed_over), (1, false));
    Ok(())
}

#[test]
fn without_failover_an_unhealthy_variant_is_an_error() -> Result<(), RouterError> {
    let router = router(&four_for_failover(), 3)?;
    router.set_healthy("b-0", false)?;
    let outcomes: Vec<Result<Pick, RouterError>> = (0..200).map(|_| pick(&router)).collect();
    assert!(outcomes.iter().any(|outcome| outcome
        == &Err(RouterError::NoHealthyInstance {
            variant: "B".to_owned()
        })));
    assert!(!router.failover());
    Ok(())
}

#[test]
fn failover_redraws_by_weight_among_healthy_variants() -> Result<(), RouterError> {
    let router = failover_router(&four_for_failover(), 7)?;
    assert!(router.failover());
    router.set_healthy("b-0", false)?;
    let mut served: HashMap<String, usize> = HashMap::new();
    let mut failed_over: HashMap<String, usize> = HashMap::new();
    for _ in 0..30_000 {
        let picked = full_pick(&router, None, None)?;
        router.release(&picked.handle);
        *served.entry(picked.pick.0.clone()).or_insert(0) += 1;
        if picked.failed_over {
            *failed_over.entry(picked.pick.0).or_insert(0) += 1;
        }
    }
    // B (a quarter of the draws) never serves; its share goes to A and C by their weights (2:1),
    // and never to D (weight 0), though D has a healthy instance.
    assert_eq!(served.get("B"), None);
    assert_eq!(served.get("D"), None);
    let total_failed_over: usize = failed_over.values().sum();
    assert!(
        (6_800..8_200).contains(&total_failed_over),
        "{failed_over:?}"
    );
    let to_a = share(&failed_over, "A", total_failed_over);
    assert!((0.62..0.72).contains(&to_a), "{failed_over:?}");
    Ok(())
}

#[test]
fn failover_is_reproducible_with_a_seed() -> Result<(), RouterError> {
    let outcomes = |seed: u64| -> Result<Vec<(Pick, bool)>, RouterError> {
        let router = failover_router(&four_for_failover(), seed)?;
        router.set_healthy("a-0", false)?;
        router.set_healthy("a-1", false)?;
        (0..500)
            .map(|_| full_pick(&router, None, None).map(|picked| (picked.pick, picked.failed_over)))
            .collect()
    };
    let first = outcomes(11)?;
    assert_eq!(first, outcomes(11)?);
    assert_ne!(first, outcomes(12)?);
    assert!(first.iter().any(|(_, failed_over)| *failed_over));
    Ok(())
}

#[test]
fn failover_applies_to_sticky_picks_but_never_to_targeted_ones() -> Result<(), RouterError> {
    let router = failover_router(&four_for_failover(), 5)?;
    router.set_healthy("b-0", false)?;
    assert_eq!(
        full_pick(&router, Some("B"), None).map(|picked| picked.pick),
        Err(RouterError::NoHealthyInstance {
            variant: "B".to_owned()
        })
    );
    for index in 0..300 {
        let picked = full_pick(&router, None, Some(&format!("user-{index}")))?;
        assert_ne!(picked.pick.0, "B");
        router.release(&picked.handle);
    }
    Ok(())
}

#[test]
fn failover_can_be_turned_on_and_off_without_a_new_table() -> Result<(), RouterError> {
    let router = router(&four_for_failover(), 9)?;
    router.set_healthy("b-0", false)?;
    let in_flight = full_pick(&router, Some("A"), None)?;
    router.set_failover(true);
    assert!(router.failover());
    for _ in 0..300 {
        let picked = full_pick(&router, None, None)?;
        assert_ne!(picked.pick.0, "B");
        router.release(&picked.handle);
    }
    router.set_failover(false);
    assert!(!router.failover());
    let mut refused = false;
    for _ in 0..200 {
        match full_pick(&router, None, None) {
            Ok(picked) => router.release(&picked.handle),
            Err(error) => {
                assert_eq!(
                    error,
                    RouterError::NoHealthyInstance {
                        variant: "B".to_owned()
                    }
                );
                refused = true;
            }
        }
    }
    assert!(refused);
    // The table was never rebuilt: the pick made before the changes is still counted, and B's
    // instance is still unhealthy.
    assert_eq!(router.in_flight(&in_flight.pick.1)?, 1);
    assert!(router.healthy_instances("B")?.is_empty());
    Ok(())
}

#[test]
fn failover_with_no_healthy_variant_names_the_drawn_one() -> Result<(), RouterError> {
    let router = failover_router(
        &[spec("A", 1.0, &["a-0"], LOR), spec("B", 0.0, &["b-0"], LOR)],
        5,
    )?;
    router.set_healthy("a-0", false)?;
    assert_eq!(
        pick(&router),
        Err(RouterError::NoHealthyInstance {
            variant: "A".to_owned()
        })
    );
    Ok(())
}

#[test]
fn a_handle_releases_after_its_instance_left_the_table() -> Result<(), RouterError> {
    let router = router(&[spec("A", 1.0, &["a-0"], LOR)], 5)?;
    let picked = full_pick(&router, None, None)?;
    assert_eq!(picked.handle.in_flight(), 1);
    router.replace(&[spec("A", 1.0, &["a-1"], LOR)], names)?;
    router.release(&picked.handle);
    assert_eq!(picked.handle.in_flight(), 0);
    assert_eq!(router.in_flight("a-1")?, 0);
    Ok(())
}

// --- validation -------------------------------------------------------------------------------

#[test]
fn invalid_tables_are_refused() {
    let one = |name: &str, weight: f64, instances: &[&str]| spec(name, weight, instances, LOR);
    assert_eq!(invalid(router(&[], 1)), Some(InvalidTable::NoVariants));
    assert_eq!(
        invalid(router(&[one("", 1.0, &[])], 1)),
        Some(InvalidTable::EmptyVariantName)
    );
    assert_eq!(
        invalid(router(&[one("A", 1.0, &[]), one("A", 1.0, &[])], 1)),
        Some(InvalidTable::DuplicateVariant {
            variant: "A".to_owned()
        })
    );
    for weight in [-1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        assert!(matches!(
            invalid(router(&[one("A", weight, &[])], 1)),
            Some(InvalidTable::InvalidWeight { .. })
        ));
    }
    assert_eq!(
        invalid(router(
            &[one("A", f64::MAX, &[]), one("B", f64::MAX, &[])],
            1
        )),
        Some(InvalidTable::WeightSumNotFinite)
    );
    assert_eq!(
        invalid(router(&[one("A", 1.0, &["a-0", ""])], 1)),
        Some(InvalidTable::EmptyInstanceName {
            variant: "A".to_owned()
        })
    );
    assert_eq!(
        invalid(router(&[one("A", 1.0, &["a-0", "a-0"])], 1)),
        Some(InvalidTable::DuplicateInstance {
            instance: "a-0".to_owned()
        })
    );
    assert_eq!(
        invalid(router(&[one("A", 1.0, &["x"]), one("B", 1.0, &["x"])], 1)),
        Some(InvalidTable::DuplicateInstance {
            instance: "x".to_owned()
        })
    );
}

#[test]
fn routing_strategies_parse_from_their_sagemaker_names() {
    assert_eq!(
        RoutingStrategy::parse("LEAST_OUTSTANDING_REQUESTS"),
        Ok(LOR)
    );
    assert_eq!(RoutingStrategy::parse("RANDOM"), Ok(RANDOM));
    assert_eq!(LOR.as_str(), "LEAST_OUTSTANDING_REQUESTS");
    let unknown = RoutingStrategy::parse("random");
    assert_eq!(
        unknown,
        Err(RouterError::InvalidTable(
            InvalidTable::UnknownRoutingStrategy {
                strategy: "random".to_owned()
            }
        ))
    );
}

#[test]
fn messages_name_what_is_wrong() {
    let message = |problem: InvalidTable| RouterError::InvalidTable(problem).to_string();
    assert_eq!(
        message(InvalidTable::InvalidWeight {
            variant: "A".to_owned(),
            weight: -1.0
        }),
        "invalid routing table: production variant 'A' has weight -1; a weight must be a finite \
         number >= 0"
    );
    assert!(message(InvalidTable::DuplicateInstance {
        instance: "a-0".to_owned()
    })
    .contains("'a-0'"));
    assert!(message(InvalidTable::UnknownRoutingStrategy {
        strategy: "X".to_owned()
    })
    .contains("'X'"));
}
