//! Pure domain types: no I/O, no database, no network.

mod model;
mod serial;
mod worker;

pub use model::{FamilyCode, ModelNumber};
pub use serial::{SerialNumber, deployment_counter};
pub use worker::{
    WorkerStatus, validate_api_url, validate_user_id, validate_worker_name, validate_worker_type,
};
