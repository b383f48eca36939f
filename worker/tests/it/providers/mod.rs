//! The vendor adapters against local servers that speak each vendor's wire format: one
//! conformance suite every adapter passes, and whole tasks through a real control plane.

mod conformance;
mod end_to_end;
mod fake;
mod tool_wire;
mod tools;
mod vendors;
