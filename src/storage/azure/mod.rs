//! The Azure Blob Storage backend.

pub mod connection_string;
pub mod sas;
