//! Fault injection for the model harness: a small trait that makes a store misbehave
//! ([`FaultInjector::inject`]) and recover ([`FaultInjector::heal`]) while the
//! harness's clients keep working, so the same checks run under faults.
//!
//! An injector owns whatever it needs to break the store (a cluster to stop a member
//! of, a proxy to cut, an emulator's fault switches). While a fault is in force an
//! operation may fail with `Unavailable` or time out; the harness then treats it as
//! one that may or may not have taken effect. After [`FaultInjector::heal`] returns,
//! the store must serve again (within the backend's own reconnect time) and every
//! rule must hold over the whole history, faults included.
//!
//! The trait is object-safe (its futures are boxed: this is test code, not a hot
//! path), so [`crate::testing::model::ModelConfig`] can hold any injector.

use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;

/// Makes a store misbehave and recover, for the model harness.
pub trait FaultInjector: Send + Sync + 'static {
    /// A short description for failure reports, e.g. `"stop the etcd leader"`.
    fn name(&self) -> String;

    /// Starts the fault. Returns once it is in force.
    fn inject(&self) -> BoxFuture<'_, ()>;

    /// Ends the fault. Returns once the store serves again (or at least accepts
    /// connections again; clients may still need to reconnect).
    fn heal(&self) -> BoxFuture<'_, ()>;
}

/// A shared injector, as [`crate::testing::model::ModelConfig`] holds it.
#[derive(Clone)]
pub struct SharedFault(pub Arc<dyn FaultInjector>);

impl SharedFault {
    /// Wraps an injector.
    pub fn new(injector: impl FaultInjector) -> Self {
        SharedFault(Arc::new(injector))
    }
}

impl fmt::Debug for SharedFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SharedFault").field(&self.0.name()).finish()
    }
}

impl std::ops::Deref for SharedFault {
    type Target = dyn FaultInjector;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}
