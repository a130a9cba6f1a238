//! The birthday event type: "Hey, {first_name} {last_name} it's your birthday",
//! at `send_at` local time (09:00 by default) on the subject's `birthday`.
//!
//! The calendar logic is plain Rust in `kairos-calendar` (shared with
//! anniversary) so it is unit-tested on the host target; the WIT glue in
//! `component` only converts records, and is built for wasm32 only (its export
//! names are not valid native symbols).

#[cfg(target_arch = "wasm32")]
mod component;
