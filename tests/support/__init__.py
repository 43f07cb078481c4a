"""Test helpers: an isolated database and topic prefix per test session, process control."""
