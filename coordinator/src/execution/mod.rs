//! Remote execution on the coordinator: platform matching, the fair-share queue, the
//! operation lifecycle, input checks, and the scheduler actor that owns them.

pub mod execute;
pub mod inputs;
pub mod operation;
pub mod platform;
pub mod queue;
pub mod scheduler;
