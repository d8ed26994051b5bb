//! Integration tests: the engine against an in-memory model, and the real binary.

mod cli;
mod common;
mod hostile;
mod model;
mod webdav_fuzz;
