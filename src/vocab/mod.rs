//! The shared vocabulary at the bottom of the crate: MACs, packet time, link types, levels, reasons, actions, the inventory.
//!
//! Every stage speaks these words, so they live below all of them (as
//! smoltcp's `wire` does): this module imports nothing else of the crate.
//! Stages re-export what they are the home of (`decode::Mac`,
//! `detect::Level`, `action::ActionKind`).

mod action;
mod inventory;
mod level;
pub mod linktype;
mod mac;
pub mod time;

pub use action::{Action, ActionKind};
pub use inventory::{HypervisorEntry, VmEntry};
pub use level::{Level, Reason};
pub use mac::{Mac, MacParseError};
pub use time::PacketTime;
