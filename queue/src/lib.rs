//! The NATS JetStream side of kiln: job and event schemas, streams, the worker loop.
//!
//! Empty until the NATS worker is built; see DESIGN.md, section NATS.
