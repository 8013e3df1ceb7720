//! The supervisor board: pin map, Linux link driver and simulated board (filled by the supervisor issue).
