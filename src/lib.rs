//! Facade.
pub use chatcore::*;
