//! The routing core's errors: one enum, each variant a distinct failure the gateway maps to its own
//! Python exception class (see `bindings.rs`).

use std::fmt;

/// Why a routing table (a list of variant specs, or a change of weights) was refused.
#[derive(Clone, Debug, PartialEq)]
pub enum InvalidTable {
    /// The table has no production variant.
    NoVariants,
    /// A variant's name is the empty string.
    EmptyVariantName,
    /// Two variants share a name.
    DuplicateVariant {
        /// The repeated variant name.
        variant: String,
    },
    /// A weight is negative, NaN or infinite.
    InvalidWeight {
        /// The variant the weight belongs to.
        variant: String,
        /// The weight as given.
        weight: f64,
    },
    /// The weights are each finite but their sum is not.
    WeightSumNotFinite,
    /// An instance's name is the empty string.
    EmptyInstanceName {
        /// The variant listing the unnamed instance.
        variant: String,
    },
    /// An instance name appears twice in the router (in one variant or in two).
    DuplicateInstance {
        /// The repeated instance name.
        instance: String,
    },
    /// A routing strategy string is not one this router implements.
    UnknownRoutingStrategy {
        /// The strategy string as given.
        strategy: String,
    },
}

impl fmt::Display for InvalidTable {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoVariants => write!(formatter, "the routing table has no production variant"),
            Self::EmptyVariantName => write!(formatter, "a production variant has an empty name"),
            Self::DuplicateVariant { variant } => {
                write!(formatter, "production variant '{variant}' appears more than once")
            }
            Self::InvalidWeight { variant, weight } => write!(
                formatter,
                "production variant '{variant}' has weight {weight}; a weight must be a finite \
                 number >= 0"
            ),
            Self::WeightSumNotFinite => write!(
                formatter,
                "the sum of the production variants' weights is not a finite number"
            ),
            Self::EmptyInstanceName { variant } => {
                write!(formatter, "production variant '{variant}' lists an instance with an empty name")
            }
            Self::DuplicateInstance { instance } => {
                write!(formatter, "instance '{instance}' appears more than once in the routing table")
            }
            Self::UnknownRoutingStrategy { strategy } => write!(
                formatter,
                "unknown routing strategy '{strategy}'; expected LEAST_OUTSTANDING_REQUESTS or RANDOM"
            ),
        }
    }
}

/// Every way a routing call can fail. None of them is a panic: request data only ever produces one
/// of these values.
#[derive(Clone, Debug, PartialEq)]
pub enum RouterError {
    /// A table (or a change of weights) was refused; the router keeps the table it had.
    InvalidTable(InvalidTable),
    /// A variant name (a `TargetVariant`, or a key of a weight change) is not in the table.
    UnknownVariant {
        /// The name asked for.
        variant: String,
        /// The table's variant names, in table order.
        known: Vec<String>,
    },
    /// The chosen variant has no instance, or none of its instances is healthy.
    NoHealthyInstance {
        /// The chosen variant.
        variant: String,
    },
    /// Every weight is zero, so only a targeted pick can choose a variant.
    NoRoutableVariant {
        /// The table's variant names, in table order.
        variants: Vec<String>,
    },
    /// An instance name is not in the table.
    UnknownInstance {
        /// The name asked for.
        instance: String,
    },
}

impl From<InvalidTable> for RouterError {
    fn from(problem: InvalidTable) -> Self {
        Self::InvalidTable(problem)
    }
}

/// `'a', 'b', 'c'`: how messages list names.
fn quoted_list(names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|name| format!("'{name}'")).collect();
    quoted.join(", ")
}

impl fmt::Display for RouterError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidTable(problem) => write!(formatter, "invalid routing table: {problem}"),
            Self::UnknownVariant { variant, known } => write!(
                formatter,
                "production variant '{variant}' does not exist; the endpoint's variants are {}",
                quoted_list(known)
            ),
            Self::NoHealthyInstance { variant } => write!(
                formatter,
                "production variant '{variant}' has no healthy instance to take the request"
            ),
            Self::NoRoutableVariant { variants } => write!(
                formatter,
                "every production variant ({}) has weight 0, so a request must name its \
                 TargetVariant",
                quoted_list(variants)
            ),
            Self::UnknownInstance { instance } => {
                write!(
                    formatter,
                    "instance '{instance}' is not in the routing table"
                )
            }
        }
    }
}

impl std::error::Error for RouterError {}
