//! The Python classes: convert arguments in, call `router::`, convert results and errors out.
//! Every method holds the GIL: each is nanosecond work with nothing to wait for.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyFloat, PyList, PyMapping, PyString};

use crate::router;

/// What the core hands back for a picked instance, made once per table so that a pick neither
/// converts a name nor allocates: the `Route` a pick of this instance returns, one for each count
/// of healthy instances its variant can have (index `count - 1`). Allocating a `Route` per pick
/// cost as much as the rest of the pick (~30 ns of ~70; docs/benchmarks.md, "Router pick").
struct Label {
    instance: Py<Instance>,
    routes: Box<[Py<Route>]>,
}

impl Label {
    /// The route of a pick of this instance with `healthy_instances` healthy in its variant; a
    /// failed-over pick (rare: its own variant had none) gets a new one that says so.
    fn route(
        &self,
        py: Python<'_>,
        healthy_instances: usize,
        failed_over: bool,
    ) -> PyResult<Py<Route>> {
        match self.routes.get(healthy_instances.wrapping_sub(1)) {
            Some(route) if !failed_over => Ok(route.clone_ref(py)),
            _ => Route::new(py, &self.instance, healthy_instances, failed_over),
        }
    }
}

/// Each core error becomes its own Python exception class, with the core's message.
impl From<router::RouterError> for PyErr {
    fn from(error: router::RouterError) -> Self {
        let message = error.to_string();
        match error {
            router::RouterError::InvalidTable(_) => {
                crate::InvalidRoutingTableError::new_err(message)
            }
            router::RouterError::UnknownVariant { .. } => {
                crate::UnknownVariantError::new_err(message)
            }
            router::RouterError::NoHealthyInstance { .. } => {
                crate::NoHealthyInstanceError::new_err(message)
            }
            router::RouterError::NoRoutableVariant { .. } => {
                crate::NoRoutableVariantError::new_err(message)
            }
            router::RouterError::UnknownInstance { .. } => {
                crate::UnknownInstanceError::new_err(message)
            }
        }
    }
}

/// Makes labels. The names are interned, so a name keeps one string object across table changes.
fn labeller(
    py: Python<'_>,
) -> impl FnMut(&router::VariantSpec, &str, router::InstanceHandle) -> PyResult<Label> + '_ {
    move |spec, instance, handle| {
        let instance = Py::new(
            py,
            Instance {
                variant: PyString::intern(py, &spec.name).unbind(),
                name: PyString::intern(py, instance).unbind(),
                handle,
            },
        )?;
        let routes = (1..=spec.instances.len())
            .map(|healthy_instances| Route::new(py, &instance, healthy_instances, false))
            .collect::<PyResult<_>>()?;
        Ok(Label { instance, routes })
    }
}

/// One instance of a routing table, as a pick hands it back (see the stub).
#[pyclass(frozen, module = "splitserve._router")]
pub struct Instance {
    #[pyo3(get)]
    variant: Py<PyString>,
    #[pyo3(get)]
    name: Py<PyString>,
    handle: router::InstanceHandle,
}

#[pymethods]
impl Instance {
    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let variant = self.variant.bind(py).repr()?;
        let name = self.name.bind(py).repr()?;
        Ok(format!("Instance(variant={variant}, name={name})"))
    }
}

/// What one `Router.route` call picked (see the stub).
#[pyclass(frozen, module = "splitserve._router")]
pub struct Route {
    #[pyo3(get)]
    variant: Py<PyString>,
    #[pyo3(get)]
    instance: Py<Instance>,
    #[pyo3(get)]
    healthy_instances: usize,
    #[pyo3(get)]
    failed_over: bool,
}

impl Route {
    /// A new `Route` object for a pick of `instance`.
    fn new(
        py: Python<'_>,
        instance: &Py<Instance>,
        healthy_instances: usize,
        failed_over: bool,
    ) -> PyResult<Py<Self>> {
        let route = Self {
            variant: instance.get().variant.clone_ref(py),
            instance: instance.clone_ref(py),
            healthy_instances,
            failed_over,
        };
        Py::new(py, route)
    }
}

#[pymethods]
impl Route {
    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let variant = self.variant.bind(py).repr()?;
        let instance = self.instance.get().name.bind(py).repr()?;
        Ok(format!(
            "Route(variant={variant}, instance={instance}, healthy_instances={}, failed_over={})",
            self.healthy_instances,
            if self.failed_over { "True" } else { "False" }
        ))
    }
}

/// One production variant as configured (see the stub for the Python-facing docs).
#[pyclass(frozen, eq, module = "splitserve._router")]
#[derive(PartialEq)]
pub struct VariantSpec {
    spec: router::VariantSpec,
}

#[pymethods]
impl VariantSpec {
    #[new]
    #[pyo3(signature = (name, weight, instances, routing_strategy))]
    fn new(
        name: String,
        weight: f64,
        instances: Vec<String>,
        routing_strategy: &str,
    ) -> PyResult<Self> {
        let routing_strategy = router::RoutingStrategy::parse(routing_strategy)?;
        Ok(Self {
            spec: router::VariantSpec {
                name,
                weight,
                instances,
                routing_strategy,
            },
        })
    }

    #[getter]
    fn name(&self) -> &str {
        &self.spec.name
    }

    #[getter]
    fn weight(&self) -> f64 {
        self.spec.weight
    }

    #[getter]
    fn instances(&self) -> Vec<String> {
        self.spec.instances.clone()
    }

    #[getter]
    fn routing_strategy(&self) -> &'static str {
        self.spec.routing_strategy.as_str()
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        // Python's own reprs, so the text reads back as the call that makes an equal spec.
        let name = PyString::new(py, &self.spec.name).repr()?;
        let weight = PyFloat::new(py, self.spec.weight).repr()?;
        let instances = PyList::new(py, &self.spec.instances)?.repr()?;
        let strategy = PyString::new(py, self.spec.routing_strategy.as_str()).repr()?;
        Ok(format!(
            "VariantSpec(name={name}, weight={weight}, instances={instances}, \
             routing_strategy={strategy})"
        ))
    }
}

/// The core specs of a sequence of `VariantSpec`s.
fn core_specs(variants: Vec<Bound<'_, VariantSpec>>) -> Vec<router::VariantSpec> {
    variants
        .into_iter()
        .map(|variant| variant.get().spec.clone())
        .collect()
}

/// A thread-safe router over one endpoint's production variants (see the stub).
#[pyclass(frozen, module = "splitserve._router")]
pub struct Router {
    core: router::Router<Label>,
}

#[pymethods]
impl Router {
    #[new]
    #[pyo3(signature = (variants, *, salt, seed, failover))]
    fn new(
        py: Python<'_>,
        variants: Vec<Bound<'_, VariantSpec>>,
        salt: &str,
        seed: Option<u64>,
        failover: bool,
    ) -> PyResult<Self> {
        let core = router::Router::new(&core_specs(variants), salt, seed, failover, labeller(py))?;
        Ok(Self { core })
    }

    #[getter]
    fn failover(&self) -> bool {
        self.core.failover()
    }

    fn set_failover(&self, failover: bool) {
        self.core.set_failover(failover);
    }

    #[pyo3(signature = (target_variant=None, key=None))]
    fn route(
        &self,
        py: Python<'_>,
        target_variant: Option<&str>,
        key: Option<&str>,
    ) -> PyResult<Py<Route>> {
        self.core.route(target_variant, key, |routed| {
            routed
                .label
                .route(py, routed.healthy_instances, routed.failed_over)
        })?
    }

    fn release(&self, instance: &Bound<'_, Instance>) {
        self.core.release(&instance.get().handle);
    }

    fn replace(&self, py: Python<'_>, variants: Vec<Bound<'_, VariantSpec>>) -> PyResult<()> {
        self.core.replace(&core_specs(variants), labeller(py))
    }

    fn set_weights(&self, py: Python<'_>, weights: &Bound<'_, PyMapping>) -> PyResult<()> {
        let mut changes: Vec<(String, f64)> = Vec::new();
        for item in weights.items()?.iter() {
            changes.push(item.extract()?);
        }
        self.core.set_weights(
            changes
                .iter()
                .map(|(name, weight)| (name.as_str(), *weight)),
            labeller(py),
        )?;
        Ok(())
    }

    fn set_healthy(&self, instance: &str, healthy: bool) -> Result<(), router::RouterError> {
        self.core.set_healthy(instance, healthy)
    }

    fn in_flight(&self, instance: &str) -> Result<u64, router::RouterError> {
        self.core.in_flight(instance)
    }

    fn weights<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let weights = PyDict::new(py);
        for (name, weight) in self.core.weights() {
            weights.set_item(name, weight)?;
        }
        Ok(weights)
    }

    fn variants(&self) -> Vec<VariantSpec> {
        self.core
            .specs()
            .into_iter()
            .map(|spec| VariantSpec { spec })
            .collect()
    }

    fn healthy_instances(&self, variant: &str) -> Result<Vec<String>, router::RouterError> {
        self.core.healthy_instances(variant)
    }
}
