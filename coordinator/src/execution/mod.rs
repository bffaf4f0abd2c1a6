//! Remote execution on the coordinator: platform matching, the fair-share queue, the
//! operation lifecycle, input checks, the execution layer that Execute and jobs call, and the
//! scheduler actor that owns the operations, with the clock it reads.

pub mod clock;
pub mod execute;
pub mod inputs;
pub mod operation;
pub mod platform;
pub mod queue;
pub mod scheduler;
