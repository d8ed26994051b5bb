//! datamesh: an encrypted, erasure-coded filesystem whose namespace lives in RocksDB
//! and whose file data lives as content-addressed shards.
//!
//! Layers, from the bottom: [`chunk`] (pure: compress, encrypt, erasure-code, hash),
//! [`store`] (local shard files), [`net`] (storage peers over libp2p, and the store
//! that spreads shards over them), [`meta`] (the RocksDB namespace), [`data`] (the
//! engine that joins them), then the front ends: [`cli`] and the FUSE adapter in [`fuse`].

pub mod chunk;
pub mod cli;
pub mod dashboard;
pub mod data;
pub mod error;
pub mod fuse;
pub mod home;
pub mod kit;
pub mod listen;
pub mod member;
pub mod meta;
pub mod metrics;
pub mod net;
pub mod protect;
pub mod store;
pub mod types;
pub mod util;
pub mod volume;
pub mod webdav;
pub mod workers;

pub use error::{Error, Result};
