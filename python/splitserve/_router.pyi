"""The routing core of splitserve, written in Rust: one call per request picks a production variant
and one of its instances.

A variant is picked by weight (`weight / sum of weights`), by name (SageMaker's TargetVariant), or
stickily by a key such as a user id. Sticky assignment uses weighted rendezvous hashing: each
variant scores a key by `-ln(u) / weight`, where `u` in (0, 1) hashes the salted key with the
variant's name, and the lowest score wins. Shares are exactly proportional to the weights; growing
one variant's weight only moves keys into that variant (a canary raised from 10% to 20% keeps its
users, and no key moves between the others); adding a variant only moves keys into it; and the
assignment depends on variant names, not their order.

Inside the chosen variant an instance is picked among the healthy ones by its routing strategy:
LEAST_OUTSTANDING_REQUESTS (fewest requests in flight, ties broken uniformly at random) or RANDOM.

With failover on (a router option), an untargeted pick whose variant has no healthy instance is
drawn again, by weight, among the variants with a weight above 0 and a healthy instance, from the
same seeded generator, so seeded routers fail over reproducibly.

Every call holds the GIL: each is nanoseconds of work with nothing to wait for. A `Router` is
thread-safe: a table change swaps the whole table atomically, so a concurrent `route()` sees the old
table or the new one, never a mix.
"""

from collections.abc import Mapping, Sequence
from typing import ClassVar, Self, final

__all__ = [
    "Instance",
    "InvalidRoutingTableError",
    "NoHealthyInstanceError",
    "NoRoutableVariantError",
    "Route",
    "Router",
    "RouterError",
    "UnknownInstanceError",
    "UnknownVariantError",
    "VariantSpec",
    "__version__",
]

__version__: str

class RouterError(Exception):
    """Base of every error the router raises."""

class InvalidRoutingTableError(RouterError):
    """A routing table, or a change of weights, breaks a rule; the router keeps the table it had.

    The rules: at least one variant (how many an endpoint may have is the control plane's check,
    from config.MAX_PRODUCTION_VARIANTS); non-empty, unique variant names; non-empty
    instance names, unique across the whole router; weights finite and >= 0 with a finite sum;
    routing strategy LEAST_OUTSTANDING_REQUESTS or RANDOM. All weights 0 is allowed.
    """

class UnknownVariantError(RouterError):
    """A variant name (a target, a weight change's key) is not in the table; the message names the
    variant asked for and the table's variants."""

class NoHealthyInstanceError(RouterError):
    """The chosen variant has no instance, or none of its instances is healthy; the message names
    the variant."""

class NoRoutableVariantError(RouterError):
    """Every weight is 0, so an untargeted or sticky pick has no variant; targeted picks work."""

class UnknownInstanceError(RouterError):
    """An instance name is not in the current table (never was, or a table change removed it)."""

@final
class VariantSpec:
    """One production variant as configured: immutable, compared by value, not hashable."""

    __hash__: ClassVar[None]  # type: ignore[assignment]

    def __new__(
        cls, name: str, weight: float, instances: Sequence[str], routing_strategy: str
    ) -> Self:
        """Describe a variant. Every argument is required (the defaults live in config.py).

        Args:
            name: the variant's name, unique in its table.
            weight: its share of untargeted traffic is `weight / sum of weights`; finite, >= 0.
            instances: its instances' names, unique across the router; may be empty.
            routing_strategy: "LEAST_OUTSTANDING_REQUESTS" or "RANDOM".

        Raises:
            InvalidRoutingTableError: `routing_strategy` is neither of the two. The other rules are
                checked when a `Router` gets the spec.
            TypeError: `instances` is a str or not a sequence of str.
        """

    @property
    def name(self) -> str:
        """The variant's name."""

    @property
    def weight(self) -> float:
        """The variant's weight."""

    @property
    def instances(self) -> list[str]:
        """The variant's instance names, in order (a new list on every access)."""

    @property
    def routing_strategy(self) -> str:
        """How an instance is chosen: "LEAST_OUTSTANDING_REQUESTS" or "RANDOM"."""

    def __eq__(self, other: object, /) -> bool:
        """True if `other` is a VariantSpec with the same name, weight, instances and strategy."""

@final
class Instance:
    """One instance of a routing table, as `Router.route` hands it back: its names, and a handle
    on its in-flight count that `Router.release` takes. One object per instance and table, so
    repeated picks of an instance return the same object."""

    @property
    def variant(self) -> str:
        """The name of the instance's variant."""

    @property
    def name(self) -> str:
        """The instance's name."""

@final
class Route:
    """What one `Router.route` call picked. Immutable, and made when the table is built: picks of
    the same instance with the same healthy count return the same object."""

    @property
    def variant(self) -> str:
        """The variant that serves the request (after failover, the one failed over to)."""

    @property
    def instance(self) -> Instance:
        """The instance that serves the request; give it to `Router.release` when done."""

    @property
    def healthy_instances(self) -> int:
        """How many healthy instances the serving variant had at the pick (at least 1)."""

    @property
    def failed_over(self) -> bool:
        """True when the drawn variant had no healthy instance and failover chose this one."""

@final
class Router:
    """A thread-safe router over one endpoint's production variants.

    Instances start healthy with nothing in flight. A table change (`replace`, `set_weights`) keeps
    the in-flight count and health of every instance that keeps its name.
    """

    def __new__(
        cls, variants: Sequence[VariantSpec], *, salt: str, seed: int | None, failover: bool
    ) -> Self:
        """Build a router over `variants`.

        Args:
            variants: the production variants, in table order.
            salt: makes the sticky assignment specific to this router; routers with the same salt
                and weights assign every key alike.
            seed: fixes the PRNG (0 <= seed < 2**64) so picks are reproducible; None seeds it from
                the OS.
            failover: an untargeted pick (sticky included) whose variant has no healthy instance
                is drawn again by weight among the variants with a weight above 0 and a healthy
                instance (the endpoint's `splitserve:failover` tag).

        Raises:
            InvalidRoutingTableError: `variants` break a rule (see the exception).
            OverflowError: `seed` is negative or not below 2**64.
        """

    @property
    def failover(self) -> bool:
        """Whether untargeted picks fail over (as built, or as `set_failover` last set it)."""

    def set_failover(self, failover: bool) -> None:
        """Turn failover on or off for every pick that starts after this call (the endpoint's
        `splitserve:failover` tag changed). The table is not rebuilt: every instance keeps its
        in-flight count and health.

        Args:
            failover: whether untargeted picks fail over from now on.
        """

    def route(self, target_variant: str | None = None, key: str | None = None) -> Route:
        """Pick a variant and one of its healthy instances, and count one more request in flight on
        that instance (undo with `release` when the request is done).

        The variant is `target_variant` whatever its weight, 0 included, if given; else the sticky
        choice for `key` if given; else a weighted random choice; then, with failover on and no
        target, another variant if that one has no healthy instance.

        Args:
            target_variant: the variant to use (SageMaker's TargetVariant).
            key: a sticky key (e.g. a user id); the same key gets the same variant while the
                weights stay the same.

        Returns:
            The variant, the instance, the variant's healthy-instance count and whether the pick
            failed over.

        Raises:
            UnknownVariantError: `target_variant` is not in the table.
            NoRoutableVariantError: no target, and every weight is 0.
            NoHealthyInstanceError: the chosen variant has no healthy instance (and failover, if
                on, found no other); the message names the variant drawn.
        """

    def release(self, instance: Instance) -> None:
        """Count one request fewer in flight on `instance` (never below 0). The instance may have
        left the table since its pick: its own count is released, nothing else changes.

        Args:
            instance: the `Route.instance` of a pick of this router.
        """

    def replace(self, variants: Sequence[VariantSpec]) -> None:
        """Replace the whole table (weights, instances, strategies) atomically.

        Instances that keep their name keep their in-flight count and health; new ones start
        healthy with nothing in flight; removed ones become unknown.

        Args:
            variants: the new production variants, in table order.

        Raises:
            InvalidRoutingTableError: `variants` break a rule; the router keeps its table.
        """

    def set_weights(self, weights: Mapping[str, float]) -> None:
        """Replace the table with one where only the named variants' weights differ.

        Args:
            weights: variant name -> new weight; variants not named keep theirs.

        Raises:
            UnknownVariantError: a name is not in the table; nothing changes.
            InvalidRoutingTableError: a weight is negative, NaN or infinite; nothing changes.
        """

    def set_healthy(self, instance: str, healthy: bool) -> None:
        """Mark `instance` healthy (pickable) or unhealthy; no table is rebuilt.

        Args:
            instance: the instance's name.
            healthy: whether `route` may pick it.

        Raises:
            UnknownInstanceError: `instance` is not in the current table.
        """

    def in_flight(self, instance: str) -> int:
        """How many picks of `instance` have not been released.

        Args:
            instance: the instance's name.

        Returns:
            The count, >= 0.

        Raises:
            UnknownInstanceError: `instance` is not in the current table.
        """

    def weights(self) -> dict[str, float]:
        """Each variant's name and weight.

        Returns:
            A new dict, variant name -> weight, in table order.
        """

    def variants(self) -> list[VariantSpec]:
        """The current table.

        Returns:
            New VariantSpecs, in table order (health and in-flight counts are not part of them).
        """

    def healthy_instances(self, variant: str) -> list[str]:
        """The healthy instances of one variant (for gauges; a pick already returns the count).

        Args:
            variant: the variant's name.

        Returns:
            The names of its healthy instances, in table order.

        Raises:
            UnknownVariantError: `variant` is not in the table.
        """
