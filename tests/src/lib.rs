//! Helpers for the integration tests under tests/tests.
