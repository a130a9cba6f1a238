//! End-to-end tests: a real PostgreSQL cluster, the real birthday component,
//! a real webhook receiver on loopback, and the app on port 0.

mod api;
mod delivery;
mod helpers;
mod scheduling;
