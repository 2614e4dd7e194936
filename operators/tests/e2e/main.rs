//! The operators' end-to-end tests, one binary: the sinks against real receivers and a real
//! SMTP server, and the README's examples.

mod readme;
mod sinks;
