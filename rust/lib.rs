//! `splitserve._router`: the Python extension module around the routing core. Registration only;
//! the routing logic is in `router`, the conversions in `bindings`.

mod bindings;
pub mod router;

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

create_exception!(
    splitserve._router,
    RouterError,
    PyException,
    "Base of every error the router raises."
);
create_exception!(
    splitserve._router,
    InvalidRoutingTableError,
    RouterError,
    "A routing table, or a change of weights, breaks a rule; the router keeps its table."
);
create_exception!(
    splitserve._router,
    UnknownVariantError,
    RouterError,
    "A variant name is not in the routing table."
);
create_exception!(
    splitserve._router,
    NoHealthyInstanceError,
    RouterError,
    "The chosen variant has no healthy instance."
);
create_exception!(
    splitserve._router,
    NoRoutableVariantError,
    RouterError,
    "Every weight is 0, so only a targeted pick can choose a variant."
);
create_exception!(
    splitserve._router,
    UnknownInstanceError,
    RouterError,
    "An instance name is not in the routing table."
);

/// The module: classes, exception classes and `__version__`.
#[pymodule]
fn _router(module: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = module.py();
    module.add("__version__", env!("CARGO_PKG_VERSION"))?;
    module.add_class::<bindings::VariantSpec>()?;
    module.add_class::<bindings::Router>()?;
    module.add_class::<bindings::Route>()?;
    module.add_class::<bindings::Instance>()?;
    module.add("RouterError", py.get_type::<RouterError>())?;
    module.add(
        "InvalidRoutingTableError",
        py.get_type::<InvalidRoutingTableError>(),
    )?;
    module.add("UnknownVariantError", py.get_type::<UnknownVariantError>())?;
    module.add(
        "NoHealthyInstanceError",
        py.get_type::<NoHealthyInstanceError>(),
    )?;
    module.add(
        "NoRoutableVariantError",
        py.get_type::<NoRoutableVariantError>(),
    )?;
    module.add(
        "UnknownInstanceError",
        py.get_type::<UnknownInstanceError>(),
    )?;
    Ok(())
}
