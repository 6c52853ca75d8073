//! Operations from the command line: the admin commands (they work on the state directory
//! through the same `StateStore` as the running gateway, and audit themselves) and `check`.

pub mod admin;
pub mod check;
