//! Tests that mount the real `datamesh` binary and drive real tools on the
//! mountpoint. The mount itself is not built yet; until it is, the engine's
//! end-to-end tests live in `tests/it/` and drive the CLI binary.
