//! The Sotto client SDK. It builds on `sotto-crypto`; see docs/ARCHITECTURE.md.
