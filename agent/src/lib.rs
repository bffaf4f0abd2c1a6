//! The Tessera agent (being written).
