//! Shift tokens (filled by the fleet-provisioning issue).
