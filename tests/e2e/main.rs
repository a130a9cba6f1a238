//! End-to-end tests: a real PostgreSQL cluster, the real plugin components
//! (and deliberately misbehaving ones), a real webhook receiver on loopback,
//! and the app on port 0.

mod access;
mod ahead;
mod api;
mod audit;
mod delivery;
mod embedded;
mod endpoints;
mod event_types;
mod fleet;
mod helpers;
mod hostile;
mod import;
mod kit;
mod lifecycle;
mod limits;
mod openapi;
mod operations;
mod ops;
mod polyglot;
mod record;
mod scheduling;
mod series;
mod status_page;
