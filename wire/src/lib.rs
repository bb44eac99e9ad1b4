//! corum's client and peer protocols: schemas, framing, verification, and the Rust client.
#![deny(missing_docs)]
