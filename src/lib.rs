//! slotgate
